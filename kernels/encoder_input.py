"""Encoder input assembly: pos-embed gather, add and cls prepend in one pass, forward and backward.

    out[n, 0]     = cls_token + pos_embed[0]                          # [N, K+1, D]
    out[n, 1 + k] = x_vis[n, k] + pos_embed[1 + ids_keep[n, k]]

(``encoder_input_ref`` in ``fastmae/reference.py``.) The result's dtype is the promotion of the
three inputs' dtypes; every sum is computed in float32 and rounded once on store.

Backward, for an upstream gradient ``g [N, K+1, D]``:
    grad_x_vis     = g[:, 1:]                                       (a view; a cast when dtypes differ)
    grad_cls       = sum_n g[n, 0]
    grad_pos[0]    = sum_n g[n, 0]
    grad_pos[1+l]  = sum_n g[n, 1 + k]  where ids_keep[n, k] == l   (only when pos_embed needs grad)
Every sum walks its rows in a fixed order and writes per-program partials, summed in a fixed order
afterwards: deterministic, no atomics. Without pos_embed's gradient one kernel sums column 0. With
it, the gradient rows are first listed by the table row they feed: the inverse map ``inv[n, l] = k``
(-1 where ``l`` is not kept; ``inverse_ids`` in ``_common``, shared with patchify_gather's backward)
gives, for each patch ``l``, the list of rows ``1 + k`` of the samples that kept it, in order of
``n`` (``_kept_rows_kernel``, a prefix sum of the hits); the cls list holds every sample's row 0.
Then ``_pos_sums_kernel`` sums each list, cut into shares of about equal length (the cls list,
``L / K`` times longer than a patch's, in as many parts), reading only rows that count. The map
assumes the ids of one sample are distinct (``masking_ids`` makes them so); with a repeated id only
one of its rows would be counted.

The forward runs a persistent grid (``kernels/_common.persistent_groups``): at most the programs an
H100-class GPU holds at once, each owning a block of rows and columns and looping over every G-th
sample, so that the cls row, the offsets and the masks are set up once per program.

Out-of-range ids (possible only when the caller skipped validation on CUDA) never read or write out of
bounds: such a row gets no position added, and contributes to no pos-embed row in the backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (NUM_WARPS, bf16_rows_as_words, empty, fake, image_groups, inverse_ids, launch, next_power_of_2, op,
                      promoted_dtype, resident_programs, row_blocks)

__all__ = ["encoder_input"]

# Forward tile elements a program keeps for its whole loop over samples: 8 per thread at 4 warps, one
# 16-byte access a row in bf16.
FWD_TILE = 1024
# Registers a forward thread compiles to at most (Triton 3.6 and 3.9, sm_80 and sm_90), by the bytes
# of an output value: they decide how many programs an SM holds at once, hence the persistent grid
# (tests/test_gpu_readiness.py checks every spec's compiled registers against it).
_FWD_REGISTERS = {2: 32, 4: 40}


def fwd_programs_per_sm(out_size: int) -> int:
    """Resident forward programs of ``NUM_WARPS`` warps an SM, for an output of ``out_size``-byte values."""
    return resident_programs(_FWD_REGISTERS[out_size], NUM_WARPS)


_BWD_BLOCK_N = 8  # samples per tile of the cls-only backward
_BWD_N_PER_PROG = 64  # samples one cls-only backward program sums before writing its partial
_POS_BLOCK_E = 4  # list entries per step of the pos-embed backward: one 16-byte access a thread in bf16
# Rows a share of a list sums at least (where the list is that long): fewer, longer shares spend less
# on each program's set-up and final sum over its rows.
_POS_SHARE_ROWS = 32
# Resident programs an SM of the pos-embed backward (it compiles to at most 32 registers under Triton 3.6 and 3.9)
POS_SUMS_PROGRAMS_PER_SM = resident_programs(32, NUM_WARPS)


# --------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _encoder_input_kernel(
    X,  # pointer to x_vis [N, K, D], contiguous
    POS,  # pointer to pos_embed [L+1, D], contiguous (row 0 belongs to cls)
    CLS,  # pointer to cls_token [D]
    IDS,  # pointer to ids_keep [N, K] (int32 or int64)
    OUT,  # pointer to the output [N, K+1, D], contiguous
    N,  # samples
    K,  # kept tokens per sample
    L,  # patches per sample (pos_embed has L+1 rows)
    D,  # token width
    BLOCK_R: tl.constexpr,  # output rows per program
    BLOCK_D: tl.constexpr,  # columns per program (power of two)
):
    # grid = (cdiv(K+1, BLOCK_R), cdiv(D, BLOCK_D), G): program (b, c, g) writes rows
    # [b*BLOCK_R, (b+1)*BLOCK_R), columns of block c, of samples g, g + G, g + 2G, ... (a persistent
    # loop: the cls row, the offsets and the masks are computed once per program). Rows inside a
    # sample are int32 ((L+1)*D < 2**31, checked by fastmae.ops); the samples' base pointers advance
    # by int64 strides.
    j = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] row: 0 is cls, 1 + k is token k
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    row_ok = j < K + 1
    is_tok = j > 0
    tok_ok = row_ok & is_tok
    cm = (cols < D)[None, :]
    io = row_ok[:, None] & cm
    offs = (j * D)[:, None] + cols[None, :]  # [BLOCK_R, BLOCK_D] inside one sample of the output
    x_offs = offs - D  # row j of the output reads row j - 1 of x_vis (masked off for cls)
    # cls, loaded straight into the tile's layout for row 0 only (zeros elsewhere): a [BLOCK_D] load
    # broadcast over the rows would go through shared memory.
    cls = tl.load(CLS + (cols[None, :] + tl.zeros([BLOCK_R, 1], tl.int32)), mask=(row_ok & ~is_tok)[:, None] & cm,
                  other=0.0)

    g = tl.program_id(2)
    num_g = tl.num_programs(2)
    ids_n = IDS + tl.cast(g, tl.int64) * K
    x_n = X + tl.cast(g, tl.int64) * K * D
    out_n = OUT + tl.cast(g, tl.int64) * (K + 1) * D
    for _ in range(g, N, num_g):
        # pos row: 0 for cls, 1 + ids_keep[n, j-1] for a token; an out-of-range id adds no position.
        ids = tl.load(ids_n + (j - 1), mask=tok_ok)  # [BLOCK_R]; cls and rows past the end ignore it
        ids_ok = ids.to(tl.uint64) < tl.cast(L, tl.uint64)  # 0 <= id < L at once (a negative id wraps past L)
        pos_row = tl.where(is_tok, 1 + tl.where(ids_ok, ids, 0), 0).to(tl.int32)  # [BLOCK_R], in [0, L]
        pos_ok = row_ok & (~is_tok | ids_ok)
        pos = tl.load(POS + (pos_row * D)[:, None] + cols[None, :], mask=pos_ok[:, None] & cm, other=0.0)
        if X.dtype.element_ty == CLS.dtype.element_ty:
            # the cls row receives cls from the masked load itself (no select)
            src = tl.load(x_n + x_offs, mask=tok_ok[:, None] & cm, other=cls).to(tl.float32)
        else:
            src = tl.where(is_tok[:, None], tl.load(x_n + x_offs, mask=tok_ok[:, None] & cm, other=0.0).to(tl.float32),
                           cls.to(tl.float32))
        # out = (x or cls) + pos, in float32, rounded once to the output dtype.
        tl.store(out_n + offs, (src + pos.to(tl.float32)).to(OUT.dtype.element_ty), mask=io)
        ids_n += num_g.to(tl.int64) * K
        x_n += num_g.to(tl.int64) * K * D
        out_n += num_g.to(tl.int64) * (K + 1) * D


@triton.jit
def _cls_sums_kernel(
    G,  # pointer to the upstream gradient [N, K+1, D], contiguous
    PART,  # pointer to the float32 partial sums [S, D], S = cdiv(N, N_PER_PROG)
    N,  # batch size
    K,  # kept tokens per sample
    D,  # token width
    N_PER_PROG: tl.constexpr,  # samples each program sums (a multiple of BLOCK_N)
    BLOCK_N: tl.constexpr,  # samples per tile
    BLOCK_D: tl.constexpr,  # columns per program (power of two)
):
    # Program (pid_d, s) sums g[n, 0] over n in [s*N_PER_PROG, (s+1)*N_PER_PROG), columns of block pid_d.
    pid_d = tl.program_id(0)
    s = tl.program_id(1)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    col_ok = cols < D
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for i in tl.static_range(0, N_PER_PROG, BLOCK_N):
        n = s.to(tl.int64) * N_PER_PROG + i + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        g = tl.load(G + (n * (K + 1))[:, None] * D + cols[None, :], mask=(n < N)[:, None] & col_ok[None, :], other=0.0)
        acc += g.to(tl.float32)
    part = tl.sum(acc, axis=0)  # [BLOCK_D], a fixed reduction order
    tl.store(PART + s.to(tl.int64) * D + cols, part, mask=col_ok)


@triton.jit
def _kept_rows_kernel(
    INV,  # pointer to inv [N, L] int32: k where ids_keep[n, k] == p, else -1
    ROWS,  # pointer to int32 [L+1, N] (output): list p's gradient rows, in order of n; unwritten past its count
    COUNT,  # pointer to int32 [L+1] (output): the length of each list
    N,  # batch size
    K,  # kept tokens per sample
    L,  # patches per sample
    BLOCK_N: tl.constexpr,  # samples per step (a power of two)
):
    # Program p < L lists the gradient rows n*(K+1) + 1 + inv[n, p] of the samples that kept patch p;
    # program L lists every sample's cls row n*(K+1). In order of n: a running count (a prefix sum of
    # the hits) gives each row its place; the rows are int32 (N*(K+1) < 2**31, checked by the launcher).
    p = tl.program_id(0)  # a patch, or L for cls
    count = p * 0  # int32 running length
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        n_ok = n < N
        of_patch = n * 0 + p < L  # [BLOCK_N]: the same for all, False in the cls program
        k = tl.load(INV + n.to(tl.int64) * L + tl.minimum(p, L - 1), mask=n_ok, other=-1)  # [BLOCK_N]
        k = tl.where(of_patch, k, -1)  # the cls row is row -1 + 1 = 0 of a sample
        hit = n_ok & (~of_patch | ((k >= 0) & (k < K)))
        hits = hit.to(tl.int32)
        place = count + tl.cumsum(hits, axis=0) - 1
        tl.store(ROWS + p.to(tl.int64) * N + place, n * (K + 1) + 1 + k, mask=hit)
        count += tl.sum(hits, axis=0)
    tl.store(COUNT + p, count)


@triton.jit
def _pos_sums_kernel(
    G,  # pointer to the upstream gradient as rows [N*(K+1), D], contiguous
    ROWS,  # pointer to int32 [L+1, N]: the lists of _kept_rows_kernel (list L: the cls rows)
    COUNT,  # pointer to int32 [L+1]: their lengths
    PART,  # pointer to the float32 partial sums [S, C + L, D] (output)
    N,  # batch size
    L,  # patches per sample
    D,  # token width
    STEP,  # BLOCK_E, passed at run time so that the compiled loop is the loop as written (ptxas unrolls
    #        a loop whose step it knows 4x, with remainder copies)
    C: tl.constexpr,  # parts the cls list is cut into (it is N long; a patch's list about N*K/L)
    S: tl.constexpr,  # shares of each list and cls part (the grid's third axis)
    BLOCK_E: tl.constexpr,  # list entries per step
    BLOCK_D: tl.constexpr,  # columns per program (power of two)
    CHUNKS: tl.constexpr,  # column chunks of a tile, one per warp (a power of two dividing BLOCK_D / 2)
    WORDS: tl.constexpr,  # G is bf16 on a 4-byte boundary and D is even: read 32-bit words of two values
):
    # grid = (C + L, cdiv(D, BLOCK_D), S). Program (a, c, s) sums the gradient rows of one share of a
    # list, columns of block c: a < C takes share a*S + s of C*S of the cls list, a >= C share s of S
    # of patch a - C's list; it writes PART[s, a]. Every share differs from the others of its list by
    # at most one entry, and a list's rows are summed in order of n.
    # The tile is [CHUNKS, BLOCK_E, BLOCK_D // CHUNKS]: Triton 3.9 lays the entries and a chunk's
    # columns on the lanes of a warp, the chunks on the warps, and sums the entries with shuffles
    # inside each warp (Triton 3.6 sums them through shared memory, once per program).
    CW: tl.constexpr = BLOCK_D // CHUNKS
    a = tl.program_id(0)
    s = tl.program_id(2)
    is_cls = a < C
    lst = tl.where(is_cls, L, a - C)
    count = tl.load(COUNT + lst)
    # entries [lo, hi) of the list (C and S constexpr: the divisions are multiplies and shifts)
    lo = tl.where(is_cls, count * (a * S + s) // (C * S), count * s // S)
    hi = tl.where(is_cls, count * (a * S + s + 1) // (C * S), count * (s + 1) // S)
    chunk = tl.program_id(1) * BLOCK_D + tl.arange(0, CHUNKS)[:, None, None] * CW  # [CHUNKS, 1, 1]
    cols = chunk + tl.arange(0, CW)[None, None, :]  # [CHUNKS, 1, CW]
    cm = cols < D
    # With WORDS a word holds columns 2i (low half) and 2i + 1 (high half): bf16 -> float32 is then
    # `word << 16` and `word & 0xffff0000`, one instruction a value, summed into the even and odd
    # columns' accumulators.
    HW: tl.constexpr = (CW + 1) // 2  # words per chunk (WORDS only; CW is even whenever WORDS)
    wcols = chunk // 2 + tl.arange(0, HW)[None, None, :]  # [CHUNKS, 1, HW]
    wm = wcols < D // 2
    rows_l = ROWS + lst.to(tl.int64) * N
    acc = tl.zeros((CHUNKS, BLOCK_E, CW), dtype=tl.float32)
    acc_lo = tl.zeros((CHUNKS, BLOCK_E, HW), dtype=tl.float32)
    acc_hi = tl.zeros((CHUNKS, BLOCK_E, HW), dtype=tl.float32)
    for e0 in range(lo, hi, STEP):
        e = e0 + tl.arange(0, BLOCK_E)[None, :, None]  # [1, BLOCK_E, 1]
        ok = e < hi
        row = tl.load(rows_l + e, mask=ok, other=0).to(tl.int64)  # [1, BLOCK_E, 1] gradient rows
        if WORDS:
            w = tl.load(G.to(tl.pointer_type(tl.int32), bitcast=True) + row * (D // 2) + wcols, mask=ok & wm, other=0)
            acc_lo += (w << 16).to(tl.float32, bitcast=True)
            acc_hi += (w & -65536).to(tl.float32, bitcast=True)
        else:
            acc += tl.load(G + row * D + cols, mask=ok & cm, other=0.0).to(tl.float32)
    # [CHUNKS, CW]: the sum over the entries, a fixed reduction order
    if WORDS:  # the even and odd columns' sums interleaved
        part = tl.reshape(tl.join(tl.sum(acc_lo, axis=1), tl.sum(acc_hi, axis=1)), [CHUNKS, CW])
    else:
        part = tl.sum(acc, axis=1)
    pcols = tl.program_id(1) * BLOCK_D + tl.arange(0, CHUNKS)[:, None] * CW + tl.arange(0, CW)[None, :]
    tl.store(PART + (s * (C + L) + a).to(tl.int64) * D + pcols, part, mask=pcols < D)


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------


def _forward(x_vis: torch.Tensor, pos_embed: torch.Tensor, cls_token: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    n, k, d = x_vis.shape
    num_patches = pos_embed.shape[1] - 1
    out = empty((n, k + 1, d), promoted_dtype(x_vis, pos_embed, cls_token), x_vis.device)  # [N, K+1, D]
    block_r, block_d = row_blocks(d, FWD_TILE)
    blocks = (triton.cdiv(k + 1, block_r), triton.cdiv(d, block_d))
    groups = image_groups(n, blocks[0] * blocks[1], fwd_programs_per_sm(out.element_size()), x_vis.device)
    launch(_encoder_input_kernel)[(*blocks, groups)](
        x_vis, pos_embed, cls_token, ids_keep, out, n, k, num_patches, d,
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )
    return out


def _cls_sums(grad: torch.Tensor) -> torch.Tensor:
    """``[1, D]`` float32: ``sum_n g[n, 0]``."""
    n, k1, d = grad.shape
    _, block_d = row_blocks(d)
    n_per_prog = _BWD_N_PER_PROG if n > _BWD_N_PER_PROG else max(_BWD_BLOCK_N, next_power_of_2(n))
    splits = triton.cdiv(n, n_per_prog)
    part = empty((splits, d), torch.float32, grad.device)  # [S, D]
    launch(_cls_sums_kernel)[(triton.cdiv(d, block_d), splits)](
        grad, part, n, k1 - 1, d,
        N_PER_PROG=n_per_prog, BLOCK_N=_BWD_BLOCK_N, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )
    return part.sum(0, keepdim=True)  # fixed-order sum over the splits (a copy of a few KB when there is one)


def cls_parts(n: int, k: int, num_patches: int) -> int:
    """How many parts the cls list (``n`` rows) is cut into: about as many as a patch's list is
    shorter (``n * k / L`` rows, each patch kept by a ``k / L`` share of the samples)."""
    return max(1, min(n, num_patches // max(k, 1)))


def pos_shares(n: int, k: int, num_patches: int) -> int:
    """Shares of ``_POS_SHARE_ROWS`` rows or more in a patch's list (about ``n * k / L`` rows long)."""
    return max(1, n * k // num_patches // _POS_SHARE_ROWS)


def _pos_sums(grad: torch.Tensor, ids_keep: torch.Tensor, num_patches: int) -> torch.Tensor:
    """``[L+1, D]`` float32: row 0 = ``sum_n g[n, 0]``, rows ``1+l`` as in the module doc."""
    n, k1, d = grad.shape
    assert n * k1 < 2**31, "the gradient's rows are indexed in int32"
    # inv[n, ids_keep[n, k]] = k, -1 for a patch not kept; an out-of-range id names no patch
    inv = inverse_ids(ids_keep, num_patches)  # [N, L]
    rows = empty((num_patches + 1, n), torch.int32, grad.device)  # [L+1, N], read only below each count
    count = empty((num_patches + 1,), torch.int32, grad.device)  # [L+1]
    launch(_kept_rows_kernel)[(num_patches + 1,)](
        inv, rows, count, n, k1 - 1, num_patches, BLOCK_N=min(1024, next_power_of_2(n)), num_warps=NUM_WARPS,
    )
    c = cls_parts(n, k1 - 1, num_patches)
    _, block_d = row_blocks(d)
    blocks = (c + num_patches) * triton.cdiv(d, block_d)
    # shares of a list (a patch's list has about N*K/L entries): _POS_SHARE_ROWS rows or more each, and
    # no more programs than one wave holds
    splits = image_groups(pos_shares(n, k1 - 1, num_patches), blocks, POS_SUMS_PROGRAMS_PER_SM, grad.device)
    part = empty((splits, c + num_patches, d), torch.float32, grad.device)  # [S, C + L, D]
    launch(_pos_sums_kernel)[(c + num_patches, triton.cdiv(d, block_d), splits)](
        grad, rows, count, part, n, num_patches, d, _POS_BLOCK_E,
        C=c, S=splits, BLOCK_E=_POS_BLOCK_E, BLOCK_D=block_d, CHUNKS=max(1, min(NUM_WARPS, block_d // 2)),
        WORDS=bf16_rows_as_words(grad), num_warps=NUM_WARPS,
    )
    sums = part.sum(0)  # [C + L, D], fixed-order sum over the shares
    if c == 1:
        return sums
    # the cls parts summed in order, then the L patch rows (split, not slicing: a slice of a fake CUDA
    # tensor fails while torch.compile traces the op on a CPU-only build)
    cls_sums, patch_sums = sums.split([c, num_patches])  # [C, D], [L, D]
    return torch.cat([cls_sums.sum(0, keepdim=True), patch_sums])


def _column_sums(grad: torch.Tensor, ids_keep: torch.Tensor, num_patches: int, with_pos: bool) -> torch.Tensor:
    """``[T, D]`` float32: row 0 = ``sum_n g[n, 0]``; with ``with_pos`` rows ``1+l`` as in the module doc."""
    return _pos_sums(grad, ids_keep, num_patches) if with_pos else _cls_sums(grad)


# --------------------------------------------------------------------------------------------------
# custom ops and autograd
# --------------------------------------------------------------------------------------------------


@op("fastmae::encoder_input")
def _encoder_input_op(
    x_vis: torch.Tensor, pos_embed: torch.Tensor, cls_token: torch.Tensor, ids_keep: torch.Tensor
) -> torch.Tensor:
    return _forward(x_vis, pos_embed, cls_token, ids_keep)


@fake(_encoder_input_op)
def _(x_vis, pos_embed, cls_token, ids_keep):
    n, k, d = x_vis.shape
    return x_vis.new_empty((n, k + 1, d), dtype=promoted_dtype(x_vis, pos_embed, cls_token))


@op("fastmae::encoder_input_bwd")
def _encoder_input_bwd_op(grad: torch.Tensor, ids_keep: torch.Tensor, num_patches: int, with_pos: bool) -> torch.Tensor:
    return _column_sums(grad, ids_keep, num_patches, with_pos)


@fake(_encoder_input_bwd_op)
def _(grad, ids_keep, num_patches, with_pos):
    return grad.new_empty((num_patches + 1 if with_pos else 1, grad.shape[2]), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x_vis, pos_embed, cls_token, ids_keep = inputs
    ctx.save_for_backward(ids_keep)
    ctx.num_patches = pos_embed.shape[1] - 1
    ctx.dtypes = (x_vis.dtype, pos_embed.dtype, cls_token.dtype)


def _backward(ctx, grad):
    (ids_keep,) = ctx.saved_tensors
    x_dtype, pos_dtype, cls_dtype = ctx.dtypes
    need_x, need_pos, need_cls = ctx.needs_input_grad[:3]
    grad_x = grad_pos = grad_cls = None
    if need_x:
        grad_x = grad[:, 1:].to(x_dtype)  # [N, K, D], a view of grad when the dtypes agree
    if need_pos or need_cls:
        sums = _encoder_input_bwd_op(grad.contiguous(), ids_keep, ctx.num_patches, bool(need_pos))  # [T, D]
        if need_cls:
            grad_cls = sums[:1].unsqueeze(0).to(cls_dtype)  # [1, 1, D]
        if need_pos:
            grad_pos = sums.unsqueeze(0).to(pos_dtype)  # [1, L+1, D]
    return grad_x, grad_pos, grad_cls, None


_encoder_input_op.register_autograd(_backward, setup_context=_setup_context)


def encoder_input(
    x_vis: torch.Tensor, pos_embed: torch.Tensor, cls_token: torch.Tensor, ids_keep: torch.Tensor
) -> torch.Tensor:
    """``x_vis [N, K, D]``, ``pos_embed [1, L+1, D]``, ``cls_token [1, 1, D]``, ``ids_keep [N, K]`` -> ``[N, K+1, D]``.

    Inputs come validated and contiguous from ``fastmae.ops.encoder_input``.
    """
    assert x_vis.dim() == 3 and pos_embed.dim() == 3 and cls_token.dim() == 3 and ids_keep.dim() == 2
    return _encoder_input_op(x_vis, pos_embed, cls_token, ids_keep)
