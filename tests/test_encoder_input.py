"""encoder_input (kernels/encoder_input.py) against encoder_input_ref, forward and every gradient.

The reference runs in float64 on the same values; the kernel's result is compared with the tolerance
of its own dtype (tests/helpers.py). Gradients that sum over the batch (cls, pos-embed) use the
reduction tolerance for N summed rows.
"""

from __future__ import annotations

import pytest
import torch

from fastmae.kernels import encoder_input as kernel
from fastmae import ops
from fastmae.reference import encoder_input_ref
from helpers import DTYPES, assert_close, poisoned, requires_kernels

pytestmark = requires_kernels

# (N, L, K, D), by regime:
SHAPES = [
    (2, 9, 4, 40),  # odd L, D not a power of two (one masked column block of 64)
    (1, 5, 3, 1280),  # batch 1, ViT-H width: five 256-wide column blocks, no masked columns
    (1, 4, 2, 768),  # batch 1, ViT-B width
    (2, 7, 5, 264),  # row tiles of 8 straddle samples; the second column block is mostly masked
    (2, 6, 6, 8),  # K = L (mask ratio 0): every patch kept
    (3, 16, 1, 24),  # K = 1: one token per sample
]


def _inputs(n, num_patches, k, d, dtype, table_dtype=None, ids_dtype=torch.int64, pos_grad=True):
    table_dtype = table_dtype or dtype
    x_vis = torch.randn(n, k, d, dtype=dtype, requires_grad=True)
    pos_embed = torch.randn(1, num_patches + 1, d, dtype=table_dtype, requires_grad=pos_grad)
    cls_token = torch.randn(1, 1, d, dtype=table_dtype, requires_grad=True)
    ids_keep = torch.stack([torch.randperm(num_patches)[:k] for _ in range(n)]).to(ids_dtype)  # distinct per row
    return x_vis, pos_embed, cls_token, ids_keep


def _check(x_vis, pos_embed, cls_token, ids_keep, backend="triton"):
    leaves = [t for t in (x_vis, pos_embed, cls_token) if t.requires_grad]
    with poisoned():
        out = ops.encoder_input(x_vis, pos_embed, cls_token, ids_keep, backend=backend)  # [N, K+1, D]
        grad = torch.randn_like(out)
        grads = torch.autograd.grad(out, leaves, grad)
    ref_in = [t.detach().double().requires_grad_(t.requires_grad) for t in (x_vis, pos_embed, cls_token)]
    ref = encoder_input_ref(*ref_in, ids_keep)
    ref_grads = torch.autograd.grad(ref, [t for t in ref_in if t.requires_grad], grad.double())

    want = torch.promote_types(torch.promote_types(x_vis.dtype, pos_embed.dtype), cls_token.dtype)
    assert out.dtype == want and out.shape == ref.shape
    assert_close(out, ref, msg="forward")
    n = x_vis.shape[0]
    for leaf, g, rg in zip(leaves, grads, ref_grads):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape
        # grad_x_vis is a copy of grad rows; cls and pos-embed grads sum N rows
        assert_close(g, rg, reduced=None if leaf is x_vis else n, msg=f"grad {tuple(leaf.shape)}")
    return out, grads


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_fp32(shape):
    _check(*_inputs(*shape, torch.float32))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32], ids=str)
def test_dtypes(dtype, ids_dtype):
    _check(*_inputs(2, 9, 4, 40, dtype, ids_dtype=ids_dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_tokens_with_float32_tables(dtype):
    # The model under autocast: a bf16/fp16 GEMM output plus the float32 parameters -> float32 out,
    # as the official `x + pos_embed` promotes.
    out, grads = _check(*_inputs(2, 9, 4, 24, dtype, table_dtype=torch.float32))
    assert out.dtype == torch.float32 and grads[0].dtype == dtype


def test_pos_embed_without_grad():
    # MAE's pos_embed is a fixed table: only x_vis and cls_token get gradients (the cls-only kernel path).
    x_vis, pos_embed, cls_token, ids_keep = _inputs(3, 10, 3, 40, torch.float32, pos_grad=False)
    _check(x_vis, pos_embed, cls_token, ids_keep)


def test_batch_above_one_backward_span():
    # N = 70 > 64 samples per backward program: two partials summed in a fixed order.
    _check(*_inputs(70, 6, 2, 8, torch.float32))


def test_torch_backend_matches_reference():
    _check(*_inputs(2, 9, 4, 40, torch.float32), backend="torch")


def test_deterministic():
    # No atomics: two backward passes give bitwise identical gradients.
    x_vis, pos_embed, cls_token, ids_keep = _inputs(70, 6, 2, 8, torch.float32)
    out = ops.encoder_input(x_vis, pos_embed, cls_token, ids_keep, backend="triton")
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, (x_vis, pos_embed, cls_token), grad, retain_graph=True)
    second = torch.autograd.grad(out, (x_vis, pos_embed, cls_token), grad)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:Input #.* is not a double precision")
def test_gradcheck():
    # The kernels compute in float32 (ops refuse float64), so check the Triton op in float32. The op is
    # affine, so central differences are exact up to float32 rounding of O(1) outputs (~1e-7 / eps).
    x_vis, pos_embed, cls_token, ids_keep = _inputs(2, 5, 3, 8, torch.float32)
    fn = lambda x, p, c: kernel.encoder_input(x, p, c, ids_keep)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x_vis, pos_embed, cls_token), eps=0.5, atol=1e-4, rtol=1e-3, fast_mode=True)


def test_out_of_range_ids_stay_in_bounds():
    # Called past the validation of fastmae.ops (CUDA skips the range check by default): a bad id adds
    # no position in the forward and credits no pos-embed row in the backward. The ids are chosen so
    # that clamping would hit a row no valid id of that sample names (1000 -> patch 4, -7 -> patch 0).
    x_vis, pos_embed, cls_token, _ = _inputs(2, 5, 3, 8, torch.float32)
    ids_keep = torch.tensor([[0, 1000, 2], [3, 1, -7]])  # [N, K]; L = 5
    with poisoned():
        out = kernel.encoder_input(x_vis, pos_embed, cls_token, ids_keep)  # [N, K+1, D]
        grad = torch.randn_like(out)
        grad_pos, grad_cls = torch.autograd.grad(out, (pos_embed, cls_token), grad)
    valid = (ids_keep >= 0) & (ids_keep < 5)  # [N, K]
    pos_row = torch.where(valid, 1 + ids_keep, 0)  # [N, K]
    want = torch.where(valid[..., None], x_vis + pos_embed[0, pos_row], x_vis).detach()  # [N, K, D]
    assert_close(out[:, 1:], want)
    assert_close(out[:, 0], (cls_token[0] + pos_embed[0, :1]).detach().expand(2, -1))
    # grad_pos[0] = sum_n g[n, 0]; grad_pos[1 + l] sums g[n, 1 + k] over the valid ids equal to l only
    want_pos = torch.zeros(6, 8, dtype=torch.float64)
    want_pos[0] = grad[:, 0].double().sum(0)
    want_pos.index_add_(0, pos_row[valid], grad[:, 1:][valid].double())
    assert_close(grad_pos[0], want_pos, reduced=2)
    assert torch.equal(grad_pos[0, 5], torch.zeros(8)) and torch.equal(grad_pos[0, 1], grad[0, 1])
    assert_close(grad_cls[0, 0], want_pos[0], reduced=2)


def test_compile_fullgraph():
    x_vis, pos_embed, cls_token, ids_keep = _inputs(2, 5, 3, 8, torch.float32)
    fn = lambda x, p, c, i: kernel.encoder_input(x, p, c, i).square().sum()  # noqa: E731
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    loss = compiled(x_vis, pos_embed, cls_token, ids_keep)
    grads = torch.autograd.grad(loss, (x_vis, pos_embed, cls_token))
    loss_ref = fn(x_vis, pos_embed, cls_token, ids_keep)
    grads_ref = torch.autograd.grad(loss_ref, (x_vis, pos_embed, cls_token))
    assert_close(loss, loss_ref)
    for g, rg in zip(grads, grads_ref):
        assert_close(g, rg)


@pytest.mark.parametrize(
    "change, err, name",
    [
        (lambda a: {**a, "ids_keep": a["ids_keep"].float()}, TypeError, "ids_keep"),
        (lambda a: {**a, "ids_keep": a["ids_keep"] + 100}, ValueError, "ids_keep"),
        (lambda a: {**a, "ids_keep": a["ids_keep"][:, :2]}, ValueError, "ids_keep"),
        (lambda a: {**a, "x_vis": a["x_vis"][0]}, ValueError, "x_vis"),
        (lambda a: {**a, "x_vis": a["x_vis"].double()}, TypeError, "x_vis"),
        (lambda a: {**a, "pos_embed": a["pos_embed"][:, :, :4]}, ValueError, "pos_embed"),
        (lambda a: {**a, "cls_token": a["cls_token"].expand(1, 2, -1)}, ValueError, "cls_token"),
        (lambda a: {**a, "x_vis": a["x_vis"][:0]}, ValueError, "x_vis"),
    ],
)
def test_bad_input(change, err, name):
    x_vis, pos_embed, cls_token, ids_keep = _inputs(2, 5, 3, 8, torch.float32)
    args = change(dict(x_vis=x_vis, pos_embed=pos_embed, cls_token=cls_token, ids_keep=ids_keep))
    with pytest.raises(err, match=rf"^{name}\b"):
        ops.encoder_input(**args, backend="triton")
