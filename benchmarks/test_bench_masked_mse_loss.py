"""Masked MSE loss (kernels/masked_mse_loss.py): full or masked-only pred, with and without norm-pix; grad pred."""
import pytest


@pytest.mark.bench_op(
    "masked_mse_loss",
    {"form": "masked", "norm_pix": True},  # what the fast model path runs (with norm_pix_loss)
    {"form": "masked", "norm_pix": False},
    {"form": "full", "norm_pix": True},  # what forward(full_pred=True) runs
    {"form": "full", "norm_pix": False},
)
def test_masked_mse_loss(op_result):
    assert op_result["median_ms"] > 0
