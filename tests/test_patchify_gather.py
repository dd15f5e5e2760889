"""patchify_gather (kernels/patchify.py) against patchify_gather_ref, forward and backward.

The op copies the visible patches' pixels; its gradient puts the grad rows back and zeros every
other pixel. Both are exact, so results must equal the reference bit for bit in every dtype.
Outputs are poisoned (NaN) before every launch: a masked patch whose zeros the backward kernel
forgets to write fails the comparison.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import helpers
from fastmae import ops
from fastmae.reference import patchify_gather_ref
from helpers import DTYPES, poisoned, requires_kernels

pytestmark = requires_kernels

pk = importlib.import_module("fastmae.kernels.patchify")

# (N, C, H, W, p, K), by regime. Small: the interpreter runs one numpy program per patch.
SHAPES = [
    pytest.param(2, 3, 32, 64, 16, 2, id="p16-mae75"),  # ViT patch 16, P = 768, 2x4 grid, 75% masked
    pytest.param(1, 3, 28, 42, 14, 2, id="p14-P588"),  # patch 14: P = 588, batch 1
    pytest.param(2, 1, 6, 10, 2, 1, id="gray-oddL-K1"),  # C = 1, L = 15 (odd), one visible patch
    pytest.param(2, 4, 8, 12, 4, 6, id="rgba-K=L"),  # C = 4, every patch kept (a permutation)
    pytest.param(1, 3, 9, 12, 3, 5, id="p3-odd"),  # odd p, K not a power of two
]


def _ids(n, num_patches, k, dtype=torch.int64):
    """Distinct ids per row in noise order, as random_masking makes them (a slice: not contiguous)."""
    return torch.rand(n, num_patches).argsort(dim=1)[:, :k].to(dtype)


@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,h,w,p,k", SHAPES)
def test_patchify_gather(n, c, h, w, p, k, dtype, ids_dtype):
    imgs = torch.randn(n, c, h, w).to(dtype).requires_grad_()
    ids = _ids(n, (h // p) * (w // p), k, ids_dtype)
    with poisoned():
        out = ops.patchify_gather(imgs, ids, p, backend="triton")  # [N, K, P]
        grad_out = torch.randn_like(out)
        (grad,) = torch.autograd.grad(out, imgs, grad_out)  # [N, C, H, W], zeros off ids
    ref_imgs = imgs.detach().requires_grad_()
    ref = patchify_gather_ref(ref_imgs, ids.long(), p)
    (ref_grad,) = torch.autograd.grad(ref, ref_imgs, grad_out)
    assert out.shape == (n, k, p * p * c) and out.dtype == dtype
    assert torch.equal(out, ref)
    assert torch.equal(grad, ref_grad)


@pytest.mark.parametrize("n,c,h,w,p,k", SHAPES[:3])
def test_torch_backend(n, c, h, w, p, k):
    imgs = torch.randn(n, c, h, w, requires_grad=True)
    ids = _ids(n, (h // p) * (w // p), k)
    out = ops.patchify_gather(imgs, ids, p, backend="torch")
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, imgs, grad_out)
    ref_imgs = imgs.detach().requires_grad_()
    ref = patchify_gather_ref(ref_imgs, ids, p)
    (ref_grad,) = torch.autograd.grad(ref, ref_imgs, grad_out)
    assert torch.equal(out, ref)
    assert torch.equal(grad, ref_grad)


def test_channels_last_images():
    imgs = torch.randn(2, 3, 8, 12).to(memory_format=torch.channels_last)
    ids = _ids(2, 6, 3)
    with poisoned():
        out = ops.patchify_gather(imgs, ids, 4, backend="triton")
    assert torch.equal(out, patchify_gather_ref(imgs, ids, 4))


def test_out_of_range_ids_never_touch_memory():
    # fastmae.ops rejects these (on CPU; on CUDA only with FASTMAE_CHECK_INDICES=1): called directly,
    # the kernels give a zero row for a bad id and send its gradient nowhere.
    imgs = torch.randn(1, 3, 8, 8, requires_grad=True)  # L = 4 patches of 4x4
    ids = torch.tensor([[2, -1, 4, 1 << 40]])
    with poisoned():
        out = pk.patchify_gather(imgs, ids, 4)
        (grad,) = torch.autograd.grad(out, imgs, torch.ones_like(out))
    want = patchify_gather_ref(imgs.detach(), torch.tensor([[2]]), 4)[:, 0]
    assert torch.equal(out[:, 0], want)
    assert torch.equal(out[:, 1:], torch.zeros_like(out[:, 1:]))
    want_grad = torch.zeros(1, 3, 8, 8)
    want_grad[:, :, 4:, :4] = 1  # patch 2 = grid row 1, column 0
    assert torch.equal(grad, want_grad)


def test_gradcheck_float64():
    # fastmae.ops takes float32/bf16/fp16 images, but the kernels only move values, so they run in
    # float64 too: gradcheck them directly. The backward op is differentiable as well (its
    # gradient is the gather again), hence gradgradcheck. fast_mode keeps interpreter launches few.
    imgs = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)  # 4 patches of 2x2, C = 2
    ids = torch.tensor([[3, 0]])
    fn = lambda t: pk.patchify_gather(t, ids, 2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (imgs,), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (imgs,), fast_mode=True)


def test_compile_fullgraph():
    # Through fastmae.ops (validation and dispatch included) into the custom ops.
    def fn(imgs, ids):
        return ops.patchify_gather(imgs, ids, 4, backend="triton").square().sum()

    imgs = torch.randn(2, 3, 8, 12, requires_grad=True)
    ids = _ids(2, 6, 2).contiguous()
    torch._dynamo.reset()
    loss = torch.compile(fn, fullgraph=True, backend="aot_eager")(imgs, ids)
    (grad,) = torch.autograd.grad(loss, imgs)
    ref_imgs = imgs.detach().requires_grad_()
    ref_loss = patchify_gather_ref(ref_imgs, ids, 4).square().sum()
    (ref_grad,) = torch.autograd.grad(ref_loss, ref_imgs)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize(
    "ids,exc,words",
    [
        (torch.tensor([[0, 6]]), ValueError, "ids_keep values"),  # L = 6: 6 is out of range
        (torch.tensor([[-1, 2]]), ValueError, "ids_keep values"),
        (torch.tensor([[0.0, 1.0]]), TypeError, "ids_keep"),
        (torch.tensor([[0, 1], [2, 3]]), ValueError, "ids_keep must have shape"),  # batch is 1
        (torch.tensor([0, 1]), ValueError, "ids_keep must have 2"),
        (torch.arange(7)[None], ValueError, "ids_keep has 7 indices"),
    ],
)
def test_bad_ids(ids, exc, words):
    with pytest.raises(exc, match=words):
        ops.patchify_gather(torch.randn(1, 3, 8, 12), ids, 4, backend="triton")


def test_bad_images():
    ids = torch.zeros(1, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="imgs"):
        ops.patchify_gather(torch.randn(1, 3, 8, 10), ids, 4, backend="triton")
    with pytest.raises(TypeError, match="imgs"):
        ops.patchify_gather(torch.randn(1, 3, 8, 8, dtype=torch.float64), ids, 4, backend="triton")


@pytest.mark.parametrize("backend", ["triton", "torch", "reference"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_out_dtype_writes_the_gemm_dtype(backend, out_dtype):
    # The model under autocast: float32 images in, rows in the GEMM's dtype out (one rounding of
    # each pixel), the image gradient back in float32.
    imgs = torch.randn(2, 3, 8, 12, requires_grad=True)
    ids = torch.stack([torch.randperm(6)[:4] for _ in range(2)])
    with poisoned():
        rows = ops.patchify_gather(imgs, ids, 4, out_dtype=out_dtype, backend=backend)
        (grad,) = torch.autograd.grad(rows, imgs, torch.ones_like(rows))
    want = patchify_gather_ref(imgs.detach(), ids, 4).to(out_dtype)
    assert rows.dtype == out_dtype
    if backend == "triton" and out_dtype == torch.bfloat16 and helpers.interpreting():
        # Triton's interpreter truncates float32 -> bfloat16 (compiled kernels round to nearest, as
        # torch does): allow that one ulp here, and only here.
        ulp = want.float().abs() * 2.0**-7
        assert ((rows.float() - want.float()).abs() <= ulp).all()
    else:
        assert torch.equal(rows, want)
    assert grad.dtype == torch.float32
    assert torch.equal(grad, torch.autograd.grad(patchify_gather_ref(imgs, ids, 4), imgs,
                                                 torch.ones(2, 4, 48))[0])


def test_out_dtype_refuses_other_types():
    with pytest.raises(TypeError, match="out_dtype"):
        ops.patchify_gather(torch.randn(1, 3, 8, 8), torch.tensor([[0]]), 4, out_dtype=torch.int32)
