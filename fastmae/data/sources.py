"""Where images come from: the embedded procedural set and a folder of image files.

A source is indexable: ``len(source)``, ``source.open(i)`` (a ``PIL.Image`` not necessarily decoded
yet, so that a JPEG can still be told to decode at a reduced scale; or, for multi-band, 16-bit and
float images, a ``[H, W, C]`` numpy array, possibly memory-mapped: ``fastmae.data.arrays``),
``source.image(i)`` (decoded: RGB or grey, or the array), ``source.label(i)`` (``-1`` where there is
none), ``source.classes``, ``source.name`` and ``source.signature`` (channels and dtype, shared by
every image). Tar shards (``fastmae.data.shards``) are read as a stream instead.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["DataError", "DataFormatError", "IMAGE_EXTENSIONS", "PHOTO_EXTENSIONS", "ProceduralImages",
           "ImageFolder", "decoded_rgb", "is_16bit_grey"]

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png")
IMAGE_EXTENSIONS = PHOTO_EXTENSIONS + (".npy", ".tif", ".tiff")  # arrays: fastmae.data.arrays
_GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # Pillow's modes for a 16-bit grey PNG


class DataError(RuntimeError):
    """Data that cannot be used: a missing or empty folder, unreadable images, no shards, a file that
    fails to decode (the loader replaces such a file by the next one that decodes), a missing extra."""


class DataFormatError(DataError):
    """Images the data set cannot be trained on as they are, never skipped: an unsupported dtype, a
    file whose channels or dtype differ from the others', a photo asked for other than 1 or 3 channels."""


def is_16bit_grey(im: Image.Image) -> bool:
    """Whether Pillow opened ``im`` (a PNG) as 16-bit grey: read as uint16, never converted to RGB."""
    return im.mode in _GREY16_MODES


def decoded_rgb(im: Image.Image, what: str, mode: str = "RGB") -> Image.Image:
    """``im`` decoded (``load``) and in ``mode`` (RGB, or L for grey), or a one-line :class:`DataError`."""
    try:
        im.load()
        return im if im.mode == mode else im.convert(mode)
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
        from .arrays import Signature

        self.num_images, self.size, self.seed = num_images, size, seed
        self.signature = Signature(3, np.dtype(np.uint8))
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
    """Every image file under ``root`` (``IMAGE_EXTENSIONS``, any case, recursively, sorted), so both the
    ImageFolder layout ``root/<class>/<image>`` and a flat folder work.

    Photographs (JPEG, 8-bit PNG) are converted to RGB, or to grey with ``channels=1``; a 16-bit grey
    PNG is one uint16 channel; ``.npy`` and TIFF files are arrays of C channels (``fastmae.data.arrays``,
    ``layout`` for ``.npy``). Every image must have the same channels and dtype (``signature``).

    Labels: the index of an image's first directory under ``root`` among the sorted class
    directories (``classes``); ``-1`` for images directly in ``root``.

    With ``verify``, files are checked when the folder is scanned (``Image.open`` + ``verify``, no
    full decode; an array file's header): those that fail are skipped with one ``warn`` giving their
    count. A file that fails to decode later is replaced by the loader with the next one that decodes.

    Raises:
        DataError: ``root`` is missing or not a directory, holds no image files, or none can be read.
        DataFormatError: a file's channels or dtype differ from the first file's (named, with what was
            expected), an unsupported dtype, or ``channels`` other than 1 or 3 for photographs.
    """

    def __init__(self, root: str, warn=print, verify: bool = True, channels: int | None = None,
                 layout: str = "auto"):
        from .arrays import ARRAY_EXTENSIONS, LAYOUTS, read_signature

        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if not os.path.exists(root):
            raise DataError(f"data directory not found: {root}")
        if not os.path.isdir(root):
            raise DataError(f"{root} is not a directory")
        files = sorted(
            os.path.join(d, f)
            for d, _, names in os.walk(root, followlinks=True)
            for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(f"no {'/'.join(IMAGE_EXTENSIONS)} images in data directory {root}")
        self.layout = layout
        self.photo_mode = "L" if channels == 1 else "RGB"  # what photographs are converted to
        self.files, self._arrays, bad = [], [], []
        expected = None  # (signature, the file that set it)
        for path in files:
            try:
                if path.lower().endswith(ARRAY_EXTENSIONS):
                    sig, is_array = read_signature(path, layout)[0], True
                else:
                    sig, is_array = self._photo_signature(path, verify, channels)
                self.files.append(path)
                self._arrays.append(is_array)
            except DataFormatError:
                raise
            except Exception as e:  # Pillow raises many types for a damaged file
                bad.append(f"{path} ({type(e).__name__})")
                continue
            if expected is None:
                expected = (sig, path)
            elif sig != expected[0]:
                raise DataFormatError(f"{path} has {sig}, but the images before it have {expected[0]} (as "
                                      f"{expected[1]}): every image of a data set needs the same channels and dtype")
        if not self.files:
            raise DataError(f"none of the {len(files)} image files in {root} can be read (first: {bad[0]})")
        if bad:
            warn(f"skipped {len(bad)} of {len(files)} files in {root} that are not readable images "
                 f"(first: {bad[0]})")
        self.signature = expected[0]
        parts = [os.path.relpath(p, root).split(os.sep) for p in self.files]
        self.classes = tuple(sorted({p[0] for p in parts if len(p) > 1}))
        self.num_classes = len(self.classes)
        index = {c: i for i, c in enumerate(self.classes)}
        self._labels = [index[p[0]] if len(p) > 1 else -1 for p in parts]
        self.root = root
        self.name = f"{root} ({len(self.files)} images)"

    @staticmethod
    def _photo_signature(path: str, verify: bool, channels: int | None):
        """A photograph's or 16-bit PNG's signature from its header (and ``verify``), and whether it is an array."""
        from .arrays import Signature

        with Image.open(path) as im:
            grey16 = is_16bit_grey(im)
            if verify:
                im.verify()
        if grey16:
            return Signature(1, np.dtype(np.uint16)), True
        if channels not in (None, 1, 3):
            raise DataFormatError(f"{path} is a photograph: it gives 3 channels (RGB) or 1 (grey), not {channels}")
        return Signature(channels or 3, np.dtype(np.uint8)), False

    def __len__(self) -> int:
        return len(self.files)

    def label(self, index: int) -> int:
        return self._labels[index]

    def open(self, index: int):
        """The ``index``-th file opened: a ``PIL.Image`` (header read, not decoded) for a photograph, a
        ``[H, W, C]`` array (memory-mapped where possible) otherwise; or a :class:`DataError` naming it."""
        path = self.files[index]
        if self._arrays[index]:
            from .arrays import open_array

            return open_array(path, self.layout)
        try:
            return Image.open(path)
        except Exception as e:
            raise DataError(f"cannot decode image {path}: {e}") from None

    def image(self, index: int):
        """The ``index``-th image decoded (RGB or grey ``PIL.Image``; an array for other files), or a
        :class:`DataError` naming its file."""
        im = self.open(index)
        return im if isinstance(im, np.ndarray) else decoded_rgb(im, self.files[index], self.photo_mode)
