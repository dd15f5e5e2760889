"""Fixed 2-D sine-cosine position embeddings, as the official MAE builds them.

Built in float64 and cast to float32 at the end. Channel layout for an embedding of width ``D``:

    [ sin(w·ω) | cos(w·ω) | sin(h·ω) | cos(h·ω) ]      each block D/4 wide, ω_k = 10000^(-k/(D/4))

i.e. the first half of the channels encodes the column (w), the second half the row (h). Rows of
the result are patches in row-major order; with ``cls_token=True`` a zero row is prepended.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["get_1d_sincos_pos_embed", "get_2d_sincos_pos_embed", "interpolate_pos_embed"]


def square_side(num_patches: int) -> int | None:
    """The side of a square grid of ``num_patches`` patches, or None when it is not a square."""
    side = math.isqrt(num_patches)
    return side if side * side == num_patches else None


def get_1d_sincos_pos_embed(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Sine-cosine embedding of positions ``pos`` (any shape, flattened) -> ``[M, embed_dim]`` float64."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even for a 1-D sin-cos embedding, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # [D/2]
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]  # [M, D/2]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # [M, D]


def get_2d_sincos_pos_embed(
    embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False
) -> torch.Tensor:
    """2-D sine-cosine embedding for a ``grid_size`` = ``h`` or ``(h, w)`` patch grid.

    Returns:
        float32 tensor ``[h*w (+1), embed_dim]``; the optional first row (cls) is zeros.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for a 2-D sin-cos embedding, got {embed_dim}")
    h, w = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    # The official code builds meshgrid(w, h) and stacks it, so grid[0] varies along w (columns).
    grid_w = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w)  # [h, w]
    grid_h = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)  # [h, w]
    emb = torch.cat(
        [get_1d_sincos_pos_embed(embed_dim // 2, grid_w), get_1d_sincos_pos_embed(embed_dim // 2, grid_h)],
        dim=1,
    )  # [h*w, D]
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), emb], dim=0)
    return emb.float()


def interpolate_pos_embed(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None,
    num_extra_tokens: int = 1,
) -> torch.Tensor:
    """Bicubically resize a (learned or loaded) position embedding to another patch grid.

    Args:
        pos_embed: ``[1, extra + h*w, D]``; the first ``num_extra_tokens`` rows (cls) are kept as is.
        new_grid: target ``(h', w')``.
        old_grid: source ``(h, w)``; defaults to a square grid.
    Returns:
        ``[1, extra + h'*w', D]`` in the dtype of ``pos_embed``.

    This mirrors the official ``util/pos_embed.interpolate_pos_embed`` used for fine-tuning. For the
    fixed sin-cos tables of a pretraining model, prefer rebuilding with ``get_2d_sincos_pos_embed``,
    which is exact at any grid; the model does that itself when it sees another resolution.
    """
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must be [1, tokens, D], got {tuple(pos_embed.shape)}")
    extra = pos_embed[:, :num_extra_tokens]
    grid = pos_embed[:, num_extra_tokens:]
    n = grid.shape[1]
    if old_grid is None:
        side = square_side(n)
        if side is None:
            raise ValueError(f"cannot infer a square grid from {n} position rows; pass old_grid")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"old_grid {old_grid} does not match {n} position rows")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    d = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2).float()  # [1, D, h, w]
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d).to(pos_embed.dtype)
    return torch.cat([extra, grid], dim=1)
