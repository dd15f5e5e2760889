"""The masked MSE loss's per-row work (``kernels/masked_mse_loss.py`` describes the layout).

The block sizes the launcher and the kernels both derive (``chunks_per_row``, ``values_per_load``);
a thread's chunk of a patch row loaded in image order and permuted to pred's row order in its
registers (split / join / reshape of dimensions a thread holds entirely: no instruction, no shared
memory), bf16 widened from 32-bit words, integer division by a launch-time constant as a
multiply-high, and ``_row_diffs``: one program's rows, pred minus the (norm-pix) target.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..reference import NORM_PIX_EPS

_EPS = tl.constexpr(NORM_PIX_EPS)  # norm-pix epsilon, as masked_mse_loss_ref


# --------------------------------------------------------------------------------------------------
# derived block sizes: the launcher and the kernels compute them with the same functions
# --------------------------------------------------------------------------------------------------


@triton.constexpr_function
def chunks_per_row(patch, span):
    """``BLOCK_CH``: chunks of ``span`` pixels (per channel) in a ``patch x patch`` patch, rounded up
    to a power of two (``tl.arange``'s lengths are powers of two; the extra chunks are masked)."""
    n = patch * patch // span  # pure Python: the JIT accepts no call to a plain function from here
    return 1 << max(n - 1, 0).bit_length()


@triton.constexpr_function
def values_per_load(nbytes, span):
    """``VP`` (pred) or ``VI`` (image): values of ``nbytes`` bytes a load, 16 bytes at most, dividing
    ``span`` (the chunk's pixels per channel), at most 8 (what :func:`_unpack` / :func:`_pack` handle)."""
    return min(16 // nbytes, span, 8)


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
    WORDS: tl.constexpr,  # PTR is bf16 and starts on a 4-byte boundary: read its values as 32-bit words
):
    """The ``[M, V]`` values at ``PTR + base[:, None] + offset + arange(V)``, or with ``WORDS`` the
    ``[M, V // 2]`` 32-bit words holding them (see :func:`_upcast`). ``WORDS`` needs a 4-byte aligned
    ``PTR`` (the launcher checks the address: a bf16 tensor may start at any even byte)."""
    if WORDS and V > 1:
        tl.static_assert(PTR.dtype.element_ty == tl.bfloat16)
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
def _upcast(raw, V: tl.constexpr, WORDS: tl.constexpr):
    """:func:`_load_raw`'s values as float32 ``[M, V]``. A bf16 is the top half of its float32, so
    a word's two bf16 become ``word << 16`` and ``word & 0xffff0000``: one instruction per value,
    where the compiler's own conversion spends two on every odd one (PRMT, then SHF)."""
    if WORDS and V > 1:
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
    # tl.cast, not MAGIC.to: a scalar argument may arrive as a plain constant (the JIT makes an int
    # equal to 1 one; torch.compile's analysis of the kernel's writes, up to torch 2.11, makes every
    # scalar one), which has no .to
    hi = tl.umulhi(x.to(tl.uint32) * 2, tl.cast(MAGIC, tl.uint32, bitcast=True))  # (2x * m) >> 32, unsigned
    # uint32 >> int32 shifts as unsigned
    return (hi >> SHIFT).to(tl.int32)


@triton.jit
def _pred_offsets(
    pid,  # program id
    P: tl.constexpr,  # values per pred row
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_CH: tl.constexpr,  # chunks per row (a power of two)
    S: tl.constexpr,  # pixels per chunk and channel
    C: tl.constexpr,  # channels
):
    """Each thread's row, chunk and the chunk's first value in pred, ``[BLOCK_R * BLOCK_CH]`` each:
    ``rows = pid * BLOCK_R + rc // BLOCK_CH``, ``ch = rc % BLOCK_CH``, ``pred_base = rows * P + ch * S * C``
    (row order: ``j = (pi * p + qi) * C + c``, so chunk ``ch`` is the ``S * C`` values from ``ch * S * C``)."""
    rc = tl.arange(0, BLOCK_R * BLOCK_CH)
    ch = rc % BLOCK_CH  # chunk ch = (pi, qs): pixels qi = qs * S + [0, S) of patch row pi
    rows = pid * BLOCK_R + rc // BLOCK_CH  # each thread works out its own row
    return rows, ch, rows.to(tl.int64) * P + ch * (S * C)


@triton.jit
def _row_diffs(
    # the row kernels' arguments of the same names (commented in _masked_mse_loss_kernel)
    PRED, IMGS, MASK, IDS,
    NR, R, R_MAGIC, R_SHIFT, NUM_PATCHES, H, W, GW, GW_MAGIC, GW_SHIFT,
    PATCH: tl.constexpr, C: tl.constexpr, NORM_PIX: tl.constexpr, HAS_MASK: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_CH: tl.constexpr, S: tl.constexpr,
    PRED_WORDS: tl.constexpr, IMG_WORDS: tl.constexpr, EVEN: tl.constexpr,
):
    """``pred - target`` for this program's rows in fp32, as ``S * C // VP`` tiles
    ``[BLOCK_R, BLOCK_CH, VP]``, the ``k``-th holding row elements ``j = ch * S * C + k * VP + v``
    (0 outside the rows); then the row weights ``[BLOCK_R, BLOCK_CH]`` (one copy per chunk) and the
    store mask. (The backward's store addresses come from :func:`_pred_offsets` in the kernel
    itself: an address returned by this call would depend on every pointer passed to it, and
    torch.compile's analysis of what a kernel writes would then count PRED and IMGS as written.)"""
    P: tl.constexpr = PATCH * PATCH * C
    QS: tl.constexpr = PATCH // S  # chunks per patch row
    PADDED: tl.constexpr = BLOCK_CH != PATCH * QS  # chunks past the patch (p = 14: 98 of 128)
    VP: tl.constexpr = values_per_load(PRED.dtype.element_ty.primitive_bitwidth // 8, S)  # pred values a load
    VI: tl.constexpr = values_per_load(IMGS.dtype.element_ty.primitive_bitwidth // 8, S)  # image pixels a load
    # Addresses on a 2-D grid [BLOCK_R * BLOCK_CH, V] (element (r * BLOCK_CH + ch, v)): with one
    # strided dimension, Triton 3.6 and 3.9 both give a thread V adjacent values and spread the
    # lanes over the chunks of a row (on a 3-D grid 3.6 spreads them over the rows, and every
    # per-row sum then crosses warps through shared memory). The values are then viewed as
    # [BLOCK_R, BLOCK_CH, V], where the per-row sums are plain reductions over axes 2 and 1.
    # Row and patch arithmetic in int32 (NR + BLOCK_R <= 2^31 and C * H * W < 2^31, asserted by the
    # launcher), offsets in int64 (N * L * P and N * C * H * W may pass 2^31).
    rows, ch, pred_base = _pred_offsets(tl.program_id(0), P, BLOCK_R, BLOCK_CH, S, C)
    row_ok = None if EVEN else rows < NR  # EVEN: every program is full, nothing to mask
    n = _div(rows, R_MAGIC, R_SHIFT)  # image, rows // R
    if HAS_MASK:  # full form: row r is patch r % R of image r // R
        patch = rows - n * R
    else:  # masked form: row r is patch IDS[r] of image r // R
        if EVEN:
            patch = tl.load(IDS + rows)
        else:
            patch = tl.load(IDS + rows, mask=row_ok, other=0)
        patch = tl.minimum(tl.maximum(patch, 0), NUM_PATCHES - 1).to(tl.int32)  # never outside the image
    hi = _div(patch, GW_MAGIC, GW_SHIFT)  # patch row in the grid, patch // GW
    wi = patch - hi * GW  # patch column in the grid
    pi = ch // QS
    # pixel (c = 0, pi, qs * S) of the patch
    img_base = n.to(tl.int64) * C * H * W + ((hi * PATCH + pi) * W + wi * PATCH + (ch - pi * QS) * S)
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
        xs = xs + (_load_raw(PRED, pred_base, k * VP, io, VP, PRED_WORDS),)
    planes = ()
    for c in tl.static_range(C):
        for g in tl.static_range(S // VI):
            t = _upcast(_load_raw(IMGS, img_base, c * (H * W) + g * VI, io, VI, IMG_WORDS), VI, IMG_WORDS)
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
        neg_rstd = (-1.0 / tl.sqrt(var + _EPS))[:, None, None]
        planes = centred
    target = _to_row_order(planes, C, S, VI, VP)

    diffs = ()
    for k in tl.static_range(S * C // VP):
        x = tl.reshape(_upcast(xs[k], VP, PRED_WORDS), [BLOCK_R, BLOCK_CH, VP])
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
    return diffs, tl.reshape(w, [BLOCK_R, BLOCK_CH]), io


def _magic(d: int) -> tuple[int, int]:
    """``(m, s)`` with ``x // d == umulhi(2x, m) >> s`` for every ``0 <= x < 2^31`` (``m`` as int32 bits).

    ``s = ceil(log2 d)``, ``m = ceil(2^(31+s) / d) < 2^32``: then ``x * m / 2^(31+s)`` exceeds
    ``x / d`` by less than ``1 / d``, too little to reach the next integer (Granlund and Montgomery,
    "Division by invariant integers using multiplication", 1994)."""
    s = (d - 1).bit_length()
    m = -(-(1 << (31 + s)) // d)
    return (m - 2**32 if m >= 2**31 else m), s
