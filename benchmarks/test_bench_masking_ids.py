"""Mask generation on device (kernels/masking_ids.py): indices and mask from noise; forward only."""
import pytest


@pytest.mark.bench_op("masking_ids")
def test_masking_ids(op_result):
    assert op_result["median_ms"] > 0
