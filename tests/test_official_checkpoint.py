"""``fastmae.load_official_checkpoint`` on the three kinds of official files: full MAEs, encoder-only
files (the official ``mae_pretrain_vit_*.pth`` layout: no ``mask_token``, no decoder) and fine-tuned
ViTs; ``encoder_only`` None (detect), True and False.

The micro factory: 30 encoder entries (cls, positions, patch embed, 2 blocks of 12, norm) and 20
decoder ones (mask_token, decoder_pos_embed, decoder_embed, 1 block of 12, decoder_norm, decoder_pred).
"""

import warnings

import pytest
import torch

import fastmae
from fastmae import convert, state_dicts

ENCODER, DECODER = 30, 20


def micro():
    return fastmae.create_model("mae_vit_micro_patch4", backend="reference")


def encoder_file(tmp_path, model):
    """What the official encoder-only downloads hold: ``{'model': encoder}``."""
    path = tmp_path / "mae_pretrain_vit_micro.pth"
    torch.save({"model": state_dicts.encoder_of(model.state_dict())}, path)
    return path


def same_encoder_output(a, b):
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    with torch.no_grad():
        return a.forward_encoder(imgs, 0.75, noise)[0].equal(b.forward_encoder(imgs, 0.75, noise)[0])


def test_encoder_only_file_loads_the_encoder_strictly_and_warns_naming_what_it_left(tmp_path):
    src, dst = micro(), micro()
    decoder_before = {k: v.clone() for k, v in dst.state_dict().items() if state_dicts.is_decoder_key(k)}
    path = encoder_file(tmp_path, src)
    with pytest.warns(UserWarning) as record:
        state = fastmae.load_official_checkpoint(path, dst)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith(f"{path} holds the encoder only; loaded its {ENCODER} encoder entries strictly")
    assert f"{DECODER} entries of the model keep their initialisation: mask_token, decoder_pos_embed" in message
    assert "mae_visualize_vit_base.pth or mae_visualize_vit_large.pth" in message
    assert record[0].filename == __file__  # points at the caller's line, not fastmae's
    assert len(state) == ENCODER  # the file's state dict, as read
    assert same_encoder_output(src, dst)
    for k, v in dst.state_dict().items():
        assert v.equal(decoder_before[k] if k in decoder_before else src.state_dict()[k]), k


def test_encoder_only_load_is_strict_about_the_encoder(tmp_path):
    tiny = fastmae.create_model("mae_vit_tiny_patch4")  # 4 blocks of 128: another encoder
    with pytest.raises(ValueError, match=r"does not fit this model \(unexpected: blocks\.2\..*shape: cls_token"):
        fastmae.load_official_checkpoint(encoder_file(tmp_path, tiny), micro())
    enc = state_dicts.encoder_of(micro().state_dict())
    del enc["blocks.1.mlp.fc2.bias"]
    with pytest.raises(ValueError, match="incomplete blocks: missing blocks.1.mlp.fc2.bias"):
        fastmae.load_official_checkpoint(enc, micro())


def test_a_dict_of_no_official_layout_is_named_not_listed():
    hf = convert.to_hf(micro().state_dict())
    with pytest.raises(ValueError, match="look like Hugging Face names: fastmae.convert.from_hf converts them"):
        fastmae.load_official_checkpoint(hf, micro())


def test_encoder_only_non_strict_loads_what_is_there():
    src, dst = micro(), micro()
    enc = {k: v for k, v in state_dicts.encoder_of(src.state_dict()).items() if k != "pos_embed"}
    with pytest.warns(UserWarning, match=f"loaded its {ENCODER - 1} encoder entries, and {DECODER + 1} entries"):
        fastmae.load_official_checkpoint(enc, dst, strict=False, encoder_only=True)
    assert dst.blocks[1].attn.qkv.weight.equal(src.blocks[1].attn.qkv.weight)


def test_encoder_only_true_takes_only_the_encoder_of_a_full_mae():
    src, dst = micro(), micro()
    init = dst.decoder_pred.weight.clone()
    with pytest.warns(UserWarning, match=f"encoder_only=True: {DECODER} decoder entries of the checkpoint were "
                                         "left out") as record:
        fastmae.load_official_checkpoint({"model": src.state_dict()}, dst, encoder_only=True)
    assert "Reconstructions need" not in str(record[0].message)  # asked for: no advice
    assert same_encoder_output(src, dst) and dst.decoder_pred.weight.equal(init)


def test_full_mae_loads_strictly_without_a_warning(tmp_path):
    src, dst = micro(), micro()
    torch.save({"model": src.state_dict(), "epoch": 1}, tmp_path / "full.pth")
    for encoder_only in (None, False):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fastmae.load_official_checkpoint(tmp_path / "full.pth", dst, encoder_only=encoder_only)
        assert all(v.equal(src.state_dict()[k]) for k, v in dst.state_dict().items())


def test_encoder_only_false_requires_a_decoder(tmp_path):
    path = encoder_file(tmp_path, micro())
    for model in (None, micro()):
        with pytest.raises(ValueError, match="holds the encoder only .* asks for a full MAE, such as the official "
                                             "mae_visualize_vit_base.pth"):
            fastmae.load_official_checkpoint(path, model, encoder_only=False)


def test_without_a_model_nothing_is_loaded_nor_warned_about(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(fastmae.load_official_checkpoint(encoder_file(tmp_path, micro()))) == ENCODER


def test_fine_tuned_vit_goes_into_a_vit_not_an_mae():
    tuned = fastmae.create_vit("vit_micro_patch4", num_classes=4).state_dict()
    with pytest.raises(ValueError, match="is a fine-tuned ViT .*VisionTransformer.from_checkpoint"):
        fastmae.load_official_checkpoint(tuned, micro())
    with pytest.raises(ValueError, match="fine-tuned ViT"):
        fastmae.load_official_checkpoint(tuned, encoder_only=False)
    vit = fastmae.create_vit("vit_micro_patch4", num_classes=4)
    fastmae.load_official_checkpoint(tuned, vit)  # strict, as before
    assert vit.head.weight.equal(tuned["head.weight"])
