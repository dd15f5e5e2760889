"""ViT building blocks with timm's parameter names, so official checkpoints load as they are.

``PatchEmbed`` (conv), ``Attention`` (fused qkv, ``F.scaled_dot_product_attention``), ``Mlp`` (exact
GELU) and the pre-norm ``Block``. No timm needed; no drop-path or layer-scale (MAE uses neither).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PatchEmbed", "Attention", "Mlp", "Block", "to_2tuple"]


def to_2tuple(x: int | tuple[int, int], name: str = "value") -> tuple[int, int]:
    """``7 -> (7, 7)``; a pair stays a pair. Anything else is a ``TypeError`` naming ``name``."""
    if isinstance(x, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {x!r}")
    if isinstance(x, int):
        return (x, x)
    if isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in x):
        return (int(x[0]), int(x[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {x!r}")


class PatchEmbed(nn.Module):
    """Image -> patch embeddings with one strided conv: ``[N, C, H, W]`` -> ``[N, L, D]``.

    ``img_size`` is what the model is built for; any ``H x W`` divisible by the patch works.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768):
        super().__init__()
        self.img_size = to_2tuple(img_size, "img_size")
        self.patch_size = patch_size
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [N, D, h, w] -> [N, L, D]


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection ([q | k | v], then heads)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [N, heads, T, head_dim]
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    """``fc1 -> GELU (exact) -> fc2``."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
