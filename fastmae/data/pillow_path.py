"""The previous CPU augmentation, kept as the reference the data benchmark measures against.

The official recipe done on the CPU with Pillow (what ``fastmae pretrain`` ran before the input
pipeline moved the resampling to the device): RandomResizedCrop as one ``resize(..., BICUBIC,
box=...)``, a horizontal flip, then ``ToTensor`` + ``Normalize`` in float32. Same draws, in the same
order, as the library's loader (:mod:`fastmae.data.boxes`), so the two produce the same crops.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..reference import IMAGENET_MEAN, IMAGENET_STD
from .boxes import draw_flip, random_resized_crop_box

__all__ = ["pillow_pretrain_transform", "to_normalized_tensor"]


def to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> ``[3, H, W]`` float32, ImageNet-normalised (ToTensor + Normalize), on the CPU."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, H, W]
    mean = torch.tensor(IMAGENET_MEAN, device="cpu").view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device="cpu").view(3, 1, 1)
    return (x - mean) / std


def pillow_pretrain_transform(img: Image.Image, size: tuple[int, int], rng) -> torch.Tensor:
    """RandomResizedCrop (scale 0.2-1, bicubic) + flip (p = 1/2) + normalise: ``[3, S_h, S_w]`` float32.

    ``rng``: a numpy ``Generator`` or ``fastmae.data.boxes.sample_rng(...)``; the same box and flip as
    the loader's for the same generator.

    Pillow's ``resize(box=...)`` samples inside the box but reads source pixels just outside it for
    the bicubic kernel, and rounds to uint8 between its two passes; ``fastmae.ops.resized_crop``
    clamps at the crop's edge (as torchvision's crop-then-resize) and stays in float32.
    """
    img = img.convert("RGB")
    top, left, h, w = random_resized_crop_box(img.width, img.height, rng)
    img = img.resize((size[1], size[0]), Image.BICUBIC, box=(left, top, left + w, top + h))
    if draw_flip(rng):
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return to_normalized_tensor(img)
