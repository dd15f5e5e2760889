"""Masked MSE loss with the target patchified (and norm-pix normalised) inside the kernel.

Two forms (``fastmae.ops.masked_mse_loss`` picks one and validates the inputs):

    full         pred [N, L, P], mask [N, L] weights:   loss = sum(mask * e) / sum(mask)
    masked-only  pred [N, M, P], ids_masked [N, M]:     loss = sum(e) / (N * M)

with ``e[r] = mean_j (pred[r, j] - target[r, j])^2`` per patch row ``r`` and the target read straight
from ``imgs [N, C, H, W]``: element ``j = (pi * p + qi) * C + c`` of patch ``(hi, wi)`` is pixel
``imgs[n, c, hi * p + pi, wi * p + qi]`` (the official patchify order, channel fastest). With
``norm_pix_loss`` the target is ``(t - mean(t)) / sqrt(var(t) + 1e-6)``, ``var`` unbiased over the
patch. A denominator <= 0 counts as 1, as in ``masked_mse_loss_ref``: "no patch masked" gives 0, and
a NaN in a counted input gives NaN. The gradient: ``grad_pred[r, j] = g * w[r] / den * 2 *
(pred[r, j] - target[r, j]) / P``.

Kernels, top to bottom:
    _masked_mse_loss_kernel      one program per BLOCK_R rows: partial sum(w * e) (and sum(w)) -> PARTIAL
    _masked_mse_loss_sum_kernel  one program: fixed-order sum of the partials -> loss, 1 / den
    _masked_mse_loss_bwd_kernel  one program per BLOCK_R rows: grad_pred, the target recomputed
No atomics: the result is bitwise reproducible. The target is never written to memory. A row
launch reads ``rows * P`` values of pred and of the image and the rows' ids or weights (the
backward also writes ``rows * P`` of grad_pred); ``tools/kernel_specs/masked_mse_loss.py`` has the
byte formulas, ``benchmarks/NOTES.md`` the measured registers, waves and bytes per instruction.

Layout. A row of pred is cut into ``BLOCK_CH`` chunks, each held by one thread: chunk ``(pi, qs)``
is the ``S`` pixels ``qi = qs * S + [0, S)`` of patch row ``pi`` in every channel, that is ``C`` runs
of ``S`` contiguous pixels in the image and ``S * C`` contiguous values of pred. Both are read in
their own order, up to 16 bytes a load (``VI`` / ``VP`` values; for the image the compiler proves
the alignment when the JIT has specialised ``W`` as a multiple of 16), and paired in registers by
``_to_row_order`` (split / join / reshape of dimensions a thread holds entirely: no instruction, no
shared memory; ``tl.gather`` would need the dimension spread over lanes, and no permute interleaves
3 channels).
bf16 is widened from 32-bit words when the tensor starts on a 4-byte boundary (``PRED_WORDS`` /
``IMG_WORDS``, from the address on the host), and read value by value otherwise: a misaligned word
load ends the CUDA context. Per row the mean and the variance are in-thread sums, then a reduction
over the row's lanes (shuffles at p = 16); the forward reduces ``w * sum(diff^2)`` once per program,
the backward stores ``coef * w * diff``. Row numbers and in-image offsets are int32 (the launcher asserts the sizes),
byte offsets int64; ``rows // R`` and ``patch // GW`` are a multiply-high and a shift (``_magic``);
``EVEN`` (the rows fill every program) drops the row mask. Addresses live on a 2-D grid
``[BLOCK_R * BLOCK_CH, V]``, viewed as 3-D only for the sums: on a 3-D grid Triton 3.6 spreads the
lanes over rows instead of chunks, and every per-row sum then crosses warps through shared memory.

Changing the block sizes. ``_blocks`` picks them from these constants; everything else follows.
    _MAX_SPAN   caps S = min(_MAX_SPAN, the largest power of two dividing p). A thread holds the
                S * C values of pred and S * C pixels of each chunk it owns.
    _TILE       BLOCK_R * BLOCK_CH * S; BLOCK_R is at least 1 and at most the rows rounded up.
    NUM_WARPS   (``_common``) each thread owns BLOCK_R * BLOCK_CH / (32 * NUM_WARPS) chunks (p = 16:
                8 rows of 16 chunks, one chunk a thread).
    _BLOCK_G    partials added per step by the final sum.
BLOCK_CH = ``chunks_per_row(p, S)`` and VI, VP = ``values_per_load(bytes per value, S)``
(``_loss_rows.py``) are computed by the same functions in the launcher and in the kernels. Keep the
constants powers of two (``tl.arange``). Then run ``tests/test_masked_mse_loss.py`` (every regime,
interpreted), ``python -m tools.kernel_resources --module masked_mse_loss`` (registers, spills,
waves, bytes per warp-instruction: compare with ``benchmarks/NOTES.md``) and
``tests/test_masked_mse_loss_sass.py`` (16-byte accesses, no shared-memory round trip, no loop).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import NUM_WARPS, empty, fake, launch, next_power_of_2, op, words_aligned
from ._loss_rows import _magic, _pred_offsets, _row_diffs, chunks_per_row, values_per_load

# Block sizes (how to change them: the module docstring).
_MAX_SPAN = 16  # the largest S, pixels per chunk and channel (p = 16: a whole patch row)
_TILE = 2048  # BLOCK_R * BLOCK_CH * S (p = 16: 8 rows of 16 chunks of 16 pixels)
_BLOCK_G = 2048  # partials summed per step by the final reduction


# --------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _masked_mse_loss_kernel(
    PRED,  # pointer to pred [NR, P], any float dtype
    IMGS,  # pointer to imgs [N, C, H, W], any float dtype
    MASK,  # pointer to the mask weights [N * L] (full form; a dummy otherwise)
    IDS,  # pointer to ids_masked [N * M], int32 or int64 (masked form; a dummy otherwise)
    PARTIAL,  # pointer to float32 [2, NUM_PROGRAMS]: [0, pid] = sum(w * e), [1, pid] = sum(w) (full form)
    NR,  # rows of pred: N * L or N * M
    R,  # rows per image: L or M
    R_MAGIC,  # (R_MAGIC, R_SHIFT) = _magic(R): rows // R without a division
    R_SHIFT,
    NUM_PATCHES,  # patches per image L (ids are clamped to [0, L))
    H,  # image height in pixels
    W,  # image width in pixels
    GW,  # patches per image row, W // PATCH
    GW_MAGIC,  # (GW_MAGIC, GW_SHIFT) = _magic(GW)
    GW_SHIFT,
    NUM_PROGRAMS,  # number of programs (row stride of PARTIAL)
    PATCH: tl.constexpr,  # patch side p
    C: tl.constexpr,  # channels
    NORM_PIX: tl.constexpr,  # normalise the target per patch
    HAS_MASK: tl.constexpr,  # full form (weights from MASK); else the masked form (rows are patches IDS)
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_CH: tl.constexpr,  # chunks per row, chunks_per_row(PATCH, S)
    S: tl.constexpr,  # pixels per chunk and channel: a power of two dividing PATCH
    PRED_WORDS: tl.constexpr,  # bf16 pred on a 4-byte boundary: read as 32-bit words
    IMG_WORDS: tl.constexpr,  # bf16 images on a 4-byte boundary: read as 32-bit words
    EVEN: tl.constexpr,  # NR % BLOCK_R == 0: no row to mask
):
    tl.static_assert(BLOCK_CH == chunks_per_row(PATCH, S))
    P: tl.constexpr = PATCH * PATCH * C
    pid = tl.program_id(0)
    diffs, w, io = _row_diffs(
        PRED, IMGS, MASK, IDS, NR, R, R_MAGIC, R_SHIFT, NUM_PATCHES, H, W, GW, GW_MAGIC, GW_SHIFT,
        PATCH, C, NORM_PIX, HAS_MASK, BLOCK_R, BLOCK_CH, S, PRED_WORDS, IMG_WORDS, EVEN,
    )
    sq = diffs[0] * diffs[0]
    for k in tl.static_range(1, len(diffs)):
        sq = tl.fma(diffs[k], diffs[k], sq)
    # sum_r w[r] * e[r] with e[r] = sum_j diff^2 / P, the per-patch mean squared error: each thread
    # weights its part of a row, then ONE reduction over the program (not one per row).
    # w * e, not "skip w == 0": a NaN in an unweighted patch still shows, as in the reference.
    part = tl.sum(sq, axis=2)  # [BLOCK_R, BLOCK_CH], within each thread
    if HAS_MASK:
        part = part * w
    tl.store(PARTIAL + pid, tl.sum(part) / P)
    if HAS_MASK:
        # the sum of the row weights: w holds each row's weight once per chunk; count chunk 0's
        first = tl.arange(0, BLOCK_CH)[None, :] == 0
        tl.store(PARTIAL + NUM_PROGRAMS + pid, tl.sum(tl.where(first, w, 0.0)))  # masked form: den = N * M


@triton.jit
def _masked_mse_loss_sum_kernel(
    PARTIAL,  # pointer to float32 [2, NUM_PARTIALS] from _masked_mse_loss_kernel
    LOSS,  # pointer to the float32 scalar loss (output)
    INV_DEN,  # pointer to the float32 scalar 1 / den (output, saved for the backward)
    NUM_PARTIALS,  # number of partials per row (the forward's programs)
    DEN_ROWS,  # float: the denominator N * M of the masked form (unused when HAS_MASK)
    HAS_MASK: tl.constexpr,  # full form: den = sum of PARTIAL[1]
    BLOCK_G: tl.constexpr,  # partials per step
):
    # One program, fixed order: BLOCK_G running sums, then one tree sum -> deterministic.
    offs = tl.arange(0, BLOCK_G)
    num = tl.zeros([BLOCK_G], dtype=tl.float32)
    den = tl.zeros([BLOCK_G], dtype=tl.float32)
    for start in range(0, NUM_PARTIALS, BLOCK_G):
        ok = start + offs < NUM_PARTIALS
        num += tl.load(PARTIAL + start + offs, mask=ok, other=0.0)
        if HAS_MASK:
            den += tl.load(PARTIAL + NUM_PARTIALS + start + offs, mask=ok, other=0.0)
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
    # the forward's arguments of the same names (commented in _masked_mse_loss_kernel)
    NR, R, R_MAGIC, R_SHIFT, NUM_PATCHES, H, W, GW, GW_MAGIC, GW_SHIFT,
    PATCH: tl.constexpr, C: tl.constexpr, NORM_PIX: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_CH: tl.constexpr, S: tl.constexpr,
    PRED_WORDS: tl.constexpr, IMG_WORDS: tl.constexpr, EVEN: tl.constexpr,
):
    tl.static_assert(BLOCK_CH == chunks_per_row(PATCH, S))
    P: tl.constexpr = PATCH * PATCH * C
    VP: tl.constexpr = values_per_load(PRED.dtype.element_ty.primitive_bitwidth // 8, S)  # as _row_diffs
    pid = tl.program_id(0)
    diffs, w, io = _row_diffs(
        PRED, IMGS, MASK, IDS, NR, R, R_MAGIC, R_SHIFT, NUM_PATCHES, H, W, GW, GW_MAGIC, GW_SHIFT,
        PATCH, C, NORM_PIX, HAS_MASK, BLOCK_R, BLOCK_CH, S, PRED_WORDS, IMG_WORDS, EVEN,
    )
    # d loss / d pred[r, j] = g * w[r] / den * 2 * (pred[r, j] - target[r, j]) / P
    coef = tl.load(GRAD_LOSS).to(tl.float32) * tl.load(INV_DEN) * (2.0 / P)
    scale = (coef * w)[:, :, None]  # [BLOCK_R, BLOCK_CH, 1]
    _, _, pred_base = _pred_offsets(pid, P, BLOCK_R, BLOCK_CH, S, C)  # [BLOCK_R * BLOCK_CH], as _row_diffs
    for k in tl.static_range(len(diffs)):  # row order: the loads of pred, now stores (16 bytes)
        grad = tl.reshape(scale * diffs[k], [BLOCK_R * BLOCK_CH, VP])
        ptrs = GRAD_PRED + pred_base[:, None] + (k * VP + tl.arange(0, VP))[None, :]
        tl.store(ptrs, grad.to(GRAD_PRED.dtype.element_ty), mask=io)


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------


def _blocks(rows: int, patch: int) -> dict:
    """``BLOCK_R``, ``BLOCK_CH`` and ``S`` for ``rows`` patch rows of side ``patch``."""
    span = min(_MAX_SPAN, patch & -patch)  # S: patch & -patch is the largest power of two dividing it
    block_ch = chunks_per_row(patch, span)
    block_r = max(1, min(_TILE // (block_ch * span), next_power_of_2(max(rows, 1))))
    return dict(BLOCK_R=block_r, BLOCK_CH=block_ch, S=span)


def _words(t: torch.Tensor, span: int) -> bool:
    """Whether the kernels read bf16 ``t`` as 32-bit words: only where a load holds several values
    and its data starts on a 4-byte boundary. A bf16 view that starts at an odd element (``x[:, 1:]``
    made contiguous by its offset, a slice of a larger buffer) is read value by value instead: a word
    load from it is a misaligned address, which ends the CUDA context."""
    return t.dtype == torch.bfloat16 and values_per_load(t.element_size(), span) > 1 and words_aligned(t)


def _launch_args(pred, imgs, mask, ids_masked, patch_size: int, norm_pix_loss: bool):
    """What the forward and backward row kernels share: ``(programs, (MASK, IDS), keyword arguments)``.

    Reads shapes and dtypes only (``tools/kernel_specs`` calls it with meta tensors)."""
    n, c, hh, ww = imgs.shape
    rows = n * pred.shape[1]
    blocks = _blocks(rows, patch_size)
    # the kernels keep row numbers and offsets inside one image in int32
    assert rows + blocks["BLOCK_R"] <= 2**31 and c * hh * ww < 2**31, "too many patch rows or pixels per image"
    r_magic, r_shift = _magic(max(pred.shape[1], 1))
    gw_magic, gw_shift = _magic(ww // patch_size)
    has_ids = ids_masked is not None
    kwargs = dict(
        NR=rows, R=pred.shape[1], R_MAGIC=r_magic, R_SHIFT=r_shift,
        NUM_PATCHES=(hh // patch_size) * (ww // patch_size), H=hh, W=ww,
        GW=ww // patch_size, GW_MAGIC=gw_magic, GW_SHIFT=gw_shift,
        PATCH=patch_size, C=c, NORM_PIX=norm_pix_loss, HAS_MASK=not has_ids,
        **blocks, PRED_WORDS=_words(pred, blocks["S"]), IMG_WORDS=_words(imgs, blocks["S"]),
        EVEN=rows % blocks["BLOCK_R"] == 0, num_warps=NUM_WARPS,
    )
    # the absent one of MASK / IDS is a dummy (pred) the kernel never reads
    return triton.cdiv(rows, blocks["BLOCK_R"]), ((pred, ids_masked) if has_ids else (mask, pred)), kwargs


def _sum_args(programs: int, rows: int, has_mask: bool) -> dict:
    """Keyword arguments of the final reduction over ``programs`` partials."""
    return dict(NUM_PARTIALS=programs, DEN_ROWS=float(rows), HAS_MASK=has_mask,
                BLOCK_G=min(_BLOCK_G, next_power_of_2(max(programs, 16))), num_warps=NUM_WARPS)


def launch_forward(pred, imgs, mask, ids_masked, patch_size: int, norm_pix_loss: bool):
    """Launch the loss kernels: ``(loss, inv_den)``, float32 scalars on pred's device."""
    programs, mask_ids, kwargs = _launch_args(pred, imgs, mask, ids_masked, patch_size, norm_pix_loss)
    partial = empty((2, max(programs, 1)), torch.float32, pred.device)  # [2, programs]
    if programs:
        launch(_masked_mse_loss_kernel)[(programs,)](pred, imgs, *mask_ids, partial, NUM_PROGRAMS=programs,
                                                     **kwargs)
    loss = empty((), torch.float32, pred.device)
    inv_den = empty((), torch.float32, pred.device)
    launch(_masked_mse_loss_sum_kernel)[(1,)](partial, loss, inv_den,
                                              **_sum_args(programs, kwargs["NR"], kwargs["HAS_MASK"]))
    return loss, inv_den


def launch_backward(grad_loss, inv_den, pred, imgs, mask, ids_masked, patch_size: int, norm_pix_loss: bool):
    """Launch the backward kernel: ``grad_pred`` shaped and typed like ``pred``."""
    programs, mask_ids, kwargs = _launch_args(pred, imgs, mask, ids_masked, patch_size, norm_pix_loss)
    grad_pred = empty(pred.shape, pred.dtype, pred.device)
    if programs:
        launch(_masked_mse_loss_bwd_kernel)[(programs,)](grad_loss, inv_den, pred, imgs, *mask_ids, grad_pred, **kwargs)
    return grad_pred


# --------------------------------------------------------------------------------------------------
# custom ops and autograd
# --------------------------------------------------------------------------------------------------


@op("fastmae::masked_mse_loss")
def _masked_mse_loss_op(
    pred: torch.Tensor, imgs: torch.Tensor, mask: Optional[torch.Tensor], ids_masked: Optional[torch.Tensor],
    patch_size: int, norm_pix_loss: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, inv_den)``: the loss and ``1 / den`` (den <= 0 read as 1), float32 scalars."""
    return launch_forward(pred, imgs, mask, ids_masked, patch_size, norm_pix_loss)


@fake(_masked_mse_loss_op)
def _(pred, imgs, mask, ids_masked, patch_size, norm_pix_loss):
    return pred.new_empty((), dtype=torch.float32), pred.new_empty((), dtype=torch.float32)


@op("fastmae::masked_mse_loss_bwd")
def _masked_mse_loss_bwd_op(
    grad_loss: torch.Tensor, inv_den: torch.Tensor, pred: torch.Tensor, imgs: torch.Tensor,
    mask: Optional[torch.Tensor], ids_masked: Optional[torch.Tensor], patch_size: int, norm_pix_loss: bool,
) -> torch.Tensor:
    """``grad_pred [N, L or M, P]`` in pred's dtype."""
    return launch_backward(grad_loss.contiguous(), inv_den, pred, imgs, mask, ids_masked, patch_size, norm_pix_loss)


@fake(_masked_mse_loss_bwd_op)
def _(grad_loss, inv_den, pred, imgs, mask, ids_masked, patch_size, norm_pix_loss):
    return torch.empty_like(pred)


def _setup_context(ctx, inputs, output):
    pred, imgs, mask, ids_masked, patch_size, norm_pix_loss = inputs
    _, inv_den = output
    ctx.mark_non_differentiable(inv_den)
    ctx.save_for_backward(pred, imgs, mask, ids_masked, inv_den)
    ctx.patch_size, ctx.norm_pix_loss = patch_size, norm_pix_loss


def _backward(ctx, grad_loss, _grad_inv_den):
    # Gradient with respect to pred only; fastmae.ops sends callers who need d/d(imgs) or d/d(mask)
    # to the torch implementation.
    pred, imgs, mask, ids_masked, inv_den = ctx.saved_tensors
    grad_pred = None
    if ctx.needs_input_grad[0]:
        grad_pred = _masked_mse_loss_bwd_op(
            grad_loss, inv_den, pred, imgs, mask, ids_masked, ctx.patch_size, ctx.norm_pix_loss
        )
    return grad_pred, None, None, None, None, None


_masked_mse_loss_op.register_autograd(_backward, setup_context=_setup_context)


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
