"""Masked MSE loss with the target patchified (and norm-pix normalised) inside the kernel.

Two forms (``fastmae.ops.masked_mse_loss`` picks one and validates the inputs):

    full         pred [N, L, P], mask [N, L] weights:   loss = sum(mask * e) / sum(mask)
    masked-only  pred [N, M, P], ids_masked [N, M]:     loss = sum(e) / (N * M)

with ``e[r] = mean_j (pred[r, j] - target[r, j])^2`` per patch row ``r`` and the target patch read
straight from ``imgs [N, C, H, W]``: element ``j = (pi * p + qi) * C + c`` of patch ``(hi, wi)`` is
pixel ``imgs[n, c, hi * p + pi, wi * p + qi]`` (the official patchify order, channel fastest). With
``norm_pix_loss`` the target is ``(t - mean(t)) / sqrt(var(t) + 1e-6)``, ``var`` unbiased over the
patch. A zero (or negative) denominator is replaced by 1, as ``masked_mse_loss_ref`` does, so "no
patch masked" gives 0 and a NaN anywhere in the counted inputs still gives NaN.

Kernels, top to bottom:
    _masked_mse_loss_kernel      one program per BLOCK_R rows: partial sum(w * e) and sum(w) -> PARTIAL
    _masked_mse_loss_sum_kernel  one program: fixed-order sum of the partials -> loss, 1 / den
    _masked_mse_loss_bwd_kernel  one program per BLOCK_R rows: grad_pred, the target recomputed
No atomics anywhere: the result is bitwise reproducible. The target is never written to memory.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..reference import NORM_PIX_EPS
from ._common import empty, next_power_of_2

# Elements of a [BLOCK_R, BLOCK_P] tile (4 rows at P = 768): 32 per thread at 4 warps. Every thread
# then holds 8 consecutive columns of 4 rows, so the per-column patchify index arithmetic is paid
# once per 4 rows (at 8 warps it was once per 2 rows: ~20% more instructions per byte), and the fp32
# copies of pred and the target stay in registers (64 at sm_90, no spills) for the norm-pix statistics.
_TILE = 4096
_NUM_WARPS = 4
# Partials summed per step by the single-program final reduction.
_BLOCK_G = 2048


# --------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _load_rows(
    PRED,  # pointer to pred [NR, P]
    IMGS,  # pointer to imgs [N, C, H, W]
    MASK,  # pointer to the mask weights [NR] (read only when HAS_MASK)
    IDS,  # pointer to ids_masked [NR] (read only when HAS_IDS)
    pid,  # program id
    NR,  # rows of pred: N * L (full form) or N * M (masked form)
    R,  # rows per image: L or M
    NUM_PATCHES,  # patches per image L (ids are clamped to [0, L))
    H,  # image height in pixels
    W,  # image width in pixels
    GW,  # patches per image row, W // PATCH
    PATCH: tl.constexpr,  # patch side p
    C: tl.constexpr,  # channels
    NORM_PIX: tl.constexpr,  # normalise the target per patch
    HAS_MASK: tl.constexpr,  # full form: weights from MASK; masked form: weight 1
    HAS_IDS: tl.constexpr,  # masked form: row r is patch IDS[r] of image r // R
    EPS: tl.constexpr,  # norm-pix epsilon
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_P: tl.constexpr,  # power of two >= P
):
    """fp32 ``pred`` and ``target`` tiles [BLOCK_R, BLOCK_P] (0 outside), the row weights, pred offsets."""
    P = PATCH * PATCH * C  # constexpr arithmetic stays constexpr
    # Row and patch arithmetic in int32 (NR < 2^31 and C * H * W < 2^31, asserted by the launcher;
    # 64-bit division costs ~5x more), offsets in int64 (N * L * P and N * C * H * W may pass 2^31).
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    row_ok = rows < NR
    n = rows // R  # image
    if HAS_IDS:
        patch = tl.load(IDS + rows, mask=row_ok, other=0)
        patch = tl.minimum(tl.maximum(patch, 0), NUM_PATCHES - 1).to(tl.int32)  # never outside the image
    else:
        patch = rows - n * R
    hi = patch // GW  # patch row in the grid
    wi = patch - hi * GW  # patch column in the grid
    # top-left pixel of each patch, channel 0
    img_row = n.to(tl.int64) * C * H * W + (hi * PATCH * W + wi * PATCH)  # [BLOCK_R] int64

    # column j of a patch row = (pi, qi, c) with c fastest: pixel (c, pi, qi) of the patch
    j = tl.arange(0, BLOCK_P)
    col_ok = j < P
    pi = j // (PATCH * C)
    qi = (j // C) % PATCH
    c = j % C
    img_col = c * (H * W) + pi * W + qi  # [BLOCK_P], within one image: int32

    io = row_ok[:, None] & col_ok[None, :]
    pred_off = rows.to(tl.int64)[:, None] * P + j[None, :]  # contiguous along j: 16-byte loads/stores
    x = tl.load(PRED + pred_off, mask=io, other=0.0).to(tl.float32)
    # p contiguous pixels per (channel, patch row), interleaved by channel: a coalesced gather
    t = tl.load(IMGS + (img_row[:, None] + img_col[None, :]), mask=io, other=0.0).to(tl.float32)
    if NORM_PIX:
        # target = (t - mean) / sqrt(var + eps), var = sum((t - mean)^2) / (P - 1)  (unbiased)
        mean = tl.sum(t, axis=1) / P  # [BLOCK_R]
        d = tl.where(io, t - mean[:, None], 0.0)
        var = tl.sum(d * d, axis=1) / (P - 1)
        rstd = 1.0 / tl.sqrt(var + EPS)  # one division per row, a multiply per element
        t = d * rstd[:, None]
    if HAS_MASK:
        w = tl.load(MASK + rows, mask=row_ok, other=0.0).to(tl.float32)  # [BLOCK_R]
    else:
        w = tl.where(row_ok, 1.0, 0.0)
    return x, t, w, row_ok, pred_off, io


@triton.jit
def _masked_mse_loss_kernel(
    PRED,  # pointer to pred [NR, P], any float dtype
    IMGS,  # pointer to imgs [N, C, H, W], any float dtype
    MASK,  # pointer to the mask weights [N * L] (full form; a dummy otherwise)
    IDS,  # pointer to ids_masked [N * M], int32 or int64 (masked form; a dummy otherwise)
    PARTIAL,  # pointer to float32 [2, G]: [0, pid] = sum(w * e), [1, pid] = sum(w) over this program's rows
    NR,  # rows of pred: N * L or N * M
    R,  # rows per image: L or M
    NUM_PATCHES,  # patches per image L
    H,  # image height in pixels
    W,  # image width in pixels
    GW,  # patches per image row, W // PATCH
    G,  # number of programs (row stride of PARTIAL)
    PATCH: tl.constexpr,  # patch side p
    C: tl.constexpr,  # channels
    NORM_PIX: tl.constexpr,  # normalise the target per patch
    HAS_MASK: tl.constexpr,  # full form
    HAS_IDS: tl.constexpr,  # masked form
    EPS: tl.constexpr,  # norm-pix epsilon
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_P: tl.constexpr,  # power of two >= P
):
    P = PATCH * PATCH * C  # constexpr arithmetic stays constexpr
    pid = tl.program_id(0)
    x, t, w, row_ok, pred_off, io = _load_rows(
        PRED, IMGS, MASK, IDS, pid, NR, R, NUM_PATCHES, H, W, GW,
        PATCH, C, NORM_PIX, HAS_MASK, HAS_IDS, EPS, BLOCK_R, BLOCK_P,
    )
    diff = tl.where(io, x - t, 0.0)
    e = tl.sum(diff * diff, axis=1) / P  # [BLOCK_R] per-patch mean squared error
    # w * e, not "skip w == 0": a NaN in an unweighted patch still shows, as in the reference
    tl.store(PARTIAL + pid, tl.sum(w * e, axis=0))
    tl.store(PARTIAL + G + pid, tl.sum(w, axis=0))


@triton.jit
def _masked_mse_loss_sum_kernel(
    PARTIAL,  # pointer to float32 [2, G] from _masked_mse_loss_kernel
    LOSS,  # pointer to the float32 scalar loss (output)
    INV_DEN,  # pointer to the float32 scalar 1 / den (output, saved for the backward)
    G,  # number of partials per row
    DEN_ROWS,  # float: the denominator N * M of the masked form (unused when HAS_MASK)
    HAS_MASK: tl.constexpr,  # full form: den = sum of PARTIAL[1]
    BLOCK_G: tl.constexpr,  # partials per step
):
    # One program, fixed order: BLOCK_G running sums, then one tree sum -> deterministic.
    offs = tl.arange(0, BLOCK_G)
    num = tl.zeros([BLOCK_G], dtype=tl.float32)
    den = tl.zeros([BLOCK_G], dtype=tl.float32)
    for start in range(0, G, BLOCK_G):
        ok = start + offs < G
        num += tl.load(PARTIAL + start + offs, mask=ok, other=0.0)
        if HAS_MASK:
            den += tl.load(PARTIAL + G + start + offs, mask=ok, other=0.0)
    total = tl.sum(num, axis=0)
    if HAS_MASK:
        d = tl.sum(den, axis=0)
    else:
        d = tl.sum(den, axis=0) + DEN_ROWS
    # den <= 0 (nothing masked) or NaN -> 1, as masked_mse_loss_ref: the loss is then 0 (or NaN)
    safe = tl.where(d > 0, d, 1.0)
    tl.store(LOSS, total / safe)
    tl.store(INV_DEN, 1.0 / safe)


@triton.jit
def _masked_mse_loss_bwd_kernel(
    GRAD_LOSS,  # pointer to the upstream gradient of the scalar loss
    INV_DEN,  # pointer to the float32 scalar 1 / den saved by the forward
    PRED,  # pointer to pred [NR, P]
    IMGS,  # pointer to imgs [N, C, H, W]
    MASK,  # pointer to the mask weights [N * L] (full form; a dummy otherwise)
    IDS,  # pointer to ids_masked [N * M] (masked form; a dummy otherwise)
    GRAD_PRED,  # pointer to grad_pred [NR, P] in pred's dtype (output)
    NR,  # rows of pred: N * L or N * M
    R,  # rows per image: L or M
    NUM_PATCHES,  # patches per image L
    H,  # image height in pixels
    W,  # image width in pixels
    GW,  # patches per image row, W // PATCH
    PATCH: tl.constexpr,  # patch side p
    C: tl.constexpr,  # channels
    NORM_PIX: tl.constexpr,  # normalise the target per patch
    HAS_MASK: tl.constexpr,  # full form
    HAS_IDS: tl.constexpr,  # masked form
    EPS: tl.constexpr,  # norm-pix epsilon
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_P: tl.constexpr,  # power of two >= P
):
    P = PATCH * PATCH * C  # constexpr arithmetic stays constexpr
    pid = tl.program_id(0)
    x, t, w, row_ok, pred_off, io = _load_rows(
        PRED, IMGS, MASK, IDS, pid, NR, R, NUM_PATCHES, H, W, GW,
        PATCH, C, NORM_PIX, HAS_MASK, HAS_IDS, EPS, BLOCK_R, BLOCK_P,
    )
    # d loss / d pred[r, j] = g * w[r] / den * 2 * (pred[r, j] - target[r, j]) / P
    coef = tl.load(GRAD_LOSS).to(tl.float32) * tl.load(INV_DEN) * (2.0 / P)
    grad = (coef * w)[:, None] * (x - t)
    tl.store(GRAD_PRED + pred_off, grad.to(GRAD_PRED.dtype.element_ty), mask=io)


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------


def _blocks(rows: int, pdim: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_P) for ``rows`` patch rows of width ``pdim``."""
    block_p = next_power_of_2(pdim)
    return max(1, min(_TILE // block_p, next_power_of_2(max(rows, 1)))), block_p


def _launch_args(pred, imgs, mask, ids_masked, patch_size: int, norm_pix_loss: bool):
    """What the forward and backward row kernels share: ``(programs, (MASK, IDS), keyword arguments)``."""
    n, c, hh, ww = imgs.shape
    rows = n * pred.shape[1]
    # the kernels keep row numbers and offsets inside one image in int32
    assert rows < 2**31 and c * hh * ww < 2**31, "too many patch rows or pixels per image"
    block_r, block_p = _blocks(rows, pred.shape[2])
    has_ids = ids_masked is not None
    kwargs = dict(
        NR=rows, R=pred.shape[1], NUM_PATCHES=(hh // patch_size) * (ww // patch_size), H=hh, W=ww,
        GW=ww // patch_size, PATCH=patch_size, C=c, NORM_PIX=norm_pix_loss, HAS_MASK=not has_ids,
        HAS_IDS=has_ids, EPS=NORM_PIX_EPS, BLOCK_R=block_r, BLOCK_P=block_p, num_warps=_NUM_WARPS,
    )
    # the absent one of MASK / IDS is a dummy (pred) the kernel never reads
    return triton.cdiv(rows, block_r), ((pred, ids_masked) if has_ids else (mask, pred)), kwargs


def _forward(pred, imgs, mask, ids_masked, patch_size: int, norm_pix_loss: bool):
    """Launch the loss kernels: ``(loss, inv_den)``, float32 scalars on pred's device."""
    programs, mask_ids, kwargs = _launch_args(pred, imgs, mask, ids_masked, patch_size, norm_pix_loss)
    partial = empty((2, max(programs, 1)), torch.float32, pred.device)  # [2, G]
    if programs:
        _masked_mse_loss_kernel[(programs,)](pred, imgs, *mask_ids, partial, G=programs, **kwargs)
    loss = empty((), torch.float32, pred.device)
    inv_den = empty((), torch.float32, pred.device)
    _masked_mse_loss_sum_kernel[(1,)](
        partial, loss, inv_den, programs, float(kwargs["NR"]), HAS_MASK=kwargs["HAS_MASK"],
        BLOCK_G=min(_BLOCK_G, next_power_of_2(max(programs, 16))), num_warps=_NUM_WARPS,
    )
    return loss, inv_den


def _backward(grad_loss, inv_den, pred, imgs, mask, ids_masked, patch_size: int, norm_pix_loss: bool):
    """Launch the backward kernel: ``grad_pred`` shaped and typed like ``pred``."""
    programs, mask_ids, kwargs = _launch_args(pred, imgs, mask, ids_masked, patch_size, norm_pix_loss)
    grad_pred = empty(pred.shape, pred.dtype, pred.device)
    if programs:
        _masked_mse_loss_bwd_kernel[(programs,)](grad_loss, inv_den, pred, imgs, *mask_ids, grad_pred, **kwargs)
    return grad_pred


# --------------------------------------------------------------------------------------------------
# custom ops and autograd
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("fastmae::masked_mse_loss", mutates_args=())
def _masked_mse_loss_op(
    pred: torch.Tensor, imgs: torch.Tensor, mask: Optional[torch.Tensor], ids_masked: Optional[torch.Tensor],
    patch_size: int, norm_pix_loss: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, inv_den)``: the loss and ``1 / den`` (den <= 0 read as 1), float32 scalars."""
    return _forward(pred, imgs, mask, ids_masked, patch_size, norm_pix_loss)


@_masked_mse_loss_op.register_fake
def _(pred, imgs, mask, ids_masked, patch_size, norm_pix_loss):
    return pred.new_empty((), dtype=torch.float32), pred.new_empty((), dtype=torch.float32)


@torch.library.custom_op("fastmae::masked_mse_loss_bwd", mutates_args=())
def _masked_mse_loss_bwd_op(
    grad_loss: torch.Tensor, inv_den: torch.Tensor, pred: torch.Tensor, imgs: torch.Tensor,
    mask: Optional[torch.Tensor], ids_masked: Optional[torch.Tensor], patch_size: int, norm_pix_loss: bool,
) -> torch.Tensor:
    """``grad_pred [N, L or M, P]`` in pred's dtype."""
    return _backward(grad_loss.contiguous(), inv_den, pred, imgs, mask, ids_masked, patch_size, norm_pix_loss)


@_masked_mse_loss_bwd_op.register_fake
def _(grad_loss, inv_den, pred, imgs, mask, ids_masked, patch_size, norm_pix_loss):
    return torch.empty_like(pred)


def _setup_context(ctx, inputs, output):
    pred, imgs, mask, ids_masked, patch_size, norm_pix_loss = inputs
    _, inv_den = output
    ctx.mark_non_differentiable(inv_den)
    ctx.save_for_backward(pred, imgs, mask, ids_masked, inv_den)
    ctx.patch_size, ctx.norm_pix_loss = patch_size, norm_pix_loss


def _backward_rule(ctx, grad_loss, _grad_inv_den):
    # Gradient with respect to pred only; fastmae.ops sends callers who need d/d(imgs) or d/d(mask)
    # to the torch implementation.
    pred, imgs, mask, ids_masked, inv_den = ctx.saved_tensors
    grad_pred = None
    if ctx.needs_input_grad[0]:
        grad_pred = _masked_mse_loss_bwd_op(
            grad_loss, inv_den, pred, imgs, mask, ids_masked, ctx.patch_size, ctx.norm_pix_loss
        )
    return grad_pred, None, None, None, None, None


_masked_mse_loss_op.register_autograd(_backward_rule, setup_context=_setup_context)


def masked_mse_loss(
    pred: torch.Tensor,
    imgs: torch.Tensor,
    mask: Optional[torch.Tensor],
    patch_size: int,
    norm_pix_loss: bool,
    ids_masked: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """MAE's loss with the target patchified inside the kernel; a float32 scalar.

    Args:
        pred: ``[N, L, P]`` with ``mask``, or ``[N, M, P]`` with ``ids_masked``; contiguous.
        imgs: ``[N, C, H, W]``, contiguous, any float dtype (need not match pred's).
        mask: ``[N, L]`` float weights (1 = counts); ignored when ``ids_masked`` is given.
        ids_masked: ``[N, M]`` int32/int64, the patches ``pred`` holds (each counts with weight 1).
    Differentiable with respect to ``pred`` only. Inputs are expected validated by ``fastmae.ops``.
    """
    if ids_masked is not None:
        mask = None
    assert pred.dim() == 3 and imgs.dim() == 4 and pred.is_contiguous() and imgs.is_contiguous()
    loss, _ = _masked_mse_loss_op(pred, imgs, mask, ids_masked, patch_size, norm_pix_loss)
    return loss
