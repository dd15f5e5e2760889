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
    _masked_mse_loss_kernel      one program per BLOCK_R rows: partial sum(w * e) (and sum(w)) -> PARTIAL
    _masked_mse_loss_sum_kernel  one program: fixed-order sum of the partials -> loss, 1 / den
    _masked_mse_loss_bwd_kernel  one program per BLOCK_R rows: grad_pred, the target recomputed
No atomics anywhere: the result is bitwise reproducible. The target is never written to memory.

Layout (ViT-B/16: p = 16, C = 3, P = 768). A thread owns one *chunk* of one row: ``S = 16``
adjacent pixels of one patch row (here the whole patch row) in every channel. In the image those
are ``C`` runs of 16 contiguous pixels, read in image order with 16-byte loads (``VI`` = 8 bf16 or
4 float32 pixels a load; the compiler proves the alignment when the JIT has specialised ``W`` as a
multiple of 16); in pred the chunk is ``S * C = 48`` contiguous values, also 16-byte loads (``VP``
values a load) and, in the backward, 16-byte stores. Pairing pred's value ``m = qi * C + c`` of the
chunk with pixel ``(c, qi)`` is then a permutation inside the thread, which ``_to_row_order``
writes as split / join / reshape of dimensions the thread holds entirely: a renaming of
registers, no instruction and no shared memory. (``tl.gather``, as ``patchify`` uses, needs the
gathered dimension spread over lanes: measured on a 4-row tile it compiled to 96 ``SHFL.IDX`` plus
a shared-memory conversion, 128 registers, under 3.9, and 24 ``STS.U16`` + 24 ``LDS.64`` under 3.6;
no reshape or permute can interleave 3 channels, 3 not being a power of two.) bf16 values are
widened from 32-bit words (``word << 16``, ``word & 0xffff0000``: one instruction a value, where
the compiler's conversion spends two on every odd one).

What a program does: ``BLOCK_R = 8`` rows at 4 warps, 16 lanes per row (``BLOCK_CH = 16`` chunks).
Per row it sums the target (norm-pix mean) and the centred squares (variance), each an in-thread
sum and 4 butterfly shuffles; the forward then folds each thread's ``w * sum(diff^2)`` into ONE
reduction over the program (one value per warp crosses shared memory), the backward stores
``coef * w * diff``. Row numbers and in-image offsets are int32 (``_validate`` caps ``N * L`` and
``C * H * W`` below 2^31), byte offsets int64; ``rows // R`` and ``patch // (W / p)`` are a
multiply-high and a shift (``_magic``), not a ~35-instruction division; when the rows fill every
program (``EVEN``, true at the headline shape) nothing is masked, so loads need no zero-fill. The
address grid is 2-D ``[BLOCK_R * BLOCK_CH, V]`` and viewed as 3-D only for the sums: on a 3-D grid
Triton 3.6 spreads the lanes over rows instead of chunks (a tie in its coalescing order), and every
per-row sum then crossed warps through shared memory.

Bytes at ViT-B/16, 224 px, N = 256, mask 0.75 (M = 147 rows per image, L = 196), each input read
once and each output written once (``tools/kernel_specs/masked_mse_loss.py`` has the formulas):

    launch               pred bf16, imgs fp32 (bf16 autocast)   bf16 throughout
    forward, masked      173.7 MB                               115.9 MB
    backward, masked     231.5 MB                               173.7 MB
    forward, full        231.5 MB                               154.4 MB
    backward, full       308.5 MB                               231.4 MB

Measured from the compiled code (sm_90, ``python tests/test_masked_mse_loss_sass.py``): registers,
waves on 132 SMs (resident programs from registers, shared memory, warps) and DRAM bytes per
executed warp-instruction (bytes / (programs * 4 warps * SASS instructions); straight-line code):

    spec (4704 programs masked, 6272 full)   Triton 3.9               Triton 3.6
    fwd masked, bf16 pred + fp32 imgs        79 regs, 5.9 w, 19.9 B   85 regs, 7.1 w, 19.6 B
    bwd masked, bf16 pred + fp32 imgs        80 regs, 5.9 w, 26.5 B   72 regs, 5.1 w, 26.5 B
    fwd masked, bf16                         84 regs, 7.1 w, 12.2 B   91 regs, 7.1 w, 12.1 B
    bwd masked, bf16                         72 regs, 5.1 w, 18.3 B   79 regs, 5.9 w, 18.3 B
    fwd full, bf16                           85 regs, 9.5 w, 11.6 B   94 regs, 9.5 w, 11.4 B
    fwd masked, fp32                         69 regs, 5.1 w, 29.8 B   76 regs, 5.9 w, 29.3 B

(Before: 4 rows of a [4, 1024] row-order tile a program, the image read with 24-32 scalar 2-byte
gathers a thread: 2.9 B per warp-instruction forward under 3.9, 3.2 under 3.6, which also sent
pred through an 8 KB shared-memory conversion.) Why these sizes: ``S = 8`` (32 lanes a row, 8 rows) costs 17 %
more instructions a row (10.4 B); 16 rows a program at 4 warps (two rows a thread) reaches 13 B but
at 132-167 registers; 16 rows at 8 warps measures the same as 8 at 4.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..reference import NORM_PIX_EPS
from ._common import empty, next_power_of_2

# Block sizes (why these: see the module docstring). A thread holds one chunk of one row: S pixels
# of a patch row in every channel, S * C values of pred.
_MAX_SPAN = 16  # S: pixels per chunk and channel (p = 16: a whole patch row, 16 lanes per row)
_TILE = 2048  # BLOCK_R * BLOCK_CH * S, pixels of one channel per program: 8 rows at p = 16
_NUM_WARPS = 4
# Partials summed per step by the single-program final reduction.
_BLOCK_G = 2048


# --------------------------------------------------------------------------------------------------
# in-register permutation: image order -> row order inside a thread's chunk
# --------------------------------------------------------------------------------------------------


@triton.jit
def _halves(x):
    """``x [R, N, K]`` -> ``(x[..., 0::2], x[..., 1::2])``, each ``[R, N, K // 2]``."""
    return tl.split(tl.reshape(x, [x.shape[0], x.shape[1], x.shape[2] // 2, 2]))


@triton.jit
def _interleave(a, b):
    """``a, b [R, N, K]`` -> ``[R, N, 2K]`` with ``out[..., 2i] = a[..., i]``, ``out[..., 2i + 1] = b[..., i]``."""
    ab = tl.join(a, b)  # [R, N, K, 2]
    return tl.reshape(ab, [ab.shape[0], ab.shape[1], ab.shape[2] * 2])


@triton.jit
def _unpack(x, V: tl.constexpr):
    """``x [R, N, V]`` -> a tuple of ``V`` tensors ``[R, N, 1]``, slot ``v`` holding ``x[..., v]`` (V <= 8)."""
    tl.static_assert(V == 1 or V == 2 or V == 4 or V == 8)
    if V == 1:
        out = (x,)
    elif V == 2:
        e, o = _halves(x)
        out = (e, o)
    elif V == 4:
        e, o = _halves(x)
        e0, e1 = _halves(e)  # x[0::4], x[2::4]
        o0, o1 = _halves(o)  # x[1::4], x[3::4]
        out = (e0, o0, e1, o1)
    else:
        e, o = _halves(x)
        e0, e1 = _halves(e)
        o0, o1 = _halves(o)
        e00, e01 = _halves(e0)  # x[0], x[4]
        e10, e11 = _halves(e1)  # x[2], x[6]
        o00, o01 = _halves(o0)  # x[1], x[5]
        o10, o11 = _halves(o1)  # x[3], x[7]
        out = (e00, o00, e10, o10, e01, o01, e11, o11)
    return out


@triton.jit
def _pack(s, V: tl.constexpr):
    """The inverse of :func:`_unpack`: a tuple of ``V`` tensors ``[R, N, 1]`` -> ``[R, N, V]``."""
    if V == 1:
        out = s[0]
    elif V == 2:
        out = _interleave(s[0], s[1])
    elif V == 4:
        out = _interleave(_interleave(s[0], s[2]), _interleave(s[1], s[3]))
    else:
        out = _interleave(
            _interleave(_interleave(s[0], s[4]), _interleave(s[2], s[6])),
            _interleave(_interleave(s[1], s[5]), _interleave(s[3], s[7])),
        )
    return out


@triton.jit
def _to_row_order(planes, C: tl.constexpr, S: tl.constexpr, VI: tl.constexpr, VP: tl.constexpr):
    """A thread's chunk from image order to pred's row order: a renaming of registers.

    The chunk is ``S`` adjacent pixels of one patch row in each channel: ``planes[c * (S // VI) + g]``
    ``[R, N, VI]`` holds pixels ``qi = g * VI + v`` of channel ``c``. In pred the chunk is the
    ``S * C`` contiguous values ``m = qi * C + c``; returns them as ``S * C // VP`` tensors
    ``[R, N, VP]``, the ``k``-th holding ``m = k * VP + v`` (the ``k``-th load of pred).
    Split, join and reshape of dimensions a thread holds entirely move no data, so this compiles
    to nothing (``tl.gather`` would go through shared memory, and no reshape or permute can
    interleave 3 channels: 3 is not a power of two).
    """
    scalars = ()
    for i in tl.static_range(C * (S // VI)):
        scalars = scalars + _unpack(planes[i], VI)  # slot c * S + qi
    out = ()
    for k in tl.static_range(S * C // VP):
        group = ()
        for v in tl.static_range(VP):  # m = k * VP + v is pixel qi = m // C of channel c = m % C
            group = group + (scalars[((k * VP + v) % C) * S + (k * VP + v) // C],)
        out = out + (_pack(group, VP),)
    return out


# --------------------------------------------------------------------------------------------------
# loads, integer division
# --------------------------------------------------------------------------------------------------


@triton.jit
def _load_raw(
    PTR,  # pointer to a float tensor
    base,  # [M] int64 offsets, multiples of V
    offset,  # a scalar offset added to every base (a multiple of V, >= 0)
    mask,  # [M, 1] or None
    V: tl.constexpr,  # contiguous values per offset
):
    """The ``[M, V]`` values at ``PTR + base[:, None] + offset + arange(V)``, or in bf16 the
    ``[M, V // 2]`` 32-bit words holding them (see :func:`_upcast`)."""
    if PTR.dtype.element_ty == tl.bfloat16 and V > 1:
        # offsets are >= 0: halved by a shift (// 2 adds a sign fix-up); base >> 1 is the same value
        # in every call, computed once, and the scalar offsets fold into the load instructions
        words = PTR.to(tl.pointer_type(tl.int32), bitcast=True) + (base >> 1)[:, None] + (offset >> 1)
        ptrs = words + tl.arange(0, V // 2)[None, :]
        other = 0
    else:
        ptrs = PTR + base[:, None] + offset + tl.arange(0, V)[None, :]
        other = 0.0
    if mask is None:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=mask, other=other)


@triton.jit
def _upcast(raw, PTR, V: tl.constexpr):
    """:func:`_load_raw`'s values as float32 ``[M, V]``. A bf16 is the top half of its float32, so
    a word's two bf16 become ``word << 16`` and ``word & 0xffff0000``: one instruction per value,
    where the compiler's own conversion spends two on every odd one (PRMT, then SHF)."""
    if PTR.dtype.element_ty == tl.bfloat16 and V > 1:
        lo = (raw << 16).to(tl.float32, bitcast=True)  # value 2i (little-endian: the low half)
        hi = (raw & -65536).to(tl.float32, bitcast=True)  # value 2i + 1
        ab = tl.join(lo, hi)  # [M, V // 2, 2]
        return tl.reshape(ab, [ab.shape[0], V])
    else:
        return raw.to(tl.float32)


@triton.jit
def _div(x, MAGIC, SHIFT):
    """``x // d`` for int32 ``0 <= x < 2^31`` and ``(MAGIC, SHIFT) = _magic(d)``: a multiply-high and a
    shift (Granlund-Montgomery) in place of the ~35-instruction integer division."""
    hi = tl.umulhi(x.to(tl.uint32) * 2, MAGIC.to(tl.uint32, bitcast=True))  # (2x * m) >> 32, unsigned
    # SHIFT as it comes: the JIT turns an int argument equal to 1 into a plain constant (no .to);
    # uint32 >> int32 shifts as unsigned
    return (hi >> SHIFT).to(tl.int32)


# --------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _row_diffs(
    PRED,  # pointer to pred [NR, P]
    IMGS,  # pointer to imgs [N, C, H, W]
    MASK,  # pointer to the mask weights [NR] (read only when HAS_MASK)
    IDS,  # pointer to ids_masked [NR] (read only when HAS_IDS)
    pid,  # program id
    NR,  # rows of pred: N * L (full form) or N * M (masked form)
    R,  # rows per image: L or M
    R_MAGIC,  # (R_MAGIC, R_SHIFT) = _magic(R): x // R without a division (see _div)
    R_SHIFT,
    NUM_PATCHES,  # patches per image L (ids are clamped to [0, L))
    H,  # image height in pixels
    W,  # image width in pixels
    GW,  # patches per image row, W // PATCH
    GW_MAGIC,  # (GW_MAGIC, GW_SHIFT) = _magic(GW)
    GW_SHIFT,
    PATCH: tl.constexpr,  # patch side p
    C: tl.constexpr,  # channels
    NORM_PIX: tl.constexpr,  # normalise the target per patch
    HAS_MASK: tl.constexpr,  # full form: weights from MASK; masked form: weight 1
    HAS_IDS: tl.constexpr,  # masked form: row r is patch IDS[r] of image r // R
    EPS: tl.constexpr,  # norm-pix epsilon
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_CH: tl.constexpr,  # power of two >= chunks per patch, PATCH * PATCH // S
    S: tl.constexpr,  # pixels per chunk and channel: a power of two dividing PATCH
    VI: tl.constexpr,  # image pixels per load (16 bytes), dividing S
    VP: tl.constexpr,  # pred values per load (16 bytes), dividing S
    EVEN: tl.constexpr,  # NR % BLOCK_R == 0: no row to mask
):
    """``pred - target`` for the program's rows in fp32, as ``S * C // VP`` tiles
    ``[BLOCK_R, BLOCK_CH, VP]``, the ``k``-th holding row elements ``j = ch * S * C + k * VP + v``
    (0 outside the rows); then the row weights ``[BLOCK_R, BLOCK_CH]`` (one copy per chunk), pred's
    offset of each chunk ``[BLOCK_R * BLOCK_CH]`` and the store mask."""
    P: tl.constexpr = PATCH * PATCH * C
    QS: tl.constexpr = PATCH // S  # chunks per patch row
    PADDED: tl.constexpr = BLOCK_CH != PATCH * QS  # chunks past the patch (p = 14: 98 of 128)
    # Addresses on a 2-D grid [BLOCK_R * BLOCK_CH, V] (element (r * BLOCK_CH + ch, v)): with one
    # strided dimension, Triton 3.6 and 3.9 both give a thread V adjacent values and spread the
    # lanes over the chunks of a row (on a 3-D grid 3.6 spreads them over the rows, and every
    # per-row sum then crosses warps through shared memory). The values are then viewed as
    # [BLOCK_R, BLOCK_CH, V], where the per-row sums are plain reductions over axes 2 and 1.
    # Row and patch arithmetic in int32 (NR + BLOCK_R <= 2^31 and C * H * W < 2^31, asserted by the
    # launcher), offsets in int64 (N * L * P and N * C * H * W may pass 2^31).
    rc = tl.arange(0, BLOCK_R * BLOCK_CH)
    ch = rc % BLOCK_CH  # chunk ch = (pi, qs): pixels qi = qs * S + [0, S) of patch row pi
    rows = pid * BLOCK_R + rc // BLOCK_CH  # [BLOCK_R * BLOCK_CH]: each thread works out its own row
    row_ok = None if EVEN else rows < NR  # EVEN: every program is full, nothing to mask
    n = _div(rows, R_MAGIC, R_SHIFT)  # image, rows // R
    if HAS_IDS:
        if EVEN:
            patch = tl.load(IDS + rows)
        else:
            patch = tl.load(IDS + rows, mask=row_ok, other=0)
        patch = tl.minimum(tl.maximum(patch, 0), NUM_PATCHES - 1).to(tl.int32)  # never outside the image
    else:
        patch = rows - n * R
    hi = _div(patch, GW_MAGIC, GW_SHIFT)  # patch row in the grid, patch // GW
    wi = patch - hi * GW  # patch column in the grid
    pi = ch // QS
    # pixel (c = 0, pi, qs * S) of the patch, and the chunk's first value in pred (row order:
    # j = (pi * p + qi) * C + c, so the chunk is the S * C values from j = ch * S * C)
    img_base = n.to(tl.int64) * C * H * W + ((hi * PATCH + pi) * W + wi * PATCH + (ch - pi * QS) * S)
    pred_base = rows.to(tl.int64) * P + ch * (S * C)
    # load mask [BLOCK_R * BLOCK_CH, 1]: constant along a load's values, which stay one access
    if PADDED:
        io = ch < PATCH * QS
        if not EVEN:
            io = io & row_ok
        io = io[:, None]
    elif EVEN:
        io = None
    else:
        io = row_ok[:, None]

    # pred in row order, the image in image order: 16 contiguous bytes per load (p = 16)
    xs = ()  # raw: upcast where used, so that bf16 holds half the registers until then
    for k in tl.static_range(S * C // VP):
        xs = xs + (_load_raw(PRED, pred_base, k * VP, io, VP),)
    planes = ()
    for c in tl.static_range(C):
        for g in tl.static_range(S // VI):
            t = _upcast(_load_raw(IMGS, img_base, c * (H * W) + g * VI, io, VI), IMGS, VI)
            planes = planes + (tl.reshape(t, [BLOCK_R, BLOCK_CH, VI]),)
    if NORM_PIX:
        # target = (t - mean) / sqrt(var + eps), var = sum((t - mean)^2) / (P - 1)  (unbiased)
        total = planes[0]
        for i in tl.static_range(1, len(planes)):
            total += planes[i]
        mean = tl.sum(tl.sum(total, axis=2), axis=1) / P  # [BLOCK_R]
        centred = ()
        for i in tl.static_range(len(planes)):
            d = planes[i] - mean[:, None, None]
            if PADDED:  # padding chunks hold 0, not -mean
                d = tl.where(tl.reshape(tl.broadcast_to(io, [BLOCK_R * BLOCK_CH, VI]), d.shape), d, 0.0)
            centred = centred + (d,)
        sq = centred[0] * centred[0]
        for i in tl.static_range(1, len(centred)):
            sq = tl.fma(centred[i], centred[i], sq)
        var = tl.sum(tl.sum(sq, axis=2), axis=1) / (P - 1)
        # -1 / std: one division per row, then an FMA per value. Negated here, once per row: Triton
        # 3.6 writes a tensor's -x as 0 - x, which the compiler cannot fold into the FMA
        neg_rstd = (-1.0 / tl.sqrt(var + EPS))[:, None, None]
        planes = centred
    target = _to_row_order(planes, C, S, VI, VP)

    diffs = ()
    for k in tl.static_range(S * C // VP):
        x = tl.reshape(_upcast(xs[k], PRED, VP), [BLOCK_R, BLOCK_CH, VP])
        if NORM_PIX:
            diffs = diffs + (tl.fma(target[k], neg_rstd, x),)  # x - (t - mean) / std
        else:
            diffs = diffs + (x - target[k],)
    if HAS_MASK and EVEN:
        w = tl.load(MASK + rows).to(tl.float32)  # [BLOCK_R * BLOCK_CH]
    elif HAS_MASK:
        w = tl.load(MASK + rows, mask=row_ok, other=0.0).to(tl.float32)
    elif EVEN:
        w = tl.full([BLOCK_R * BLOCK_CH], 1.0, tl.float32)
    else:
        w = tl.where(row_ok, 1.0, 0.0)
    if io is None:  # the stores' mask (a tuple cannot hold None): all true, which Triton drops
        io = tl.full([BLOCK_R * BLOCK_CH, 1], True, tl.int1)
    return diffs, tl.reshape(w, [BLOCK_R, BLOCK_CH]), pred_base, io


@triton.jit
def _masked_mse_loss_kernel(
    PRED,  # pointer to pred [NR, P], any float dtype
    IMGS,  # pointer to imgs [N, C, H, W], any float dtype
    MASK,  # pointer to the mask weights [N * L] (full form; a dummy otherwise)
    IDS,  # pointer to ids_masked [N * M], int32 or int64 (masked form; a dummy otherwise)
    PARTIAL,  # pointer to float32 [2, NUM_PROGRAMS]: [0, pid] = sum(w * e), [1, pid] = sum(w) (full form)
    NR,  # rows of pred: N * L or N * M
    R,  # rows per image: L or M
    R_MAGIC,  # (R_MAGIC, R_SHIFT) = _magic(R)
    R_SHIFT,
    NUM_PATCHES,  # patches per image L
    H,  # image height in pixels
    W,  # image width in pixels
    GW,  # patches per image row, W // PATCH
    GW_MAGIC,  # (GW_MAGIC, GW_SHIFT) = _magic(GW)
    GW_SHIFT,
    NUM_PROGRAMS,  # number of programs (row stride of PARTIAL)
    PATCH: tl.constexpr,  # patch side p
    C: tl.constexpr,  # channels
    NORM_PIX: tl.constexpr,  # normalise the target per patch
    HAS_MASK: tl.constexpr,  # full form
    HAS_IDS: tl.constexpr,  # masked form
    EPS: tl.constexpr,  # norm-pix epsilon
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_CH: tl.constexpr,  # power of two >= chunks per patch
    S: tl.constexpr,  # pixels per chunk and channel
    VI: tl.constexpr,  # image pixels per load
    VP: tl.constexpr,  # pred values per load
    EVEN: tl.constexpr,  # NR % BLOCK_R == 0
):
    P: tl.constexpr = PATCH * PATCH * C
    pid = tl.program_id(0)
    diffs, w, pred_base, io = _row_diffs(
        PRED, IMGS, MASK, IDS, pid, NR, R, R_MAGIC, R_SHIFT, NUM_PATCHES, H, W, GW, GW_MAGIC, GW_SHIFT,
        PATCH, C, NORM_PIX, HAS_MASK, HAS_IDS, EPS, BLOCK_R, BLOCK_CH, S, VI, VP, EVEN,
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
    NR,  # rows of pred: N * L or N * M
    R,  # rows per image: L or M
    R_MAGIC,  # (R_MAGIC, R_SHIFT) = _magic(R)
    R_SHIFT,
    NUM_PATCHES,  # patches per image L
    H,  # image height in pixels
    W,  # image width in pixels
    GW,  # patches per image row, W // PATCH
    GW_MAGIC,  # (GW_MAGIC, GW_SHIFT) = _magic(GW)
    GW_SHIFT,
    PATCH: tl.constexpr,  # patch side p
    C: tl.constexpr,  # channels
    NORM_PIX: tl.constexpr,  # normalise the target per patch
    HAS_MASK: tl.constexpr,  # full form
    HAS_IDS: tl.constexpr,  # masked form
    EPS: tl.constexpr,  # norm-pix epsilon
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_CH: tl.constexpr,  # power of two >= chunks per patch
    S: tl.constexpr,  # pixels per chunk and channel
    VI: tl.constexpr,  # image pixels per load
    VP: tl.constexpr,  # pred values per load and store
    EVEN: tl.constexpr,  # NR % BLOCK_R == 0
):
    P: tl.constexpr = PATCH * PATCH * C
    pid = tl.program_id(0)
    diffs, w, pred_base, io = _row_diffs(
        PRED, IMGS, MASK, IDS, pid, NR, R, R_MAGIC, R_SHIFT, NUM_PATCHES, H, W, GW, GW_MAGIC, GW_SHIFT,
        PATCH, C, NORM_PIX, HAS_MASK, HAS_IDS, EPS, BLOCK_R, BLOCK_CH, S, VI, VP, EVEN,
    )
    # d loss / d pred[r, j] = g * w[r] / den * 2 * (pred[r, j] - target[r, j]) / P
    coef = tl.load(GRAD_LOSS).to(tl.float32) * tl.load(INV_DEN) * (2.0 / P)
    scale = (coef * w)[:, :, None]  # [BLOCK_R, BLOCK_CH, 1]
    for k in tl.static_range(len(diffs)):  # row order: the loads of pred, now stores (16 bytes)
        grad = tl.reshape(scale * diffs[k], [BLOCK_R * BLOCK_CH, VP])
        ptrs = GRAD_PRED + pred_base[:, None] + (k * VP + tl.arange(0, VP))[None, :]
        tl.store(ptrs, grad.to(GRAD_PRED.dtype.element_ty), mask=io)


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------


def _magic(d: int) -> tuple[int, int]:
    """``(m, s)`` with ``x // d == umulhi(2x, m) >> s`` for every ``0 <= x < 2^31`` (``m`` as int32 bits).

    ``s = ceil(log2 d)``, ``m = ceil(2^(31+s) / d) < 2^32``: then ``x * m / 2^(31+s)`` exceeds
    ``x / d`` by less than ``1 / d``, too little to reach the next integer (Granlund and Montgomery,
    "Division by invariant integers using multiplication", 1994)."""
    s = (d - 1).bit_length()
    m = -(-(1 << (31 + s)) // d)
    return (m - 2**32 if m >= 2**31 else m), s


def _blocks(rows: int, patch: int, pred_size: int, img_size: int) -> dict:
    """Block sizes for ``rows`` patch rows of side ``patch`` (``*_size``: bytes per value)."""
    pow2 = patch & -patch  # the largest power of two dividing the patch side
    span = min(_MAX_SPAN, pow2)  # S
    block_ch = next_power_of_2(patch * patch // span)
    block_r = max(1, min(_TILE // (block_ch * span), next_power_of_2(max(rows, 1))))
    # 16 bytes a load; at most 8 values, what _unpack / _pack handle
    return dict(BLOCK_R=block_r, BLOCK_CH=block_ch, S=span,
                VI=min(16 // img_size, pow2, 8), VP=min(16 // pred_size, pow2, 8))


def _launch_args(pred, imgs, mask, ids_masked, patch_size: int, norm_pix_loss: bool):
    """What the forward and backward row kernels share: ``(programs, (MASK, IDS), keyword arguments)``.

    Reads shapes and dtypes only (``tools/kernel_specs`` calls it with meta tensors)."""
    n, c, hh, ww = imgs.shape
    rows = n * pred.shape[1]
    blocks = _blocks(rows, patch_size, pred.element_size(), imgs.element_size())
    # the kernels keep row numbers and offsets inside one image in int32
    assert rows + blocks["BLOCK_R"] <= 2**31 and c * hh * ww < 2**31, "too many patch rows or pixels per image"
    r_magic, r_shift = _magic(max(pred.shape[1], 1))
    gw_magic, gw_shift = _magic(ww // patch_size)
    has_ids = ids_masked is not None
    kwargs = dict(
        NR=rows, R=pred.shape[1], R_MAGIC=r_magic, R_SHIFT=r_shift,
        NUM_PATCHES=(hh // patch_size) * (ww // patch_size), H=hh, W=ww,
        GW=ww // patch_size, GW_MAGIC=gw_magic, GW_SHIFT=gw_shift,
        PATCH=patch_size, C=c, NORM_PIX=norm_pix_loss, HAS_MASK=not has_ids, HAS_IDS=has_ids, EPS=NORM_PIX_EPS,
        **blocks, EVEN=rows % blocks["BLOCK_R"] == 0, num_warps=_NUM_WARPS,
    )
    # the absent one of MASK / IDS is a dummy (pred) the kernel never reads
    return triton.cdiv(rows, blocks["BLOCK_R"]), ((pred, ids_masked) if has_ids else (mask, pred)), kwargs


def _sum_args(programs: int, rows: int, has_mask: bool) -> dict:
    """Keyword arguments of the final reduction over ``programs`` partials."""
    return dict(NUM_PARTIALS=programs, DEN_ROWS=float(rows), HAS_MASK=has_mask,
                BLOCK_G=min(_BLOCK_G, next_power_of_2(max(programs, 16))), num_warps=_NUM_WARPS)


def _forward(pred, imgs, mask, ids_masked, patch_size: int, norm_pix_loss: bool):
    """Launch the loss kernels: ``(loss, inv_den)``, float32 scalars on pred's device."""
    programs, mask_ids, kwargs = _launch_args(pred, imgs, mask, ids_masked, patch_size, norm_pix_loss)
    partial = empty((2, max(programs, 1)), torch.float32, pred.device)  # [2, programs]
    if programs:
        _masked_mse_loss_kernel[(programs,)](pred, imgs, *mask_ids, partial, NUM_PROGRAMS=programs, **kwargs)
    loss = empty((), torch.float32, pred.device)
    inv_den = empty((), torch.float32, pred.device)
    _masked_mse_loss_sum_kernel[(1,)](partial, loss, inv_den, **_sum_args(programs, kwargs["NR"], kwargs["HAS_MASK"]))
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
