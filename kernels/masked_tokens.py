"""The decoder's masked tokens: a row gather whose backward writes every gradient row exactly once.

    out[n, m] = x[n, 1 + ids_masked[n, m]]                               # [N, M, D]

(``masked_tokens_ref`` in ``fastmae/reference.py``.) In the model it sits after the decoder blocks, so
``decoder_norm`` and ``decoder_pred`` run on the ``M`` masked rows only. ``x [N, L+1, D]`` has the cls
row first; ``ids_masked`` holds the removed patches in noise order (``ids_shuffle[:, K:]``, as
``masking_ids`` gives it), ``K = L - M``.

Backward, for an upstream gradient ``g [N, M, D]``, written row by row over the whole ``[N, L+1, D]``:
    grad_x[n, 0]     = 0
    grad_x[n, 1 + l] = g[n, r - K]  if r = ids_restore[n, l] >= K,  else 0
``ids_restore`` is the inverse permutation of ``ids_shuffle``, so ``r - K`` is exactly the position of
patch ``l`` in ``ids_masked``: every row is a gather (or zeros), written once — no zero fill, no
scatter, no atomics, deterministic. (torch's gather backward is a zero fill plus a scatter-add.)

An index outside its range (possible only when validation was skipped on CUDA) never reads or writes
out of bounds: a bad ``ids_masked`` entry gives a zero row, a bad ``ids_restore`` entry a zero gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import NUM_WARPS, empty, fake, launch, op, row_blocks

__all__ = ["masked_tokens"]


@triton.jit
def _masked_tokens_kernel(
    X,  # pointer to x [N, L+1, D], contiguous (row 0 is cls)
    IDS,  # pointer to ids_masked [N, M] (int32 or int64)
    OUT,  # pointer to the output [N, M, D], contiguous
    M,  # masked tokens per sample
    L,  # patches per sample
    D,  # token width
    BLOCK_R: tl.constexpr,  # output rows per program
    BLOCK_D: tl.constexpr,  # columns per program (power of two)
):
    # grid = (N, cdiv(M, BLOCK_R), cdiv(D, BLOCK_D)): program (n, b, c) writes rows
    # [b*BLOCK_R, (b+1)*BLOCK_R) of sample n. Rows inside a sample are int32 ((L+1)*D < 2**31,
    # checked by fastmae.ops); the sample's base offsets are int64 scalars.
    n = tl.program_id(0).to(tl.int64)
    m = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] output rows of sample n
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    row_ok = m < M
    col_ok = cols < D
    patch = tl.load(IDS + n * M + m, mask=row_ok, other=-1)  # ids_masked[n, m]
    take = row_ok & (patch >= 0) & (patch < L)  # a bad id reads nothing: its row is zeros
    src = (1 + tl.where(take, patch, 0)).to(tl.int32)  # [BLOCK_R] row of x[n]
    vals = tl.load(X + n * (L + 1) * D + (src * D)[:, None] + cols[None, :],
                   mask=take[:, None] & col_ok[None, :], other=0.0)
    tl.store(OUT + n * M * D + (m * D)[:, None] + cols[None, :], vals, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _masked_tokens_bwd_kernel(
    G,  # pointer to the upstream gradient [N, M, D], contiguous
    IDS_RESTORE,  # pointer to ids_restore [N, L] (int32 or int64), a permutation per row
    GX,  # pointer to grad_x [N, L+1, D], contiguous (output; every element written)
    M,  # masked tokens per sample
    L,  # patches per sample
    D,  # token width
    BLOCK_R: tl.constexpr,  # gradient rows per program
    BLOCK_D: tl.constexpr,  # columns per program (power of two)
):
    # grid = (N, cdiv(L+1, BLOCK_R), cdiv(D, BLOCK_D)): program (n, b, c) writes rows
    # [b*BLOCK_R, (b+1)*BLOCK_R) of grad_x[n]: 0 is cls, 1 + l is patch l.
    n = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    row_ok = t < L + 1
    col_ok = cols < D
    is_tok = t > 0
    rank = tl.load(IDS_RESTORE + n * L + (t - 1), mask=row_ok & is_tok, other=-1)
    slot = rank - (L - M)  # position of patch l among the masked tokens, when it is one
    take = row_ok & is_tok & (slot >= 0) & (slot < M)
    src = tl.where(take, slot, 0).to(tl.int32)  # [BLOCK_R] row of g[n]
    vals = tl.load(G + n * M * D + (src * D)[:, None] + cols[None, :], mask=take[:, None] & col_ok[None, :],
                   other=0.0)
    tl.store(GX + n * (L + 1) * D + (t * D)[:, None] + cols[None, :], vals.to(GX.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------


def launch_forward(x: torch.Tensor, ids_masked: torch.Tensor) -> torch.Tensor:
    n, l1, d = x.shape
    m = ids_masked.shape[1]
    out = empty((n, m, d), x.dtype, x.device)  # [N, M, D]
    if out.numel():
        block_r, block_d = row_blocks(d)
        grid = (n, triton.cdiv(m, block_r), triton.cdiv(d, block_d))
        launch(_masked_tokens_kernel)[grid](x, ids_masked, out, m, l1 - 1, d,
                                    BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS)
    return out


def launch_backward(grad: torch.Tensor, ids_restore: torch.Tensor, x_dtype: torch.dtype) -> torch.Tensor:
    n, m, d = grad.shape
    num_patches = ids_restore.shape[1]
    grad_x = empty((n, num_patches + 1, d), x_dtype, grad.device)  # [N, L+1, D]
    block_r, block_d = row_blocks(d)
    grid = (n, triton.cdiv(num_patches + 1, block_r), triton.cdiv(d, block_d))
    launch(_masked_tokens_bwd_kernel)[grid](grad, ids_restore, grad_x, m, num_patches, d,
                                    BLOCK_R=block_r, BLOCK_D=block_d, num_warps=NUM_WARPS)
    return grad_x


# --------------------------------------------------------------------------------------------------
# custom ops and autograd
# --------------------------------------------------------------------------------------------------


@op("fastmae::masked_tokens")
def _masked_tokens_op(x: torch.Tensor, ids_masked: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    return launch_forward(x, ids_masked)


@fake(_masked_tokens_op)
def _(x, ids_masked, ids_restore):
    return x.new_empty((x.shape[0], ids_masked.shape[1], x.shape[2]))


@op("fastmae::masked_tokens_bwd")
def _masked_tokens_bwd_op(grad: torch.Tensor, ids_restore: torch.Tensor, x_dtype: torch.dtype) -> torch.Tensor:
    return launch_backward(grad, ids_restore, x_dtype)


@fake(_masked_tokens_bwd_op)
def _(grad, ids_restore, x_dtype):
    return grad.new_empty((grad.shape[0], ids_restore.shape[1] + 1, grad.shape[2]), dtype=x_dtype)


def _setup_context(ctx, inputs, output):
    x, ids_masked, ids_restore = inputs
    ctx.save_for_backward(ids_masked, ids_restore)
    ctx.x_dtype = x.dtype


def _backward(ctx, grad):
    ids_masked, ids_restore = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = _masked_tokens_bwd_op(grad.contiguous(), ids_restore, ctx.x_dtype)
    return grad_x, None, None


_masked_tokens_op.register_autograd(_backward, setup_context=_setup_context)


def masked_tokens(x: torch.Tensor, ids_masked: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """``x [N, L+1, D]``, ``ids_masked [N, M]``, ``ids_restore [N, L]`` -> ``[N, M, D]`` (x's dtype).

    Inputs come validated and contiguous from ``fastmae.ops.masked_tokens``.
    """
    assert x.dim() == 3 and ids_masked.dim() == 2 and ids_restore.dim() == 2
    return _masked_tokens_op(x, ids_masked, ids_restore)
