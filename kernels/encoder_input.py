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
The column sums come from one kernel that walks ``n`` in a fixed order per program and writes
per-program partials, summed in a fixed order afterwards: deterministic, no atomics. The pos-embed
rows are found through the inverse map ``inv[n, l] = k`` (-1 where ``l`` is not kept; built by
``inverse_ids`` in ``_common``, shared with patchify_gather's backward), which assumes the ids of one
sample are distinct (``masking_ids`` makes them so); with a repeated id only one of its rows would
be counted.

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

from ._common import (NUM_WARPS, empty, fake, image_groups, inverse_ids, launch, next_power_of_2, op,
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


_BWD_BLOCK_N = 8  # samples per backward tile
_BWD_N_PER_PROG = 64  # samples one backward program sums before writing its partial


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
        ids_ok = ids.to(tl.uint64) < L.to(tl.uint64)  # 0 <= id < L in one comparison (a negative id wraps past L)
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
def _encoder_input_bwd_kernel(
    G,  # pointer to the upstream gradient [N, K+1, D], contiguous
    INV,  # pointer to inv [N, L] int32: k where ids_keep[n, k] == l, else -1 (read only if HAS_POS)
    PART,  # pointer to the float32 partial sums [S, T, D], S = cdiv(N, N_PER_PROG)
    N,  # batch size
    K,  # kept tokens per sample
    L,  # patches per sample
    D,  # token width
    T,  # output rows: 1 (cls only) or L + 1 (cls and every pos-embed row)
    HAS_POS: tl.constexpr,  # compute the pos-embed rows t >= 1 (needs INV)
    N_PER_PROG: tl.constexpr,  # samples each program sums (a multiple of BLOCK_N)
    BLOCK_N: tl.constexpr,  # samples per tile
    BLOCK_D: tl.constexpr,  # columns per program (power of two)
):
    # Program (t, pid_d, s) sums, over n in [s*N_PER_PROG, (s+1)*N_PER_PROG), the gradient row that
    # feeds table row t:  t = 0 -> g[n, 0];  t = 1 + l -> g[n, 1 + inv[n, l]] when inv[n, l] >= 0.
    t = tl.program_id(0)
    pid_d = tl.program_id(1)
    s = tl.program_id(2)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    col_ok = cols < D
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for i in tl.static_range(0, N_PER_PROG, BLOCK_N):
        n = s.to(tl.int64) * N_PER_PROG + i + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        n_ok = n < N
        if HAS_POS:
            # inv[n, t-1]; row t = 0 reads inv[n, 0] (in bounds) and ignores it
            k = tl.load(INV + n * L + tl.maximum(t - 1, 0), mask=n_ok, other=-1).to(tl.int64)  # [BLOCK_N]
            j = tl.where(t > 0, 1 + k, 0)  # gradient row inside the sample (0 feeds the cls row)
            # t = 0: every sample; t > 0: samples that kept patch t-1 (k in [0, K); -1 = not kept)
            hit = n_ok & (tl.where(t > 0, k, 0) >= 0) & (j <= K)
        else:
            hit = n_ok
            j = tl.zeros((BLOCK_N,), dtype=tl.int64)
        g = tl.load(G + (n * (K + 1) + j)[:, None] * D + cols[None, :], mask=hit[:, None] & col_ok[None, :], other=0.0)
        acc += g.to(tl.float32)
    part = tl.sum(acc, axis=0)  # [BLOCK_D], a fixed reduction order
    tl.store(PART + (s.to(tl.int64) * T + t) * D + cols, part, mask=col_ok)


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


def _column_sums(grad: torch.Tensor, ids_keep: torch.Tensor, num_patches: int, with_pos: bool) -> torch.Tensor:
    """``[T, D]`` float32: row 0 = ``sum_n g[n, 0]``; with ``with_pos`` rows ``1+l`` as in the module doc."""
    n, k1, d = grad.shape
    t_rows = num_patches + 1 if with_pos else 1
    # inv[n, ids_keep[n, k]] = k, -1 for a patch not kept; an out-of-range id names no patch
    inv = inverse_ids(ids_keep, num_patches) if with_pos else grad  # [N, L]; HAS_POS=False never reads it
    _, block_d = row_blocks(d)
    n_per_prog = _BWD_N_PER_PROG if n > _BWD_N_PER_PROG else max(_BWD_BLOCK_N, next_power_of_2(n))
    splits = triton.cdiv(n, n_per_prog)
    part = empty((splits, t_rows, d), torch.float32, grad.device)  # [S, T, D]
    grid = (t_rows, triton.cdiv(d, block_d), splits)
    launch(_encoder_input_bwd_kernel)[grid](
        grad, inv, part, n, k1 - 1, num_patches, d, t_rows,
        HAS_POS=with_pos, N_PER_PROG=n_per_prog, BLOCK_N=_BWD_BLOCK_N, BLOCK_D=block_d, num_warps=NUM_WARPS,
    )
    return part.sum(0)  # fixed-order sum over the splits (a copy of a few KB when there is one)


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
