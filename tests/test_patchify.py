"""patchify and unpatchify (kernels/patchify.py) against patchify_ref / unpatchify_ref, forward and backward.

Both ops are permutations: the kernel copies values, so results must equal the reference bit for
bit in every dtype (no tolerance; a wrong index or an unwritten element shows up at once). Outputs
are poisoned (NaN) before every launch, so an element the kernel forgets to write fails too.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from fastmae import ops
from fastmae.reference import patchify_gather_ref, patchify_ref, unpatchify_ref
from helpers import DTYPES, poisoned, requires_kernels

pytestmark = requires_kernels

pk = importlib.import_module("fastmae.kernels.patchify")

# (N, C, H, W, p), by regime. Small: the interpreter runs one numpy program per patch.
SHAPES = [
    pytest.param(2, 3, 32, 48, 16, id="p16-rgb-2x3grid"),  # ViT patch 16: P = 768, non-square grid
    pytest.param(1, 3, 28, 42, 14, id="p14-P588"),  # patch 14: P = 588 and p*p = 196, both padded
    pytest.param(1, 1, 6, 10, 2, id="gray-oddL-batch1"),  # C = 1, L = 15 (odd), tiny p, batch 1
    pytest.param(2, 4, 8, 12, 4, id="rgba-p4"),  # C = 4: the channel tile is full
    pytest.param(1, 3, 9, 6, 3, id="p3-odd"),  # odd p: p*p = 9 padded to 16, P = 27 to 32
]


def _grid(h, w, p):
    return h // p, w // p


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,h,w,p", SHAPES)
def test_patchify(n, c, h, w, p, dtype):
    imgs = torch.randn(n, c, h, w).to(dtype).requires_grad_()
    with poisoned():
        out = ops.patchify(imgs, p, backend="triton")  # [N, L, P]
        grad_out = torch.randn_like(out)
        (grad,) = torch.autograd.grad(out, imgs, grad_out)  # unpatchify kernel
    ref_imgs = imgs.detach().requires_grad_()
    ref = patchify_ref(ref_imgs, p)
    (ref_grad,) = torch.autograd.grad(ref, ref_imgs, grad_out)
    assert out.dtype == dtype and out.is_contiguous()
    assert torch.equal(out, ref)
    assert torch.equal(grad, ref_grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,h,w,p", SHAPES)
def test_unpatchify(n, c, h, w, p, dtype):
    grid = _grid(h, w, p)
    x = torch.randn(n, grid[0] * grid[1], p * p * c).to(dtype).requires_grad_()
    with poisoned():
        out = ops.unpatchify(x, p, grid, c, backend="triton")  # [N, C, H, W]
        grad_out = torch.randn_like(out)
        (grad,) = torch.autograd.grad(out, x, grad_out)  # patchify kernel
    ref_x = x.detach().requires_grad_()
    ref = unpatchify_ref(ref_x, p, grid, c)
    (ref_grad,) = torch.autograd.grad(ref, ref_x, grad_out)
    assert out.shape == (n, c, h, w) and out.dtype == dtype
    assert torch.equal(out, ref)
    assert torch.equal(grad, ref_grad)


def test_unpatchify_default_square_grid_and_channels():
    x = torch.randn(2, 9, 4 * 4 * 3)  # 3x3 grid of 4x4 RGB patches, both inferred by fastmae.ops
    with poisoned():
        out = ops.unpatchify(x, 4, backend="triton")
    assert torch.equal(out, unpatchify_ref(x, 4))


def test_non_contiguous_inputs():
    # fastmae.ops makes inputs contiguous: channels-last and sliced images give the same patches.
    base = torch.randn(2, 3, 16, 24)
    for imgs in (base.to(memory_format=torch.channels_last), torch.randn(2, 3, 16, 30)[..., 3:27]):
        with poisoned():
            out = ops.patchify(imgs, 4, backend="triton")
        assert torch.equal(out, patchify_ref(imgs, 4))
    x = torch.randn(2, 48, 6).transpose(1, 2)  # [N, L=6, P=48], not contiguous
    with poisoned():
        out = ops.unpatchify(x, 4, (2, 3), 3, backend="triton")
    assert torch.equal(out, unpatchify_ref(x, 4, (2, 3), 3))


def test_patchify_then_unpatchify_is_identity():
    imgs = torch.randn(1, 3, 32, 16, dtype=torch.bfloat16)
    with poisoned():
        back = ops.unpatchify(ops.patchify(imgs, 16, backend="triton"), 16, (2, 1), 3, backend="triton")
    assert torch.equal(back, imgs)


def test_gradcheck_float64():
    # fastmae.ops sends float64 elsewhere (patchify rejects it, unpatchify uses the reference), but the
    # kernels only move values, so they run in float64 too: gradcheck them directly, twice
    # differentiated. fast_mode (random projections) keeps the interpreter's launch count low.
    imgs = torch.randn(1, 2, 2, 4, dtype=torch.float64, requires_grad=True)  # 2 patches of 2x2, C = 2
    x = torch.randn(1, 2, 8, dtype=torch.float64, requires_grad=True)
    for fn, arg in ((lambda t: pk.patchify(t, 2), imgs), (lambda t: pk.unpatchify(t, 2, 1, 2, 2), x)):
        assert torch.autograd.gradcheck(fn, (arg,), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (arg,), fast_mode=True)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_fullgraph(backend):
    # Through fastmae.ops (validation and dispatch included) into the custom ops.
    def fn(imgs):
        x = ops.patchify(imgs, 4, backend="triton")  # [N, L, P]
        return ops.unpatchify(x * x, 4, (2, 3), 3, backend="triton").sum()

    imgs = torch.randn(2, 3, 8, 12, requires_grad=True)
    torch._dynamo.reset()
    loss = torch.compile(fn, fullgraph=True, backend=backend)(imgs)
    (grad,) = torch.autograd.grad(loss, imgs)
    ref_imgs = imgs.detach().requires_grad_()
    ref_loss = unpatchify_ref(patchify_ref(ref_imgs, 4).square(), 4, (2, 3), 3).sum()
    (ref_grad,) = torch.autograd.grad(ref_loss, ref_imgs)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize(
    "call,exc,words",
    [
        (lambda: ops.patchify(torch.randn(3, 8, 8), 4, backend="triton"), ValueError, "imgs"),
        (lambda: ops.patchify(torch.randn(1, 3, 8, 10), 4, backend="triton"), ValueError, "imgs"),
        (lambda: ops.patchify(torch.ones(1, 3, 8, 8, dtype=torch.int32), 4, backend="triton"), TypeError, "imgs"),
        (lambda: ops.patchify(torch.randn(1, 3, 8, 8), 0, backend="triton"), ValueError, "patch_size"),
        (lambda: ops.patchify(torch.randn(1, 3, 8, 8), 4.0, backend="triton"), TypeError, "patch_size"),
        (lambda: ops.unpatchify(torch.randn(1, 4, 47), 4, backend="triton"), ValueError, "x has 47"),
        (lambda: ops.unpatchify(torch.randn(1, 6, 48), 4, backend="triton"), ValueError, "grid_size"),
        (lambda: ops.unpatchify(torch.randn(1, 6, 48), 4, (2, 2), backend="triton"), ValueError, "grid_size"),
        (lambda: ops.unpatchify(torch.randn(6, 48), 4, backend="triton"), ValueError, "x must have 3"),
    ],
)
def test_bad_input(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


def test_persistent_loop_over_images(monkeypatch):
    # On CUDA a launch has one wave of programs, each looping over a group of images; the interpreter
    # runs one image per program unless told otherwise: two groups for five images here.
    monkeypatch.setattr(pk, "image_groups", lambda images, blocks, programs_per_sm, device: 2)
    imgs = torch.randn(5, 3, 8, 12, requires_grad=True)
    with poisoned():
        out = ops.patchify(imgs, 4, backend="triton")
        (grad,) = torch.autograd.grad(out, imgs, out.detach() * 2)
    assert torch.equal(out, patchify_ref(imgs.detach(), 4)) and torch.equal(grad, imgs.detach() * 2)
    ids = torch.stack([torch.randperm(6)[:3] for _ in range(5)])
    with poisoned():
        rows = ops.patchify_gather(imgs, ids, 4, backend="triton")
    assert torch.equal(rows, patchify_gather_ref(imgs.detach(), ids, 4))


@pytest.mark.parametrize("rows, gather, src, dst, groups, trips", [
    (49, True, 4, 2, 43, 6),  # the model's gather, float32 images -> bf16 rows: 49 blocks an image
    (49, True, 2, 2, 43, 6),  # the CLI's bf16 images
    (49, True, 4, 4, 32, 8),  # float32 -> float32 (40 registers: 12 programs an SM)
    (196, False, 2, 2, 10, 26),  # patchify / unpatchify: 196 blocks an image
])
def test_persistent_grid_is_one_wave_at_the_headline(monkeypatch, rows, gather, src, dst, groups, trips):
    # ViT-B/16, 224 px, batch 256 on an H100's 132 SMs: every program of the grid resident at once
    # (programs <= slots: no late programs running a second round alone), each looping over `trips`
    # or `trips - 1` images. The launchers' own sizing, asked for a CUDA device whose SM count is set.
    from fastmae.kernels._common import _SM_COUNT, image_groups

    tile = pk._tile(3, 16)
    assert tile["PATCHES"] == 1 and tile["num_warps"] == 4  # one patch a program: blocks = rows
    device = torch.device("cuda", 0)
    monkeypatch.setitem(_SM_COUNT, device, 132)
    per_sm = pk.programs_per_sm(tile["num_warps"], src, dst, gather)
    got = image_groups(256, rows, per_sm, device)
    assert got == groups and rows * got <= 132 * per_sm
    assert groups * (trips - 1) < 256 <= groups * trips
