"""An embedded multi-band image set: satellite-like scenes of C bands, uint8, uint16 or float32.

``fastmae pretrain --demo multiband`` trains on it, and the tests and CI use it: no file, no download.
Each scene mixes a few materials (water, vegetation, soil, built-up: ``label`` is the one covering most
of the scene) with a smooth spectral signature each over the bands, laid out as smooth random fields
with sharp-edged fields and roads on top, plus per-band noise. Bands are correlated as real spectra
are (neighbouring bands alike, a red edge between the visible and the infrared), so masked patches are
predictable from visible ones and from the other bands, and a small MAE's loss falls within minutes.
"""

from __future__ import annotations

import math

import numpy as np

from .arrays import SUPPORTED_DTYPES, Signature
from .sources import DataFormatError

__all__ = ["ProceduralBands"]

MATERIALS = ("water", "vegetation", "soil", "built-up")
_FULL = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 10000.0, np.dtype(np.float32): 1.0}  # reflectance 1.0


def _signatures(channels: int) -> np.ndarray:
    """``[4, C]`` reflectances in [0, 1] of the materials over bands spread from 440 to 2200 nm."""
    nm = np.linspace(440.0, 2200.0, channels) if channels > 1 else np.array([660.0])
    edge = 1.0 / (1.0 + np.exp(-(nm - 720.0) / 20.0))  # vegetation's red edge
    water = 0.08 * np.exp(-(nm - 440.0) / 200.0)
    vegetation = 0.05 + 0.05 * np.exp(-((nm - 550.0) / 40.0) ** 2) + 0.4 * edge * np.exp(-(nm - 900.0) / 2500.0)
    soil = 0.12 + 0.25 * (nm - 440.0) / 1760.0
    built = 0.22 + 0.04 * np.sin(nm / 150.0)
    return np.stack([water, vegetation, soil, built]).astype(np.float32)


class ProceduralBands:
    """``num_images`` scenes of ``size`` x ``size`` pixels and ``channels`` bands, stored as ``dtype``.

    Values are reflectances scaled as the archives store them: uint16 as Sentinel-2's L2A (reflectance
    x 10,000), uint8 x 255, float32 as is. Image ``i`` is a pure function of ``(seed, i)``; ``open(i)`` and
    ``image(i)`` return it as ``[size, size, channels]``; ``label(i)`` is its dominant material.
    """

    classes = MATERIALS
    num_classes = len(MATERIALS)

    def __init__(self, num_images: int = 1024, size: int = 64, channels: int = 13, dtype="uint16", seed: int = 0):
        dtype = np.dtype(dtype)
        if dtype not in SUPPORTED_DTYPES:
            raise DataFormatError(f"dtype {dtype.name} is not supported (uint8, uint16 or float32)")
        if channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")
        self.num_images, self.size, self.channels, self.dtype, self.seed = num_images, size, channels, dtype, seed
        self.signature = Signature(channels, dtype)
        self._spectra = _signatures(channels)  # [4, C]
        self._last_label = (-1, -1)  # (index, label) of the last image made
        self.name = f"procedural multi-band ({num_images} images, {size} px, {channels} x {dtype.name})"

    def __len__(self) -> int:
        return self.num_images

    def _abundance(self, index: int) -> np.ndarray:
        """``[size, size, 4]`` material fractions of scene ``index`` (sum 1 per pixel)."""
        rng = np.random.default_rng([self.seed, index, 7])
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s  # [s, s] each, in [0, 1)
        logits = np.zeros((s, s, 4), np.float32)
        for m in range(4):  # smooth fields: a few low-frequency waves per material
            for _ in range(3):
                f = rng.uniform(0.5, 3.0, 2) * 2 * math.pi
                logits[..., m] += rng.uniform(0.5, 2.0) * np.sin(f[0] * xx + f[1] * yy + rng.uniform(0, 2 * math.pi))
            logits[..., m] += rng.normal(0, 1.0)
        for _ in range(int(rng.integers(1, 4))):  # sharp-edged fields (parcels) of one material
            x0, y0 = rng.uniform(0, 0.8, 2)
            w, h = rng.uniform(0.1, 0.4, 2)
            inside = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
            logits[inside, int(rng.integers(4))] += 6.0
        if rng.random() < 0.5:  # a road: a straight built-up line
            a = rng.uniform(0, math.pi)
            d = np.abs(np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5) - rng.uniform(-0.3, 0.3))
            logits[..., 3] += 8.0 * (d < 1.5 / s)
        e = np.exp(4.0 * (logits - logits.max(-1, keepdims=True)))
        return e / e.sum(-1, keepdims=True)

    def label(self, index: int) -> int:
        """The material covering most of scene ``index`` (``classes``)."""
        if self._last_label[0] == index:  # the loader asks right after the image: no second layout
            return self._last_label[1]
        return int(self._abundance(index).sum((0, 1)).argmax())

    def image(self, index: int) -> np.ndarray:
        """Scene ``index`` as ``[size, size, channels]`` of ``dtype``."""
        ab = self._abundance(index)  # [s, s, 4]
        self._last_label = (index, int(ab.sum((0, 1)).argmax()))
        rng = np.random.default_rng([self.seed, index, 8])
        refl = ab @ self._spectra  # [s, s, C] reflectance
        refl = refl * rng.uniform(0.8, 1.2) + rng.normal(0, 0.004, refl.shape).astype(np.float32)  # light, noise
        full = _FULL[self.dtype]
        if self.dtype.kind == "f":
            return refl.astype(np.float32)
        return np.clip(np.rint(refl * full), 0, np.iinfo(self.dtype).max).astype(self.dtype)

    open = image  # already decoded: nothing to defer
