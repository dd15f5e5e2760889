"""Multi-band, 16-bit and float images on the command line: channels, per-band statistics, display.

Statistics are per channel, in ``fastmae.ops.resized_crop``'s units (``fastmae.reference.FULL_SCALE``:
uint8 and uint16 values mapped to [0, 1], float32 values as stored). ``fastmae stats`` writes them to
``STATS_FILE`` beside the data; ``pretrain`` takes, in this order, ``--mean/--std``, ``--stats FILE``
or that file, ImageNet's for 8-bit RGB, else computes them on a sample at start. The values used go
into the checkpoint's arguments (``in_chans``, ``mean``, ``std``), so ``visualize``, ``probe`` and
``export`` normalise the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np
import torch

import fastmae.data as fd
from fastmae import ops
from fastmae.cli.argtypes import positive_int
from fastmae.cli.errors import UsageError
from fastmae.data.arrays import LAYOUTS, check_finite
from fastmae.reference import FULL_SCALE, IMAGENET_MEAN, IMAGENET_STD

STATS_FILE = "fastmae_stats.json"
DEMOS = ("shapes", "multiband")
AUTO_STATS_IMAGES = 256  # images pretrain samples when it has to compute the statistics itself
_TORCH = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16, np.dtype(np.float32): torch.float32}


def _floats(text):
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    return values


def add_arguments(group):
    """The pretraining options for multi-band, 16-bit and float data (in the ``data`` group)."""
    group.add_argument("--demo", choices=DEMOS,
                       help="the embedded set without --data: 'shapes' (RGB, the default) or 'multiband' "
                       "(13 bands of uint16, satellite-like)")
    group.add_argument("--in-chans", type=positive_int,
                       help="image channels; default: the data's (1 converts photographs to grey)")
    group.add_argument("--mean", type=_floats,
                       help="per-channel mean, comma-separated, in [0, 1] units for 8/16-bit images (value / "
                       "255 or / 65535), as stored for float images; default: --stats, else ImageNet's for "
                       "8-bit RGB, else computed on a sample")
    group.add_argument("--std", type=_floats, help="per-channel std, as --mean")
    group.add_argument("--stats", help=f"a 'fastmae stats' JSON; default: {STATS_FILE} in --data when there")
    group.add_argument("--layout", choices=LAYOUTS,
                       default="auto", help=".npy files: [H, W, C], [C, H, W], or auto (channels first when "
                       "the first axis is the smallest)")
    group.add_argument("--vflip", action="store_true",
                       help="also flip upside down at random (overhead imagery has no up), on the device")


def open_images(data, demo, num_images, input_size, in_chans=None, layout="auto", warn=print):
    """The source ``--data``/``--demo`` name (a ``fastmae.data`` source); ``DataError`` on bad data."""
    if data is None:
        if demo == "multiband":
            return fd.ProceduralBands(num_images, size=2 * input_size)
        return fd.ProceduralImages(num_images, size=2 * input_size)
    return fd.open_source(data, warn=warn, channels=in_chans, layout=layout)


def signature_of(images) -> fd.Signature:
    sig = getattr(images, "signature", None)
    return sig if sig is not None else fd.Signature(3, np.dtype(np.uint8))


def stats_path(data: str | None) -> str | None:
    """Where ``fastmae stats`` writes for ``data``: inside a folder, beside shards."""
    if data is None:
        return None
    return os.path.join(data if os.path.isdir(data) else os.path.dirname(data) or ".", STATS_FILE)


def read_stats(path: str, channels: int) -> tuple[list, list]:
    """``(mean, std)`` from a ``fastmae stats`` file, checked against the data's channel count."""
    try:
        with open(path) as f:
            stats = json.load(f)
        mean, std = [float(v) for v in stats["mean"]], [float(v) for v in stats["std"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"cannot read the statistics file {path}: {e}") from None
    if len(mean) != channels or len(std) != channels:
        raise UsageError(f"{path} holds statistics for {len(mean)} channel(s), the data has {channels}: "
                         f"run fastmae stats again")
    return mean, std


def image_array(image) -> np.ndarray:
    """A source's decoded image as ``[H, W, C]`` (a PIL photograph becomes uint8 RGB or grey)."""
    if isinstance(image, np.ndarray):
        return image
    arr = np.asarray(image)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _sample_images(images, num_images, seed):
    """Up to ``num_images`` decoded images, a seeded sample (tar shards: the first ones, a stream)."""
    if hasattr(images, "first_images"):
        yield from ((f"image {i} of {images.name}", im) for i, im in enumerate(images.first_images(num_images)))
        return
    order = np.random.default_rng(seed).permutation(len(images))[:num_images]
    for i in order:
        name = images.files[i] if hasattr(images, "files") else f"image {i} of {images.name}"
        try:
            yield name, images.image(int(i))
        except fd.DataFormatError:
            raise
        except fd.DataError:
            continue


def compute_stats(images, num_images: int, seed: int, progress=None) -> dict:
    """Each channel's mean and std (population) over a seeded sample of whole images, in the op's units.

    Raises:
        UsageError: a float image holds NaN or inf (named), or no image decodes.
    """
    sig = signature_of(images)
    full = FULL_SCALE[_TORCH[np.dtype(sig.dtype)]]
    total = np.zeros(sig.channels, np.float64)
    squares = np.zeros(sig.channels, np.float64)
    pixels, count = 0, 0
    want = min(num_images, len(images))
    for name, image in _sample_images(images, num_images, seed):
        arr = image_array(image)
        try:
            check_finite(arr, name)
        except fd.DataError as e:
            raise UsageError(str(e)) from None
        x = arr.reshape(-1, arr.shape[2]).astype(np.float64) / full  # [H*W, C]
        total += x.sum(0)
        squares += (x * x).sum(0)
        pixels += x.shape[0]
        count += 1
        if progress and (count % max(1, want // 10) == 0 or count == want):
            progress(count, want)
    if count == 0:
        raise UsageError(f"no image of {images.name} can be decoded")
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean * mean, 0.0))
    std = np.where(std > 0, std, 1.0)  # a constant band: unit std, so the normalisation stays finite
    return {"mean": [round(float(v), 8) for v in mean], "std": [round(float(v), 8) for v in std],
            "channels": sig.channels, "dtype": np.dtype(sig.dtype).name, "num_images": count, "seed": seed,
            "units": "value / 255 (uint8), value / 65535 (uint16), value (float32)"}


def resolve_channels(run, images, console, stored=None):
    """``run`` with ``in_chans``, ``mean`` and ``std`` from the data and the options (the module's order).

    Raises:
        UsageError: ``--in-chans`` or ``--mean/--std`` that disagree with the data, a bad stats file.
    """
    sig = signature_of(images)
    c = sig.channels
    if run.in_chans is not None and run.in_chans != c:
        raise UsageError(f"--in-chans {run.in_chans} does not match the data: {images.name} has {sig}")
    mean, std = run.mean, run.std
    if (mean is None) != (std is None):
        raise UsageError("--mean and --std go together: give both, or neither")
    stats_file = run.stats or (stats_path(run.data) if run.data else None)
    if mean is not None:
        for name, values in (("--mean", mean), ("--std", std)):
            if len(values) != c:
                raise UsageError(f"{name} has {len(values)} value(s), the data has {c} channel(s)")
        if min(std) <= 0:
            raise UsageError(f"--std must be positive, got {','.join(map(str, std))}")
    elif stats_file and (run.stats or os.path.isfile(stats_file)):
        mean, std = read_stats(stats_file, c)
        console.say(f"per-channel statistics from {stats_file}")
    elif (c, np.dtype(sig.dtype)) == (3, np.dtype(np.uint8)):
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    elif c == 1 and np.dtype(sig.dtype) == np.uint8:  # grey photographs: ImageNet's averaged
        mean, std = [sum(IMAGENET_MEAN) / 3], [sum(IMAGENET_STD) / 3]
    else:
        t = time.perf_counter()
        console.say(f"computing per-channel statistics of {images.name} on {AUTO_STATS_IMAGES} images "
                    f"(fastmae stats writes them once, for every run)...")
        stats = compute_stats(images, AUTO_STATS_IMAGES, run.seed)
        mean, std = stats["mean"], stats["std"]
        console.say(f"statistics of {stats['num_images']} images in {time.perf_counter() - t:.1f}s")
    return dataclasses.replace(run, in_chans=c, mean=[float(v) for v in mean], std=[float(v) for v in std],
                               source_dtype=np.dtype(sig.dtype).name)


def check_resume_channels(images, ckpt, path):
    """A ``--resume`` checkpoint whose model has another ``in_chans`` than the data is refused by name."""
    if ckpt is None:
        return
    model = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else {}
    weight = model.get("patch_embed.proj.weight") if isinstance(model, dict) else None
    channels = signature_of(images).channels
    if weight is not None and weight.shape[1] != channels:
        raise UsageError(f"{path} is a model of in_chans {weight.shape[1]}, but the data has {channels} "
                         f"channel(s): start a new run, or resume on data of {weight.shape[1]} channel(s)")


def whole_image_input(image, size, mean, std) -> torch.Tensor:
    """An image (PIL or ``[H, W, C]`` array) resized whole (antialiased bicubic) and normalised: ``[C, S_h, S_w]``."""
    arr = np.ascontiguousarray(image_array(image))
    h, w, c = arr.shape
    data = torch.from_numpy(arr.reshape(-1).copy())
    meta = torch.tensor([[0, h, w]])
    boxes = torch.tensor([[0, 0, h, w]])
    out = ops.resized_crop(data, meta, boxes, torch.zeros(1, dtype=torch.bool), size, mean, std,
                                    backend="torch")
    return out[0]


def parse_bands(text: str | None, channels: int) -> list[int]:
    """``--bands R,G,B`` (0-based) as three band indices; default the first three, or grey for one band."""
    if text is None:
        return [0, 0, 0] if channels < 3 else [0, 1, 2]
    try:
        bands = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--bands must be three comma-separated band indices, got {text!r}") from None
    if len(bands) == 1:
        bands = bands * 3
    if len(bands) != 3 or not all(0 <= b < channels for b in bands):
        raise UsageError(f"--bands must be one or three band indices in [0, {channels - 1}], got {text!r}")
    return bands


def stretch_display(bands, low=2.0, high=98.0):
    """``to_image`` for ``panels``: normalised ``[C, H, W]`` -> ``[H, W, 3]`` uint8 of ``bands``, each stretched
    between its ``low`` and ``high`` percentile of the first image shown (so every panel of it shares them)."""
    ranges = {}

    def to_image(x, key=None):
        x = x.detach().float().cpu()[bands]  # [3, H, W]
        k = key if key is not None else 0
        if k not in ranges:
            flat = x.reshape(3, -1)
            ranges[k] = (torch.quantile(flat, low / 100, dim=1).view(3, 1, 1),
                         torch.quantile(flat, high / 100, dim=1).view(3, 1, 1))
        lo, hi = ranges[k]
        y = (x - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        return (y.clamp(0, 1) * 255).permute(1, 2, 0).to(torch.uint8).numpy()
    return to_image


def progress_printer(what: str):
    def progress(done, total):
        print(f"{what}: {done}/{total} images", file=sys.stderr, flush=True)
    return progress
