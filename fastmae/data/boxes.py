"""The official augmentation's random draws: RandomResizedCrop's box and the horizontal flip.

The box follows torchvision's ``RandomResizedCrop.get_params`` (what the official MAE recipe runs,
``scale=(0.2, 1.0)``, ``ratio=(3/4, 4/3)``), step for step, with a generator of the sample's own in place of
torch's global one (:func:`sample_rng`, or any object with numpy's ``uniform``/``integers``/``random``):

1. up to 10 tries: an area fraction ``s ~ U(scale)`` and an aspect ratio ``r = exp(U(log ratio))``;
   ``w = round(sqrt(s * A * r))``, ``h = round(sqrt(s * A / r))`` (``A = W * H``); the first try with
   ``0 < w <= W`` and ``0 < h <= H`` wins, its corner uniform over the positions that fit
   (``top ~ U{0..H-h}``, then ``left ~ U{0..W-w}``);
2. otherwise the central crop: the whole image when its ratio is inside ``ratio``, else the
   largest centred box at the nearest allowed ratio.

This is the algorithm the command line's loader used before the input pipeline moved here (the
box and flip are drawn in the same order from the same kind of generator).
"""

from __future__ import annotations

import math
import random

__all__ = ["SCALE", "RATIO", "SampleRandom", "sample_rng", "random_resized_crop_box", "draw_flip", "draft_request",
           "scale_box"]

SCALE = (0.2, 1.0)  # the official MAE pretraining range of the crop's area fraction
RATIO = (3 / 4, 4 / 3)  # torchvision's default aspect-ratio range (width / height)


class SampleRandom(random.Random):
    """Python's Mersenne Twister under numpy's names for the draws the augmentation makes."""

    def integers(self, low: int, high: int) -> int:
        """Uniform on ``[low, high)``, as ``numpy.random.Generator.integers``."""
        return self.randrange(low, high)


def sample_rng(*key) -> SampleRandom:
    """One sample's generator, seeded by its key (``seed, epoch, index``; for shards ``seed, epoch, shard,
    position, pass``) joined into a string, which Python hashes with SHA-512: the same draws on every
    run, machine and Python version. ~10 µs for the box and the flip, against ~40 µs (and ~140 µs
    with the caches cold after a decode, measured) for ``numpy.random.default_rng(key)``."""
    return SampleRandom("/".join(str(int(k)) for k in key))


def random_resized_crop_box(width: int, height: int, rng, scale=SCALE,
                            ratio=RATIO) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box ``(top, left, h, w)`` inside a ``width x height`` image (module docstring)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draw_flip(rng, p: float = 0.5) -> bool:
    """RandomHorizontalFlip: ``True`` with probability ``p`` (drawn after the box, as the recipe)."""
    return bool(rng.random() < p)


def draft_request(width: int, height: int, box, size) -> tuple[int, int]:
    """The size to ask ``PIL.Image.draft`` for so that the box still covers ``size`` after it.

    JPEG decoders can decode at 1/2, 1/4 or 1/8 scale for far less work; Pillow picks the largest
    reduction that keeps the image at least the requested size. Requesting the image scaled by
    ``size / box`` (rounded up) keeps the box's ``h x w`` pixels at least ``size``: the resize that
    follows is still a downscale (or none), so no detail the output needs is lost.
    """
    _, _, h, w = box
    return math.ceil(width * size[1] / w), math.ceil(height * size[0] / h)


def scale_box(box, full: tuple[int, int], reduced: tuple[int, int]) -> tuple[int, int, int, int]:
    """``box (top, left, h, w)`` of a ``full = (W, H)`` image, mapped onto its ``reduced`` decode.

    Edges are rounded to the nearest reduced pixel (a shift of at most half a reduced pixel) and the
    box kept inside the image and at least one pixel on each side.
    """
    top, left, h, w = box
    sx, sy = reduced[0] / full[0], reduced[1] / full[1]
    t, b = round(top * sy), round((top + h) * sy)
    l, r = round(left * sx), round((left + w) * sx)
    t, l = min(t, reduced[1] - 1), min(l, reduced[0] - 1)
    return t, l, max(1, min(b, reduced[1]) - t), max(1, min(r, reduced[0]) - l)
