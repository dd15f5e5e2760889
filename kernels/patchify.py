"""Patchify, unpatchify and patchify-gather: images <-> rows of patches, forward and backward.

Layout (official MAE): the image ``[N, C, H, W]`` is cut into ``L = h*w`` patches of ``p x p``, row
major over the ``h x w`` grid; a patch row holds ``P = p*p*C`` values in (row r, column q, channel c)
order, channel fastest::

    rows[n, l, (r*p + q)*C + c] = img[n, c, i*p + r, j*p + q],   (i, j) = divmod(l, w)

Every op here is that one permutation, in one direction or the other, for all patches or for the
patches an index names:

* ``patchify``         image -> rows, all ``L`` patches         (``_patchify_kernel``, no ids)
* ``unpatchify``       rows -> image, all ``L`` patches         (``_unpatchify_kernel``, no map)
* ``patchify_gather``  image -> rows for ``ids_keep[n, k]``      (``_patchify_kernel`` with ids)
* its backward         rows -> image; patches not in ``ids_keep`` get zeros
                       (``inverse_ids`` in ``_common`` builds ``inv[n, l] = k`` or -1, then
                       ``_unpatchify_kernel`` with that map writes every pixel exactly once).
The backward of patchify is unpatchify and vice versa; the backward of the gather's backward is
the gather, so every op is differentiable twice.

How a program moves one patch (``p = 16``, ``C = 3``, bf16): the image side holds, per channel and
patch row, ``p`` contiguous values (32 bytes; 16-byte aligned, which the compiler proves when the JIT
has specialised ``W`` as a multiple of 16, e.g. 224); the row side is ``P`` contiguous values. A
``[C_PAD, PP_PAD]`` tile in image order is loaded with 16-byte loads, flattened, permuted to row
order with ``tl.gather`` (a shuffle through shared memory) and stored with 16-byte stores;
unpatchify does the same backwards. With ``C = 3`` no reshape/transpose can do the interleave (3 is
not a power of two), hence the explicit gather. For ``p = 14`` the image rows are 28 bytes at even
offsets, so image-side accesses are 4 bytes wide (bf16) whatever the code does, and rows of
``P = 588`` start 8-byte aligned.

Bytes (ViT-B/16, 224 px, N = 256, bf16, mask 0.75: C = 3, p = 16, L = 196, K = 49, P = 768; ideal
time at 3.0 TB/s):

* patchify / unpatchify: read + write ``N*C*H*W*2`` each = 2 * 77.07 MB = 154.1 MB (51 us). The
  reference (``einsum`` view + ``reshape`` copy) moves the same 154.1 MB: one copy either way.
* patchify_gather forward: ``2 * N*K*P*2 + N*K*8`` (visible pixels read once, rows written once,
  ids) = 2 * 19.27 MB + 0.10 MB = 38.6 MB (12.9 us). Reference (patchify, then ``torch.gather``):
  154.1 + 38.5 MB (+ the expanded index) ~ 193 MB; the torch backend (index, then permute copy)
  ~ 77 MB.
* patchify_gather backward: grad rows read ``N*K*P*2`` = 19.27 MB + ids 0.10 MB + the inverse map
  (``N*L*4`` filled with -1, ``N*K*4`` scattered, ``N*L*4`` read: 0.45 MB) + the image gradient
  written once ``N*C*H*W*2`` = 77.07 MB: 96.9 MB (32 us); the minimum (no map) is 96.4 MB.
  Zero-filling the image and then scattering would write the visible 19.27 MB twice. The
  reference's autograd (zeros, scatter-add, einsum-backward copy) moves ~290 MB.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import PERSISTENT_WARPS_PER_SM, empty, fake, image_groups, inverse_ids, launch, next_power_of_2, op

__all__ = ["patchify", "unpatchify", "patchify_gather"]


# --------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _patchify_kernel(
    IMG,  # pointer to the images [N, C, H, W], contiguous
    IDS,  # pointer to ids [N, K] (int32 or int64), the patch each output row holds; None without HAS_IDS
    OUT,  # pointer to the patch rows [N, K, P], P = PS*PS*C, contiguous; its dtype may differ from IMG's
    N,  # images
    K,  # rows per image: ids.shape[1], or L without ids (ids outside [0, L) give a zero row)
    C: tl.constexpr,  # channels
    PS: tl.constexpr,  # patch size p
    GH: tl.constexpr,  # patches per image column, h = H / p
    GW: tl.constexpr,  # patches per image row, w = W / p
    C_PAD: tl.constexpr,  # next power of two >= C
    PP_PAD: tl.constexpr,  # next power of two >= p*p
    P_PAD: tl.constexpr,  # next power of two >= P
    PATCHES: tl.constexpr,  # output rows (patches) per program, a power of two
    HAS_IDS: tl.constexpr,  # True: row k holds patch ids[n, k]; False: row k holds patch k
):
    # out[n, k, (r*p + q)*C + c] = img[n, c, i*p + r, j*p + q],  (i, j) = divmod(patch, w)
    # grid = (cdiv(K, PATCHES), G): program (b, g) moves rows [b*PATCHES, (b+1)*PATCHES) of images
    # g, g + G, g + 2G, ... (a persistent loop: what does not depend on the image — the offsets inside
    # a patch, the permutation — is computed once per program). The grid shape is constexpr, so
    # divmod(patch, w) and every offset inside an image fold to multiplies and shifts.
    P: tl.constexpr = PS * PS * C
    W: tl.constexpr = GW * PS
    HW: tl.constexpr = GH * PS * W
    k = tl.program_id(0) * PATCHES + tl.arange(0, PATCHES)  # [PATCHES] rows of an image, int32
    row_ok = k < K
    # The offsets inside a patch, image order: tile[t, c, r*p + q] = img[n, c, i*p + r, j*p + q]; p
    # contiguous values per (c, r), so the loads are vectorised along q.
    c = tl.arange(0, C_PAD)[:, None]  # [C_PAD, 1]
    pp = tl.arange(0, PP_PAD)[None, :]  # [1, PP_PAD], pp = r*p + q
    inner = c * HW + (pp // PS) * W + pp % PS  # [C_PAD, PP_PAD]
    in_tile = (c < C) & (pp < PS * PS)
    # To row order: out[e] = tile[c, pp] with e = pp*C + c, i.e. c = e % C, pp = e // C. One 1-D
    # gather (through shared memory) over the program's tiles; a 2-D gather along axis 1 compiles to
    # warp shuffles, ~4x the instructions. (No clamp needed for the padding e >= P:
    # (C-1)*PP_PAD + (P_PAD-1)//C < C_PAD*PP_PAD for every C, p.)
    e = tl.arange(0, P_PAD)
    t = tl.arange(0, PATCHES)[:, None]  # [PATCHES, 1]
    from_tile = tl.reshape(t * (C_PAD * PP_PAD) + ((e % C) * PP_PAD + e // C)[None, :], [PATCHES * P_PAD])
    io = row_ok[:, None] & (e < P)[None, :]  # [PATCHES, P_PAD]

    for n in range(tl.program_id(1), N, tl.num_programs(1)):
        n64 = tl.cast(n, tl.int64)  # (tl.cast: the interpreter hands the loop a Python int)
        if HAS_IDS:
            patch = tl.load(IDS + n64 * K + k, mask=row_ok, other=-1)  # int64 ids are range-checked before narrowing
            inside = row_ok & (patch >= 0) & (patch < GH * GW)
            patch = tl.where(inside, patch, 0).to(tl.int32)  # a bad id never addresses memory; its row becomes zeros
        else:
            patch = k
            inside = row_ok
        i = patch // GW
        j = patch - i * GW
        base = n64 * (C * HW) + (i * (PS * W) + j * PS)  # [PATCHES] int64: pixel (0, 0) of each patch, channel 0
        tile = tl.load(IMG + (base[:, None, None] + inner[None, :, :]),
                       mask=inside[:, None, None] & in_tile[None, :, :], other=0.0)  # [PATCHES, C_PAD, PP_PAD]
        flat = tl.reshape(tile, [PATCHES * C_PAD * PP_PAD])
        vals = tl.reshape(tl.gather(flat, from_tile, 0), [PATCHES, P_PAD])
        out = OUT + (n64 * K + k)[:, None] * P + e[None, :]
        tl.store(out, vals.to(OUT.dtype.element_ty), mask=io)


@triton.jit
def _unpatchify_kernel(
    X,  # pointer to the patch rows [N, R, P], P = PS*PS*C, contiguous
    INV,  # pointer to int32 [N, L]: the row holding patch l, or -1 (zeros); None without HAS_INV
    OUT,  # pointer to the images [N, C, H, W], contiguous; every pixel is written; its dtype may differ
    N,  # images
    R,  # rows per image in X: L without a map, K with one
    C: tl.constexpr,  # channels
    PS: tl.constexpr,  # patch size p
    GH: tl.constexpr,  # patches per image column, h = H / p
    GW: tl.constexpr,  # patches per image row, w = W / p
    C_PAD: tl.constexpr,  # next power of two >= C
    PP_PAD: tl.constexpr,  # next power of two >= p*p
    P_PAD: tl.constexpr,  # next power of two >= P
    PATCHES: tl.constexpr,  # image patches per program, a power of two (neighbours along a grid row)
    HAS_INV: tl.constexpr,  # True: patch l comes from row inv[n, l]; False: from row l
):
    # img[n, c, i*p + r, j*p + q] = x[n, row, (r*p + q)*C + c],  (i, j) = divmod(l, w)
    # grid = (cdiv(L, PATCHES), G), a persistent loop over images as in _patchify_kernel.
    P: tl.constexpr = PS * PS * C
    L: tl.constexpr = GH * GW
    W: tl.constexpr = GW * PS
    HW: tl.constexpr = GH * PS * W
    patch = tl.program_id(0) * PATCHES + tl.arange(0, PATCHES)  # [PATCHES] image patches l, int32
    ok = patch < L
    e = tl.arange(0, P_PAD)
    # To image order: tile[t, c, pp] = vals[t, pp*C + c] (one 1-D gather, as in _patchify_kernel).
    c = tl.arange(0, C_PAD)[:, None]  # [C_PAD, 1]
    pp = tl.arange(0, PP_PAD)[None, :]  # [1, PP_PAD], pp = r*p + q
    in_tile = (c < C) & (pp < PS * PS)
    t = tl.arange(0, PATCHES)[:, None, None]  # [PATCHES, 1, 1]
    from_row = tl.reshape(t * P_PAD + tl.where(in_tile, pp * C + c, 0)[None, :, :], [PATCHES * C_PAD * PP_PAD])
    i = patch // GW
    j = patch - i * GW
    dst = (i * (PS * W) + j * PS)[:, None, None] + (c * HW + (pp // PS) * W + pp % PS)[None, :, :]  # in an image
    io = ok[:, None, None] & in_tile[None, :, :]

    for n in range(tl.program_id(1), N, tl.num_programs(1)):
        n64 = tl.cast(n, tl.int64)  # (tl.cast: the interpreter hands the loop a Python int)
        if HAS_INV:
            src_row = tl.load(INV + n64 * L + patch, mask=ok, other=-1)
            has_row = ok & (src_row >= 0) & (src_row < R)  # -1: a patch no row holds; it gets zeros
            src_row = tl.where(has_row, src_row, 0)
        else:
            src_row = patch
            has_row = ok
        src = X + (n64 * R + src_row)[:, None] * P + e[None, :]
        vals = tl.load(src, mask=has_row[:, None] & (e < P)[None, :], other=0.0)  # [PATCHES, P_PAD], row order
        tile = tl.reshape(tl.gather(tl.reshape(vals, [PATCHES * P_PAD]), from_row, 0), [PATCHES, C_PAD, PP_PAD])
        tl.store(OUT + n64 * (C * HW) + dst, tile.to(OUT.dtype.element_ty), mask=io)


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------


# Image-order tile elements a program moves (PATCHES patches of C_PAD * PP_PAD, 8 per thread at 4
# warps: one 16-byte access per thread in bf16): more per thread would cut the grid below 4 waves at
# ViT-B/16 (12,544 visible patches), fewer would spend more instructions on the per-patch set-up.
_TILE_ELEMENTS = 1024
_MAX_PATCHES = 16


def _tile(in_chans: int, patch_size: int) -> dict:
    """Block sizes: ``PATCHES`` patches per program, each an image-order tile of ``C_PAD x PP_PAD``
    and a row of ``P_PAD``; 8 elements per thread (16 bytes in bf16/fp16, 2 x 16 in fp32)."""
    c_pad, pp_pad = next_power_of_2(in_chans), next_power_of_2(patch_size * patch_size)
    p_pad = next_power_of_2(patch_size * patch_size * in_chans)
    patches = max(1, min(_MAX_PATCHES, _TILE_ELEMENTS // (c_pad * pp_pad)))
    num_warps = min(8, max(1, patches * c_pad * pp_pad // 256))
    return dict(C=in_chans, PS=patch_size, C_PAD=c_pad, PP_PAD=pp_pad, P_PAD=p_pad, PATCHES=patches,
                num_warps=num_warps)


def programs_per_sm(num_warps: int, src_size: int, dst_size: int, gather: bool) -> int:
    """Resident programs per SM of a persistent launch (``*_size``: bytes per value read / written).

    64 warps an SM at <= 32 registers a thread; the float32 -> float32 gather compiles to 40 under
    Triton 3.9 (32 under 3.6), where 65,536 registers hold 12 programs of 4 warps."""
    if gather and src_size == 4 and dst_size == 4:
        return (65536 // (40 * 32)) // num_warps
    return PERSISTENT_WARPS_PER_SM // num_warps


def _check_sizes(in_chans: int, height: int, width: int, blocks: int) -> None:
    # Offsets inside one image are int32 (the per-image base is int64); the patch blocks of one image
    # are grid axis 0.
    assert in_chans * height * width < 2**31, "one image must hold fewer than 2**31 elements"
    assert blocks < 2**31, "too many patches per image"


def _patchify_fwd(imgs: torch.Tensor, ids: torch.Tensor | None, patch_size: int,
                  out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``imgs [N, C, H, W]`` -> rows ``[N, K, P]`` in ``out_dtype`` (default imgs') for ``ids [N, K]``, or all ``L``."""
    n, c, hh, ww = imgs.shape
    p = patch_size
    num_patches = (hh // p) * (ww // p)
    rows = ids.shape[1] if ids is not None else num_patches
    out = empty((n, rows, p * p * c), out_dtype or imgs.dtype, imgs.device)  # [N, K, P]
    if out.numel() == 0:
        return out
    tile = _tile(c, p)
    blocks = triton.cdiv(rows, tile["PATCHES"])
    _check_sizes(c, hh, ww, blocks)
    per_sm = programs_per_sm(tile["num_warps"], imgs.element_size(), out.element_size(), ids is not None)
    launch(_patchify_kernel)[(blocks, image_groups(n, blocks, per_sm, imgs.device))](
        imgs, ids, out, n, rows, GH=hh // p, GW=ww // p, HAS_IDS=ids is not None, **tile
    )
    return out


def _unpatchify_fwd(
    x: torch.Tensor, inv: torch.Tensor | None, patch_size: int, h: int, w: int, in_chans: int,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """rows ``x [N, R, P]`` -> image ``[N, C, h*p, w*p]`` in ``out_dtype`` (default x's); with
    ``inv [N, L]``, patch l from row inv[n, l]."""
    n, rows, _ = x.shape
    p = patch_size
    out = empty((n, in_chans, h * p, w * p), out_dtype or x.dtype, x.device)  # [N, C, H, W]
    if out.numel() == 0:
        return out
    tile = _tile(in_chans, p)
    blocks = triton.cdiv(h * w, tile["PATCHES"])
    _check_sizes(in_chans, h * p, w * p, blocks)
    per_sm = programs_per_sm(tile["num_warps"], x.element_size(), out.element_size(), False)
    launch(_unpatchify_kernel)[(blocks, image_groups(n, blocks, per_sm, x.device))](
        x, inv, out, n, rows, GH=h, GW=w, HAS_INV=inv is not None, **tile
    )
    return out


# --------------------------------------------------------------------------------------------------
# custom ops and autograd
# --------------------------------------------------------------------------------------------------


@op("fastmae::patchify")
def _patchify_op(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    return _patchify_fwd(imgs, None, patch_size)


@fake(_patchify_op)
def _(imgs, patch_size):
    n, c, hh, ww = imgs.shape
    return imgs.new_empty((n, (hh // patch_size) * (ww // patch_size), patch_size * patch_size * c))


@op("fastmae::unpatchify")
def _unpatchify_op(x: torch.Tensor, patch_size: int, h: int, w: int, in_chans: int) -> torch.Tensor:
    return _unpatchify_fwd(x, None, patch_size, h, w, in_chans)


@fake(_unpatchify_op)
def _(x, patch_size, h, w, in_chans):
    return x.new_empty((x.shape[0], in_chans, h * patch_size, w * patch_size))


@op("fastmae::patchify_gather")
def _patchify_gather_op(
    imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int, out_dtype: torch.dtype
) -> torch.Tensor:
    return _patchify_fwd(imgs, ids_keep, patch_size, out_dtype)


@fake(_patchify_gather_op)
def _(imgs, ids_keep, patch_size, out_dtype):
    n, c, _, _ = imgs.shape
    return imgs.new_empty((n, ids_keep.shape[1], patch_size * patch_size * c), dtype=out_dtype)


@op("fastmae::patchify_gather_bwd")
def _patchify_gather_bwd_op(
    grad: torch.Tensor, ids_keep: torch.Tensor, patch_size: int, h: int, w: int, imgs_dtype: torch.dtype
) -> torch.Tensor:
    # grad [N, K, P] -> [N, C, h*p, w*p] in the images' dtype: row k to patch ids_keep[n, k], zeros elsewhere
    in_chans = grad.shape[2] // (patch_size * patch_size)
    return _unpatchify_fwd(grad, inverse_ids(ids_keep, h * w), patch_size, h, w, in_chans, imgs_dtype)


@fake(_patchify_gather_bwd_op)
def _(grad, ids_keep, patch_size, h, w, imgs_dtype):
    in_chans = grad.shape[2] // (patch_size * patch_size)
    return grad.new_empty((grad.shape[0], in_chans, h * patch_size, w * patch_size), dtype=imgs_dtype)


def _patchify_setup(ctx, inputs, output):
    imgs, ctx.patch_size = inputs
    ctx.grid = (imgs.shape[2] // ctx.patch_size, imgs.shape[3] // ctx.patch_size)
    ctx.in_chans = imgs.shape[1]


def _patchify_backward(ctx, grad):  # grad [N, L, P] -> [N, C, H, W]
    return _unpatchify_op(grad.contiguous(), ctx.patch_size, *ctx.grid, ctx.in_chans), None


def _unpatchify_setup(ctx, inputs, output):
    _, ctx.patch_size, _, _, _ = inputs


def _unpatchify_backward(ctx, grad):  # grad [N, C, H, W] -> [N, L, P]
    return _patchify_op(grad.contiguous(), ctx.patch_size), None, None, None, None


def _patchify_gather_setup(ctx, inputs, output):
    imgs, ids_keep, ctx.patch_size, _ = inputs
    ctx.grid = (imgs.shape[2] // ctx.patch_size, imgs.shape[3] // ctx.patch_size)
    ctx.imgs_dtype = imgs.dtype
    ctx.save_for_backward(ids_keep)


def _patchify_gather_backward(ctx, grad):  # grad [N, K, P] -> [N, C, H, W], zeros off ids_keep
    (ids_keep,) = ctx.saved_tensors
    grad_imgs = _patchify_gather_bwd_op(grad.contiguous(), ids_keep, ctx.patch_size, *ctx.grid, ctx.imgs_dtype)
    return grad_imgs, None, None, None


def _patchify_gather_bwd_setup(ctx, inputs, output):
    grad, ids_keep, ctx.patch_size, _, _, _ = inputs
    ctx.grad_dtype = grad.dtype
    ctx.save_for_backward(ids_keep)


def _patchify_gather_bwd_backward(ctx, grad):  # grad [N, C, H, W] -> [N, K, P]: the gather again
    (ids_keep,) = ctx.saved_tensors
    return _patchify_gather_op(grad.contiguous(), ids_keep, ctx.patch_size, ctx.grad_dtype), None, None, None, None, None


_patchify_op.register_autograd(_patchify_backward, setup_context=_patchify_setup)
_unpatchify_op.register_autograd(_unpatchify_backward, setup_context=_unpatchify_setup)
_patchify_gather_op.register_autograd(_patchify_gather_backward, setup_context=_patchify_gather_setup)
_patchify_gather_bwd_op.register_autograd(_patchify_gather_bwd_backward, setup_context=_patchify_gather_bwd_setup)


# --------------------------------------------------------------------------------------------------
# exported functions (called by fastmae.ops after validation; inputs contiguous)
# --------------------------------------------------------------------------------------------------


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``imgs [N, C, H, W]`` -> ``[N, L, p*p*C]`` (official order). Backward: unpatchify."""
    return _patchify_op(imgs, patch_size)


def unpatchify(x: torch.Tensor, patch_size: int, h: int, w: int, in_chans: int) -> torch.Tensor:
    """``x [N, h*w, p*p*C]`` -> ``[N, C, h*p, w*p]``. Backward: patchify."""
    return _unpatchify_op(x, patch_size, h, w, in_chans)


def patchify_gather(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int,
                    out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``imgs [N, C, H, W]``, ``ids_keep [N, K]`` (distinct per row) -> ``[N, K, p*p*C]`` in ``out_dtype``.

    Reads only the named patches and writes them in ``out_dtype`` (default: the images'), e.g. the
    autocast dtype of the patch-embed GEMM that follows, so no cast kernel runs in between.
    Backward: the rows go back to their patches in the images' dtype, zeros elsewhere. An id outside
    ``[0, L)`` gives a zero row (and no gradient); ``fastmae.ops`` rejects it earlier.
    """
    return _patchify_gather_op(imgs, ids_keep, patch_size, out_dtype or imgs.dtype)
