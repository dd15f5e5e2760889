"""Where images come from: the embedded procedural set and a folder of image files.

A source is indexable: ``len(source)``, ``source.open(i)`` (a ``PIL.Image`` not necessarily decoded
yet, so that a JPEG can still be told to decode at a reduced scale), ``source.image(i)`` (decoded
RGB), ``source.label(i)`` (``-1`` where there is none), ``source.classes`` and ``source.name``.
Tar shards (``fastmae.data.shards``) are read as a stream instead.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["DataError", "IMAGE_EXTENSIONS", "ProceduralImages", "ImageFolder", "decoded_rgb"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class DataError(RuntimeError):
    """Data that cannot be used: a missing or empty folder, unreadable images, no shards, a file that
    fails to decode (the loader replaces such a file by the next one that decodes), a missing extra."""


def decoded_rgb(im: Image.Image, what: str) -> Image.Image:
    """``im`` decoded (``load``) and in RGB, or a one-line :class:`DataError` naming ``what``."""
    try:
        im.load()
        return im if im.mode == "RGB" else im.convert("RGB")
    except Exception as e:  # Pillow raises many types for a damaged file
        raise DataError(f"cannot decode image {what}: {e}") from None


class ProceduralImages:
    """An embedded, download-free image set: gradients, stripe textures and filled shapes.

    Image ``i`` is drawn from a generator seeded by ``(seed, i)``, so the set is the same on every
    machine (pixel for pixel the set the command line has always trained on: a test holds its hash). The structure
    (smooth backgrounds, sharp-edged shapes, periodic textures) makes masked patches predictable from
    visible ones, so a small MAE's loss falls within minutes.

    Labels, for probing what a model learned (``fastmae probe``): ``label(i) = 3 * has_stripes +
    kind`` of the topmost shape, the last one drawn, which no other covers (0 ellipse, 1 rectangle,
    2 triangle): 6 classes, read from the same draws as the pixels.
    """

    classes = tuple(f"{texture}-{shape}" for texture in ("plain", "stripes")
                    for shape in ("ellipse", "rectangle", "triangle"))
    num_classes = len(classes)

    def __init__(self, num_images: int = 2048, size: int = 64, seed: int = 0):
        self.num_images, self.size, self.seed = num_images, size, seed
        self.name = f"procedural ({num_images} images, {size} px)"

    def __len__(self) -> int:
        return self.num_images

    def _plan(self, index: int) -> dict:
        """Every random draw of image ``index``, in the order the pixels use them."""
        rng = np.random.default_rng([self.seed, index])
        s = self.size
        plan = {"angle": rng.uniform(0, 2 * math.pi)}
        plan["c0"], plan["c1"] = rng.uniform(0, 255, (2, 3))
        plan["stripes"] = None
        if rng.random() < 0.5:  # stripes: a sinusoid of random direction, period and colour
            phi = rng.uniform(0, math.pi)
            freq = rng.uniform(2.0, 6.0)
            plan["stripes"] = (phi, freq, rng.uniform(-60, 60, 3))
        plan["shapes"] = []
        for _ in range(rng.integers(1, 4)):  # 1 to 3 ellipses, rectangles or triangles
            r = rng.uniform(s / 8, s / 4)
            cx, cy = rng.uniform(r / 2, s - r / 2, 2)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            kind = int(rng.integers(3))
            extra = rng.uniform(0.5, 1) if kind < 2 else rng.uniform(0, 2 * math.pi)  # squash, or turn
            plan["shapes"].append((kind, r, cx, cy, fill, extra))
        return plan

    def label(self, index: int) -> int:
        """``3 * has_stripes + kind of the topmost shape`` (0 ellipse, 1 rectangle, 2 triangle)."""
        return self._label(self._plan(index))

    @staticmethod
    def _label(plan: dict) -> int:
        return 3 * (plan["stripes"] is not None) + plan["shapes"][-1][0]  # the last drawn is on top

    def image(self, index: int) -> Image.Image:
        """The ``index``-th image as a PIL RGB image of ``size`` x ``size``."""
        plan = self._plan(index)
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s  # [s, s] each, in [0, 1)
        angle = plan["angle"]
        t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.0) / 2.0  # [s, s], a linear ramp
        c0, c1 = plan["c0"], plan["c1"]
        canvas = c0 + t[..., None] * (c1 - c0)  # [s, s, 3]
        if plan["stripes"] is not None:
            phi, freq, colour = plan["stripes"]
            wave = np.sin(2 * math.pi * freq * (np.cos(phi) * xx + np.sin(phi) * yy))
            canvas += wave[..., None] * colour
        img = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for kind, r, cx, cy, fill, extra in plan["shapes"]:
            if kind == 0:
                draw.ellipse((cx - r, cy - r * extra, cx + r, cy + r), fill=fill)
            elif kind == 1:
                draw.rectangle((cx - r, cy - r * extra, cx + r, cy + r), fill=fill)
            else:
                angles = extra + np.array([0, 2, 4]) * math.pi / 3
                draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles], fill=fill)
        img.info["label"] = self._label(plan)  # spares a second plan
        return img

    open = image  # already decoded: nothing to defer


class ImageFolder:
    """Every ``.jpg``/``.jpeg``/``.png`` under ``root`` (any case, recursively, sorted), so both the
    ImageFolder layout ``root/<class>/<image>`` and a flat folder work.

    Labels: the index of an image's first directory under ``root`` among the sorted class
    directories (``classes``); ``-1`` for images directly in ``root``.

    With ``verify``, files are checked when the folder is scanned (``Image.open`` + ``verify``, no
    full decode): those that fail are skipped with one ``warn`` giving their count. A file that fails
    to decode later is replaced by the loader with the next one that decodes.

    Raises:
        DataError: ``root`` is missing or not a directory, holds no image files, or none can be read.
    """

    def __init__(self, root: str, warn=print, verify: bool = True):
        if not os.path.exists(root):
            raise DataError(f"data directory not found: {root}")
        if not os.path.isdir(root):
            raise DataError(f"{root} is not a directory")
        files = sorted(
            os.path.join(d, f)
            for d, _, names in os.walk(root, followlinks=True)
            for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(f"no .jpg/.jpeg/.png images in data directory {root}")
        self.files, bad = [], []
        for path in files:
            try:
                if verify:
                    with Image.open(path) as im:
                        im.verify()
                self.files.append(path)
            except Exception as e:  # Pillow raises many types for a damaged file
                bad.append(f"{path} ({type(e).__name__})")
        if not self.files:
            raise DataError(f"none of the {len(files)} image files in {root} can be read (first: {bad[0]})")
        if bad:
            warn(f"skipped {len(bad)} of {len(files)} files in {root} that are not readable images "
                 f"(first: {bad[0]})")
        parts = [os.path.relpath(p, root).split(os.sep) for p in self.files]
        self.classes = tuple(sorted({p[0] for p in parts if len(p) > 1}))
        self.num_classes = len(self.classes)
        index = {c: i for i, c in enumerate(self.classes)}
        self._labels = [index[p[0]] if len(p) > 1 else -1 for p in parts]
        self.root = root
        self.name = f"{root} ({len(self.files)} images)"

    def __len__(self) -> int:
        return len(self.files)

    def label(self, index: int) -> int:
        return self._labels[index]

    def open(self, index: int) -> Image.Image:
        """The ``index``-th file opened (header read, not decoded), or a :class:`DataError` naming it."""
        try:
            return Image.open(self.files[index])
        except Exception as e:
            raise DataError(f"cannot decode image {self.files[index]}: {e}") from None

    def image(self, index: int) -> Image.Image:
        """The ``index``-th image, decoded to RGB, or a :class:`DataError` naming its file."""
        return decoded_rgb(self.open(index), self.files[index])
