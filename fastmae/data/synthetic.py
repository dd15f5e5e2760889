"""Photo-like test images, made on the spot: no network, no data set to download.

Real photographs cannot be fetched on the machines this project is tested on, so the tests and the
data benchmark make ImageNet-like JPEGs (500 x 375 by default, quality 90) from a fixed seed: smooth
colour gradients (sky, walls), a few sharp-edged shapes (objects), a band-limited texture (foliage,
fabric) and per-pixel sensor noise. They have a photograph's mix of flat, textured and edge regions,
which is what resampling errors depend on; they are not a substitute for measuring on real data.

:class:`MadeOnce` keeps a made-on-the-spot source's images once made: the embedded procedural set
(``fastmae.data.ProceduralImages``) costs about as much CPU to draw every epoch as a small model's
training step on it.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["MadeOnce", "photo_like", "photo_like_jpeg", "write_photo_like_jpegs"]


def photo_like(seed: int, width: int = 500, height: int = 375) -> Image.Image:
    """An RGB image of ``width x height`` pixels, a pure function of ``seed``."""
    rng = np.random.default_rng([seed, 9])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)  # [H, W] each
    img = np.zeros((height, width, 3), np.float32)
    for _ in range(4):  # smooth gradients: a few broad colour waves
        fx, fy = rng.uniform(-1, 1, 2) * 2 * np.pi / max(width, height)
        phase = rng.uniform(0, 2 * np.pi)
        img += np.sin(fx * xx + fy * yy + phase)[..., None] * rng.uniform(-40, 40, 3)
    img += rng.uniform(60, 190, 3)
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(4, 9))):  # objects with sharp edges
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.05, 0.3) * min(width, height)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0 - r, y0 - r * rng.uniform(0.4, 1), x0 + r, y0 + r), fill=fill)
        else:
            pts = [(x0 + r * np.cos(a), y0 + r * np.sin(a)) for a in np.sort(rng.uniform(0, 2 * np.pi, 5))]
            draw.polygon(pts, fill=fill)
    canvas = canvas.filter(ImageFilter.GaussianBlur(0.7))  # a lens: edges a pixel or so wide
    out = np.asarray(canvas).astype(np.float32)
    small = rng.normal(0, 1, (height // 4 + 2, width // 4 + 2)).astype(np.float32)
    texture = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))  # band-limited
    out += texture[..., None] * rng.uniform(4, 14)
    out += rng.normal(0, 3, out.shape)  # sensor noise
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def photo_like_jpeg(seed: int, width: int = 500, height: int = 375, quality: int = 90) -> bytes:
    """:func:`photo_like` encoded as a JPEG (``quality`` as Pillow's), as the bytes of a file."""
    buf = io.BytesIO()
    photo_like(seed, width, height).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_photo_like_jpegs(directory: str, count: int, seed: int = 0, width: int = 500, height: int = 375,
                           quality: int = 90) -> list[str]:
    """Write ``count`` photo-like JPEGs ``img_00000.jpg ...`` into ``directory``; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i in range(count):
        path = os.path.join(directory, f"img_{i:05d}.jpg")
        with open(path, "wb") as f:
            f.write(photo_like_jpeg(seed + i, width, height, quality))
        paths.append(path)
    return paths


class MadeOnce:
    """``source`` (a procedural set: ``image(i)`` a pure function of ``i``) with each image made once,
    at its first use, then kept in memory, in each process that reads it: the same images, without
    drawing them again every epoch. Everything else (``len``, ``label``, ``name``, ``signature``...)
    is ``source``'s.

    The images are handed out as kept: readers must not change them (the loader and the panels do not).
    """

    def __init__(self, source):
        self.source = source
        self._made = {}  # index -> the image

    def __len__(self) -> int:
        return len(self.source)

    def image(self, index: int):
        image = self._made.get(index)
        if image is None:
            image = self._made[index] = self.source.image(index)
        return image

    open = image  # made decoded: nothing to defer

    def __getattr__(self, name):
        if name.startswith("__") or name in ("source", "_made"):  # pickling probes before __dict__ is set
            raise AttributeError(name)
        return getattr(self.source, name)
