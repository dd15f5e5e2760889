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

from ._common import NUM_WARPS, empty, promoted_dtype, row_blocks

__all__ = ["decoder_input"]

_BWD_TILES_PER_PROG = 8  # backward tiles one program walks before writing its mask-token partial


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
    n_rows,  # N * (L+1), the number of output rows
    BLOCK_R: tl.constexpr,  # output rows per program
    BLOCK_D: tl.constexpr,  # columns per program (power of two)
):
    # Program (pid_r, pid_d) writes the tile out[rows, cols] of the output viewed as [N*(L+1), D].
    pid_r = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] flat row n*(L+1) + t
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    row_ok = rows < n_rows
    col_ok = cols < D
    n = rows // (L + 1)  # sample
    t = rows - n * (L + 1)  # row inside the sample, also the pos-embed row: 0 is cls, 1 + l is patch l
    is_tok = t > 0

    # r = ids_restore[n, t-1]; the source is x[n, 1 + r] when 0 <= r < K, the mask token otherwise.
    r = tl.load(IDS + n * L + (t - 1), mask=row_ok & is_tok, other=-1).to(tl.int64)  # [BLOCK_R]
    visible = (r >= 0) & (r < K)
    take_x = row_ok & (~is_tok | visible)  # cls row or a visible patch
    src_row = tl.where(is_tok, 1 + tl.where(visible, r, 0), 0)  # [BLOCK_R], always in [0, K]

    cm = col_ok[None, :]
    x = tl.load(X + (n * (K + 1) + src_row)[:, None] * D + cols[None, :], mask=take_x[:, None] & cm, other=0.0)
    pos = tl.load(POS + t[:, None] * D + cols[None, :], mask=row_ok[:, None] & cm, other=0.0)
    tok = tl.load(MASK + cols, mask=col_ok, other=0.0)  # [BLOCK_D], read once per program

    # out = (x or mask_token) + pos, in float32, rounded once to the output dtype.
    src = tl.where(take_x[:, None], x.to(tl.float32), tok.to(tl.float32)[None, :])
    out = src + pos.to(tl.float32)
    tl.store(OUT + rows[:, None] * D + cols[None, :], out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & cm)


@triton.jit
def _decoder_input_bwd_kernel(
    G,  # pointer to the upstream gradient [N, L+1, D], contiguous
    IDS,  # pointer to ids_restore [N, L] (int32 or int64)
    GX,  # pointer to grad_x [N, K+1, D], contiguous (output)
    PART,  # pointer to the float32 mask-token partial sums [P, D], one row per row-program (output)
    K,  # visible tokens per sample
    L,  # patches per sample
    D,  # token width
    n_rows,  # N * (L+1), the number of gradient rows
    TILES: tl.constexpr,  # row tiles each program walks, in order (a loop, not unrolled: fewer registers)
    BLOCK_R: tl.constexpr,  # rows per tile
    BLOCK_D: tl.constexpr,  # columns per program (power of two)
):
    # Program (pid_r, pid_d) reads g rows [pid_r * TILES * BLOCK_R, (pid_r+1) * TILES * BLOCK_R):
    # visible rows go to their place in grad_x, masked rows add into the mask-token partial.
    pid_r = tl.program_id(0)
    pid_d = tl.program_id(1)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    col_ok = cols < D
    cm = col_ok[None, :]
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)  # masked rows' sum, per tile row
    for i in range(TILES):
        rows = (pid_r.to(tl.int64) * TILES + i) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
        row_ok = rows < n_rows
        n = rows // (L + 1)
        t = rows - n * (L + 1)
        is_tok = t > 0
        r = tl.load(IDS + n * L + (t - 1), mask=row_ok & is_tok, other=-1).to(tl.int64)  # [BLOCK_R]
        visible = (r >= 0) & (r < K)
        to_x = row_ok & (~is_tok | visible)  # cls row or a visible patch: written to grad_x
        to_mask = row_ok & is_tok & ~visible  # a masked patch: summed into the mask token
        dst_row = tl.where(is_tok, 1 + tl.where(visible, r, 0), 0)  # [BLOCK_R], always in [0, K]

        g = tl.load(G + rows[:, None] * D + cols[None, :], mask=row_ok[:, None] & cm, other=0.0).to(tl.float32)
        tl.store(
            GX + (n * (K + 1) + dst_row)[:, None] * D + cols[None, :],
            g.to(GX.dtype.element_ty),
            mask=to_x[:, None] & cm,
        )
        acc += tl.where(to_mask[:, None], g, 0.0)
    part = tl.sum(acc, axis=0)  # [BLOCK_D], a fixed reduction order
    tl.store(PART + pid_r.to(tl.int64) * D + cols, part, mask=col_ok)


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------


def _forward(x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
    n, k1, d = x.shape
    num_patches = ids_restore.shape[1]
    out = empty((n, num_patches + 1, d), promoted_dtype(x, mask_token, pos_embed), x.device)  # [N, L+1, D]
    n_rows = n * (num_patches + 1)
    block_r, block_d = row_blocks(d)
    grid = (triton.cdiv(n_rows, block_r), triton.cdiv(d, block_d))
    _decoder_input_kernel[grid](
        x, ids_restore, mask_token, pos_embed, out, k1 - 1, num_patches, d, n_rows,
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )
    return out


def _backward_x_mask(
    grad: torch.Tensor, ids_restore: torch.Tensor, k1: int, x_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``grad [N, L+1, D]`` -> ``grad_x [N, K+1, D]`` (``x_dtype``), ``grad_mask_token [D]`` (float32)."""
    n, l1, d = grad.shape
    n_rows = n * l1
    block_r, block_d = row_blocks(d)
    tiles = min(_BWD_TILES_PER_PROG, triton.cdiv(n_rows, block_r))
    progs = triton.cdiv(n_rows, tiles * block_r)
    grad_x = empty((n, k1, d), x_dtype, grad.device)  # [N, K+1, D]
    part = empty((progs, d), torch.float32, grad.device)  # [P, D]
    _decoder_input_bwd_kernel[(progs, triton.cdiv(d, block_d))](
        grad, ids_restore, grad_x, part, k1 - 1, l1 - 1, d, n_rows,
        TILES=tiles, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )
    return grad_x, part.sum(0)  # fixed-order sum of the partials


# --------------------------------------------------------------------------------------------------
# custom ops and autograd
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("fastmae::decoder_input", mutates_args=())
def _decoder_input_op(
    x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor, pos_embed: torch.Tensor
) -> torch.Tensor:
    return _forward(x, ids_restore, mask_token, pos_embed)


@_decoder_input_op.register_fake
def _(x, ids_restore, mask_token, pos_embed):
    n, _, d = x.shape
    return x.new_empty((n, ids_restore.shape[1] + 1, d), dtype=promoted_dtype(x, mask_token, pos_embed))


@torch.library.custom_op("fastmae::decoder_input_bwd", mutates_args=())
def _decoder_input_bwd_op(
    grad: torch.Tensor, ids_restore: torch.Tensor, k1: int, x_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward_x_mask(grad, ids_restore, k1, x_dtype)


@_decoder_input_bwd_op.register_fake
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
