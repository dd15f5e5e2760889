"""Masking: MAE's per-sample random masking, and the masking lesson's ``MaskGenerator``.

Two conventions meet here, and they are opposite:

* the **model** (official MAE): ``mask`` is float ``[N, L]`` with **1 = removed**, 0 = kept;
* the **lesson** (SimMIM style, ``MaskGenerator``): ``masks`` are pixel-resolution arrays with
  **1 = kept**, 0 = masked, so that ``image * mask`` shows the visible part.

``MaskGenerator.to_model_mask`` converts the latter into the former.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from . import _validate as check
from . import ops
from .reference import gather_tokens_ref

__all__ = ["random_masking", "MaskGenerator"]


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None, *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official ``random_masking``: keep ``int(L * (1 - mask_ratio))`` tokens of each sample.

    Args:
        x: ``[N, L, D]`` tokens.
        mask_ratio: in ``[0, 1)``; a ratio that keeps no token is refused.
        noise: ``[N, L]``, small = kept; drawn with ``torch.rand`` when omitted.
    Returns:
        ``x_masked [N, K, D]`` (kept tokens in noise order), ``mask [N, L]`` (float, 1 = removed),
        ``ids_restore [N, L]``.

    The indices alone (no token gather) are ``fastmae.ops.masking_ids(noise, len_keep)``.
    """
    check.tensor("x", x, 3)
    n, num_patches, _ = x.shape
    if n == 0:
        raise ValueError(f"x is an empty batch (shape {tuple(x.shape)})")
    len_keep = check.len_keep(num_patches, mask_ratio)
    if noise is None:
        noise = torch.rand(n, num_patches, device=x.device)
    check.noise(noise, n, num_patches, x.device)
    masking = ops.masking_ids(noise, len_keep, backend=backend)
    return gather_tokens_ref(x, masking.ids_keep), masking.mask, masking.ids_restore


class MaskGenerator:
    """The masking lesson's generator: one random patch mask per image, at pixel resolution.

    ``mask_count = ceil(token_count * mask_ratio)`` patches of ``mask_patch_size`` pixels are masked
    in each image, chosen by a random permutation; ``__call__`` returns ``(mask_ids, ids_keeps,
    masks)`` as the lesson does: the masked patch indices, the kept ones (both in permutation order),
    and ``masks[i]`` of shape ``[input_size, input_size]`` with **1 = kept, 0 = masked**.

    Beyond the lesson:
        model_patch_size: SimMIM's coarse masks over finer model patches — each mask patch covers
            ``(mask_patch_size / model_patch_size)²`` model patches; ``to_model_mask`` uses it.
        seed: makes the generator reproducible (its own ``numpy.random.Generator``); ``None`` uses
            NumPy's global state as the lesson does.
        :meth:`generate`: a batched torch version that runs on any device.
    """

    def __init__(self, input_size: int = 192, mask_patch_size: int = 16, mask_ratio: float = 0.8,
                 model_patch_size: int | None = None, seed: int | None = None):
        for name, v in (("input_size", input_size), ("mask_patch_size", mask_patch_size)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if input_size % mask_patch_size:
            raise ValueError(f"input_size ({input_size}) must be divisible by mask_patch_size ({mask_patch_size})")
        if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)):
            raise TypeError(f"mask_ratio must be a float in [0, 1], got {type(mask_ratio).__name__}")
        if not math.isfinite(mask_ratio) or not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
        model_patch_size = mask_patch_size if model_patch_size is None else model_patch_size
        if isinstance(model_patch_size, bool) or not isinstance(model_patch_size, int):
            raise TypeError(f"model_patch_size must be an int, got {type(model_patch_size).__name__}")
        if model_patch_size < 1 or mask_patch_size % model_patch_size:
            raise ValueError(
                f"model_patch_size ({model_patch_size}) must be >= 1 and divide mask_patch_size ({mask_patch_size})"
            )
        self.input_size = input_size
        self.mask_patch_size = mask_patch_size
        self.mask_ratio = float(mask_ratio)
        self.model_patch_size = model_patch_size
        self.rand_size = input_size // mask_patch_size
        self.scale = mask_patch_size // model_patch_size
        self.token_count = self.rand_size**2
        self.mask_count = int(np.ceil(self.token_count * self.mask_ratio))
        self.rng = np.random.default_rng(seed) if seed is not None else None

    def _permutation(self) -> np.ndarray:
        if self.rng is None:
            return np.random.permutation(self.token_count)
        return self.rng.permutation(self.token_count)

    def __call__(self, images: Sequence) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """One mask per image in ``images`` (anything with a length: the images are only counted)."""
        try:
            count = len(images)
        except TypeError:
            raise TypeError(f"images must be a sequence or array of images, got {type(images).__name__}") from None
        mask_ids, ids_keeps, masks = [], [], []
        for _ in range(count):
            permutation = self._permutation()
            mask_idx, ids_keep = permutation[: self.mask_count], permutation[self.mask_count :]
            mask = np.ones(self.token_count, dtype=int)
            mask[mask_idx] = 0
            mask = mask.reshape(self.rand_size, self.rand_size)
            mask = mask.repeat(self.mask_patch_size, axis=0).repeat(self.mask_patch_size, axis=1)
            mask_ids.append(mask_idx)
            ids_keeps.append(ids_keep)
            masks.append(mask)
        return mask_ids, ids_keeps, masks

    def generate(self, batch_size: int, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Batched, on ``device``: ``[batch_size, rand_size, rand_size]`` int64, 1 = kept, 0 = masked.

        Exactly ``mask_count`` zeros per sample, drawn with ``torch.rand(...).argsort`` (``generator``
        makes it reproducible). Upsample with :meth:`to_pixels` or convert with :meth:`to_model_mask`.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        noise = torch.rand(batch_size, self.token_count, device=device, generator=generator)
        rank = noise.argsort(dim=1).argsort(dim=1)  # [B, T] each patch's rank in its sample
        keep = (rank >= self.mask_count).long()  # the mask_count lowest ranks are masked
        return keep.reshape(batch_size, self.rand_size, self.rand_size)

    def to_pixels(self, keep: torch.Tensor) -> torch.Tensor:
        """``[B, r, r]`` patch mask -> ``[B, input_size, input_size]`` pixel mask (same values)."""
        s = self.mask_patch_size
        return keep.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)

    def to_model_mask(self, keep) -> torch.Tensor:
        """Lesson convention -> model convention: float ``[B, L]`` with **1 = removed**.

        Args:
            keep: a patch-level mask ``[B, r, r]`` from :meth:`generate` or a list of the lesson's
                pixel masks (1 = kept); ``L = (input_size / model_patch_size)²``.

        Masks with the same number of removed patches per sample can drive the model's loss
        directly (``fastmae.ops.masked_mse_loss``); the model's own masking keeps the official
        ``random_masking``.
        """
        if isinstance(keep, (list, tuple)):
            arr = np.stack([np.asarray(m) for m in keep])  # [B, S, S] pixel masks
            s = self.mask_patch_size
            keep = torch.from_numpy(arr[:, ::s, ::s].copy())
        if not isinstance(keep, torch.Tensor) or keep.dim() != 3 or keep.shape[1:] != (self.rand_size, self.rand_size):
            raise ValueError(
                f"keep must be [B, {self.rand_size}, {self.rand_size}] or a list of "
                f"{self.input_size}x{self.input_size} masks"
            )
        fine = keep.repeat_interleave(self.scale, dim=1).repeat_interleave(self.scale, dim=2)  # [B, g, g]
        return (1 - fine.float()).reshape(keep.shape[0], -1)
