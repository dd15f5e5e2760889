"""The reference path against hand-written formulas: patch order, masking, loss, sin-cos tables."""

import math

import numpy as np
import pytest
import torch

from fastmae.pos_embed import get_2d_sincos_pos_embed, interpolate_pos_embed
from fastmae.reference import (
    decoder_input_ref,
    encoder_input_ref,
    masked_mse_loss_ref,
    patchify_gather_ref,
    patchify_ref,
    masking_ids_ref,
    unpatchify_ref,
)

# (N, C, H, W, p): square RGB; one channel; four channels with a non-square image; patch 1
# (every pixel a patch); odd patch and grid sizes; a single patch covering the image.
PATCH_SHAPES = [(2, 3, 8, 8, 4), (1, 1, 6, 9, 3), (3, 4, 10, 15, 5), (2, 3, 3, 5, 1), (1, 2, 7, 7, 7)]


@pytest.mark.parametrize("n,c,hh,ww,p", PATCH_SHAPES)
def test_patchify_matches_loops_and_round_trips(n, c, hh, ww, p):
    imgs = torch.randn(n, c, hh, ww)
    x = patchify_ref(imgs, p)
    h, w = hh // p, ww // p
    assert x.shape == (n, h * w, p * p * c)
    # Written out: patch (i, j) is row i*w + j; inside it (r, q, ch) with ch fastest.
    for i in range(h):
        for j in range(w):
            for r in range(p):
                for q in range(p):
                    for ch in range(c):
                        assert x[:, i * w + j, (r * p + q) * c + ch].equal(imgs[:, ch, i * p + r, j * p + q])
    assert unpatchify_ref(x, p, (h, w), c).equal(imgs)


def test_unpatchify_defaults_to_square_grid_and_channels_from_width():
    x = torch.randn(2, 16, 4 * 4 * 3)
    assert unpatchify_ref(x, 4).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("n,num_patches,k", [(1, 1, 1), (3, 10, 2), (2, 49, 12), (4, 196, 49)])
def test_masking_ids_ref_indices(n, num_patches, k):
    noise = torch.rand(n, num_patches)
    ids_keep, ids_restore, mask, _ = masking_ids_ref(noise, k)
    ids_shuffle = torch.argsort(noise, dim=1)
    assert ids_keep.equal(ids_shuffle[:, :k])  # smallest noise kept, in noise order
    assert torch.gather(ids_shuffle, 1, ids_restore).equal(torch.arange(num_patches).expand(n, -1))
    assert mask.dtype == torch.float32
    assert mask.sum(1).equal(torch.full((n,), float(num_patches - k)))  # same count every sample
    assert mask.gather(1, ids_keep).eq(0).all()  # kept patches are 0 = not removed


def test_masking_ids_ref_breaks_ties_by_index():
    noise = torch.tensor([[0.5, 0.1, 0.5, 0.1, 0.3]])
    ids_keep, ids_restore, _, _ = masking_ids_ref(noise, 3)
    assert ids_keep.tolist() == [[1, 3, 4]]
    assert ids_restore.tolist() == [[3, 0, 4, 1, 2]]


def _loss_by_hand(pred, imgs, mask, p, norm_pix):
    target = patchify_ref(imgs, p)
    n, num_patches, pdim = target.shape
    num = den = 0.0
    for i in range(n):
        for j in range(num_patches):
            t = target[i, j].double()
            if norm_pix:
                mean = t.sum() / pdim
                var = ((t - mean) ** 2).sum() / (pdim - 1)  # unbiased
                t = (t - mean) / math.sqrt(var + 1e-6)
            err = ((pred[i, j].double() - t) ** 2).sum() / pdim
            num += float(mask[i, j]) * float(err)
            den += float(mask[i, j])
    return num / den


@pytest.mark.parametrize("norm_pix", [False, True])
def test_masked_mse_loss_ref_matches_hand_written_formula(norm_pix):
    imgs = torch.randn(2, 3, 8, 12)  # p = 2: a 4 x 6 grid, 12 values per patch
    pred = torch.randn(2, 24, 12)
    mask = (torch.rand(2, 24) < 0.5).float()
    mask[0, 0] = 1.0
    got = masked_mse_loss_ref(pred, imgs, mask, 2, norm_pix)
    assert got.item() == pytest.approx(_loss_by_hand(pred, imgs, mask, 2, norm_pix), rel=1e-5)


def test_masked_mse_loss_ref_masked_only_form_equals_full_form():
    imgs = torch.randn(2, 3, 8, 8)
    pred = torch.randn(2, 16, 12)
    ids_keep, ids_restore, mask, _ = masking_ids_ref(torch.rand(2, 16), 5)
    ids_masked = torch.argsort(ids_restore, dim=1)[:, 5:]
    full = masked_mse_loss_ref(pred, imgs, mask, 2, True)
    only = masked_mse_loss_ref(pred.gather(1, ids_masked[..., None].expand(-1, -1, 12)), imgs, None, 2, True,
                               ids_masked=ids_masked)
    torch.testing.assert_close(only, full, rtol=1e-6, atol=0)


def test_masked_mse_loss_ref_nothing_masked_is_zero_not_nan():
    pred = torch.randn(1, 4, 12, requires_grad=True)
    loss = masked_mse_loss_ref(pred, torch.randn(1, 3, 4, 4), torch.zeros(1, 4), 2)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()


def test_patchify_gather_ref_is_gathered_patchify():
    imgs = torch.randn(2, 3, 8, 8)
    ids = torch.tensor([[3, 0], [1, 2]])
    x = patchify_ref(imgs, 4)
    assert patchify_gather_ref(imgs, ids, 4).equal(torch.stack([x[0, [3, 0]], x[1, [1, 2]]]))


def test_encoder_and_decoder_input_ref_follow_the_official_steps():
    n, num_patches, k, d = 2, 6, 2, 4
    pos = torch.randn(1, num_patches + 1, d)
    cls = torch.randn(1, 1, d)
    x_all = torch.randn(n, num_patches, d)
    ids_keep, ids_restore, _, _ = masking_ids_ref(torch.rand(n, num_patches), k)
    x_vis = torch.stack([x_all[i, ids_keep[i]] for i in range(n)])
    enc = encoder_input_ref(x_vis, pos, cls, ids_keep)
    # official: add positions to all patches, then gather, then prepend cls + pos[0]
    official = torch.stack([(x_all + pos[:, 1:])[i, ids_keep[i]] for i in range(n)])
    torch.testing.assert_close(enc[:, 1:], official)
    torch.testing.assert_close(enc[:, 0], (cls + pos[:, 0]).expand(n, -1, -1)[:, 0])

    mtok = torch.randn(1, 1, d)
    dec = decoder_input_ref(enc, ids_restore, mtok, pos)
    for i in range(n):
        for j in range(num_patches):
            r = int(ids_restore[i, j])
            src = enc[i, 1 + r] if r < k else mtok[0, 0]
            torch.testing.assert_close(dec[i, 1 + j], src + pos[0, 1 + j])
    torch.testing.assert_close(dec[:, 0], enc[:, 0] + pos[:, 0])


def test_sincos_values_at_known_positions():
    d = 16
    emb = get_2d_sincos_pos_embed(d, (3, 5), cls_token=True)
    assert emb.shape == (16, d) and emb.dtype == torch.float32
    assert emb[0].eq(0).all()  # cls row
    q = d // 4
    omega = [1.0 / 10000 ** (i / q) for i in range(q)]
    row, col = 2, 3  # patch (h=2, w=3) is row 2*5+3 of the grid, +1 for cls
    e = emb[1 + row * 5 + col].double()
    for i in range(q):
        assert e[i].item() == pytest.approx(math.sin(col * omega[i]), abs=1e-6)  # first half: column
        assert e[q + i].item() == pytest.approx(math.cos(col * omega[i]), abs=1e-6)
        assert e[2 * q + i].item() == pytest.approx(math.sin(row * omega[i]), abs=1e-6)  # second half: row
        assert e[3 * q + i].item() == pytest.approx(math.cos(row * omega[i]), abs=1e-6)


def _official_sincos(embed_dim, grid_size):
    """The official numpy code (util/pos_embed.py), float64 throughout."""
    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


@pytest.mark.parametrize("embed_dim,grid", [(512, 14), (768, 14), (1024, 16), (1280, 16)])
def test_sincos_equals_the_official_float64_table_bitwise(embed_dim, grid):
    # Computed in float32 the high-frequency channels at large positions would differ in the last
    # bits; built in float64 and cast once, the table is the official one exactly.
    ours = get_2d_sincos_pos_embed(embed_dim, grid, cls_token=True)
    official = torch.from_numpy(_official_sincos(embed_dim, grid)).float()
    assert ours.equal(official)


def test_sincos_refuses_widths_not_divisible_by_four():
    with pytest.raises(ValueError, match="embed_dim"):
        get_2d_sincos_pos_embed(10, 4)


def test_interpolate_pos_embed_same_grid_is_identity_and_resizes_otherwise():
    pos = get_2d_sincos_pos_embed(8, 4, cls_token=True)[None]
    assert interpolate_pos_embed(pos, (4, 4)) is pos
    out = interpolate_pos_embed(pos, (6, 2))
    assert out.shape == (1, 13, 8) and out[:, 0].equal(pos[:, 0])
    with pytest.raises(ValueError, match="old_grid"):
        interpolate_pos_embed(pos, (2, 2), old_grid=(3, 3))
