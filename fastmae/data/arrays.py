"""Scientific images: multi-band, 16-bit and float arrays from ``.npy``, TIFF/GeoTIFF and 16-bit PNG files.

Each file is one image of ``C >= 1`` channels stored as uint8, uint16 or float32 (its *signature*,
``Signature(channels, dtype)``); all images of a data set share one. A worker reads a file as a
``[H, W, C]`` array — a view where it can (a memory-mapped ``.npy``, an uncompressed TIFF), so slicing
the crop reads only the crop's rows — and ships the crop in the source dtype: the device resizes and
normalises it (``fastmae.ops.resized_crop``).

Layout. TIFF files say theirs (tifffile's axes: band-interleaved ``YXS`` is ``[H, W, C]``, planar
``SYX``/``CYX`` is ``[C, H, W]``). A ``.npy`` array of rank 2 is ``[H, W]`` (one channel); of rank 3
it is ``[H, W, C]`` unless ``layout="chw"``, or ``layout="auto"`` (the default) and its first axis is
strictly smaller than the other two (``[13, 256, 256]`` is ``[C, H, W]``; ``[256, 256, 13]`` and
``[3, 3, 3]`` are ``[H, W, C]``).

TIFF needs the ``tiff`` extra (``pip install -e ".[tiff]"``: tifffile, and imagecodecs for
compressed files); the rest needs only numpy and Pillow.
"""

from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np

from .sources import DataError, DataFormatError

__all__ = ["ARRAY_EXTENSIONS", "LAYOUTS", "SUPPORTED_DTYPES", "Signature", "check_finite", "open_array",
           "read_signature", "require_tifffile", "to_hwc"]

ARRAY_EXTENSIONS = (".npy", ".tif", ".tiff")
LAYOUTS = ("auto", "hwc", "chw")
SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


class Signature(NamedTuple):
    """What every image of a data set shares: its channel count and its stored dtype."""

    channels: int
    dtype: np.dtype

    def __str__(self) -> str:
        return f"{self.channels} channel(s) of {np.dtype(self.dtype).name}"


def require_tifffile():
    """The ``tifffile`` module, or a one-line :class:`DataError` saying how to install it."""
    try:
        import tifffile
    except ImportError:
        raise DataError('reading TIFF files needs the tifffile package: pip install -e ".[tiff]" '
                        "(or pip install tifffile imagecodecs)") from None
    return tifffile


def _check_dtype(dtype, what: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.newbyteorder("=") in SUPPORTED_DTYPES:  # a big-endian file is read in native order
        return dtype.newbyteorder("=")
    raise DataFormatError(f"{what}: dtype {dtype.name} is not supported (uint8, uint16 or float32; convert it, "
                    f"e.g. with numpy's astype)")


def to_hwc(arr: np.ndarray, what: str, layout: str = "auto", channels_first: bool | None = None) -> np.ndarray:
    """``arr`` as ``[H, W, C]`` (a view), by the module's layout rule; a one-line error for other ranks."""
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim != 3:
        raise DataFormatError(f"{what}: an image must be [H, W], [H, W, C] or [C, H, W], got shape {tuple(arr.shape)}")
    if channels_first is None:
        channels_first = layout == "chw" or (layout == "auto" and arr.shape[0] < min(arr.shape[1:]))
    return arr.transpose(1, 2, 0) if channels_first else arr


def _tiff_hwc(tif, what: str, layout: str, path: str | None) -> np.ndarray:
    """The first series of an open ``TiffFile`` as ``[H, W, C]``: the file memory-mapped where it is
    uncompressed and contiguous (``path`` given), else decoded."""
    series = tif.series[0]
    axes = series.axes
    arr = None
    if path is not None and series.dataoffset is not None:
        import tifffile

        try:
            arr = tifffile.memmap(path, mode="r")
        except Exception:  # noqa: BLE001 - not memory-mappable after all: decode it
            arr = None
    if arr is None:
        arr = series.asarray()
    h, w, c = _hwc_shape(tuple(arr.shape), axes, layout, what)
    if arr.ndim == 2:
        return arr[:, :, None]
    return arr if arr.shape == (h, w, c) else arr.transpose(1, 2, 0)


def open_array(path: str, layout: str = "auto", data: bytes | None = None, what: str | None = None) -> np.ndarray:
    """The image in ``path`` (or in ``data``, its bytes, for a tar-shard member named ``what``; ``path`` then
    only gives the kind by its extension) as ``[H, W, C]``.

    A ``.npy`` file is memory-mapped and an uncompressed TIFF too where tifffile can: the array is a
    view, and nothing is read until the crop is sliced.

    Raises:
        DataError: the file does not decode, has an unsupported dtype or rank, or tifffile is missing.
    """
    lower = path.lower()
    what = what or path
    try:
        if lower.endswith(".npy"):
            arr = np.load(io.BytesIO(data)) if data is not None else np.load(path, mmap_mode="r")
            arr = to_hwc(arr, what, layout)
        elif lower.endswith((".tif", ".tiff")):
            tifffile = require_tifffile()
            with tifffile.TiffFile(io.BytesIO(data) if data is not None else path) as tif:
                arr = _tiff_hwc(tif, what, layout, path if data is None else None)
        else:  # a PNG of 16-bit grey (photos take the Pillow path)
            from PIL import Image

            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                arr = np.asarray(im)
            if arr.dtype == np.int32:  # Pillow's "I" mode: 16-bit values widened
                arr = arr.astype(np.uint16)
            arr = to_hwc(arr, what, "hwc")
    except DataError:
        raise
    except Exception as e:  # numpy, tifffile and Pillow raise many types for a damaged file
        raise DataError(f"cannot decode image {what}: {e}") from None
    _check_dtype(arr.dtype, what)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _hwc_shape(shape: tuple, axes: str | None, layout: str, what: str) -> tuple[int, int, int]:
    """``(H, W, C)`` of an array of ``shape`` (TIFF ``axes`` decide where they say; else the layout rule)."""
    if len(shape) == 2:
        return shape[0], shape[1], 1
    if len(shape) == 3 and axes and axes[-2:] == "YX":
        return shape[1], shape[2], shape[0]
    if len(shape) == 3 and axes and axes[:2] == "YX":
        return shape
    if len(shape) != 3:
        raise DataFormatError(f"{what}: an image must be [H, W], [H, W, C] or [C, H, W], got shape {tuple(shape)}")
    first = layout == "chw" or (layout == "auto" and shape[0] < min(shape[1:]))
    return (shape[1], shape[2], shape[0]) if first else tuple(shape)


def read_signature(path: str, layout: str = "auto") -> tuple[Signature, tuple[int, int]]:
    """``(Signature, (H, W))`` of an array file from its header alone (no pixel is read)."""
    lower = path.lower()
    try:
        if lower.endswith(".npy"):
            arr = np.load(path, mmap_mode="r")
            shape, dtype, axes = arr.shape, arr.dtype, None
        elif lower.endswith((".tif", ".tiff")):
            tifffile = require_tifffile()
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, dtype, axes = tuple(series.shape), series.dtype, series.axes
        else:
            raise DataError(f"{path}: not an array file ({', '.join(ARRAY_EXTENSIONS)})")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy and tifffile raise many types for a damaged file
        raise DataError(f"cannot decode image {path}: {e}") from None
    dtype = _check_dtype(dtype, path)
    h, w, c = _hwc_shape(tuple(shape), axes, layout, path)
    return Signature(c, dtype), (h, w)


def check_finite(pixels: np.ndarray, what: str) -> None:
    """A float image must hold finite values only: NaN or +-inf is named in one line (not trained on)."""
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        bad = "NaN" if np.isnan(pixels).any() else "inf"
        raise DataError(f"image {what} holds {bad} values: fill or mask them before training (float images "
                        f"must be finite)")
