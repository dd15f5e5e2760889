"""Converters (fastmae.convert), checkpoint kinds (fastmae.state_dicts) and export.

The Hugging Face side is checked against the installed transformers (strict loads, outputs for the
same noise, from_pretrained of written directories) and against its hub names written out below;
timm's names are written out in tests/test_vit.py (timm itself needs torchvision, which does not
import beside the CPU torch here: the one test that imports it skips, saying so).

Sizes: the micro factory (2 + 1 blocks) for anything that runs; the official sizes on the meta
device for names, shapes and factory matching.
"""

import pytest
import torch

import fastmae
from fastmae import convert, state_dicts
from hf_helpers import hf_twin, loading_info_is_clean, requires_transformers
from helpers import rel_err
from test_vit import timm_keys

# One encoder block in each Hugging Face layout, written out: the hub names from transformers'
# convert_vit_mae_to_pytorch.py (also transformers 4's modules), the module names of transformers 5.
HUB_BLOCK = ["attention.attention.query", "attention.attention.key", "attention.attention.value",
             "attention.output.dense", "layernorm_before", "layernorm_after", "intermediate.dense", "output.dense"]
MODULE_BLOCK = ["attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
                "layernorm_before", "layernorm_after", "mlp.fc1", "mlp.fc2"]


def micro(norm_pix=False):
    return fastmae.create_model("mae_vit_micro_patch4", norm_pix_loss=norm_pix, backend="reference")


def encoder_only(state):
    """What the official mae_pretrain_vit_*.pth hold: the encoder and its final norm."""
    return {k: v for k, v in state.items() if not k.startswith(("decoder", "mask_token"))}


def assert_same(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].equal(b[k]), k


@pytest.mark.parametrize("layout", convert.HF_LAYOUTS)
@pytest.mark.parametrize("base_model", [False, True])
def test_round_trips_are_bitwise_and_layouts_are_detected(layout, base_model):
    sd = micro().state_dict()
    src = encoder_only(sd) if base_model else sd
    hf = convert.to_hf(src, layout=layout, base_model=base_model)
    want = "hub" if layout == "saved" and base_model else layout  # without a decoder they coincide
    assert convert.hf_layout(hf) == (want, base_model)
    assert_same(convert.from_hf(hf), src)
    assert_same(convert.to_hf(convert.from_hf(hf), layout=layout, base_model=base_model), hf)


def test_hf_names_are_the_written_out_ones():
    sd = micro().state_dict()
    for layout, block, prefix in (("hub", HUB_BLOCK, "vit.encoder.layer.0."), ("module", MODULE_BLOCK, "vit.layers.0."),
                                  ("saved", HUB_BLOCK, "decoder.decoder_encoder.layer.0.")):
        names = set(convert.to_hf(sd, layout=layout))
        assert {f"{prefix}{p}.{k}" for p in block for k in ("weight", "bias")} <= names, layout
    hub = convert.to_hf(sd, layout="hub")
    assert "decoder.decoder_layers.0.attention.attention.query.weight" in hub
    assert "vit.embeddings.patch_embeddings.projection.weight" in hub and "vit.layernorm.bias" in hub
    qkv = sd["blocks.1.attn.qkv.weight"]  # [3D, D] -> three [D, D], rows in q, k, v order
    assert hub["vit.encoder.layer.1.attention.attention.key.weight"].equal(qkv[64:128])
    assert len(hub) == len(sd) + 2 * 2 * 3  # each of 3 blocks' qkv weight and bias becomes three


def test_converters_refuse_what_they_cannot_place_and_name_it():
    sd = micro().state_dict()
    with pytest.raises(ValueError, match="'head.weight'"):
        convert.to_hf({**sd, "head.weight": torch.zeros(3, 64)})
    with pytest.raises(ValueError, match="official .fastmae. names: use to_hf"):
        convert.from_hf(sd)
    hf = convert.to_hf(sd)
    with pytest.raises(ValueError, match="1 key.*'vit.pooler.dense.weight'"):
        convert.from_hf({**hf, "vit.pooler.dense.weight": torch.zeros(1)})
    lone = {k: v for k, v in hf.items() if not k.startswith("vit.layers.1.attention.k_proj")}
    with pytest.raises(ValueError, match="vit.layers.1.attention.q_proj"):  # a query without its key
        convert.from_hf(lone)
    with pytest.raises(ValueError, match="from_hf"):
        convert.to_timm(hf)
    with pytest.raises(ValueError, match="mystery"):
        state_dicts.inspect_state_dict({**sd, "mystery": torch.zeros(1)})
    with pytest.raises(ValueError, match="layout must be one of"):
        convert.to_hf(sd, layout="hf4")


def test_state_dicts_keeps_its_exported_name():
    # fastmae.__all__ exports the state-dict module as ``fastmae.checkpoints`` too
    assert "checkpoints" in fastmae.__all__ and fastmae.checkpoints is state_dicts


def test_to_timm_gives_timms_encoder_names():
    sd = micro().state_dict()
    assert list(convert.to_timm({"model": sd, "optimizer": {}, "epoch": 1})) == timm_keys(2, head=False)
    pooled = convert.to_timm(sd, global_pool=True)
    assert list(pooled) == timm_keys(2, global_pool=True, head=False)
    # the official fine-tuning start: fc_norm fresh, the pretrained norm dropped
    assert pooled["fc_norm.weight"].eq(1).all() and pooled["fc_norm.bias"].eq(0).all()
    vit = fastmae.VisionTransformer.from_checkpoint(sd, num_classes=0)
    vit.load_state_dict(convert.to_timm(sd), strict=True)  # same names as timm: a strict load
    tuned = fastmae.create_vit("vit_micro_patch4", num_classes=4, global_pool=True).state_dict()
    assert_same(convert.to_timm(tuned, global_pool=True), tuned)
    with pytest.raises(ValueError, match="global_pool=True"):
        convert.to_timm(tuned)


def test_timm_loads_the_export_when_timm_imports():
    try:
        import timm
    except Exception as e:  # here: torchvision fails beside the CPU torch ("torchvision::nms does not exist")
        pytest.skip(f"timm does not import here ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
    mae = micro()
    model = timm.models.VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2,
                                          num_classes=0).eval()
    model.load_state_dict(convert.to_timm(mae.state_dict()), strict=True)
    vit = fastmae.VisionTransformer.from_checkpoint(mae.state_dict(), num_classes=0).eval()
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(model(imgs), vit(imgs)) <= 1e-5


@pytest.mark.parametrize("name", ["mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14",
                                  "mae_vit_tiny_patch4", "mae_vit_micro_patch4"])
def test_kinds_and_factories_from_shapes(name):
    with torch.device("meta"):
        sd = fastmae.create_model(name).state_dict()
    full, enc = state_dicts.inspect_state_dict(sd), state_dicts.inspect_state_dict(encoder_only(sd))
    assert (full.kind, full.factory, enc.kind, enc.factory) == ("mae", name, "mae_encoder", name)
    official = {"mae_vit_base_patch16": "vit_base_patch16_224", "mae_vit_large_patch16": "vit_large_patch16_224",
                "mae_vit_huge_patch14": "vit_huge_patch14_224"}
    assert convert.timm_model_name(sd) == official.get(name)
    if name == "mae_vit_base_patch16":  # the 104 keys the official encoder-only download lacks
        assert len(sd) - len(encoder_only(sd)) == 104 and full.img_size == 224


def test_kind_of_a_fine_tuned_vit_and_of_incomplete_dicts():
    tuned = fastmae.create_vit("vit_micro_patch4", num_classes=4, global_pool=True).state_dict()
    info = state_dicts.inspect_state_dict(tuned)
    assert (info.kind, info.num_classes, info.global_pool, info.vit_factory) == ("vit", 4, True, "vit_micro_patch4")
    sd = micro().state_dict()
    with pytest.raises(ValueError, match="missing decoder_pred.bias"):
        state_dicts.inspect_state_dict({k: v for k, v in sd.items() if k != "decoder_pred.bias"})
    with pytest.raises(ValueError, match="decoder_blocks.0.norm2.weight"):
        state_dicts.inspect_state_dict({k: v for k, v in sd.items() if k != "decoder_blocks.0.norm2.weight"})
    with pytest.raises(ValueError, match="a decoder .* and a fine-tuning head"):
        state_dicts.inspect_state_dict({**sd, "head.weight": torch.zeros(4, 64), "head.bias": torch.zeros(4)})


def test_load_mae_encoder_loads_strictly_and_names_what_it_left():
    src, dst = micro(), micro()
    left = state_dicts.load_mae_encoder(dst, {"model": encoder_only(src.state_dict())})
    assert set(left) == set(src.state_dict()) - set(encoder_only(src.state_dict())) and "mask_token" in left
    assert dst.blocks[1].attn.qkv.weight.equal(src.blocks[1].attn.qkv.weight)
    assert not dst.decoder_pred.weight.equal(src.decoder_pred.weight)  # the decoder keeps its init
    with pytest.raises(ValueError, match="encoder-only"):
        state_dicts.load_mae_encoder(dst, src.state_dict())
    tiny = fastmae.create_model("mae_vit_tiny_patch4")
    with pytest.raises(ValueError, match="does not fit.*blocks.2"):
        state_dicts.load_mae_encoder(dst, encoder_only(tiny.state_dict()))


def test_hf_config_from_a_model_and_from_its_state_dict():
    model = fastmae.create_model("mae_vit_micro_patch4", norm_pix_loss=True)
    cfg = convert.hf_config(model, mask_ratio=0.6)
    assert cfg["num_attention_heads"] == 2 and cfg["decoder_intermediate_size"] == 128 and cfg["norm_pix_loss"]
    assert cfg["layer_norm_eps"] == 1e-6 and cfg["image_size"] == 32 and cfg["mask_ratio"] == 0.6
    ckpt = {"model": model.state_dict(), "args": {"norm_pix_loss": True}}
    assert convert.hf_config(ckpt, mask_ratio=0.6) == cfg
    with pytest.raises(ValueError, match="full MAE"):
        convert.hf_config(encoder_only(model.state_dict()))


def test_export_writes_only_the_weights_atomically(tmp_path):
    model = micro()
    ckpt = tmp_path / "checkpoint-3.pth"
    torch.save({"model": model.state_dict(), "optimizer": {"state": {}}, "epoch": 3, "rng": {}}, ckpt)
    timm_file = convert.export(ckpt, "timm", tmp_path / "timm.pth")
    assert_same(torch.load(timm_file, weights_only=True), convert.to_timm(model.state_dict()))
    enc = torch.load(convert.export(ckpt, "encoder", tmp_path / "enc.pth"), weights_only=True)
    assert list(enc) == ["model"] and state_dicts.inspect_state_dict(enc).kind == "mae_encoder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3.pth", "enc.pth", "timm.pth"]  # no temporaries
    with pytest.raises(ValueError, match="fine-tuned ViT"):
        convert.export(fastmae.create_vit("vit_micro_patch4").state_dict(), "encoder", tmp_path / "x.pth")
    with pytest.raises(ValueError, match="format must be one of"):
        convert.export(ckpt, "onnx", tmp_path / "x.onnx")


# --------------------------------------------------------------------------------------------------
# against the installed transformers
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@requires_transformers
@pytest.mark.parametrize("norm_pix", [False, True])
def test_hf_model_with_converted_weights_gives_fastmaes_outputs(norm_pix):
    model = micro(norm_pix)
    hf = hf_twin(model)
    imgs, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 64)
    with torch.no_grad():
        out = hf(imgs, noise=noise)
        loss, pred, mask = model(imgs, 0.75, noise)
    assert out.mask.equal(mask) and rel_err(out.logits, pred) <= 1e-5
    assert abs(out.loss.item() - loss.item()) <= 1e-5 * loss.item()
    # the other direction: HF's own state dict back into fastmae, strictly
    back = micro(norm_pix)
    back.load_state_dict(convert.from_hf(hf.state_dict()), strict=True)
    assert_same(back.state_dict(), model.state_dict())


@requires_transformers
def test_every_layout_loads_with_from_pretrained(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import ViTMAEForPreTraining

    model = micro()
    hf = hf_twin(model)
    hf.save_pretrained(tmp_path / "saved")  # transformers 5 writes the "saved" layout
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    assert convert.hf_layout(saved) == ("saved", False)
    assert_same(dict(sorted(convert.from_hf(saved).items())), dict(sorted(model.state_dict().items())))
    for layout in convert.HF_LAYOUTS:
        d = tmp_path / layout
        d.mkdir(exist_ok=True)
        (d / "config.json").write_text((tmp_path / "saved" / "config.json").read_text())
        save_file({k: v.contiguous() for k, v in convert.to_hf(model.state_dict(), layout).items()},
                  d / "model.safetensors", metadata={"format": "pt"})
        loaded, info = ViTMAEForPreTraining.from_pretrained(d, output_loading_info=True)
        assert loading_info_is_clean(info), (layout, info)
        assert_same(convert.from_hf(loaded.state_dict()), model.state_dict())


@requires_transformers
def test_export_hf_directory_loads_cleanly_and_can_be_rewritten(tmp_path):
    from transformers import ViTMAEForPreTraining

    model = fastmae.create_model("mae_vit_micro_patch4", norm_pix_loss=True, backend="reference")
    out = tmp_path / "hf"
    for _ in range(2):  # the second export replaces the first
        ckpt = {"model": model.state_dict(), "optimizer": {}, "args": {"norm_pix_loss": True}}  # as fastmae writes
        convert.export(ckpt, "hf", out, mask_ratio=0.75)
        loaded, info = ViTMAEForPreTraining.from_pretrained(out, output_loading_info=True)
        assert loading_info_is_clean(info)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    from safetensors.torch import load_file
    assert convert.hf_layout(load_file(out / "model.safetensors")) == ("hub", False)  # what transformers 4 reads too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # nothing left beside it
    assert loaded.config.norm_pix_loss and loaded.config.num_attention_heads == 2
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    with torch.no_grad():
        got, want = loaded(imgs, noise=noise), model(imgs, 0.75, noise)
    assert rel_err(got.logits, want[1]) <= 1e-5 and got.mask.equal(want[2])
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="choose a new or empty directory"):
        convert.export(model, "hf", out)
    encoder = tmp_path / "enc.pth"
    convert.export(model, "encoder", encoder)
    with pytest.raises(ValueError, match="encoder only"):
        convert.export(encoder, "hf", tmp_path / "hf2")
