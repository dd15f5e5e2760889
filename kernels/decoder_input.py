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

An index outside ``[0, K)`` (a masked patch, or a bad index when validation was skipped on CUDA)
selects the mask token, in the forward and the backward alike: nothing reads or writes out of bounds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import NUM_WARPS, empty, fake, launch, op, promoted_dtype, row_blocks

__all__ = ["decoder_input"]

# Backward tiles one program walks before writing its mask-token partial: 2 keeps the grid above 4
# waves at the ViT-B/16 decoder (256 x 13 x 2 programs) while the partials stay small (N*13*D float32,
# 6.8 MB written and read again: ~6% of the op's bytes).
_BWD_TILES_PER_PROG = 2


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
    K,  # visible tokens per sample
    L,  # patches per sample
    D,  # token width
    BLOCK_R: tl.constexpr,  # output rows per program
    BLOCK_D: tl.constexpr,  # columns per program (power of two)
):
    # grid = (N, cdiv(L+1, BLOCK_R), cdiv(D, BLOCK_D)): program (n, b, c) writes rows
    # [b*BLOCK_R, (b+1)*BLOCK_R) of sample n, columns of block c. Rows inside a sample are int32
    # ((L+1)*D < 2**31, checked by fastmae.ops); the sample's base offsets are int64 scalars.
    n = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] output row = pos-embed row
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    row_ok = t < L + 1
    col_ok = cols < D
    is_tok = t > 0

    # r = ids_restore[n, t-1]; the source is x[n, 1 + r] when 0 <= r < K, the mask token otherwise.
    r = tl.load(IDS + n * L + (t - 1), mask=row_ok & is_tok, other=-1)  # [BLOCK_R]
    visible = (r >= 0) & (r < K)
    take_x = row_ok & (~is_tok | visible)  # cls row or a visible patch
    src_row = tl.where(is_tok, 1 + tl.where(visible, r, 0), 0).to(tl.int32)  # [BLOCK_R], in [0, K]

    cm = col_ok[None, :]
    x = tl.load(X + n * (K + 1) * D + (src_row * D)[:, None] + cols[None, :], mask=take_x[:, None] & cm, other=0.0)
    pos = tl.load(POS + (t * D)[:, None] + cols[None, :], mask=row_ok[:, None] & cm, other=0.0)
    # The mask token, loaded straight into the tile's layout where a row takes it (cache hits): a
    # [BLOCK_D] load broadcast over the rows would go through shared memory.
    take_tok = row_ok & ~take_x
    tok = tl.load(MASK + (cols[None, :] + tl.zeros([BLOCK_R, 1], tl.int32)), mask=take_tok[:, None] & cm, other=0.0)

    # out = (x or mask_token) + pos, in float32, rounded once to the output dtype.
    src = tl.where(take_x[:, None], x.to(tl.float32), tok.to(tl.float32))
    out = src + pos.to(tl.float32)
    tl.store(OUT + n * (L + 1) * D + (t * D)[:, None] + cols[None, :], out.to(OUT.dtype.element_ty),
             mask=row_ok[:, None] & cm)


@triton.jit
def _decoder_input_bwd_kernel(
    G,  # pointer to the upstream gradient [N, L+1, D], contiguous
    IDS,  # pointer to ids_restore [N, L] (int32 or int64)
    GX,  # pointer to grad_x [N, K+1, D], contiguous (output)
    PART,  # pointer to the float32 mask-token partial sums [N * B, D], B row programs per sample (output)
    K,  # visible tokens per sample
    L,  # patches per sample
    D,  # token width
    TILES: tl.constexpr,  # row tiles each program walks, in order (a loop, not unrolled: fewer registers)
    BLOCK_R: tl.constexpr,  # rows per tile
    BLOCK_D: tl.constexpr,  # columns per program (power of two)
):
    # grid = (N, B = cdiv(L+1, TILES*BLOCK_R), cdiv(D, BLOCK_D)): program (n, b, c) reads gradient
    # rows [b*TILES*BLOCK_R, (b+1)*TILES*BLOCK_R) of sample n: visible rows go to their place in
    # grad_x, masked rows add into the program's mask-token partial PART[n*B + b].
    n = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    col_ok = cols < D
    cm = col_ok[None, :]
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)  # masked rows' sum, per tile row
    for i in range(TILES):
        t = (b * TILES + i) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] gradient rows of sample n, int32
        row_ok = t < L + 1
        is_tok = t > 0
        r = tl.load(IDS + n * L + (t - 1), mask=row_ok & is_tok, other=-1)  # [BLOCK_R]
        visible = (r >= 0) & (r < K)
        to_x = row_ok & (~is_tok | visible)  # cls row or a visible patch: written to grad_x
        to_mask = row_ok & is_tok & ~visible  # a masked patch: summed into the mask token
        dst_row = tl.where(is_tok, 1 + tl.where(visible, r, 0), 0).to(tl.int32)  # [BLOCK_R], in [0, K]

        g = tl.load(G + n * (L + 1) * D + (t * D)[:, None] + cols[None, :], mask=row_ok[:, None] & cm,
                    other=0.0).to(tl.float32)
        tl.store(GX + n * (K + 1) * D + (dst_row * D)[:, None] + cols[None, :], g.to(GX.dtype.element_ty),
                 mask=to_x[:, None] & cm)
        acc += tl.where(to_mask[:, None], g, 0.0)
    part = tl.sum(acc, axis=0)  # [BLOCK_D], a fixed reduction order
    tl.store(PART + (n * tl.num_programs(1) + b) * D + cols, part, mask=col_ok)


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------


def _forward(x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
    n, k1, d = x.shape
    num_patches = ids_restore.shape[1]
    out = empty((n, num_patches + 1, d), promoted_dtype(x, mask_token, pos_embed), x.device)  # [N, L+1, D]
    block_r, block_d = row_blocks(d)
    grid = (n, triton.cdiv(num_patches + 1, block_r), triton.cdiv(d, block_d))
    launch(_decoder_input_kernel)[grid](
        x, ids_restore, mask_token, pos_embed, out, k1 - 1, num_patches, d,
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )
    return out


def _backward_x_mask(
    grad: torch.Tensor, ids_restore: torch.Tensor, k1: int, x_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``grad [N, L+1, D]`` -> ``grad_x [N, K+1, D]`` (``x_dtype``), ``grad_mask_token [D]`` (float32)."""
    n, l1, d = grad.shape
    block_r, block_d = row_blocks(d)
    row_programs = triton.cdiv(l1, _BWD_TILES_PER_PROG * block_r)  # per sample
    grad_x = empty((n, k1, d), x_dtype, grad.device)  # [N, K+1, D]
    part = empty((n * row_programs, d), torch.float32, grad.device)  # [N * B, D]
    launch(_decoder_input_bwd_kernel)[(n, row_programs, triton.cdiv(d, block_d))](
        grad, ids_restore, grad_x, part, k1 - 1, l1 - 1, d,
        TILES=_BWD_TILES_PER_PROG, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS,
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
