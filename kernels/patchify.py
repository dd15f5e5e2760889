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

from ._common import _inverse_ids_kernel, empty, inverse_ids, next_power_of_2

__all__ = ["patchify", "unpatchify", "patchify_gather"]


# --------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _patchify_kernel(
    IMG,  # pointer to the images [N, C, H, W], contiguous
    IDS,  # pointer to ids [N, K] (int32 or int64), the patch each output row holds; None without HAS_IDS
    OUT,  # pointer to the patch rows [N, K, P], P = PS*PS*C, contiguous
    K,  # rows per image: ids.shape[1], or L without ids
    L,  # patches per image, h*w (ids outside [0, L) give a zero row)
    H,  # image height in pixels, h*PS
    W,  # image width in pixels, w*PS
    C: tl.constexpr,  # channels
    PS: tl.constexpr,  # patch size p
    C_PAD: tl.constexpr,  # next power of two >= C
    PP_PAD: tl.constexpr,  # next power of two >= p*p
    P_PAD: tl.constexpr,  # next power of two >= P
    HAS_IDS: tl.constexpr,  # True: row k holds patch ids[n, k]; False: row k holds patch k
):
    # out[n, k, (r*p + q)*C + c] = img[n, c, i*p + r, j*p + q],  (i, j) = divmod(patch, w)
    P: tl.constexpr = PS * PS * C
    row = tl.program_id(0).to(tl.int64)  # one program per output row n*K + k
    n = row // K
    if HAS_IDS:
        patch = tl.load(IDS + row).to(tl.int64)
        inside = (patch >= 0) & (patch < L)
        patch = tl.where(inside, patch, 0)  # a bad id never addresses memory; its row becomes zeros
        c_end = tl.where(inside, C, 0)  # channels to read (a bound, not `mask & inside`: see below)
    else:
        patch = row - n * K
        c_end = C
    i = patch // (W // PS)
    j = patch - i * (W // PS)
    src = IMG + n * C * H * W + i * PS * W + j * PS  # int64: pixel (0, 0) of the patch, channel 0

    # The patch in image order: tile[c, r*p + q] = img[n, c, i*p + r, j*p + q]; p contiguous values
    # per (c, r), so the load is vectorised along q.
    c = tl.arange(0, C_PAD)[:, None]  # [C_PAD, 1]
    pp = tl.arange(0, PP_PAD)[None, :]  # [1, PP_PAD], pp = r*p + q
    # (The interpreter of triton 3.9 turns `tensor_mask & scalar_mask` into int32 and rejects it as
    # a mask, hence the scalar folded into the bound c_end.)
    tile = tl.load(src + c * (H * W) + (pp // PS) * W + pp % PS, mask=(c < c_end) & (pp < PS * PS), other=0.0)

    # To row order: out[e] = tile[c, pp] with e = pp*C + c, i.e. c = e % C, pp = e // C.
    e = tl.arange(0, P_PAD)
    from_tile = tl.where(e < P, (e % C) * PP_PAD + e // C, 0)
    vals = tl.gather(tl.reshape(tile, [C_PAD * PP_PAD]), from_tile, 0)  # [P_PAD]
    tl.store(OUT + row * P + e, vals, mask=e < P)


@triton.jit
def _unpatchify_kernel(
    X,  # pointer to the patch rows [N, R, P], P = PS*PS*C, contiguous
    INV,  # pointer to int32 [N, L]: the row holding patch l, or -1 (zeros); None without HAS_INV
    OUT,  # pointer to the images [N, C, H, W], contiguous; every pixel is written
    R,  # rows per image in X: L without a map, K with one
    L,  # patches per image, h*w
    H,  # image height in pixels, h*PS
    W,  # image width in pixels, w*PS
    C: tl.constexpr,  # channels
    PS: tl.constexpr,  # patch size p
    C_PAD: tl.constexpr,  # next power of two >= C
    PP_PAD: tl.constexpr,  # next power of two >= p*p
    P_PAD: tl.constexpr,  # next power of two >= P
    HAS_INV: tl.constexpr,  # True: patch l comes from row inv[n, l]; False: from row l
):
    # img[n, c, i*p + r, j*p + q] = x[n, row, (r*p + q)*C + c],  (i, j) = divmod(l, w)
    P: tl.constexpr = PS * PS * C
    pid = tl.program_id(0).to(tl.int64)  # one program per image patch n*L + l
    n = pid // L
    patch = pid - n * L
    if HAS_INV:
        src_row = tl.load(INV + pid).to(tl.int64)
        has_row = (src_row >= 0) & (src_row < R)  # -1: a patch no row holds; it gets zeros
        src_row = tl.where(has_row, src_row, 0)
        p_end = tl.where(has_row, P, 0)  # values to read; a bound rather than `mask & has_row` (see above)
    else:
        src_row = patch
        p_end = P
    e = tl.arange(0, P_PAD)
    vals = tl.load(X + (n * R + src_row) * P + e, mask=e < p_end, other=0.0)  # [P_PAD], row order

    # To image order: tile[c, pp] = vals[pp*C + c].
    c = tl.arange(0, C_PAD)[:, None]  # [C_PAD, 1]
    pp = tl.arange(0, PP_PAD)[None, :]  # [1, PP_PAD], pp = r*p + q
    in_tile = (c < C) & (pp < PS * PS)
    from_row = tl.reshape(tl.where(in_tile, pp * C + c, 0), [C_PAD * PP_PAD])
    tile = tl.reshape(tl.gather(vals, from_row, 0), [C_PAD, PP_PAD])

    i = patch // (W // PS)
    j = patch - i * (W // PS)
    dst = OUT + n * C * H * W + i * PS * W + j * PS  # int64: pixel (0, 0) of the patch, channel 0
    tl.store(dst + c * (H * W) + (pp // PS) * W + pp % PS, tile, mask=in_tile)


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------


def _tile(in_chans: int, patch_size: int) -> dict:
    """Block sizes for one patch: the image-order tile is ``C_PAD x PP_PAD``, the row ``P_PAD``."""
    c_pad, pp_pad = next_power_of_2(in_chans), next_power_of_2(patch_size * patch_size)
    p_pad = next_power_of_2(patch_size * patch_size * in_chans)
    # 8 elements per thread over the image-order tile: 16-byte accesses in bf16/fp16, 2 x 16 in fp32.
    num_warps = min(8, max(1, c_pad * pp_pad // 256))
    return dict(C=in_chans, PS=patch_size, C_PAD=c_pad, PP_PAD=pp_pad, P_PAD=p_pad, num_warps=num_warps)


def _check_sizes(in_chans: int, height: int, width: int, programs: int) -> None:
    # Offsets inside one image are int32 (the per-image base is int64); the grid is 1-D.
    assert in_chans * height * width < 2**31, "one image must hold fewer than 2**31 elements"
    assert programs < 2**31, "N * patches must be below 2**31"


def _patchify_fwd(imgs: torch.Tensor, ids: torch.Tensor | None, patch_size: int) -> torch.Tensor:
    """``imgs [N, C, H, W]`` -> rows ``[N, K, P]`` for ``ids [N, K]``, or all ``L`` patches."""
    n, c, hh, ww = imgs.shape
    p = patch_size
    num_patches = (hh // p) * (ww // p)
    rows = ids.shape[1] if ids is not None else num_patches
    out = empty((n, rows, p * p * c), imgs.dtype, imgs.device)  # [N, K, P]
    if out.numel() == 0:
        return out
    _check_sizes(c, hh, ww, n * rows)
    _patchify_kernel[(n * rows,)](
        imgs, ids, out, rows, num_patches, hh, ww, HAS_IDS=ids is not None, **_tile(c, p)
    )
    return out


def _unpatchify_fwd(
    x: torch.Tensor, inv: torch.Tensor | None, patch_size: int, h: int, w: int, in_chans: int
) -> torch.Tensor:
    """rows ``x [N, R, P]`` -> image ``[N, C, h*p, w*p]``; with ``inv [N, L]``, patch l from row inv[n, l]."""
    n, rows, _ = x.shape
    p = patch_size
    out = empty((n, in_chans, h * p, w * p), x.dtype, x.device)  # [N, C, H, W]
    if out.numel() == 0:
        return out
    _check_sizes(in_chans, h * p, w * p, n * h * w)
    _unpatchify_kernel[(n * h * w,)](
        x, inv, out, rows, h * w, h * p, w * p, HAS_INV=inv is not None, **_tile(in_chans, p)
    )
    return out


# --------------------------------------------------------------------------------------------------
# custom ops and autograd
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("fastmae::patchify", mutates_args=())
def _patchify_op(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    return _patchify_fwd(imgs, None, patch_size)


@_patchify_op.register_fake
def _(imgs, patch_size):
    n, c, hh, ww = imgs.shape
    return imgs.new_empty((n, (hh // patch_size) * (ww // patch_size), patch_size * patch_size * c))


@torch.library.custom_op("fastmae::unpatchify", mutates_args=())
def _unpatchify_op(x: torch.Tensor, patch_size: int, h: int, w: int, in_chans: int) -> torch.Tensor:
    return _unpatchify_fwd(x, None, patch_size, h, w, in_chans)


@_unpatchify_op.register_fake
def _(x, patch_size, h, w, in_chans):
    return x.new_empty((x.shape[0], in_chans, h * patch_size, w * patch_size))


@torch.library.custom_op("fastmae::patchify_gather", mutates_args=())
def _patchify_gather_op(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int) -> torch.Tensor:
    return _patchify_fwd(imgs, ids_keep, patch_size)


@_patchify_gather_op.register_fake
def _(imgs, ids_keep, patch_size):
    n, c, _, _ = imgs.shape
    return imgs.new_empty((n, ids_keep.shape[1], patch_size * patch_size * c))


@torch.library.custom_op("fastmae::patchify_gather_bwd", mutates_args=())
def _patchify_gather_bwd_op(
    grad: torch.Tensor, ids_keep: torch.Tensor, patch_size: int, h: int, w: int
) -> torch.Tensor:
    # grad [N, K, P] -> [N, C, h*p, w*p]: row k to patch ids_keep[n, k], zeros elsewhere
    in_chans = grad.shape[2] // (patch_size * patch_size)
    return _unpatchify_fwd(grad, inverse_ids(ids_keep, h * w), patch_size, h, w, in_chans)


@_patchify_gather_bwd_op.register_fake
def _(grad, ids_keep, patch_size, h, w):
    in_chans = grad.shape[2] // (patch_size * patch_size)
    return grad.new_empty((grad.shape[0], in_chans, h * patch_size, w * patch_size))


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
    imgs, ids_keep, ctx.patch_size = inputs
    ctx.grid = (imgs.shape[2] // ctx.patch_size, imgs.shape[3] // ctx.patch_size)
    ctx.save_for_backward(ids_keep)


def _patchify_gather_backward(ctx, grad):  # grad [N, K, P] -> [N, C, H, W], zeros off ids_keep
    (ids_keep,) = ctx.saved_tensors
    return _patchify_gather_bwd_op(grad.contiguous(), ids_keep, ctx.patch_size, *ctx.grid), None, None


def _patchify_gather_bwd_setup(ctx, inputs, output):
    _, ids_keep, ctx.patch_size, _, _ = inputs
    ctx.save_for_backward(ids_keep)


def _patchify_gather_bwd_backward(ctx, grad):  # grad [N, C, H, W] -> [N, K, P]: the gather again
    (ids_keep,) = ctx.saved_tensors
    return _patchify_gather_op(grad.contiguous(), ids_keep, ctx.patch_size), None, None, None, None


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


def patchify_gather(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``imgs [N, C, H, W]``, ``ids_keep [N, K]`` (distinct per row) -> ``[N, K, p*p*C]``.

    Reads only the named patches. Backward: the rows go back to their patches, zeros elsewhere.
    An id outside ``[0, L)`` gives a zero row (and no gradient); ``fastmae.ops`` rejects it earlier.
    """
    return _patchify_gather_op(imgs, ids_keep, patch_size)
