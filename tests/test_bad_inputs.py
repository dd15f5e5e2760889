"""The bad-input matrix: every public entry point refuses bad input with a clear error, before any
kernel launches; odd-but-valid inputs (non-contiguous, channels-last, batch 1) work.

Kernel launches are trapped: the triton backend is routed to functions that fail the test, so an
error raised here provably comes from validation, not from a kernel.
"""

import numpy as np
import pytest
import torch

import fastmae
from fastmae import ops

P = 4  # patch size of the images below: 8 x 8 px -> a 2 x 2 grid, 48 values per patch


KERNEL_FUNCTIONS = ("patchify", "unpatchify", "patchify_gather", "encoder_input", "decoder_input",
                    "masked_mse_loss", "random_masking")


@pytest.fixture
def no_launch(monkeypatch):
    """Route the triton backend to a stand-in whose every function fails the test if called."""

    def trap(*args, **kwargs):
        raise AssertionError("a kernel was launched before the input was validated")

    trapped = type("TrappedKernels", (), {name: staticmethod(trap) for name in KERNEL_FUNCTIONS})
    monkeypatch.setattr(ops, "_kernels", lambda: trapped)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # "auto" resolves to triton, so a launch would be trapped


def imgs(n=2, c=3, h=8, w=8, dtype=torch.float32):
    return torch.randn(n, c, h, w, dtype=dtype)


IDS = torch.tensor([[0, 3], [2, 1]])

# (call, exception, words the message must contain)
CASES = {
    # patchify / unpatchify
    "patchify rank": (lambda: ops.patchify(torch.randn(3, 8, 8), P), ValueError, ["imgs", "4 dimensions"]),
    "patchify indivisible": (lambda: ops.patchify(imgs(h=10), P), ValueError, ["imgs", "multiple of patch_size"]),
    "patchify int images": (lambda: ops.patchify(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), P), TypeError, ["imgs", "dtype"]),
    "patchify float64 images": (lambda: ops.patchify(imgs(dtype=torch.float64), P), TypeError, ["imgs", "dtype"]),
    "patchify empty batch": (lambda: ops.patchify(imgs(n=0), P), ValueError, ["imgs", "empty"]),
    "patchify patch size": (lambda: ops.patchify(imgs(), 0), ValueError, ["patch_size"]),
    "patchify patch type": (lambda: ops.patchify(imgs(), 4.0), TypeError, ["patch_size"]),
    "patchify not a tensor": (lambda: ops.patchify([[1.0]], P), TypeError, ["imgs", "torch.Tensor"]),
    "unpatchify width": (lambda: ops.unpatchify(torch.randn(2, 4, 47), P), ValueError, ["patch"]),
    "unpatchify grid": (lambda: ops.unpatchify(torch.randn(2, 4, 48), P, (3, 3)), ValueError, ["grid_size"]),
    # patchify_gather
    "gather ids float": (lambda: ops.patchify_gather(imgs(), IDS.float(), P), TypeError, ["ids_keep", "dtype"]),
    "gather ids range": (lambda: ops.patchify_gather(imgs(), IDS + 2, P), ValueError, ["ids_keep", "[0, 4)"]),
    "gather ids negative": (lambda: ops.patchify_gather(imgs(), IDS - 1, P), ValueError, ["ids_keep", "[0, 4)"]),
    "gather ids batch": (lambda: ops.patchify_gather(imgs(n=3), IDS, P), ValueError, ["ids_keep", "shape"]),
    "gather ids too many": (lambda: ops.patchify_gather(imgs(), torch.zeros(2, 5, dtype=torch.long), P), ValueError, ["ids_keep"]),
    "gather ids repeated": (lambda: ops.patchify_gather(imgs(), torch.tensor([[1, 1], [0, 2]]), P), ValueError, ["ids_keep", "repeats"]),
    "gather ids rank": (lambda: ops.patchify_gather(imgs(), IDS[0], P), ValueError, ["ids_keep", "2 dimensions"]),
    "gather ids device": (lambda: ops.patchify_gather(imgs(), IDS.to("meta"), P), ValueError, ["ids_keep", "device"]),
    # encoder input
    "encoder pos shape": (lambda: ops.encoder_input(torch.randn(2, 2, 8), torch.randn(1, 5, 6), torch.randn(1, 1, 8), IDS), ValueError, ["pos_embed"]),
    "encoder cls shape": (lambda: ops.encoder_input(torch.randn(2, 2, 8), torch.randn(1, 5, 8), torch.randn(1, 8), IDS), ValueError, ["cls_token"]),
    "encoder ids shape": (lambda: ops.encoder_input(torch.randn(2, 3, 8), torch.randn(1, 5, 8), torch.randn(1, 1, 8), IDS), ValueError, ["ids_keep", "shape"]),
    "encoder ids range": (lambda: ops.encoder_input(torch.randn(2, 2, 8), torch.randn(1, 5, 8), torch.randn(1, 1, 8), IDS + 3), ValueError, ["ids_keep"]),
    "encoder ids repeated": (lambda: ops.encoder_input(torch.randn(2, 2, 8), torch.randn(1, 5, 8), torch.randn(1, 1, 8), torch.tensor([[3, 3], [0, 1]])), ValueError, ["ids_keep", "repeats"]),
    "encoder x dtype": (lambda: ops.encoder_input(torch.randn(2, 2, 8).long(), torch.randn(1, 5, 8), torch.randn(1, 1, 8), IDS), TypeError, ["x_vis", "dtype"]),
    "encoder empty": (lambda: ops.encoder_input(torch.randn(0, 2, 8), torch.randn(1, 5, 8), torch.randn(1, 1, 8), IDS[:0]), ValueError, ["x_vis", "empty"]),
    "encoder devices": (lambda: ops.encoder_input(torch.randn(2, 2, 8), torch.randn(1, 5, 8, device="meta"), torch.randn(1, 1, 8), IDS), ValueError, ["pos_embed", "device"]),
    # decoder input
    "decoder restore shape": (lambda: ops.decoder_input(torch.randn(2, 3, 8), IDS, torch.randn(1, 1, 8), torch.randn(1, 5, 8)), ValueError, ["ids_restore", "shape"]),
    "decoder restore range": (lambda: ops.decoder_input(torch.randn(2, 3, 8), torch.full((2, 4), 4), torch.randn(1, 1, 8), torch.randn(1, 5, 8)), ValueError, ["ids_restore"]),
    "decoder restore not a permutation": (lambda: ops.decoder_input(torch.randn(2, 3, 8), torch.tensor([[0, 0, 3, 2], [0, 1, 2, 3]]), torch.randn(1, 1, 8), torch.randn(1, 5, 8)), ValueError, ["ids_restore", "repeats"]),
    "decoder too many tokens": (lambda: ops.decoder_input(torch.randn(2, 6, 8), torch.zeros(2, 4, dtype=torch.long), torch.randn(1, 1, 8), torch.randn(1, 5, 8)), ValueError, ["x", "K+1"]),
    "decoder mask token": (lambda: ops.decoder_input(torch.randn(2, 3, 8), torch.zeros(2, 4, dtype=torch.long), torch.randn(1, 1, 4), torch.randn(1, 5, 8)), ValueError, ["mask_token"]),
    # loss
    "loss pred shape": (lambda: ops.masked_mse_loss(torch.randn(2, 4, 47), imgs(), torch.ones(2, 4), P), ValueError, ["pred", "shape"]),
    "loss mask shape": (lambda: ops.masked_mse_loss(torch.randn(2, 4, 48), imgs(), torch.ones(2, 5), P), ValueError, ["mask", "shape"]),
    "loss mask missing": (lambda: ops.masked_mse_loss(torch.randn(2, 4, 48), imgs(), None, P), ValueError, ["mask"]),
    "loss mask dtype": (lambda: ops.masked_mse_loss(torch.randn(2, 4, 48), imgs(), torch.ones(2, 4, dtype=torch.bool), P), TypeError, ["mask", "dtype"]),
    "loss ids pred shape": (lambda: ops.masked_mse_loss(torch.randn(2, 3, 48), imgs(), None, P, ids_masked=IDS), ValueError, ["pred", "shape"]),
    "loss ids range": (lambda: ops.masked_mse_loss(torch.randn(2, 2, 48), imgs(), None, P, ids_masked=IDS * 3), ValueError, ["ids_masked"]),
    "loss int images": (lambda: ops.masked_mse_loss(torch.randn(2, 4, 48), imgs().long(), torch.ones(2, 4), P), TypeError, ["imgs"]),
    "loss norm_pix type": (lambda: ops.masked_mse_loss(torch.randn(2, 4, 48), imgs(), torch.ones(2, 4), P, "yes"), TypeError, ["norm_pix_loss"]),
    "loss norm_pix one value": (lambda: ops.masked_mse_loss(torch.randn(2, 4, 1), torch.randn(2, 1, 2, 2), torch.ones(2, 4), 1, True), ValueError, ["norm_pix_loss", "2 values"]),
    "loss devices": (lambda: ops.masked_mse_loss(torch.randn(2, 4, 48, device="meta"), imgs(), torch.ones(2, 4), P), ValueError, ["pred", "device"]),
    # masking
    "masking len_keep": (lambda: ops.masking_ids(torch.rand(2, 4), 0), ValueError, ["len_keep"]),
    "masking len_keep big": (lambda: ops.masking_ids(torch.rand(2, 4), 5), ValueError, ["len_keep"]),
    "masking noise rank": (lambda: ops.masking_ids(torch.rand(4), 2), ValueError, ["noise"]),
    "masking noise dtype": (lambda: ops.masking_ids(torch.arange(8).reshape(2, 4), 2), TypeError, ["noise", "dtype"]),
    "masking empty": (lambda: ops.masking_ids(torch.rand(0, 4), 2), ValueError, ["noise"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ops_refuse_bad_input_before_any_kernel(case, no_launch):
    call, error, words = CASES[case]
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (case, str(info.value))


MODEL_CASES = {
    "rank": (lambda: torch.randn(3, 32, 32), {}, ValueError, ["imgs", "4 dimensions"]),
    "channels": (lambda: torch.randn(1, 4, 32, 32), {}, ValueError, ["imgs", "4 channels", "expected 3"]),
    "indivisible": (lambda: torch.randn(1, 3, 30, 32), {}, ValueError, ["imgs", "patch_size 4"]),
    "ratio one": (lambda: torch.randn(1, 3, 32, 32), {"mask_ratio": 1.0}, ValueError, ["mask_ratio", "[0, 1)"]),
    "ratio negative": (lambda: torch.randn(1, 3, 32, 32), {"mask_ratio": -0.5}, ValueError, ["mask_ratio"]),
    "ratio nan": (lambda: torch.randn(1, 3, 32, 32), {"mask_ratio": float("nan")}, ValueError, ["mask_ratio"]),
    "ratio keeps none": (lambda: torch.randn(1, 3, 32, 32), {"mask_ratio": 0.99}, ValueError, ["mask_ratio", "keeps no patch"]),
    "ratio type": (lambda: torch.randn(1, 3, 32, 32), {"mask_ratio": None}, TypeError, ["mask_ratio"]),
    "noise shape": (lambda: torch.randn(2, 3, 32, 32), {"noise": torch.rand(2, 63)}, ValueError, ["noise", "[2, 64]"]),
    "noise dtype": (lambda: torch.randn(2, 3, 32, 32), {"noise": torch.ones(2, 64, dtype=torch.long)}, TypeError, ["noise", "dtype"]),
    "noise device": (lambda: torch.randn(2, 3, 32, 32), {"noise": torch.rand(2, 64, device="meta")}, ValueError, ["noise", "device"]),
    "int images": (lambda: torch.zeros(1, 3, 32, 32, dtype=torch.uint8), {}, TypeError, ["imgs", "dtype"]),
    "empty batch": (lambda: torch.randn(0, 3, 32, 32), {}, ValueError, ["imgs", "empty"]),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_model_forward_refuses_bad_input_before_any_kernel(case, no_launch):
    make, kwargs, error, words = MODEL_CASES[case]
    model = fastmae.create_model("mae_vit_micro_patch4")
    with pytest.raises(error) as info:
        model(make(), **kwargs)
    for word in words:
        assert word in str(info.value), (case, str(info.value))


def test_model_refuses_norm_pix_with_one_value_per_patch():
    with pytest.raises(ValueError, match="norm_pix_loss"):
        fastmae.MaskedAutoencoderViT(4, 1, 1, 8, 1, 2, 8, 1, 2, norm_pix_loss=True)


def test_official_argument_types_are_accepted():
    # the official scripts pass numpy scalars and ints for flags
    model = fastmae.create_model("mae_vit_micro_patch4", norm_pix_loss=1, backend="torch")
    assert model.norm_pix_loss is True
    loss, _, mask = model(torch.randn(1, 3, 32, 32), np.float32(0.75))
    assert mask.sum() == 48 and torch.isfinite(loss)


@pytest.mark.parametrize("layout", ["non-contiguous", "channels-last", "batch-1"])
def test_odd_layouts_are_not_errors(layout):
    model = fastmae.create_model("mae_vit_micro_patch4", backend="torch")
    x = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    if layout == "non-contiguous":
        odd = torch.randn(2, 3, 64, 32)[:, :, ::2]
        x = odd.contiguous()
    elif layout == "channels-last":
        odd = x.to(memory_format=torch.channels_last)
    else:
        x, noise = x[:1], noise[:1]
        odd = x
    loss, pred, mask = model(odd, 0.75, noise)
    model.backend = "reference"
    ref_loss, ref_pred, _ = model(x, 0.75, noise)
    torch.testing.assert_close(pred, ref_pred, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
