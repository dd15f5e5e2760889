"""decoder_input (kernels/decoder_input.py) against decoder_input_ref, forward and every gradient.

The reference runs in float64 on the same values; the kernel's result is compared with the tolerance
of its own dtype (tests/helpers.py). The mask-token gradient sums N*(L-K) rows and the pos-embed
gradient N rows: both use the reduction tolerance for that many rows.
"""

from __future__ import annotations

import pytest
import torch

from fastmae.kernels import decoder_input as kernel
from fastmae import ops
from fastmae.reference import decoder_input_ref
from helpers import DTYPES, assert_close, requires_kernels
from op_checks import (check_against_reference, check_bad_input, check_compile_fullgraph, check_deterministic,
                       check_gradcheck)

pytestmark = requires_kernels

# (N, L, K, D), by regime:
SHAPES = [
    (2, 9, 4, 40),  # odd L, D not a power of two (one masked column block of 64)
    (1, 5, 3, 1280),  # batch 1, ViT-H width: five 256-wide column blocks
    (1, 4, 2, 512),  # batch 1, the MAE decoder width
    (3, 7, 2, 264),  # row tiles of 8 straddle samples; the second column block is mostly masked
    (2, 6, 6, 8),  # K = L (mask ratio 0): no mask token at all, its gradient is 0
    (3, 16, 1, 24),  # K = 1: one visible token per sample
    (5, 33, 8, 256),  # 170 rows: several backward programs (8 tiles of 8 rows each), partials summed
]


def _inputs(n, num_patches, k, d, dtype, table_dtype=None, ids_dtype=torch.int64, pos_grad=True) -> dict:
    table_dtype = table_dtype or dtype
    return dict(
        x=torch.randn(n, k + 1, d, dtype=dtype, requires_grad=True),
        ids_restore=torch.stack([torch.randperm(num_patches) for _ in range(n)]).to(ids_dtype),  # a permutation
        mask_token=torch.randn(1, 1, d, dtype=table_dtype, requires_grad=True),
        pos_embed=torch.randn(1, num_patches + 1, d, dtype=table_dtype, requires_grad=pos_grad),
    )


def _check(args: dict, backend="triton"):
    # grad of x copies gradient rows; the mask-token grad sums N*(L-K) rows, the pos-embed grad N
    n, k1, _ = args["x"].shape
    masked_rows = n * (args["ids_restore"].shape[1] + 1 - k1)
    return check_against_reference(ops.decoder_input, decoder_input_ref, args, backend,
                                   reduced={"mask_token": masked_rows or None, "pos_embed": n})


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_fp32(shape):
    _check(_inputs(*shape, torch.float32))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32], ids=str)
def test_dtypes(dtype, ids_dtype):
    _check(_inputs(2, 9, 4, 40, dtype, ids_dtype=ids_dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_tokens_with_float32_tables(dtype):
    # The model under autocast: a bf16/fp16 decoder_embed output with the float32 mask token and
    # table -> float32 out (the official cat + add promote); grad_x comes back in x's dtype.
    out, grads = _check(_inputs(2, 9, 4, 24, dtype, table_dtype=torch.float32))
    assert out.dtype == torch.float32 and grads["x"].dtype == dtype


def test_pos_embed_without_grad():
    # MAE's decoder_pos_embed is a fixed table: only x and mask_token get gradients.
    _check(_inputs(3, 10, 3, 40, torch.float32, pos_grad=False))


def test_torch_backend_matches_reference():
    _check(_inputs(2, 9, 4, 40, torch.float32), backend="torch")


def test_deterministic():
    check_deterministic(ops.decoder_input, _inputs(5, 33, 8, 256, torch.float32))


@pytest.mark.filterwarnings("ignore:Input #.* is not a double precision")
def test_gradcheck():
    check_gradcheck(kernel.decoder_input, _inputs(2, 5, 3, 8, torch.float32))


def test_out_of_range_ids_take_the_mask_token():
    # Called past the validation of fastmae.ops: an index outside [0, K) selects the mask token in the
    # forward and sends its gradient to the mask token in the backward; nothing outside is touched.
    x, ids_restore, mask_token, pos_embed = _inputs(1, 5, 3, 8, torch.float32, pos_grad=False).values()
    ids_restore[0, 1] = 1000
    ids_restore[0, 3] = -7
    out = kernel.decoder_input(x, ids_restore, mask_token, pos_embed)
    for pos in (1, 3):
        assert_close(out[0, 1 + pos], (mask_token[0, 0] + pos_embed[0, 1 + pos]).detach())
    grad = torch.randn_like(out)
    _, grad_mask = torch.autograd.grad(out, (x, mask_token), grad)
    masked = [pos for pos in range(5) if not 0 <= int(ids_restore[0, pos]) < 3]
    assert_close(grad_mask[0, 0], grad[0, [1 + pos for pos in masked]].sum(0), reduced=len(masked))


def test_compile_fullgraph():
    check_compile_fullgraph(kernel.decoder_input, _inputs(2, 5, 3, 8, torch.float32))


@pytest.mark.parametrize(
    "change, err, name",
    [
        (lambda a: {**a, "ids_restore": a["ids_restore"].float()}, TypeError, "ids_restore"),
        (lambda a: {**a, "ids_restore": a["ids_restore"] + 100}, ValueError, "ids_restore"),
        (lambda a: {**a, "ids_restore": a["ids_restore"][:, :3]}, ValueError, "ids_restore"),
        (lambda a: {**a, "x": a["x"][0]}, ValueError, "x"),
        (lambda a: {**a, "x": a["x"][:, :1]}, ValueError, "x"),
        (lambda a: {**a, "x": a["x"].double()}, TypeError, "x"),
        (lambda a: {**a, "mask_token": a["mask_token"][:, :, :4]}, ValueError, "mask_token"),
        (lambda a: {**a, "pos_embed": a["pos_embed"][:, :, :4]}, ValueError, "pos_embed"),
    ],
)
def test_bad_input(change, err, name):
    check_bad_input(ops.decoder_input, _inputs(2, 5, 3, 8, torch.float32), change, err, name)
