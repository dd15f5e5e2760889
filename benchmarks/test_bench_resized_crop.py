"""resized_crop: the per-image reference loop against fastmae's op, in one launch.

Providers: ``reference`` (``resized_crop_ref``: ``F.interpolate(antialias=True)`` per image) and
``fastmae`` (``fastmae.ops.resized_crop``: the Triton kernel on CUDA, the torch backend on CPU).
Inputs: uint8 RGB images (and 13-band uint16 ones, satellite-like) with RandomResizedCrop boxes
(scale 0.2-1), half of them flipped.

Bytes, the minimal traffic: every crop pixel read once (``C h w e`` each, ``e`` the source's bytes per
value), the output written once (``N C S_h S_w s``), the int64 meta and boxes and the flags read once
(``N (56 + 1)``). GB/s and
images/s are from the median time. Self-contained (pytest-benchmark's fixture only).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastmae
from fastmae import ops
from fastmae.data import random_resized_crop_box
from fastmae.reference import resized_crop_ref

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

# (name, images, image H x W, output side, dtype[, channels, source dtype]): the CPU demo's regime,
# ImageNet-sized photos, and 13-band uint16 scenes of 256 px (Sentinel-2-like tiles)
CASES = [("demo_64px_to_32", 64, (64, 64), 32, torch.float32),
         ("imagenet_to_224", 256 if CUDA else 8, (375, 500), 224, torch.float32),
         ("uint16_13band_256_to_224", 256 if CUDA else 4, (256, 256), 224, torch.float32, 13, torch.uint16)]
if CUDA:
    CASES.append(("imagenet_to_224_bf16", 256, (375, 500), 224, torch.bfloat16))
    CASES.append(("uint16_13band_256_to_224_bf16", 256, (256, 256), 224, torch.bfloat16, 13, torch.uint16))


def _inputs(n, hw, seed=0, channels=3, source=torch.uint8):
    rng = np.random.default_rng(seed)
    hh, ww = hw
    top = 256 if source == torch.uint8 else 65536
    data = torch.randint(0, top, (n * hh * ww * channels,), dtype=torch.int32).to(source)
    meta = torch.tensor([(i * hh * ww * channels, hh, ww) for i in range(n)])
    boxes = torch.tensor([random_resized_crop_box(ww, hh, rng) for _ in range(n)])
    flip = torch.tensor(rng.random(n) < 0.5)
    return [t.to(DEVICE) for t in (data, meta, boxes, flip)]


def _minimal_bytes(boxes, n, side, dtype, channels=3, source=torch.uint8):
    pixels = int((channels * boxes[:, 2] * boxes[:, 3]).sum()) * source.itemsize
    return pixels + n * channels * side * side * dtype.itemsize + n * (56 + 1)


@pytest.mark.parametrize("provider", ["reference", "fastmae"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_resized_crop(benchmark, case, provider):
    name, n, hw, side, dtype, channels, source = (*case, 3, torch.uint8)[:7]
    args = _inputs(n, hw, channels=channels, source=source)
    stats = {} if channels == 3 else dict(mean=[0.1] * channels, std=[0.05] * channels)
    if provider == "reference":
        fn = lambda: resized_crop_ref(*args, (side, side), out_dtype=dtype, **stats)  # noqa: E731
    else:
        backend = "triton" if CUDA else "torch"
        fn = lambda: ops.resized_crop(*args, (side, side), out_dtype=dtype, backend=backend, **stats)  # noqa: E731

    def run():
        out = fn()
        if CUDA:
            torch.cuda.synchronize()
        return out

    out = benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)
    assert out.shape == (n, channels, side, side) and out.dtype == dtype and torch.isfinite(out.float()).all()
    seconds = benchmark.stats.stats.median
    nbytes = _minimal_bytes(args[2].cpu(), n, side, dtype, channels, source)
    benchmark.extra_info.update(
        provider=provider, backend="triton" if provider == "fastmae" and CUDA else "torch" if provider == "fastmae"
        else "reference", device=torch.cuda.get_device_name() if CUDA else "cpu", images=n, image_hw=list(hw),
        out_side=side, dtype=str(dtype).replace("torch.", ""), minimal_bytes=nbytes, median_ms=1e3 * seconds,
        images_per_s=n / seconds, effective_gbps=nbytes / seconds / 1e9, torch=torch.__version__,
        fastmae=fastmae.__version__)
