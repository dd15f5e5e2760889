"""The fast path written with torch ops: what the ``"torch"`` backend runs.

Same results as ``fastmae.reference`` but less work: read only the visible patches, touch only the
masked patches in the loss. Each function expects the checks in ``fastmae.ops`` to have run.
"""

from __future__ import annotations

import torch

from .reference import NORM_PIX_EPS, gather_tokens_ref, patchify_ref


def patchify_gather(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[N, C, H, W]``, ``ids_keep [N, K]`` -> ``[N, K, p*p*C]`` reading only the named patches."""
    n, c, hh, ww = imgs.shape
    p = patch_size
    w = ww // p
    grid = imgs.reshape(n, c, hh // p, p, w, p)  # a view
    rows, cols = ids_keep // w, ids_keep % w  # [N, K]
    batch = torch.arange(n, device=imgs.device)[:, None]  # [N, 1]
    # Advanced indexing on dims (0, 2, 4) with the slices between moves the indexed dims first:
    # [N, K, C, p, p], from which (p, q, c) order is one permute.
    patches = grid[batch, :, rows, :, cols, :]  # [N, K, C, p, p]
    return patches.permute(0, 1, 3, 4, 2).reshape(n, ids_keep.shape[1], p * p * c)


def encoder_input(
    x_vis: torch.Tensor, pos_embed: torch.Tensor, cls_token: torch.Tensor, ids_keep: torch.Tensor
) -> torch.Tensor:
    """``cls + pos[0]`` then ``x_vis + pos[1 + ids_keep]`` -> ``[N, K+1, D]`` (promoted dtype)."""
    n = x_vis.shape[0]
    pos = pos_embed[0, 1:][ids_keep]  # [N, K, D]
    cls = (cls_token + pos_embed[:, :1]).expand(n, -1, -1)  # [N, 1, D]
    return torch.cat([cls, x_vis + pos], dim=1)


def decoder_input(
    x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor, pos_embed: torch.Tensor
) -> torch.Tensor:
    """Visible rows to their restored places, the mask token elsewhere, plus positions -> ``[N, L+1, D]``."""
    n, k1, d = x.shape
    visible = ids_restore < k1 - 1  # [N, L]
    src = gather_tokens_ref(x[:, 1:], ids_restore.clamp(max=k1 - 2))  # [N, L, D]
    tokens = torch.where(visible[..., None], src, mask_token)  # [N, L, D]
    return torch.cat([x[:, :1], tokens], dim=1) + pos_embed


def masked_mse_loss(
    pred: torch.Tensor,
    imgs: torch.Tensor,
    mask: torch.Tensor | None,
    patch_size: int,
    norm_pix_loss: bool,
    ids_masked: torch.Tensor | None,
) -> torch.Tensor:
    """Per-patch MSE against the (normalised) target, averaged over masked patches, in float32."""
    if ids_masked is not None:
        target = patchify_gather(imgs, ids_masked, patch_size).float()  # [N, M, P]
    else:
        target = patchify_ref(imgs, patch_size).float()  # [N, L, P]
    if norm_pix_loss:
        var, mean = torch.var_mean(target, dim=-1, keepdim=True)  # unbiased variance
        target = (target - mean) * torch.rsqrt(var + NORM_PIX_EPS)
    err = (pred.float() - target).pow(2).mean(dim=-1)  # [N, L] or [N, M]
    if ids_masked is not None:
        return err.sum() / max(err.numel(), 1)
    mask = mask.float()
    den = mask.sum()
    return (err * mask).sum() / torch.where(den > 0, den, torch.ones_like(den))
