"""The worker's draws: RandomResizedCrop's box distribution and seeding, the flip, the JPEG draft."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from fastmae.data import CropSpec, draw_flip, load_crop, photo_like_jpeg, random_resized_crop_box, sample_rng
from fastmae.data.boxes import draft_request, scale_box


PINNED_BOX = (8, 1, 355, 318)  # random_resized_crop_box(500, 375, sample_rng(0, 0, 0)), CPython 3.11


def _boxes(width, height, draws, seed=0, **kw):
    rng = np.random.default_rng(seed)
    return np.array([random_resized_crop_box(width, height, rng, **kw) for _ in range(draws)])  # [n, 4]


def _moments_check(area, log_ratio, want_area, want_log_ratio, scale, n):
    # means within 5 standard errors (a uniform on [a, b] has sd (b - a) / sqrt(12), a bound for any
    # distribution on [a, b] is (b - a) / 2); rounding w and h moves area and ratio by < 0.3%
    se = lambda a, b: 5 * (b - a) / 2 / math.sqrt(n)  # noqa: E731
    assert abs(area.mean() - want_area) < se(*scale) + 0.003
    assert abs(log_ratio.mean() - want_log_ratio) < se(math.log(3 / 4), math.log(4 / 3)) + 0.003


def test_box_distribution_without_rejection():
    # 1000 x 800 with areas in [0.2, 0.5]: every first try fits, so the area fraction is exactly
    # U(0.2, 0.5), log(w/h) U(log 3/4, log 4/3) and the corner uniform over the positions that fit
    n = 4000
    top, left, h, w = _boxes(1000, 800, n, scale=(0.2, 0.5)).T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 800).all() and (left + w <= 1000).all()
    area, log_ratio = w * h / (1000 * 800), np.log(w / h)
    assert area.min() >= 0.2 * 0.99 and area.max() <= 0.5 * 1.01
    assert log_ratio.min() >= math.log(3 / 4) - 0.01 and log_ratio.max() <= math.log(4 / 3) + 0.01
    _moments_check(area, log_ratio, 0.35, 0.0, (0.2, 0.5), n)
    assert abs((top / (800 - h)).mean() - 0.5) < 5 * 0.5 / math.sqrt(n)
    assert abs((left / (1000 - w)).mean() - 0.5) < 5 * 0.5 / math.sqrt(n)


@pytest.mark.parametrize("width, height", [(500, 375), (375, 500)])  # ImageNet-like, both orientations
def test_box_distribution_with_rejection(width, height):
    # The default scale (0.2, 1): large areas at an unfitting ratio are redrawn, so the first accepted
    # try is uniform over the region of (area s, log ratio u) where the box fits: s A e^u <= W² and
    # s A e^-u <= H². Its means, integrated on a grid here independently of the sampler:
    s, u = np.meshgrid(np.linspace(0.2, 1, 801), np.linspace(math.log(3 / 4), math.log(4 / 3), 801))
    fits = (s * width * height * np.exp(u) <= width**2) & (s * width * height * np.exp(-u) <= height**2)
    n = 4000
    _, _, h, w = _boxes(width, height, n).T
    _moments_check(w * h / (width * height), np.log(w / h), s[fits].mean(), u[fits].mean(), (0.2, 1.0), n)


def test_box_fallback_is_the_largest_allowed_centred_crop():
    # an area fraction above 1 never fits in ten tries: the central fallback at the nearest ratio
    assert random_resized_crop_box(1000, 100, np.random.default_rng(0), scale=(2.0, 2.0)) == (0, 433, 100, 133)
    assert random_resized_crop_box(100, 1000, np.random.default_rng(0), scale=(2.0, 2.0)) == (433, 0, 133, 100)
    assert random_resized_crop_box(120, 100, np.random.default_rng(0), scale=(2.0, 2.0)) == (0, 0, 100, 120)


def test_box_seeding():
    # a pure function of the generator's seed: equal seeds, equal boxes; other seeds, other boxes
    assert np.array_equal(_boxes(500, 375, 50, seed=1), _boxes(500, 375, 50, seed=1))
    assert not np.array_equal(_boxes(500, 375, 50, seed=1), _boxes(500, 375, 50, seed=2))
    # the loader's per-sample generators: a pure function of the key, distinct keys give other draws
    key_boxes = lambda *key: random_resized_crop_box(500, 375, sample_rng(*key))  # noqa: E731
    assert key_boxes(0, 1, 7) == key_boxes(0, 1, 7)
    assert len({key_boxes(0, e, i) for e in range(3) for i in range(20)}) == 60
    # pinned values: the same draws on every machine and Python version (SHA-512 string seeding)
    assert key_boxes(0, 0, 0) == PINNED_BOX


def test_box_distribution_from_sample_generators():
    # the loader's generators give the box distribution as numpy's do (same means, same bounds)
    n = 4000
    top, left, h, w = np.array([random_resized_crop_box(1000, 800, sample_rng(5, 0, i), scale=(0.2, 0.5))
                                for i in range(n)]).T
    _moments_check(w * h / (1000 * 800), np.log(w / h), 0.35, 0.0, (0.2, 0.5), n)
    assert abs((top / (800 - h)).mean() - 0.5) < 5 * 0.5 / math.sqrt(n)


def test_flip_rate():
    rng = np.random.default_rng(0)
    flips = sum(draw_flip(rng) for _ in range(4000))
    assert abs(flips - 2000) < 5 * math.sqrt(4000) / 2  # Binomial(4000, 1/2), 5 sd


def test_draft_request_keeps_the_box_at_least_the_output():
    # a 2000 x 1500 photo whose box is 1200 x 900: asking for 448 x 336 lets Pillow pick 1/2 (1000 x 750,
    # where the box is 600 x 450 >= 224); 1/4 would leave it smaller than the output
    assert draft_request(2000, 1500, (0, 0, 900, 1200), (224, 224)) == (374, 374)
    assert scale_box((100, 200, 900, 1200), (2000, 1500), (1000, 750)) == (50, 100, 450, 600)
    # edges round to the nearest reduced pixel and stay inside
    assert scale_box((1499, 1999, 1, 1), (2000, 1500), (250, 188)) == (187, 249, 1, 1)


@pytest.mark.parametrize("draft", [True, False])
def test_load_crop_with_and_without_draft(draft):
    jpeg = photo_like_jpeg(3, width=1600, height=1200)
    spec = CropSpec((64, 64), scale=(0.5, 0.5), ratio=(1.0, 1.0), draft=draft)  # a 980 x 980 box
    pixels, flip = load_crop(Image.open(io.BytesIO(jpeg)), spec, np.random.default_rng(0), "photo")
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    if draft:  # decoded at 1/8 (the box is 15x the output): 980 / 8 ~ 122 px, still >= 64
        assert 64 <= pixels.shape[0] <= 980 // 4 and abs(pixels.shape[0] - 980 / 8) <= 1
    else:
        assert pixels.shape[:2] == (980, 980)
    assert flip in (0, 1)  # bit 0 only: no vertical flip asked for


@pytest.mark.parametrize("box", [(0, 0, 375, 500), (40, 50, 250, 300), (374, 499, 1, 1), (10, 0, 7, 500)])
def test_crop_pixels_is_the_crop(box):
    # the one-pass extraction (Pillow's raw encoder on the box) is exactly np.asarray(im.crop(box)):
    # the whole image, an interior box, the bottom-right pixel, a full-width strip
    from fastmae.data.crops import crop_pixels

    im = Image.open(io.BytesIO(photo_like_jpeg(1))).convert("RGB")
    top, left, h, w = box
    want = np.asarray(im.crop((left, top, left + w, top + h)))
    got = crop_pixels(im, box)
    assert got.shape == (h, w, 3) and np.array_equal(got, want)
