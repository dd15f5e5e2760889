"""The worker's share of the augmentation: decode, draw the box and the flip, slice the crop. No resize.

Everything that needs a CPU (reading the file, decoding it) happens here; the resampling, flip and
normalisation wait for the device (``fastmae.ops.resized_crop``), so a worker ships uint8 crops.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from .arrays import check_finite
from .boxes import RATIO, SCALE, draft_request, draw_flip, random_resized_crop_box, sample_rng, scale_box
from .sources import DataError, DataFormatError, decoded_rgb

__all__ = ["Crop", "CropSpec", "load_crop", "crop_pixels", "CropDataset"]


class Crop(NamedTuple):
    """One augmented sample as a worker sends it."""

    pixels: np.ndarray  # [h, w, C] uint8, uint16 or float32, the crop (HWC), not resized; may be a view
    flip: int  # bit 0: mirror it left to right on the device; bit 1: upside down
    index: int  # the dataset index asked for (-1 for a stream)
    skipped: int  # the index this sample replaces when that image failed to decode, else -1
    label: int  # the class, -1 when the source has none


class CropSpec(NamedTuple):
    """What the augmentation draws and for which output: the official recipe by default."""

    size: tuple[int, int]  # (S_h, S_w), the model's input size (the crop is resized to it later)
    scale: tuple[float, float] = SCALE  # RandomResizedCrop's area fraction range
    ratio: tuple[float, float] = RATIO  # and its aspect-ratio range
    flip_p: float = 0.5  # RandomHorizontalFlip's probability
    draft: bool = True  # let a JPEG decode at 1/2, 1/4 or 1/8 scale where the crop stays >= size
    vflip_p: float = 0.0  # a vertical flip's probability (overhead imagery has no up), drawn after the flip


def _flips(rng, spec: CropSpec) -> int:
    """The flip bits, drawn in the recipe's order: left-right (bit 0), then, only where asked, upside down."""
    flip = int(draw_flip(rng, spec.flip_p))
    if spec.vflip_p > 0:
        flip |= 2 * int(draw_flip(rng, spec.vflip_p))
    return flip


def load_crop(im, spec: CropSpec, rng, what: str, mode: str = "RGB") -> tuple[np.ndarray, int]:
    """Box and flips from ``rng`` (in the recipe's order), decode ``im`` (reduced if allowed), slice the box.

    Args:
        im: an opened, not necessarily decoded image; or a ``[H, W, C]`` array (memory-mapped: only the
            crop's rows are read).
        spec: the output size and the distributions.
        rng: drawn from for the box (from the full-size image's dimensions) then the flips.
        what: the image's name, for the error message.
        mode: what a photograph is converted to (``RGB``, or ``L`` for grey).
    Returns:
        ``(pixels [h, w, C], flip bits)``: uint8 for photographs, the array's dtype otherwise.

    With ``spec.draft`` a JPEG whose box is at least twice the output size on both sides decodes
    at reduced scale (libjpeg's DCT scaling, far less work), and the box is mapped onto the reduced
    pixels (its edges move by at most half a reduced pixel). The resize that follows then works
    from the reduced image: the pixels differ from a full decode (DCT-domain downscale, then bicubic),
    the box distribution does not. ``draft=False`` always decodes at full size.

    Raises:
        DataError: the image does not decode, or a float crop holds NaN or inf.
    """
    if isinstance(im, np.ndarray):
        height, width = im.shape[:2]
        top, left, h, w = random_resized_crop_box(width, height, rng, spec.scale, spec.ratio)
        flip = _flips(rng, spec)
        # [h, w, C], a view: the collate copies it into the batch once, reading only the crop's rows of
        # a memory-mapped file
        pixels = im[top:top + h, left:left + w]
        check_finite(pixels, what)
        return pixels, flip
    width, height = im.size
    box = random_resized_crop_box(width, height, rng, spec.scale, spec.ratio)
    flip = _flips(rng, spec)
    if spec.draft and im.format == "JPEG":
        want_w, want_h = draft_request(width, height, box, spec.size)
        if width >= 2 * want_w and height >= 2 * want_h:  # else no reduction is possible: skip the call
            try:
                im.draft(mode, (want_w, want_h))
            except Exception as e:  # a damaged header
                raise DataError(f"cannot decode image {what}: {e}") from None
            if im.size != (width, height):
                box = scale_box(box, (width, height), im.size)
    im = decoded_rgb(im, what, mode)
    return crop_pixels(im, box), flip


def crop_pixels(im: Image.Image, box) -> np.ndarray:
    """The ``box (top, left, h, w)`` of a decoded RGB (or grey, ``L``) image as ``[h, w, 3]`` (``[h, w, 1]``) uint8.

    Pillow stores RGB as 4 bytes a pixel; its raw encoder, pointed at the box, packs just those pixels
    to 3 bytes (what ``np.asarray(im.crop(box))`` does with an extra copy of the region). Falls back
    to that if a Pillow release changes the encoder's interface.
    """
    top, left, h, w = box
    if im.mode == "L":  # one byte a pixel already: the crop is a slice
        return np.asarray(im.crop((left, top, left + w, top + h)))[:, :, None]
    try:
        encoder = Image._getencoder("RGB", "raw", "RGB")
        encoder.setimage(im.im, (left, top, left + w, top + h))
        _, status, data = encoder.encode(max(3 * w * h, 4 * w))  # room for all of it: one call
        if status == 1 and len(data) == 3 * w * h:  # 1: done
            return np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3)
    except (AttributeError, TypeError, ValueError, OSError):
        pass
    return np.asarray(im.crop((left, top, left + w, top + h)))


class CropDataset:
    """A source's images as :class:`Crop` samples, keyed by ``(epoch, index)``.

    The key carries the epoch, so a sample's randomness is a pure function of ``(seed, epoch,
    index)`` — ``fastmae.data.boxes.sample_rng(seed, epoch, index)`` — and persistent workers need no
    epoch pushed to them (the sampler sends it).

    An image that fails to decode is replaced by the next index that decodes (``index + 1``,
    ``index + 2``... modulo the length, the same substitute on every run), keeping the requested
    index's randomness; its ``skipped`` field names the failed index.

    Raises:
        DataError: from ``__getitem__`` when no image at all decodes.
    """

    def __init__(self, source, spec: CropSpec, seed: int):
        self.source, self.spec, self.seed = source, spec, seed
        self._mode = getattr(source, "photo_mode", "RGB")  # photographs: RGB, or grey (L)
        self._bad: set[int] = set()  # indices known not to decode, in this process

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key) -> Crop:
        epoch, index = key
        first_error = None
        n = len(self.source)
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                continue
            rng = sample_rng(self.seed, epoch, index)  # the asked-for index's draws
            try:
                im = self.source.open(i)
                label = getattr(im, "info", {}).get("label", None)  # a source that knows it already (procedural)
                pixels, flip = load_crop(im, self.spec, rng, self._name(i), self._mode)
            except DataFormatError:
                raise  # never skipped: the data set as a whole is wrong
            except DataError as e:
                self._bad.add(i)
                first_error = first_error or e
                continue
            label = self.source.label(i) if label is None else label
            return Crop(pixels, flip, index, index if k else -1, label)
        raise DataError(f"no image can be decoded: {first_error or 'every file failed before'}")

    def _name(self, i: int) -> str:
        files = getattr(self.source, "files", None)
        return files[i] if files else f"{i} of {self.source.name}"
