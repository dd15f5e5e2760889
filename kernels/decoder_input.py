"""Decoder input assembly: mask-token scatter, unshuffle and pos-embed add in one pass, forward and backward.

    out[n, 0]     = x[n, 0] + pos_embed[0]                                    # [N, L+1, D]
    out[n, 1 + l] = (x[n, 1 + r] if r < K else mask_token) + pos_embed[1 + l],  r = ids_restore[n, l]

(``decoder_input_ref`` in ``fastmae/reference.py``; ``K = x.shape[1] - 1``.) The result's dtype is
the promotion of the three inputs' dtypes; every sum is computed in float32 and rounded once.

Backward, for an upstream gradient ``g [N, L+1, D]``, in one pass over ``g``:
    grad_x[n, 0]     = g[n, 0]
    grad_x[n, 1 + r] = g[n, 1 + l]          for every l with r = ids_restore[n, l] < K
    grad_mask_token  = sum of g[n, 1 + l]   over every (n, l) with r >= K
    grad_pos_embed   = sum_n g[n]           (only when pos_embed needs grad; a torch reduction)
``ids_restore`` is a permutation of ``[0, L)``, so the scatter writes every visible row of ``grad_x``
exactly once: no atomics, deterministic. The mask-token sum is two-stage: each program sums its rows
in a fixed order into a float32 partial ``[P, D]``, then the partials are summed in a fixed order.

Both kernels run persistent grids (``kernels/_common.persistent_groups``): at most the programs an
H100-class GPU holds at once, each owning a block of rows and columns and looping over every G-th
sample, so that what does not depend on the sample (pos-embed and mask-token rows, offsets, masks)
is loaded or computed once per program.

An index outside ``[0, K)`` (a masked patch, or a bad index when validation was skipped on CUDA)
selects the mask token, in the forward and the backward alike: nothing reads or writes out of bounds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (NUM_WARPS, bf16_rows_as_words, empty, fake, image_groups, launch, op, persistent_groups,
                      promoted_dtype, resident_programs, row_blocks)

__all__ = ["decoder_input"]

# Forward tile elements a program keeps for its whole loop over samples (the pos-embed and mask-token
# rows): 8 per thread at 4 warps, one 16-byte access a row in bf16.
FWD_TILE = 1024
# Backward tile bytes of gradient a program reads per sample: 32 a thread at 4 warps (two 16-byte
# accesses: two rows of 8 in bf16, one row of 8 in float32).
BWD_TILE_BYTES = 4096

# Registers a thread of each kernel compiles to at most (Triton 3.6 and 3.9, sm_80 and sm_90), by
# the bytes of a value of its output (forward) or gradient (backward): they decide how many programs
# an SM holds at once, hence the persistent grid (tests/test_gpu_readiness.py checks every spec's
# compiled registers against it).
_FWD_REGISTERS = {2: 32, 4: 48}
_BWD_REGISTERS = {2: 48, 4: 40}


def bwd_tile(grad_size: int) -> int:
    """Backward tile elements for a gradient of ``grad_size``-byte values."""
    return BWD_TILE_BYTES // grad_size


def fwd_programs_per_sm(out_size: int) -> int:
    """Resident forward programs an SM for an output of ``out_size``-byte values."""
    return resident_programs(_FWD_REGISTERS[out_size], NUM_WARPS)


def bwd_programs_per_sm(grad_size: int) -> int:
    """Resident backward programs an SM for a gradient of ``grad_size``-byte values."""
    return resident_programs(_BWD_REGISTERS[grad_size], NUM_WARPS)


def mask_partial_rows(n: int, num_patches: int, d: int, grad_size: int, sms: int) -> int:
    """Rows of the backward's float32 mask-token partials ``[G * B, D]`` at batch ``n`` on a GPU of
    ``sms`` SMs, for a gradient of ``grad_size``-byte values (the bytes model's launch geometry)."""
    block_r, block_d = row_blocks(d, bwd_tile(grad_size))
    row_blocks_ = triton.cdiv(num_patches + 1, block_r)
    blocks = row_blocks_ * triton.cdiv(d, block_d)
    return persistent_groups(n, blocks, sms * bwd_programs_per_sm(grad_size))[0] * row_blocks_


# --------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _decoder_input_kernel(
    X,  # pointer to x [N, K+1, D], contiguous (row 0 is cls)
    IDS,  # pointer to ids_restore [N, L] (int32 or int64)
    MASK,  # pointer to mask_token [D]
    POS,  # pointer to pos_embed [L+1, D], contiguous
    OUT,  # pointer to the output [N, L+1, D], contiguous
    N,  # samples
    K,  # visible tokens per sample
    L,  # patches per sample
    D,  # token width
    BLOCK_R: tl.constexpr,  # output rows per program
    BLOCK_D: tl.constexpr,  # columns per program (power of two)
):
    # grid = (cdiv(L+1, BLOCK_R), cdiv(D, BLOCK_D), G): program (b, c, g) writes rows
    # [b*BLOCK_R, (b+1)*BLOCK_R), columns of block c, of samples g, g + G, g + 2G, ... (a persistent
    # loop: the pos-embed rows and the mask-token rows, the same for every sample, are loaded and
    # added once per program). Rows inside a sample are int32 ((L+1)*D < 2**31, checked by
    # fastmae.ops); the sample's base offsets are int64 scalars.
    t = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] output row = pos-embed row
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    row_ok = t < L + 1
    is_tok = t > 0
    cm = (cols < D)[None, :]
    io = row_ok[:, None] & cm
    offs = (t * D)[:, None] + cols[None, :]  # [BLOCK_R, BLOCK_D] inside one sample of the output
    # ids_restore[n, t-1] is read for every row, clamped into [0, L) (no masked load); the rows it
    # does not belong to (cls, past the end) ignore it.
    id_col = tl.minimum(tl.maximum(t - 1, 0), L - 1)
    pos = tl.load(POS + offs, mask=io, other=0.0).to(tl.float32)
    # The mask token, loaded straight into the tile's layout (cache hits): a [BLOCK_D] load broadcast
    # over the rows would go through shared memory.
    tok = tl.load(MASK + (cols[None, :] + tl.zeros([BLOCK_R, 1], tl.int32)), mask=io & is_tok[:, None], other=0.0)

    # Sample g's rows, then every G-th sample's: the base pointers advance by a whole stride of G samples.
    g = tl.program_id(2)
    num_g = tl.num_programs(2)
    ids_n = IDS + tl.cast(g, tl.int64) * L
    x_n = X + tl.cast(g, tl.int64) * (K + 1) * D
    out_n = OUT + tl.cast(g, tl.int64) * (L + 1) * D
    for _ in range(g, N, num_g):
        # r = ids_restore[n, t-1]; the source is x[n, 1 + r] when 0 <= r < K, the mask token otherwise.
        r = tl.load(ids_n + id_col)  # [BLOCK_R]
        visible = r.to(tl.uint64) < tl.cast(K, tl.uint64)  # 0 <= r < K at once (a negative r wraps past K)
        take_x = row_ok & (~is_tok | visible)  # cls row or a visible patch
        src_row = tl.where(is_tok, 1 + tl.where(visible, r, 0), 0).to(tl.int32)  # [BLOCK_R], in [0, K]
        x_ptr = x_n + (src_row * D)[:, None] + cols[None, :]
        if X.dtype.element_ty == MASK.dtype.element_ty:
            # rows that do not take x receive the mask token from the masked load itself (no select)
            src = tl.load(x_ptr, mask=take_x[:, None] & cm, other=tok).to(tl.float32)
        else:
            src = tl.where(take_x[:, None], tl.load(x_ptr, mask=take_x[:, None] & cm, other=0.0).to(tl.float32),
                           tok.to(tl.float32))
        # out = (x or mask_token) + pos, in float32, rounded once to the output dtype.
        tl.store(out_n + offs, (src + pos).to(OUT.dtype.element_ty), mask=io)
        ids_n += num_g.to(tl.int64) * L
        x_n += num_g.to(tl.int64) * (K + 1) * D
        out_n += num_g.to(tl.int64) * (L + 1) * D


@triton.jit
def _decoder_input_bwd_kernel(
    G,  # pointer to the upstream gradient [N, L+1, D], contiguous
    IDS,  # pointer to ids_restore [N, L] (int32 or int64)
    GX,  # pointer to grad_x [N, K+1, D], contiguous (output)
    PART,  # pointer to the float32 mask-token partial sums [G * B, D] (output)
    N,  # samples
    K,  # visible tokens per sample
    L,  # patches per sample
    D,  # token width
    BLOCK_R: tl.constexpr,  # rows per tile
    BLOCK_D: tl.constexpr,  # columns per program (power of two)
    CHUNKS: tl.constexpr,  # column chunks of a tile, one per warp (a power of two dividing BLOCK_D / 2)
    WORDS: tl.constexpr,  # G is bf16 on a 4-byte boundary and D is even: the sum reads 32-bit words
):
    # grid = (B = cdiv(L+1, BLOCK_R), cdiv(D, BLOCK_D), G): program (b, c, g) reads gradient rows
    # [b*BLOCK_R, (b+1)*BLOCK_R), columns of block c, of samples g, g + G, g + 2G, ... (a persistent
    # loop, samples in order): visible rows go to their place in grad_x, masked rows add into the
    # program's mask-token partial PART[g*B + b].
    # The tile is [CHUNKS, BLOCK_R, BLOCK_D // CHUNKS], columns split into CHUNKS chunks. Where a
    # chunk's rows and columns fill the 32 lanes of a warp (4 rows of 64 columns: a float32 gradient),
    # Triton 3.9 puts the chunks on the warps and sums the rows with shuffles inside each warp; a
    # [BLOCK_R, BLOCK_D] tile has its rows on different warps and sums them through shared memory, as
    # the 8-row bf16 tiles and Triton 3.6 still do (once per program).
    CW: tl.constexpr = BLOCK_D // CHUNKS  # columns per chunk
    b = tl.program_id(0)
    t = b * BLOCK_R + tl.arange(0, BLOCK_R)[None, :, None]  # [1, BLOCK_R, 1] gradient rows of a sample, int32
    chunk = tl.program_id(1) * BLOCK_D + tl.arange(0, CHUNKS)[:, None, None] * CW  # [CHUNKS, 1, 1] first columns
    cols = chunk + tl.arange(0, CW)[None, None, :]  # [CHUNKS, 1, CW]
    row_ok = t < L + 1
    is_tok = t > 0
    cm = cols < D
    offs = t * D + cols  # [CHUNKS, BLOCK_R, CW] inside one sample of the gradient
    # ids_restore[n, t-1] is read for every row, clamped into [0, L) (no masked load); the rows it
    # does not belong to (cls, past the end) ignore it.
    id_col = tl.minimum(tl.maximum(t - 1, 0), L - 1)
    # The masked rows' sum, per tile row. With WORDS a word holds columns 2i (low half) and 2i + 1
    # (high half): bf16 -> float32 is then `word << 16` and `word & 0xffff0000`, one instruction a
    # value, summed into the even and odd columns' accumulators.
    HW: tl.constexpr = (CW + 1) // 2  # words per chunk (WORDS only; CW is even whenever WORDS)
    wcols = chunk // 2 + tl.arange(0, HW)[None, None, :]  # [CHUNKS, 1, HW] word columns
    woffs = t * (D // 2) + wcols  # [CHUNKS, BLOCK_R, HW] words inside one sample
    wm = wcols < D // 2
    acc = tl.zeros((CHUNKS, BLOCK_R, CW), dtype=tl.float32)
    acc_lo = tl.zeros((CHUNKS, BLOCK_R, HW), dtype=tl.float32)
    acc_hi = tl.zeros((CHUNKS, BLOCK_R, HW), dtype=tl.float32)
    g = tl.program_id(2)
    num_g = tl.num_programs(2)
    ids_n = IDS + tl.cast(g, tl.int64) * L
    g_n = G + tl.cast(g, tl.int64) * (L + 1) * D
    gx_n = GX + tl.cast(g, tl.int64) * (K + 1) * D
    for _ in range(g, N, num_g):
        r = tl.load(ids_n + id_col)  # [1, BLOCK_R, 1]
        visible = r.to(tl.uint64) < tl.cast(K, tl.uint64)  # 0 <= r < K at once (a negative r wraps past K)
        to_x = row_ok & (~is_tok | visible)  # cls row or a visible patch: written to grad_x
        to_mask = row_ok & is_tok & ~visible  # a masked patch: summed into the mask token
        dst_row = tl.where(is_tok, 1 + tl.where(visible, r, 0), 0).to(tl.int32)  # [1, BLOCK_R, 1], in [0, K]
        # Two loads of the tile, on disjoint rows (each gradient row is read once): the rows for
        # grad_x, and the masked rows, zeros elsewhere, for the sum (no select per element).
        g_x = tl.load(g_n + offs, mask=to_x & cm)
        tl.store(gx_n + dst_row * D + cols, g_x.to(GX.dtype.element_ty), mask=to_x & cm)
        if WORDS:
            w = tl.load(g_n.to(tl.pointer_type(tl.int32), bitcast=True) + woffs, mask=to_mask & wm, other=0)
            acc_lo += (w << 16).to(tl.float32, bitcast=True)
            acc_hi += (w & -65536).to(tl.float32, bitcast=True)
        else:
            acc += tl.load(g_n + offs, mask=to_mask & cm, other=0.0).to(tl.float32)
        ids_n += num_g.to(tl.int64) * L
        g_n += num_g.to(tl.int64) * (L + 1) * D
        gx_n += num_g.to(tl.int64) * (K + 1) * D
    # [CHUNKS, CW]: the sum over the rows, a fixed reduction order
    if WORDS:  # the even and odd columns' sums interleaved
        part = tl.reshape(tl.join(tl.sum(acc_lo, axis=1), tl.sum(acc_hi, axis=1)), [CHUNKS, CW])
    else:
        part = tl.sum(acc, axis=1)
    pcols = tl.program_id(1) * BLOCK_D + tl.arange(0, CHUNKS)[:, None] * CW + tl.arange(0, CW)[None, :]
    tl.store(PART + (g * tl.num_programs(0) + b).to(tl.int64) * D + pcols, part, mask=pcols < D)


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------


def _forward(x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
    n, k1, d = x.shape
    num_patches = ids_restore.shape[1]
    out = empty((n, num_patches + 1, d), promoted_dtype(x, mask_token, pos_embed), x.device)  # [N, L+1, D]
    block_r, block_d = row_blocks(d, FWD_TILE)
    blocks = (triton.cdiv(num_patches + 1, block_r), triton.cdiv(d, block_d))
    per_sm = fwd_programs_per_sm(out.element_size())
    grid = (*blocks, image_groups(n, blocks[0] * blocks[1], per_sm, x.device))
    launch(_decoder_input_kernel)[grid](
        x, ids_restore, mask_token, pos_embed, out, n, k1 - 1, num_patches, d,
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )
    return out


def _backward_x_mask(
    grad: torch.Tensor, ids_restore: torch.Tensor, k1: int, x_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``grad [N, L+1, D]`` -> ``grad_x [N, K+1, D]`` (``x_dtype``), ``grad_mask_token [D]`` (float32)."""
    n, l1, d = grad.shape
    block_r, block_d = row_blocks(d, bwd_tile(grad.element_size()))
    blocks = (triton.cdiv(l1, block_r), triton.cdiv(d, block_d))
    grad_x = empty((n, k1, d), x_dtype, grad.device)  # [N, K+1, D]
    per_sm = bwd_programs_per_sm(grad.element_size())
    groups = image_groups(n, blocks[0] * blocks[1], per_sm, grad.device)
    part = empty((groups * blocks[0], d), torch.float32, grad.device)  # [G * B, D]
    launch(_decoder_input_bwd_kernel)[(*blocks, groups)](
        grad, ids_restore, grad_x, part, n, k1 - 1, l1 - 1, d,
        BLOCK_R=block_r, BLOCK_D=block_d, CHUNKS=max(1, min(NUM_WARPS, block_d // 2)), WORDS=bf16_rows_as_words(grad),
        num_warps=NUM_WARPS,
    )
    return grad_x, part.sum(0)  # fixed-order sum of the partials


# --------------------------------------------------------------------------------------------------
# custom ops and autograd
# --------------------------------------------------------------------------------------------------


@op("fastmae::decoder_input")
def _decoder_input_op(
    x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor, pos_embed: torch.Tensor
) -> torch.Tensor:
    return _forward(x, ids_restore, mask_token, pos_embed)


@fake(_decoder_input_op)
def _(x, ids_restore, mask_token, pos_embed):
    n, _, d = x.shape
    return x.new_empty((n, ids_restore.shape[1] + 1, d), dtype=promoted_dtype(x, mask_token, pos_embed))


@op("fastmae::decoder_input_bwd")
def _decoder_input_bwd_op(
    grad: torch.Tensor, ids_restore: torch.Tensor, k1: int, x_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward_x_mask(grad, ids_restore, k1, x_dtype)


@fake(_decoder_input_bwd_op)
def _(grad, ids_restore, k1, x_dtype):
    n, _, d = grad.shape
    return grad.new_empty((n, k1, d), dtype=x_dtype), grad.new_empty((d,), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, ids_restore, mask_token, pos_embed = inputs
    ctx.save_for_backward(ids_restore)
    ctx.k1 = x.shape[1]
    ctx.dtypes = (x.dtype, mask_token.dtype, pos_embed.dtype)


def _backward(ctx, grad):
    (ids_restore,) = ctx.saved_tensors
    x_dtype, mask_dtype, pos_dtype = ctx.dtypes
    need_x, _, need_mask, need_pos = ctx.needs_input_grad
    grad_x = grad_mask = grad_pos = None
    if need_x or need_mask:
        gx, gm = _decoder_input_bwd_op(grad.contiguous(), ids_restore, ctx.k1, x_dtype)
        grad_x = gx if need_x else None
        grad_mask = gm.view(1, 1, -1).to(mask_dtype) if need_mask else None  # [1, 1, D]
    if need_pos:
        grad_pos = grad.sum(0, keepdim=True, dtype=torch.float32).to(pos_dtype)  # [1, L+1, D]
    return grad_x, None, grad_mask, grad_pos


_decoder_input_op.register_autograd(_backward, setup_context=_setup_context)


def decoder_input(
    x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor, pos_embed: torch.Tensor
) -> torch.Tensor:
    """``x [N, K+1, D]``, ``ids_restore [N, L]``, ``mask_token [1, 1, D]``, ``pos_embed [1, L+1, D]`` -> ``[N, L+1, D]``.

    Inputs come validated and contiguous from ``fastmae.ops.decoder_input``.
    """
    assert x.dim() == 3 and ids_restore.dim() == 2 and mask_token.dim() == 3 and pos_embed.dim() == 3
    return _decoder_input_op(x, ids_restore, mask_token, pos_embed)
