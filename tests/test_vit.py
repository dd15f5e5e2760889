"""The fine-tuning ViT against the official models_vit / main_finetune / lr_decay (tests/official_vit.py),
and its keys against timm's.

Sizes: the micro factory (2 blocks, 64 wide, 32 px) for anything that runs, since every path here is
plain torch; the official sizes on the meta device for keys and shapes only.
"""

import pytest
import torch

import fastmae
import official_vit
from fastmae import vit as vit_module
from fastmae.vit import VisionTransformer, param_groups_lrd
from helpers import rel_err


def timm_keys(depth, global_pool=False, head=True):
    """timm's VisionTransformer state-dict names (class token, learned positions), written out."""
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    for i in range(depth):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys += [f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"]
    keys += ["fc_norm.weight", "fc_norm.bias"] if global_pool else ["norm.weight", "norm.bias"]
    return keys + (["head.weight", "head.bias"] if head else [])


@pytest.mark.parametrize("name,depth,width", [("vit_base_patch16", 12, 768), ("vit_large_patch16", 24, 1024),
                                              ("vit_huge_patch14", 32, 1280)])
@pytest.mark.parametrize("global_pool", [False, True])
def test_keys_and_shapes_are_timms(name, depth, width, global_pool):
    with torch.device("meta"):
        model = fastmae.create_vit(name, global_pool=global_pool)
    sd = model.state_dict()
    assert list(sd) == timm_keys(depth, global_pool)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * width, width)
    assert sd["blocks.0.mlp.fc1.weight"].shape == (4 * width, width) and sd["head.weight"].shape == (1000, width)
    assert sd["pos_embed"].shape == (1, 197 if name != "vit_huge_patch14" else 257, width)


def _mae():
    return fastmae.create_model("mae_vit_micro_patch4", backend="reference")


@pytest.mark.parametrize("global_pool", [False, True])
def test_forward_equals_the_official_model(global_pool):
    model = VisionTransformer.from_checkpoint(_mae().state_dict(), num_classes=5, global_pool=global_pool).eval()
    imgs = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = official_vit.forward_features(model, imgs, global_pool)
        got = model.forward_features(imgs)
        assert rel_err(got, want) <= 1e-5
        assert rel_err(model(imgs), model.head(want)) <= 1e-5


def test_drop_path_draws_as_timm_and_grows_linearly():
    # Same seed, same draws: the per-sample masks of every branch must coincide with timm 0.3.2's.
    model = VisionTransformer.from_checkpoint(_mae().state_dict(), num_classes=0, drop_path_rate=0.5).train()
    assert [b.drop_path_rate for b in model.blocks] == [0.0, 0.5]
    imgs = torch.randn(16, 3, 32, 32)
    torch.manual_seed(3)
    got = model.forward_features(imgs)
    torch.manual_seed(3)
    want = official_vit.forward_features(model, imgs, False, drop_path_rate=0.5, training=True)
    assert rel_err(got.detach(), want.detach()) <= 1e-5
    model.eval()
    assert rel_err(got.detach(), model.forward_features(imgs).detach()) > 1e-3  # it did drop branches


def test_head_starts_as_main_finetune_and_main_linprobe_leave_it():
    model = vit_module.vit_tiny_patch4(num_classes=100)
    assert 1.5e-5 < model.head.weight.std().item() < 2.5e-5 and model.head.bias.eq(0).all()
    probe = vit_module.vit_tiny_patch4(num_classes=100, head_init_std=0.01)
    assert 0.009 < probe.head.weight.std().item() < 0.011
    # timm 0.3.2's init elsewhere: trunc_normal(.02) Linear weights, zero biases, LayerNorm 1/0
    assert 0.018 < model.blocks[0].mlp.fc1.weight.std().item() < 0.022 and model.blocks[0].mlp.fc1.bias.eq(0).all()
    assert model.norm.weight.eq(1).all()


def test_pretraining_checkpoint_loads_as_main_finetune_does():
    mae = _mae()
    model = vit_module.vit_micro_patch4(num_classes=7)
    report = model.load_pretrained({"model": mae.state_dict(), "optimizer": {}, "epoch": 3})
    assert report["missing"] == ["head.weight", "head.bias"]
    assert set(report["ignored"]) == {k for k in mae.state_dict() if k.startswith(("decoder", "mask_token"))}
    for key, value in model.state_dict().items():
        if not key.startswith("head."):
            assert value.equal(mae.state_dict()[key]), key
    assert model.pos_embed.requires_grad  # fine-tuning trains the positions (official: timm's parameter)


def test_global_pool_drops_the_pretrained_norm_and_starts_fc_norm_fresh():
    mae = _mae()
    with torch.no_grad():
        mae.norm.weight.mul_(3)
    model = vit_module.vit_micro_patch4(num_classes=7, global_pool=True)
    report = model.load_pretrained(mae.state_dict())
    assert report["missing"] == ["fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"]  # official assert
    assert "norm.weight" in report["ignored"] and model.fc_norm.weight.eq(1).all()


def test_encoder_only_and_full_checkpoints_give_the_same_model():
    mae = _mae()
    encoder = {k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
    a = VisionTransformer.from_checkpoint(mae.state_dict(), num_classes=0).eval()
    b = VisionTransformer.from_checkpoint(encoder, num_classes=0).eval()
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert a.forward_features(imgs).equal(b.forward_features(imgs))


def test_vit_features_are_the_mae_encoder_unmasked():
    # The MAE encoder at mask ratio 0 sees every patch (shuffled, which attention does not see):
    # its cls token after norm is the ViT's cls feature.
    mae = _mae()
    model = VisionTransformer.from_checkpoint(mae.state_dict(), num_classes=0).eval()
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        latent, _, _ = mae.forward_encoder(imgs, 0.0)
        assert rel_err(model.forward_features(imgs), latent[:, 0]) <= 1e-5


def test_another_resolution_interpolates_the_positions_as_the_official_code():
    mae = _mae()  # 8 x 8 grid
    model = vit_module.vit_micro_patch4(img_size=48, num_classes=0)  # 12 x 12
    model.load_pretrained(mae.state_dict())
    want = {"pos_embed": mae.pos_embed.detach().clone()}
    official_vit.interpolate_pos_embed(model, want)
    assert model.pos_embed.shape == (1, 145, 64) and rel_err(model.pos_embed.detach(), want["pos_embed"]) <= 1e-6
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 64)


def test_fine_tuned_checkpoint_keeps_its_head_and_another_head_shape_is_dropped():
    tuned = vit_module.vit_micro_patch4(num_classes=7, global_pool=True)
    same = VisionTransformer.from_checkpoint(tuned.state_dict(), num_classes=7)
    assert same.global_pool and same.head.weight.equal(tuned.head.weight)  # global pooling read from fc_norm
    other = VisionTransformer.from_checkpoint(tuned.state_dict(), num_classes=3)
    assert other.head.weight.shape == (3, 64) and other.fc_norm.weight.equal(tuned.fc_norm.weight)


def test_checkpoints_that_do_not_fit_are_refused_with_the_keys():
    tuned = vit_module.vit_micro_patch4(num_classes=7, global_pool=True).state_dict()
    with pytest.raises(ValueError, match="norm.weight"):  # a global-pool ViT into a cls-token one
        vit_module.vit_micro_patch4(num_classes=7).load_pretrained(tuned)
    partial = {k: v for k, v in _mae().state_dict().items() if k != "blocks.1.mlp.fc2.bias"}
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc2\.bias"):
        vit_module.vit_micro_patch4().load_pretrained(partial)
    with pytest.raises(ValueError, match="blocks.0.attn.qkv.weight"):  # another width
        vit_module.vit_micro_patch4().load_pretrained(fastmae.create_model("mae_vit_tiny_patch4").state_dict())
    odd = VisionTransformer(img_size=32, patch_size=4, embed_dim=48, depth=1, num_heads=3).state_dict()
    with pytest.raises(ValueError, match="num_heads"):  # no factory has these shapes
        VisionTransformer.from_checkpoint(odd)
    with pytest.raises(ValueError, match="built for 32x32"):
        vit_module.vit_micro_patch4()(torch.randn(1, 3, 48, 48))


@pytest.mark.parametrize("layer_decay", [0.75, 0.65])
def test_param_groups_lrd_equals_the_official_groups(layer_decay):
    model = vit_module.vit_micro_patch4(num_classes=10, global_pool=True)
    model.patch_embed.proj.bias.requires_grad_(False)  # frozen parameters are left out
    groups = param_groups_lrd(model, weight_decay=0.05, layer_decay=layer_decay)
    want, names = official_vit.param_groups_lrd(model, 0.05, model.no_weight_decay(), layer_decay)
    assert len(groups) == len(want) == 8  # layers 0..3, decay and no decay each
    for got, exp, named in zip(groups, want, names):
        assert got["lr_scale"] == exp["lr_scale"] and got["weight_decay"] == exp["weight_decay"], named
        assert [id(p) for p in got["params"]] == [id(p) for p in exp["params"]], named
    assert names[0]["params"] == ["cls_token", "pos_embed"]  # no decay, by name (they are 3-D)
    assert groups[-1]["lr_scale"] == 1.0 and groups[0]["lr_scale"] == layer_decay ** 3
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    assert len(optimizer.param_groups) == 8


def test_create_vit_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown ViT 'vit_tiny'"):
        fastmae.create_vit("vit_tiny")
