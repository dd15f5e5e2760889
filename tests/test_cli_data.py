"""The pretraining data path without torchvision: the official augmentation's sampling bounds,
bicubic resampling, flip rate and ImageNet normalisation, and CPU-side tensors whatever the
default device. Cheap unit tests on seeded generators (deterministic, no flaky rates)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from fastmae.cli.data import (Augmented, ProceduralImages, build_loader, pretrain_transform,
                              random_resized_crop_box, to_normalized_tensor)
from fastmae.cli.images import IMAGENET_MEAN, IMAGENET_STD, to_uint8

pytestmark = pytest.mark.usefixtures("cpu_default_device")  # see tests/conftest.py


@pytest.mark.parametrize("width, height", [
    (1000, 800),  # large: rounding of w and h moves area and ratio by < 0.5%
    (64, 48),  # small, as the procedural images: rounding matters, bounds are checked loosely
])
def test_random_resized_crop_box_within_scale_and_ratio(width, height):
    rng = np.random.default_rng(0)
    tol = 2 / min(width, height)  # one pixel of rounding on each side
    for _ in range(2000):
        left, top, right, bottom = random_resized_crop_box(width, height, rng)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        area = w * h / (width * height)
        assert 0.2 * (1 - tol) ** 2 <= area <= 1.0
        assert 3 / 4 * (1 - tol) <= w / h <= 4 / 3 * (1 + tol)


def test_random_resized_crop_box_fallback_is_the_largest_allowed_centred_crop():
    # 10:1 leaves no room for a 4:3 box of 20% area in ten tries? It does sometimes; the fallback
    # is what a box of the full height and a 4/3 ratio would be. Force it with an empty scale.
    rng = np.random.default_rng(0)
    assert random_resized_crop_box(1000, 100, rng, scale=(2.0, 2.0)) == (433, 0, 566, 100)


def test_pretrain_transform_resamples_bicubic(monkeypatch):
    calls = []
    resize = Image.Image.resize

    def spy(self, size, resample=None, *args, **kwargs):
        calls.append(resample)
        return resize(self, size, resample, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    pretrain_transform(ProceduralImages(1, size=40).image(0), (16, 16), np.random.default_rng(0))
    assert calls == [Image.BICUBIC]


def test_horizontal_flip_half_the_time():
    # A left-to-right ramp: after any crop and resize the left column is darker, unless flipped.
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (64, 1))
    img = Image.fromarray(np.stack([ramp] * 3, -1).astype(np.uint8))
    draws = 1000
    flipped = sum(
        bool(pretrain_transform(img, (16, 16), np.random.default_rng([7, i]))[0, :, 0].mean()
             > pretrain_transform(img, (16, 16), np.random.default_rng([7, i]))[0, :, -1].mean())
        for i in range(draws))
    # Binomial(1000, 1/2): sd 16; 5 sd either side.
    assert abs(flipped - draws / 2) < 5 * math.sqrt(draws) / 2


def test_normalisation_uses_imagenet_mean_and_std():
    rgb = (255, 0, 128)
    x = to_normalized_tensor(Image.new("RGB", (8, 6), rgb))  # [3, 6, 8]
    assert x.shape == (3, 6, 8) and x.dtype == torch.float32
    for c in range(3):
        expected = (rgb[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(x[c], torch.tensor(expected, device="cpu"), atol=1e-6)
    # to_uint8 inverts it (truncating: values within one grey level).
    assert np.abs(to_uint8(x).astype(int) - np.array(rgb)).max() <= 1


def test_cpu_side_tensors_whatever_the_default_device():
    # The meta device stands in for CUDA as the default (conftest.py's GPU run): a tensor made
    # without an explicit device would land there and fail against the CPU images.
    img = Image.new("RGB", (8, 8), (10, 200, 30))
    with torch.device("meta"):
        x = to_normalized_tensor(img)
        assert x.device.type == "cpu" and torch.isfinite(x).all()
        assert to_uint8(x).shape == (8, 8, 3)
        dataset = Augmented(ProceduralImages(8, size=16), (8, 8), seed=0)
        loader = build_loader(dataset, batch_size=4, seed=0, num_workers=0)
        # The sampler's permutation (a CPU generator); the DataLoader's own base-seed draw follows
        # the default device, which works on CUDA but not on meta, so the loader is not iterated.
        assert sorted(loader.sampler) == list(range(8))
        img, skipped = dataset[3]
        assert img.device.type == "cpu" and img.shape == (3, 8, 8) and skipped == -1
