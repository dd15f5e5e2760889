"""masked_tokens (kernels/masked_tokens.py) against masked_tokens_ref, forward and gradient.

A pure row gather: forward and gradient are copies, so every comparison is exact (``torch.equal``)
in every dtype. Launches run with poisoned outputs: the backward writes every row of the
``[N, L+1, D]`` gradient itself (zeros included), so a row it forgets fails.
"""

from __future__ import annotations

import pytest
import torch

from fastmae import ops
from fastmae.kernels import masked_tokens as kernel
from fastmae.reference import masked_tokens_ref, masking_ids_ref
from helpers import DEVICE, DTYPES, poisoned, requires_kernels
from op_checks import check_bad_input, check_compile_fullgraph, check_deterministic

pytestmark = requires_kernels

# (N, L, K, D), by regime
SHAPES = [
    (2, 16, 4, 64),  # mask 0.75 on a 4 x 4 grid
    (1, 196, 49, 40),  # ViT-B/16's grid, batch 1, D not a power of two
    (3, 7, 3, 264),  # odd L; M = 4 rows in a block of 8; a second column block with 8 of its 256 columns
    (2, 9, 8, 16),  # M = 1: one masked token per sample
    (2, 6, 6, 8),  # M = 0 (mask ratio 0): an empty output, a gradient of zeros
    (1, 5, 1, 1280),  # K = 1, ViT-H width: five column blocks
]


def _inputs(n, num_patches, k, d, dtype=torch.float32, ids_dtype=torch.int64):
    x = torch.randn(n, num_patches + 1, d, dtype=dtype, device=DEVICE, requires_grad=True)
    _, ids_restore, _, ids_masked = masking_ids_ref(torch.rand(n, num_patches, device=DEVICE), k)
    return x, ids_masked.to(ids_dtype), ids_restore.to(ids_dtype)


def _check(x, ids_masked, ids_restore, backend="triton"):
    with poisoned():
        out = ops.masked_tokens(x, ids_masked, ids_restore, backend=backend)  # [N, M, D]
        grad = torch.randn_like(out)
        (grad_x,) = torch.autograd.grad(out, x, grad)
    x_ref = x.detach().clone().requires_grad_()
    ref = masked_tokens_ref(x_ref, ids_masked.long(), ids_restore)
    (ref_grad,) = torch.autograd.grad(ref, x_ref, grad)
    assert out.dtype == x.dtype and out.shape == ref.shape and torch.equal(out, ref)
    assert grad_x.dtype == x.dtype and torch.equal(grad_x, ref_grad)
    return out, grad_x


def test_shapes_reach_their_regimes():
    """The launch geometry the SHAPES comments name: a change of ``row_blocks`` shows here first."""
    from fastmae.kernels._common import row_blocks

    block_r, block_d = row_blocks(264)
    assert (block_r, block_d) == (8, 256)  # two column blocks; the second holds 8 live columns
    _, num_patches, k, _ = SHAPES[2]
    assert num_patches - k < block_r  # forward: one row block per sample, partly masked
    assert row_blocks(1280)[1] * 5 == 1280  # ViT-H: five full column blocks


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape):
    _check(*_inputs(*shape))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32], ids=str)
def test_dtypes(dtype, ids_dtype):
    _check(*_inputs(2, 9, 4, 40, dtype, ids_dtype))


def test_torch_backend_matches_reference():
    _check(*_inputs(2, 9, 4, 40), backend="torch")


def test_non_contiguous_input():
    x, ids_masked, ids_restore = _inputs(2, 9, 4, 40)
    wide = torch.randn(2, 10, 80, device=DEVICE)[:, :, ::2].requires_grad_()  # a strided view
    _check(wide, ids_masked, ids_restore)


def test_out_of_range_ids_give_zero_rows_and_no_gradient():
    # Called past fastmae.ops (as on CUDA without FASTMAE_CHECK_INDICES): nothing out of bounds is touched.
    x, ids_masked, ids_restore = _inputs(1, 6, 2, 8)
    ids_masked = ids_masked.clone()
    ids_masked[0, 1] = 1000
    out = kernel.masked_tokens(x, ids_masked, ids_restore)
    assert out[0, 1].eq(0).all() and torch.equal(out[0, 0], x[0, 1 + ids_masked[0, 0]])
    bad_restore = ids_restore.clone()
    bad_restore[0, 0] = -5
    grad_x = torch.autograd.grad(kernel.masked_tokens(x, ids_masked, bad_restore), x, torch.ones_like(out))[0]
    assert grad_x[0, 1].eq(0).all() and grad_x[0, 0].eq(0).all()


def test_custom_op_registration():
    x, ids_masked, ids_restore = _inputs(2, 9, 4, 16)
    torch.library.opcheck(torch.ops.fastmae.masked_tokens.default, (x, ids_masked, ids_restore))


def _args(*shape) -> dict:
    return dict(zip(("x", "ids_masked", "ids_restore"), _inputs(*shape)))


def test_deterministic():
    check_deterministic(ops.masked_tokens, _args(3, 16, 4, 40))


def test_compile_fullgraph():
    check_compile_fullgraph(kernel.masked_tokens, _args(2, 9, 4, 16))


@pytest.mark.parametrize(
    "change, err, name",
    [
        (lambda a: {**a, "x": a["x"].double()}, TypeError, "x"),
        (lambda a: {**a, "x": a["x"][0]}, ValueError, "x"),
        (lambda a: {**a, "x": a["x"][:, :5]}, ValueError, "ids_restore"),  # x has fewer rows than L+1
        (lambda a: {**a, "ids_masked": a["ids_masked"].float()}, TypeError, "ids_masked"),
        (lambda a: {**a, "ids_masked": a["ids_masked"] + 100}, ValueError, "ids_masked"),
        (lambda a: {**a, "ids_masked": a["ids_masked"][:, [0, 0]]}, ValueError, "ids_masked"),  # a repeat
        (lambda a: {**a, "ids_masked": a["ids_masked"].flip(1)}, ValueError, "ids_masked"),  # not with ids_restore
        (lambda a: {**a, "ids_restore": a["ids_restore"][:, :4]}, ValueError, "ids_restore"),
        (lambda a: {**a, "ids_restore": a["ids_restore"] * 0}, ValueError, "ids_restore"),  # not a permutation
    ],
)
def test_bad_input(change, err, name):
    check_bad_input(ops.masked_tokens, _args(2, 9, 4, 8), change, err, name)
