"""resized_crop (kernels/resized_crop.py and the torch backend) against resized_crop_ref, and against Pillow.

The contract: at most 1e-4 (absolute, float32 output, normalised units: ~0.006 grey levels) from
``resized_crop_ref``, the per-image ``F.interpolate(..., mode="bicubic", antialias=True)`` loop.
Lower-precision outputs are compared with the float32 reference at their own dtype's tolerance
(tests/helpers.py): one rounding of the output. Kernel outputs are poisoned (NaN) before each launch.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fastmae import ops
from fastmae.data.synthetic import photo_like_jpeg
from fastmae.kernels import resized_crop as kernel
from fastmae.reference import IMAGENET_MEAN, IMAGENET_STD, resized_crop_ref
from helpers import DEVICE, DTYPES, assert_close, poisoned, requires_kernels

ATOL_FP32 = 1e-4  # the agreement, normalised units


def _pixels(count, dtype, g):
    """``count`` random values spanning ``dtype``'s range: uint8 and uint16 whole; float32 signed, wide."""
    if dtype == torch.float32:
        return torch.randn(count, generator=g, device="cpu") * 1000.0  # e.g. elevations, reflectances x 1e4
    top = 256 if dtype == torch.uint8 else 65536
    return torch.randint(0, top, (count,), dtype=torch.int32, generator=g, device="cpu").to(dtype)


def ragged(sizes, seed=0, dtype=torch.uint8, channels=3):
    """Random images of ``sizes [(H, W)]``, ``channels`` each, packed as ``data [B]``, ``meta [N, 3]``."""
    g = torch.Generator().manual_seed(seed)
    parts, meta, off = [], [], 0
    for hh, ww in sizes:
        parts.append(_pixels(hh * ww * channels, dtype, g))
        meta.append((off, hh, ww))
        off += hh * ww * channels
    # on the GPU run (tests/conftest.py) tensors made without a device land on CUDA: data goes there too
    return torch.cat(parts).to(DEVICE), torch.tensor(meta, dtype=torch.int64)


def batch(sizes, boxes, flips, seed=0, dtype=torch.uint8, channels=3):
    data, meta = ragged(sizes, seed, dtype, channels)
    return data, meta, torch.tensor(boxes, dtype=torch.int64), torch.tensor(flips, dtype=torch.bool)


# (image sizes, boxes (top, left, h, w), flips, output size), by regime. Kept small: the kernel runs in
# Triton's interpreter, about a millisecond per tile operation.
REGIMES = {
    # upscale (stretch 1, 4 taps) from an interior box, non-square output, one image (N = 1)
    "upscale_n1": ([(7, 9)], [(1, 2, 5, 4)], [False], (11, 13)),
    # 8x downscale on both axes: 33-tap windows, every output row needs 8 new source rows
    "downscale_8x": ([(16, 24)], [(0, 0, 16, 24)], [True], (2, 3)),
    # 1-pixel crops (a constant output), next to a whole-image box with flip
    "one_pixel_crop": ([(9, 9), (3, 4)], [(4, 4, 1, 1), (0, 0, 3, 4)], [False, True], (3, 5)),
    # a 1x1 output from a large box: one output averages the whole window
    "one_pixel_output": ([(20, 17)], [(2, 3, 15, 13)], [True], (1, 1)),
    # odd image widths (rows not 4- or 16-byte aligned), box touching the bottom-right corner
    "odd_widths": ([(11, 13), (5, 7)], [(4, 6, 7, 7), (0, 1, 5, 6)], [True, False], (6, 5)),
    # 9 output rows: a second row tile with one valid row; 130 columns: a second column tile
    "tiles_straddle": ([(6, 40)], [(1, 0, 4, 40)], [True], (9, 130)),
    # a ragged batch: upscale, downscale and mixed along the two axes, flips mixed
    "ragged_mixed": ([(30, 31), (12, 9), (50, 20)], [(3, 2, 20, 27), (0, 0, 12, 9), (10, 1, 33, 19)],
                     [True, False, True], (10, 12)),
}


def _check(args, size, backend, dtype=torch.float32, **kw):
    ref = resized_crop_ref(*args, size, **kw)  # [N, 3, S_h, S_w] float32
    with poisoned():
        out = ops.resized_crop(*args, size, out_dtype=dtype, backend=backend, **kw)
    assert out.shape == ref.shape and out.dtype == dtype
    if dtype == torch.float32:
        err = (out - ref).abs().max().item()
        assert err <= ATOL_FP32, f"max abs error {err:.2e} > {ATOL_FP32}"
    else:
        assert_close(out, ref, dtype=dtype)
    return out, ref


@pytest.mark.slow
@requires_kernels
@pytest.mark.parametrize("regime", REGIMES)
def test_kernel_matches_reference(regime):
    sizes, boxes, flips, size = REGIMES[regime]
    _check(batch(sizes, boxes, flips), size, "triton")


@pytest.mark.parametrize("regime", REGIMES)
def test_torch_backend_matches_reference(regime):
    sizes, boxes, flips, size = REGIMES[regime]
    _check(batch(sizes, boxes, flips), size, "torch")


def test_torch_backend_imagenet_sized_crops():
    # Crops over the dense-matmul limit (a side > 128) take torch's antialias kernel per image; a batch
    # mixes both paths: ImageNet-like 500x375 images, a 300x250 crop to 224 and a 100x90 one.
    args = batch([(375, 500), (375, 500)], [(40, 50, 250, 300), (0, 400, 90, 100)], [True, False])
    _check(args, (224, 224), "torch")


@pytest.mark.slow
@requires_kernels
@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32], ids=str)
def test_kernel_low_precision_outputs(dtype):
    # bf16 / fp16: the model's input under autocast; accumulation stays float32, one rounding on store
    _check(batch(*REGIMES["ragged_mixed"][:3]), (6, 5), "triton", dtype)


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32], ids=str)
def test_torch_backend_low_precision_outputs(dtype):
    _check(batch(*REGIMES["ragged_mixed"][:3]), (8, 6), "torch", dtype)


@requires_kernels
def test_kernel_custom_statistics_and_int_size():
    # mean / std other than ImageNet's reach the kernel; an int size is a square output
    args = batch([(10, 12)], [(1, 1, 8, 9)], [False])
    out, _ = _check(args, 5, "triton", mean=(0.5, 0.25, 0.0), std=(0.5, 2.0, 1.0))
    assert out.shape == (1, 3, 5, 5)


@requires_kernels
def test_kernel_is_flip_of_unflipped():
    # flip=True is exactly the mirrored flip=False result (same arithmetic, columns reversed)
    data, meta, boxes, _ = batch([(14, 19)], [(2, 3, 11, 13)], [False])
    plain = ops.resized_crop(data, meta, boxes, torch.tensor([False]), (5, 7), backend="triton")
    mirrored = ops.resized_crop(data, meta, boxes, torch.tensor([True]), (5, 7), backend="triton")
    assert torch.equal(mirrored, plain.flip(-1))


@requires_kernels
def test_kernel_clamps_bad_boxes_and_never_reads_outside():
    # Past validation (as on CUDA without FASTMAE_CHECK_INDICES): a box leaving its image is clamped into
    # it; an image lying past the end of data reads only what is inside data (masked loads), no crash.
    data, meta = ragged([(8, 10), (6, 6)])
    boxes = torch.tensor([[-3, 5, 20, 20], [0, 0, 6, 6]])
    flip = torch.tensor([False, True])
    out = kernel.resized_crop(data, meta, boxes, flip, (4, 4), IMAGENET_MEAN, IMAGENET_STD, torch.float32)
    clamped = torch.tensor([[0, 5, 8, 5], [0, 0, 6, 6]])
    ref = resized_crop_ref(data, meta, clamped, flip, (4, 4))
    assert (out - ref).abs().max().item() <= ATOL_FP32
    meta_past_end = meta.clone()
    meta_past_end[1, 0] = data.numel() - 10  # the second image starts 10 bytes before the end
    out = kernel.resized_crop(data, meta_past_end, boxes, flip, (4, 4), IMAGENET_MEAN, IMAGENET_STD,
                              torch.float32)
    assert torch.isfinite(out).all()
    empty = torch.tensor([[0, 0, 0, 0], [0, 0, 6, 6]])  # an empty box: the normalised value of black
    out = kernel.resized_crop(data, meta, empty, flip, (2, 2), IMAGENET_MEAN, IMAGENET_STD, torch.float32)
    black = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    assert_close(out[0], black.view(3, 1, 1).expand(3, 2, 2))


def test_empty_batch():
    data, meta = ragged([(4, 4)])
    out = ops.resized_crop(data, meta[:0], torch.zeros(0, 4, dtype=torch.int64), torch.zeros(0, dtype=torch.bool),
                           (3, 3))
    assert out.shape == (0, 3, 3, 3)


@requires_kernels
def test_compile_fullgraph():
    args = batch([(9, 8)], [(1, 1, 7, 6)], [True])
    fn = lambda d, m, b, f: kernel.resized_crop(d, m, b, f, (3, 4), IMAGENET_MEAN, IMAGENET_STD,  # noqa: E731
                                                torch.bfloat16)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(*args), fn(*args))


# --------------------------------------------------------------------------------------------------
# against Pillow, on photo-like JPEGs
# --------------------------------------------------------------------------------------------------


def _photo_batch(count, size, seed, image_size=(500, 375)):
    """``count`` photo-like q90 JPEGs (500x375 by default: fastmae.data.synthetic, fixed seeds, since no
    real photographs can be fetched here), decoded, with a RandomResizedCrop box each; and Pillow's
    resize of each box."""
    from fastmae.data.boxes import random_resized_crop_box

    rng = np.random.default_rng(seed)
    imgs = [Image.open(io.BytesIO(photo_like_jpeg(seed * 100 + i, *image_size))).convert("RGB")
            for i in range(count)]
    arrays = [np.asarray(im) for im in imgs]
    data = torch.from_numpy(np.concatenate([a.reshape(-1) for a in arrays])).to(DEVICE)
    offsets = np.cumsum([0] + [a.size for a in arrays[:-1]])
    meta = torch.tensor([(int(o), a.shape[0], a.shape[1]) for o, a in zip(offsets, arrays)])
    boxes = torch.tensor([random_resized_crop_box(a.shape[1], a.shape[0], rng) for a in arrays])
    # what the official recipe's Pillow path computes for the same box, rounded and clamped to uint8
    pillow = [np.asarray(im.resize((size[1], size[0]), Image.BICUBIC, box=(l, t, l + w, t + h)))
              for im, (t, l, h, w) in zip(imgs, boxes.tolist())]
    return (data, meta, boxes, torch.zeros(count, dtype=torch.bool)), np.stack(pillow).astype(np.float32)


def _grey_levels(out):
    """Normalised ``[N, 3, H, W]`` -> pixel values ``[N, H, W, 3]`` in [0, 255] (float, not rounded)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((out.float() * std + mean) * 255).clamp(0, 255).permute(0, 2, 3, 1).cpu().numpy()


# Pillow differs from the float resampling in three ways: 22-bit fixed-point weights, a rounding and
# clamp to uint8 between its horizontal and vertical passes and at the end (the end alone is a mean
# 0.25-level difference), and resize(box=...) reads source pixels just outside the box where the
# float path clamps at the crop's edge (torchvision's crop-then-resize does the same). The last shows
# on the outermost output rows and columns at strong edges: rare pixels differ by several levels
# (~14 seen at 96 px), which the 99th percentile leaves out.
@pytest.mark.parametrize("size, backend, count, image_size", [
    ((224, 224), "torch", 6, (500, 375)),  # the pretraining size from ImageNet-sized photos (~1-2x down)
    ((160, 96), "torch", 6, (500, 375)),  # non-square, stronger horizontal downscale
    # the kernel itself: a small photo (interpreting a 500x375 one takes minutes), still ~1-2x down
    pytest.param((24, 32), "triton", 2, (64, 48), marks=requires_kernels),
])
@pytest.mark.slow
def test_agrees_with_pillow_on_photo_like_jpegs(size, backend, count, image_size):
    args, pillow = _photo_batch(count, size, seed=size[0], image_size=image_size)
    out = ops.resized_crop(*args, size, backend=backend)  # [N, 3, S_h, S_w] float32
    diff = np.abs(_grey_levels(out) - pillow)
    assert diff.mean() <= 0.35, f"mean {diff.mean():.3f} grey levels"
    assert np.percentile(diff, 99) <= 2.0, f"p99 {np.percentile(diff, 99):.2f} grey levels"


# --------------------------------------------------------------------------------------------------
# bad input: a clear error before any launch
# --------------------------------------------------------------------------------------------------


def _good():
    data, meta, boxes, flip = batch([(6, 7), (5, 5)], [(0, 0, 6, 7), (1, 1, 3, 3)], [False, True])
    return dict(data=data, meta=meta, boxes=boxes, flip=flip, size=(4, 4))


@pytest.mark.parametrize("change, err, name", [
    (lambda a: {**a, "data": a["data"].double()}, TypeError, "data"),  # sources: uint8, uint16, float32
    (lambda a: {**a, "data": a["data"].to(torch.int32)}, TypeError, "data"),
    (lambda a: {**a, "data": a["data"].view(1, -1)}, ValueError, "data"),
    (lambda a: {**a, "data": a["data"][:100]}, ValueError, "meta"),  # too short for the images
    (lambda a: {**a, "meta": a["meta"].int()}, TypeError, "meta"),
    (lambda a: {**a, "meta": a["meta"][:, :2]}, ValueError, "meta"),
    (lambda a: {**a, "meta": a["meta"] * torch.tensor([1, 0, 1])}, ValueError, "meta"),  # H = 0
    (lambda a: {**a, "meta": a["meta"] - torch.tensor([1, 0, 0])}, ValueError, "meta"),  # offset -1
    (lambda a: {**a, "boxes": a["boxes"][:1]}, ValueError, "boxes"),
    (lambda a: {**a, "boxes": a["boxes"] + torch.tensor([0, 1, 0, 0])}, ValueError, "boxes"),  # past W
    (lambda a: {**a, "boxes": a["boxes"] - torch.tensor([1, 0, 0, 0])}, ValueError, "boxes"),  # top -1
    (lambda a: {**a, "boxes": a["boxes"] * torch.tensor([1, 1, 0, 1])}, ValueError, "boxes"),  # h = 0
    (lambda a: {**a, "flip": a["flip"].to(torch.uint8)}, TypeError, "flip"),
    (lambda a: {**a, "flip": a["flip"][:1]}, ValueError, "flip"),
    (lambda a: {**a, "size": (0, 4)}, ValueError, "size"),
    (lambda a: {**a, "size": (4, 4, 4)}, TypeError, "size"),
    (lambda a: {**a, "size": 2.5}, TypeError, "size"),
    (lambda a: {**a, "mean": (0.5, float("nan"), 0.5)}, ValueError, "mean"),
    (lambda a: {**a, "mean": ()}, ValueError, "mean"),
    (lambda a: {**a, "std": (0.2, 0.2)}, ValueError, "std"),  # C = len(mean) = 3
    (lambda a: {**a, "mean": (0.5,) * 4, "std": (0.2,) * 4}, ValueError, "meta"),  # 4 channels: past data
    (lambda a: {**a, "vflip": a["flip"].to(torch.uint8)}, TypeError, "vflip"),
    (lambda a: {**a, "vflip": a["flip"][:1]}, ValueError, "vflip"),
    (lambda a: {**a, "std": (0.2, 0.0, 0.2)}, ValueError, "std"),
    (lambda a: {**a, "out_dtype": torch.int32}, TypeError, "out_dtype"),
    (lambda a: {**a, "meta": a["meta"].to("meta")}, ValueError, "meta"),  # another device
])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_bad_input(change, err, name, backend):
    # validation runs before the backend is resolved: the same errors with or without the interpreter
    with pytest.raises(err, match=rf"^{name}\b"):
        ops.resized_crop(**change(_good()), backend=backend)


# --------------------------------------------------------------------------------------------------
# C channels, uint8 / uint16 / float32 sources, upside-down flips
# --------------------------------------------------------------------------------------------------

# Statistics in the units resized_crop states (reference.FULL_SCALE): integer sources mapped to [0, 1],
# float32 as stored; chosen like a data set's own, so outputs are O(1) as in training.
STATS = {torch.uint8: (0.45, 0.25), torch.uint16: (0.3, 0.2), torch.float32: (10.0, 900.0)}

# a ragged batch mixing the regimes (upscale, 2x downscale, both flips) small enough to interpret
MIXED = ([(9, 11), (16, 24)], [(1, 2, 7, 8), (0, 0, 16, 24)], [True, False], (5, 6))


def _stats(dtype, channels):
    m, s = STATS[dtype]
    return dict(mean=tuple(m + 0.01 * c for c in range(channels)),
                std=tuple(s * (1 + 0.1 * c) for c in range(channels)))


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 2, 3, 4, 13])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.float32], ids=str)
@pytest.mark.parametrize("backend", [pytest.param("triton", marks=requires_kernels), "torch"])
def test_sources_and_channels_match_reference(backend, dtype, channels):
    # every source dtype and channel count of the contract: 1 (grey, medical), 2, 3 (RGB: the kernel's
    # three-accumulator path), 4 (one full group of 4 lanes), 13 (Sentinel-2: four groups, the last with
    # one band); both flips
    sizes, boxes, flips, size = MIXED
    args = batch(sizes, boxes, flips, seed=channels, dtype=dtype, channels=channels)
    out, _ = _check(args, size, backend, vflip=torch.tensor([False, True]), **_stats(dtype, channels))
    assert out.shape == (2, channels, *size)


def test_channel_groups_regime():
    # what the regimes above rely on: 3 channels in one program per tile, 13 in four groups, 1 in one lane
    assert -(-3 // kernel.launch_blocks((5, 6), 3)[2]) == 1
    assert -(-13 // kernel.launch_blocks((5, 6), 13)[2]) == 4
    assert kernel.launch_blocks((5, 6), 1)[2] == 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("triton", marks=requires_kernels), "torch"])
def test_uint16_extremes_and_8x_downscale(backend):
    # a 0 / 65535 checkerboard, 13 bands, downscaled 8x (33 taps): every tap at the extremes, where
    # uint16 read as signed int16 (-1) or a 255 scale would show at once
    hh, ww, c = 16, 24, 13
    board = ((torch.arange(hh)[:, None] + torch.arange(ww)[None, :]) % 2).to(torch.int32) * 65535  # [H, W]
    data = board[..., None].expand(hh, ww, c).reshape(-1).to(torch.uint16).to(DEVICE)
    meta = torch.tensor([(0, hh, ww)])
    args = (data, meta, torch.tensor([(0, 0, hh, ww)]), torch.tensor([False]))
    out, ref = _check(args, (2, 3), backend, **_stats(torch.uint16, c))
    assert ref.max() > (0.5 - 0.3) / 0.2 - 0.5  # the mean of 0 and 65535 in [0, 1] units, normalised


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=requires_kernels), "torch"])
def test_float_source_one_pixel_crop_and_upscale(backend):
    # float32 sources, 1 channel: a 1-pixel crop (constant output) and a 4x upscale with both flips
    args = batch([(5, 4), (6, 6)], [(2, 1, 1, 1), (1, 1, 3, 3)], [False, True], dtype=torch.float32, channels=1)
    out, _ = _check(args, (12, 12), backend, vflip=torch.tensor([True, True]), **_stats(torch.float32, 1))
    assert_close(out[0], out[0, :1, :1, :1].expand_as(out[0]))  # constant up to float32 rounding


@requires_kernels
def test_kernel_vflip_is_upside_down_of_unflipped():
    data, meta, boxes, _ = batch([(14, 19)], [(2, 3, 11, 13)], [False], dtype=torch.uint16, channels=2)
    st = _stats(torch.uint16, 2)
    no = torch.tensor([False])
    plain = ops.resized_crop(data, meta, boxes, no, (5, 7), **st, backend="triton")
    upside_down = ops.resized_crop(data, meta, boxes, no, (5, 7), **st, vflip=torch.tensor([True]), backend="triton")
    assert torch.equal(upside_down, plain.flip(-2))


@pytest.mark.slow
@requires_kernels
@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32], ids=str)
def test_kernel_low_precision_outputs_from_uint16(dtype):
    sizes, boxes, flips, size = MIXED
    _check(batch(sizes, boxes, flips, dtype=torch.uint16, channels=13), size, "triton", dtype,
           **_stats(torch.uint16, 13))
