"""The model: official keys, shapes, initialisation and outputs; the fast path against the official one.

Backends are named explicitly here ("reference", "torch"); the Triton fast path of the whole model
is in tests/test_model_triton.py.
"""

import argparse
import math

import pytest
import torch

import fastmae
import official_mae
from helpers import rel_err
from fastmae.pos_embed import get_2d_sincos_pos_embed

CONFIGS = {  # factory -> (patch, embed, depth, decoder embed, decoder depth, patches at 224 px)
    "mae_vit_base_patch16": (16, 768, 12, 512, 8, 196),
    "mae_vit_large_patch16": (16, 1024, 24, 512, 8, 196),
    "mae_vit_huge_patch14": (14, 1280, 32, 512, 8, 256),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_keys_and_shapes_match_the_official_model(name):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = fastmae.create_model(name)
    expected = official_mae.official_state_dict_shapes(*CONFIGS[name])
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert list(got)[:4] == ["cls_token", "pos_embed", "mask_token", "decoder_pos_embed"]


def test_dec512d8b_names_are_the_same_factories():
    assert fastmae.MODELS["mae_vit_base_patch16"] is fastmae.MODELS["mae_vit_base_patch16_dec512d8b"]
    assert fastmae.mae_vit_large_patch16 is fastmae.mae_vit_large_patch16_dec512d8b
    assert fastmae.mae_vit_huge_patch14 is fastmae.mae_vit_huge_patch14_dec512d8b


def test_factories_use_layernorm_eps_1e6_and_the_class_default_1e5():
    assert fastmae.mae_vit_micro_patch4().norm.eps == 1e-6
    assert fastmae.MaskedAutoencoderViT(32, 4, 3, 16, 1, 2, 8, 1, 2).norm.eps == 1e-5


def test_create_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown model 'mae_vit_tiny'"):
        fastmae.create_model("mae_vit_tiny")


def test_official_initialisation():
    model = fastmae.create_model("mae_vit_tiny_patch4")
    grid = model.patch_embed.grid_size
    assert model.pos_embed.equal(get_2d_sincos_pos_embed(128, grid, cls_token=True)[None])
    assert model.decoder_pos_embed.equal(get_2d_sincos_pos_embed(96, grid, cls_token=True)[None])
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    # xavier_uniform on the patch-embed weight viewed as [D, C*p*p], and on every Linear
    w = model.patch_embed.proj.weight.view(128, -1)
    bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    qkv = model.blocks[0].attn.qkv.weight  # the fused [3D, D] matrix as ONE xavier matrix
    assert qkv.abs().max() <= math.sqrt(6 / (qkv.shape[0] + qkv.shape[1]))
    assert qkv.abs().max() > 0.9 * math.sqrt(6 / (qkv.shape[0] + qkv.shape[1]))
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            assert mod.bias.eq(0).all()
        if isinstance(mod, torch.nn.LayerNorm):
            assert mod.weight.eq(1).all() and mod.bias.eq(0).all()
    assert 0.01 < model.cls_token.std() < 0.03 and 0.01 < model.mask_token.std() < 0.03


@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_forward_equals_the_official_algorithm(backend, norm_pix):
    model = fastmae.create_model("mae_vit_micro_patch4", norm_pix_loss=norm_pix, backend=backend)
    imgs = torch.randn(3, 3, 32, 32)
    noise = torch.rand(3, 64)
    loss, pred, mask = model(imgs, 0.75, noise)
    with torch.no_grad():
        o_loss, o_pred, o_mask = official_mae.forward(model, imgs, 0.75, noise)
    assert mask.equal(o_mask)
    assert pred.shape == (3, 64, 48) and mask.shape == (3, 64)
    assert rel_err(pred.detach(), o_pred) <= 1e-5
    assert abs(loss.item() - o_loss.item()) <= 1e-5 * abs(o_loss.item())


@pytest.mark.parametrize("norm_pix", [False, True])
def test_fast_path_gradients_equal_the_reference_path(norm_pix):
    model = fastmae.create_model("mae_vit_micro_patch4", norm_pix_loss=norm_pix)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    grads = {}
    for backend, full_pred in (("reference", True), ("torch", True), ("torch", False)):
        model.zero_grad()
        model.backend = backend
        loss, _, _ = model(imgs, 0.75, noise, full_pred=full_pred)
        loss.backward()
        grads[backend, full_pred] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                    if p.grad is not None})
    ref_loss, ref = grads["reference", True]
    assert len(ref) == len([p for p in model.parameters() if p.requires_grad])  # every parameter got a grad
    for key in (("torch", True), ("torch", False)):
        loss, got = grads[key]
        assert abs(loss.item() - ref_loss.item()) <= 1e-5 * ref_loss.item()
        assert got.keys() == ref.keys()
        for name in ref:
            assert rel_err(got[name], ref[name]) <= 1e-5, (key, name)


def test_full_pred_false_returns_no_pred_and_the_same_mask():
    model = fastmae.create_model("mae_vit_micro_patch4", backend="torch")
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    loss, pred, mask = model(imgs, 0.75, noise, full_pred=False)
    assert pred is None and mask.equal(model(imgs, 0.75, noise)[2])


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_official_methods_compose_to_forward(backend):
    model = fastmae.create_model("mae_vit_micro_patch4", backend=backend)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    latent, mask, ids_restore = model.forward_encoder(imgs, 0.75, noise=noise)
    assert latent.shape == (2, 17, 64) and ids_restore.shape == (2, 64)
    pred = model.forward_decoder(latent, ids_restore)
    loss = model.forward_loss(imgs, pred, mask)
    loss2, pred2, _ = model(imgs, 0.75, noise)
    assert loss.equal(loss2) and pred.equal(pred2)
    assert model.unpatchify(model.patchify(imgs)).equal(imgs)
    x_masked, mask_r, ids_r = model.random_masking(torch.randn(2, 64, 5), 0.75, noise)
    assert x_masked.shape == (2, 16, 5) and mask_r.equal(mask) and ids_r.equal(ids_restore)


@pytest.mark.parametrize("in_chans,img_size", [(1, 32), (4, (16, 24))])
def test_other_channel_counts_and_non_square_images(in_chans, img_size):
    model = fastmae.MaskedAutoencoderViT(img_size, 4, in_chans, 32, 1, 2, 16, 1, 2, backend="torch")
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    imgs, noise = torch.randn(2, in_chans, h, w), torch.rand(2, (h // 4) * (w // 4))
    loss, pred, mask = model(imgs, 0.5, noise)
    model.backend = "reference"
    ref_loss, ref_pred, ref_mask = model(imgs, 0.5, noise)
    assert pred.shape == (2, (h // 4) * (w // 4), 16 * in_chans) and mask.equal(ref_mask)
    assert rel_err(pred, ref_pred) <= 1e-5 and abs(loss.item() - ref_loss.item()) <= 1e-5 * ref_loss.item()
    assert model.unpatchify(model.patchify(imgs)).equal(imgs)


def test_another_resolution_rebuilds_the_sincos_tables():
    model = fastmae.create_model("mae_vit_micro_patch4")
    imgs, noise = torch.randn(1, 3, 48, 40), torch.rand(1, 120)  # a 12 x 10 grid, built for 8 x 8
    out = {b: model.forward_encoder(imgs, 0.75, noise) for b in ("reference", "torch")
           if not setattr(model, "backend", b)}
    torch.testing.assert_close(out["torch"][0], out["reference"][0], rtol=1e-5, atol=1e-5)
    enc, _ = model._pos_tables((12, 10))
    assert enc.equal(get_2d_sincos_pos_embed(64, (12, 10), cls_token=True)[None])
    pred = model.forward_decoder(out["torch"][0], out["torch"][2], grid_size=(12, 10))
    assert pred.shape == (1, 120, 48)


def test_mask_ratio_zero_gives_zero_loss_and_finite_gradients():
    model = fastmae.create_model("mae_vit_micro_patch4", backend="torch")
    loss, pred, mask = model(torch.randn(2, 3, 32, 32), 0.0)
    loss.backward()
    assert loss.item() == 0.0 and mask.eq(0).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("ratio", [0.99, 0.999])
def test_a_ratio_that_keeps_no_token_is_refused(ratio):
    model = fastmae.create_model("mae_vit_micro_patch4")
    with pytest.raises(ValueError, match="keeps no patch"):
        model(torch.randn(1, 3, 32, 32), ratio)


def _official_checkpoint(model, path):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    args = argparse.Namespace(model="mae_vit_micro_patch4", mask_ratio=0.75, norm_pix_loss=False, input_size=32)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
                "scaler": {"scale": 65536.0}, "args": args}, path)


def test_official_checkpoint_loads_strictly_and_reproduces_outputs(tmp_path):
    src = fastmae.create_model("mae_vit_micro_patch4", backend="reference")
    path = tmp_path / "checkpoint-3.pth"
    _official_checkpoint(src, path)
    dst = fastmae.create_model("mae_vit_micro_patch4", backend="torch")
    state = fastmae.load_official_checkpoint(path, dst)
    assert state.keys() == src.state_dict().keys()
    imgs, noise = torch.randn(1, 3, 32, 32), torch.rand(1, 64)
    a, b = src(imgs, 0.75, noise), dst(imgs, 0.75, noise)
    assert rel_err(b[1], a[1]) <= 1e-5


def test_checkpoint_loading_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": Evil()}, path)
    with pytest.raises(ValueError, match="unsafe|corrupt"):
        fastmae.load_official_checkpoint(path)


def test_checkpoint_loading_reports_truncated_files(tmp_path):
    path = tmp_path / "cut.pth"
    _official_checkpoint(fastmae.create_model("mae_vit_micro_patch4"), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        fastmae.load_official_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        fastmae.load_official_checkpoint(tmp_path / "missing.pth")


def test_checkpoint_of_another_model_fails_strict_loading(tmp_path):
    path = tmp_path / "tiny.pth"
    _official_checkpoint(fastmae.create_model("mae_vit_tiny_patch4"), path)
    with pytest.raises(RuntimeError, match="size mismatch"):
        fastmae.load_official_checkpoint(path, fastmae.create_model("mae_vit_micro_patch4"))


@pytest.mark.slow
def test_torch_compile_fullgraph_of_the_small_model():
    model = fastmae.create_model("mae_vit_micro_patch4", backend="torch")
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss, pred, _ = compiled(imgs, 0.75, noise)
    loss.backward()
    eager_loss, eager_pred, _ = model(imgs, 0.75, noise)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred, eager_pred, rtol=1e-5, atol=1e-5)
