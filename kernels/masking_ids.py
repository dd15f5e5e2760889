"""MAE's per-sample masking indices on device, in one kernel: noise -> ids_keep, ids_restore, mask, ids_masked.

The official code sorts the noise of each row (``ids_shuffle = argsort(noise)``), inverts the
permutation (``ids_restore = argsort(ids_shuffle)``) and keeps the first ``K`` of the sorted order.
Both argsorts collapse into one quantity, the rank of each element in its row:

    rank[i] = #{ j : noise[j] < noise[i]  or  (noise[j] == noise[i] and j < i) }

which is the position of ``i`` in a *stable* ascending sort. Then

    ids_restore[i]          = rank[i]           (the inverse permutation of ids_shuffle)
    ids_keep[rank[i]]       = i  when rank[i] < K   (ids_shuffle[:K], kept in noise order)
    ids_masked[rank[i] - K] = i  when rank[i] >= K  (ids_shuffle[K:], removed, in noise order)
    mask[i]                 = 1.0 if rank[i] >= K else 0.0   (1 = removed)

Ranks are a permutation of ``0..L-1`` (the order above is total), so the ``ids_keep`` and
``ids_masked`` scatters write every one of their ``K`` and ``L - K`` slots exactly once: no atomics,
deterministic. Counting costs O(L^2) compares
per row — 38k for ViT-B/16 (L = 196), trivial next to an argsort's launches; the ``j`` loop is chunked,
so any ``L`` runs with a fixed register budget.

NaN: ordered after every number (+inf included), NaNs among themselves by index (any sign or
payload) — what ``torch.argsort(stable=True)`` does (checked on CPU for fp16/bf16/fp32/fp64; torch
puts NaNs at the end of an ascending sort on every device), so the result equals
``masking_ids_ref`` for any noise, and a NaN patch is masked first. ``-0.0`` and ``0.0`` compare
equal (a tie, broken by index), as in torch. fp16/bf16 noise is compared in float32 (exact); float64
noise is compared in float64 inside the kernel (a float32 cast could merge distinct values).

No gradient: ids are integers and ``mask`` is a step function of the noise; every output is marked
non-differentiable (as the reference's ``mask``, which does not require grad).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import NUM_WARPS, empty, fake, launch, next_power_of_2, op

__all__ = ["masking_ids"]

_MAX_BLOCK_I = 32 * NUM_WARPS  # elements ranked per program: one per thread
_MAX_BLOCK_J = 32  # elements compared against per loop step, held in each thread's registers


@triton.jit
def _masking_ids_kernel(
    NOISE,  # pointer to the noise [N, L], row-major (fp16 / bf16 / fp32 / fp64); small = kept
    IDS_KEEP,  # pointer to the output ids_keep [N, K], int64
    IDS_RESTORE,  # pointer to the output ids_restore [N, L], int64
    MASK,  # pointer to the output mask [N, L], float32 (1 = removed)
    IDS_MASKED,  # pointer to the output ids_masked [N, L-K], int64
    L,  # patches per row
    K,  # len_keep: patches kept per row, 1 <= K <= L
    WIDE: tl.constexpr,  # noise is float64: compare in float64 (else in float32, exact for fp16/bf16)
    BLOCK_I: tl.constexpr,  # elements of the row this program ranks (power of two)
    BLOCK_J: tl.constexpr,  # elements compared against per loop step (power of two)
):
    # grid = (N, cdiv(L, BLOCK_I)): program (row, pid_i) ranks elements [pid_i*BLOCK_I, +BLOCK_I)
    row = tl.program_id(0).to(tl.int64)  # int64: row * L must not wrap
    pid_i = tl.program_id(1)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)  # [BLOCK_I] patch indices i
    in_i = offs_i < L
    x_i = tl.load(NOISE + row * L + offs_i, mask=in_i, other=0.0)
    if not WIDE:
        x_i = x_i.to(tl.float32)
    nan_i = x_i != x_i  # [BLOCK_I]

    # rank[i] = #{j : key[j] < key[i]} with key = (isnan, value, index) compared lexicographically.
    # The tile is [BLOCK_J, BLOCK_I] with i across the threads (one i per thread when BLOCK_I =
    # 32 * num_warps) and j along each thread's registers: the x_j loads are warp-uniform (one
    # broadcast transaction) and the sum over j stays inside each thread.
    rank = tl.zeros([BLOCK_I], dtype=tl.int32)
    for j0 in range(0, L, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)  # [BLOCK_J] patch indices j
        in_j = offs_j < L
        x_j = tl.load(NOISE + row * L + offs_j, mask=in_j, other=0.0)
        if not WIDE:
            x_j = x_j.to(tl.float32)
        nan_j = x_j != x_j  # [BLOCK_J]
        xj, xi = x_j[:, None], x_i[None, :]  # -> [BLOCK_J, BLOCK_I]: does j come before i?
        less = (xj < xi) | ((nan_j[:, None] == 0) & nan_i[None, :])  # every number < NaN
        same = (xj == xi) | (nan_j[:, None] & nan_i[None, :])  # NaN ties NaN
        before = less | (same & (offs_j[:, None] < offs_i[None, :]))  # ties: smaller index first
        before = before & in_j[:, None]
        rank += tl.sum(before.to(tl.int32), axis=0)

    # rank is a permutation of 0..L-1 over the valid i, so every store below stays in its row
    tl.store(IDS_RESTORE + row * L + offs_i, rank.to(tl.int64), mask=in_i)
    tl.store(MASK + row * L + offs_i, (rank >= K).to(tl.float32), mask=in_i)
    tl.store(IDS_KEEP + row * K + rank, offs_i.to(tl.int64), mask=in_i & (rank < K))
    tl.store(IDS_MASKED + row * (L - K) + (rank - K), offs_i.to(tl.int64), mask=in_i & (rank >= K))


def _blocks(num_patches: int) -> tuple[int, int]:
    width = next_power_of_2(num_patches)
    return min(_MAX_BLOCK_I, width), min(_MAX_BLOCK_J, width)


def _launch(noise: torch.Tensor, len_keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n, num_patches = noise.shape  # [N, L], contiguous (fastmae.ops made it so)
    assert noise.is_contiguous() and 1 <= len_keep <= num_patches
    ids_keep = empty((n, len_keep), torch.int64, noise.device)  # [N, K]
    ids_restore = empty((n, num_patches), torch.int64, noise.device)  # [N, L]
    mask = empty((n, num_patches), torch.float32, noise.device)  # [N, L]
    ids_masked = empty((n, num_patches - len_keep), torch.int64, noise.device)  # [N, M]
    block_i, block_j = _blocks(num_patches)
    grid = (n, triton.cdiv(num_patches, block_i))
    launch(_masking_ids_kernel)[grid](
        noise, ids_keep, ids_restore, mask, ids_masked, num_patches, len_keep,
        WIDE=noise.dtype == torch.float64, BLOCK_I=block_i, BLOCK_J=block_j, num_warps=NUM_WARPS,
    )
    return ids_keep, ids_restore, mask, ids_masked


@op("fastmae::masking_ids")
def _masking_ids_op(
    noise: torch.Tensor, len_keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch(noise, len_keep)


@fake(_masking_ids_op)
def _(noise: torch.Tensor, len_keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n, num_patches = noise.shape
    return (
        noise.new_empty((n, len_keep), dtype=torch.int64),
        noise.new_empty((n, num_patches), dtype=torch.int64),
        noise.new_empty((n, num_patches), dtype=torch.float32),
        noise.new_empty((n, num_patches - len_keep), dtype=torch.int64),
    )


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(*output)


def _backward(ctx, grad_ids_keep, grad_ids_restore, grad_mask, grad_ids_masked):
    return None, None  # no gradient flows to the noise (nor to len_keep)


_masking_ids_op.register_autograd(_backward, setup_context=_setup_context)


def masking_ids(
    noise: torch.Tensor, len_keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``noise [N, L]`` -> ``ids_keep [N, K]``, ``ids_restore [N, L]``, ``mask [N, L]`` (float32), ``ids_masked [N, M]``.

    Equals ``fastmae.reference.masking_ids_ref``: a stable ascending order of each row (ties by
    patch index, NaN last); indices are int64. Expects the checks of ``fastmae.ops.masking_ids``.
    """
    return _masking_ids_op(noise, len_keep)
