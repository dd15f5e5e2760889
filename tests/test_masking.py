"""``random_masking`` (official signature) and the masking lesson's ``MaskGenerator``."""

import math

import numpy as np
import pytest
import torch

import fastmae
from fastmae import MaskGenerator


def test_random_masking_official_signature():
    x = torch.randn(3, 20, 5)
    noise = torch.rand(3, 20)
    x_masked, mask, ids_restore = fastmae.random_masking(x, 0.75, noise, backend="torch")
    ids_keep = torch.argsort(noise, 1)[:, :5]
    assert x_masked.equal(torch.stack([x[i, ids_keep[i]] for i in range(3)]))
    assert mask.sum(1).eq(15).all() and ids_restore.shape == (3, 20)
    assert fastmae.random_masking(x, 0.75)[0].shape == (3, 5, 5)  # noise drawn when omitted


@pytest.mark.parametrize("ratio,error", [(1.0, ValueError), (-0.1, ValueError), (float("nan"), ValueError),
                                         (0.99, ValueError), ("0.5", TypeError)])
def test_random_masking_refuses_bad_ratios(ratio, error):
    with pytest.raises(error, match="mask_ratio"):
        fastmae.random_masking(torch.randn(1, 20, 4), ratio)


def test_mask_generator_follows_the_lesson():
    gen = MaskGenerator(input_size=224, mask_patch_size=16, mask_ratio=0.8)
    assert gen.rand_size == 14 and gen.token_count == 196
    assert gen.mask_count == math.ceil(196 * 0.8) == 157
    images = np.zeros((2, 224, 224, 3), dtype=np.uint8)
    mask_ids, ids_keeps, masks = gen(images)
    assert len(mask_ids) == len(ids_keeps) == len(masks) == 2
    for mask_idx, keep, mask in zip(mask_ids, ids_keeps, masks):
        assert sorted(np.concatenate([mask_idx, keep]).tolist()) == list(range(196))  # one permutation
        assert len(mask_idx) == 157 and len(keep) == 39
        assert mask.shape == (224, 224) and set(np.unique(mask).tolist()) <= {0, 1}
        assert mask.sum() == 39 * 16 * 16  # 1 = kept
        coarse = mask[::16, ::16].reshape(-1)
        assert coarse[mask_idx].sum() == 0 and coarse[keep].all()
        # constant inside each 16 x 16 mask patch
        assert (mask == np.kron(mask[::16, ::16], np.ones((16, 16), dtype=int))).all()


def test_mask_generator_defaults_and_masked_image():
    gen = MaskGenerator()
    assert (gen.input_size, gen.mask_patch_size, gen.mask_ratio) == (192, 16, 0.8)
    image = np.full((192, 192, 3), 200, dtype=np.uint8)
    _, _, masks = gen([image])
    masked = np.expand_dims(masks[0], -1) * image  # what the lesson saves
    assert (masked[masks[0] == 0] == 0).all() and (masked[masks[0] == 1] == 200).all()


def test_mask_generator_seeding():
    a = MaskGenerator(32, 4, 0.5, seed=7)([0, 0])
    b = MaskGenerator(32, 4, 0.5, seed=7)([0, 0])
    c = MaskGenerator(32, 4, 0.5, seed=8)([0, 0])
    assert all((x == y).all() for x, y in zip(a[2], b[2]))
    assert any((x != y).any() for x, y in zip(a[2], c[2]))
    np.random.seed(3)  # seed=None uses NumPy's global state, like the lesson
    d = MaskGenerator(32, 4, 0.5)([0])
    np.random.seed(3)
    e = MaskGenerator(32, 4, 0.5)([0])
    assert (d[2][0] == e[2][0]).all()


def test_mask_generator_statistics_are_uniform():
    # Each of the 16 patches is masked in a fraction mask_count/token_count of draws; with 4000
    # draws the standard deviation of that frequency is ~0.008, so 0.05 is > 6 sigma.
    gen = MaskGenerator(16, 4, 0.3, seed=0)
    _, _, masks = gen(range(4000))
    freq = 1 - np.stack([m[::4, ::4] for m in masks]).reshape(4000, -1).mean(0)
    assert gen.mask_count == 5
    assert np.abs(freq - 5 / 16).max() < 0.05


@pytest.mark.parametrize("ratio,expected", [(0.0, 0), (1.0, 16), (0.01, 1), (0.5, 8)])
def test_mask_generator_counts_at_the_edges(ratio, expected):
    gen = MaskGenerator(16, 4, ratio)
    assert gen.mask_count == expected
    assert gen([0])[2][0].sum() == (16 - expected) * 16


def test_batched_generate_on_device_and_seeding():
    gen = MaskGenerator(64, 16, 0.75)
    keep = gen.generate(5, device="cpu", generator=torch.Generator().manual_seed(1))
    assert keep.shape == (5, 4, 4) and keep.dtype == torch.int64
    assert keep.reshape(5, -1).sum(1).eq(16 - 12).all()
    again = gen.generate(5, device="cpu", generator=torch.Generator().manual_seed(1))
    assert keep.equal(again)
    pixels = gen.to_pixels(keep)
    assert pixels.shape == (5, 64, 64) and pixels[:, ::16, ::16].equal(keep)


def test_model_patch_size_and_conversion_to_the_model_convention():
    # SimMIM: 32 px mask patches over 8 px model patches -> each mask patch covers 4 x 4 model patches
    gen = MaskGenerator(64, 32, 0.5, model_patch_size=8, seed=0)
    mask_ids, _, masks = gen([0, 0])
    model_mask = gen.to_model_mask(masks)
    assert model_mask.shape == (2, 64) and model_mask.dtype == torch.float32
    assert model_mask.sum(1).eq(2 * 16).all()  # 2 masked mask-patches x 16 model patches, 1 = removed
    grid = model_mask.reshape(2, 8, 8)
    for i in range(2):
        for m in mask_ids[i]:
            r, c = divmod(int(m), 2)
            assert grid[i, 4 * r:4 * r + 4, 4 * c:4 * c + 4].eq(1).all()
    torch_mask = gen.to_model_mask(gen.generate(2))
    assert torch_mask.shape == (2, 64) and torch_mask.sum(1).eq(32).all()


def test_generator_masks_drive_the_model_loss():
    gen = MaskGenerator(32, 8, 0.75, model_patch_size=4, seed=0)
    mask = gen.to_model_mask(gen.generate(2))  # [2, 64], 1 = removed
    imgs = torch.randn(2, 3, 32, 32)
    pred = torch.randn(2, 64, 48)
    loss = fastmae.masked_mse_loss(pred, imgs, mask, 4, backend="torch")
    ref = fastmae.reference.masked_mse_loss_ref(pred, imgs, mask, 4)
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("kwargs,error,name", [
    (dict(input_size=100, mask_patch_size=16), ValueError, "input_size"),
    (dict(mask_ratio=1.5), ValueError, "mask_ratio"),
    (dict(mask_ratio=float("nan")), ValueError, "mask_ratio"),
    (dict(mask_patch_size=0), ValueError, "mask_patch_size"),
    (dict(input_size=19.2), TypeError, "input_size"),
    (dict(model_patch_size=5), ValueError, "model_patch_size"),
])
def test_mask_generator_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        MaskGenerator(**kwargs)


def test_mask_generator_bad_calls():
    gen = MaskGenerator(32, 8, 0.5)
    with pytest.raises(TypeError, match="images"):
        gen(5)
    with pytest.raises(ValueError, match="batch_size"):
        gen.generate(0)
    with pytest.raises(ValueError, match="keep"):
        gen.to_model_mask(torch.ones(2, 3, 3))
