"""``fastmae probe``: the official linear probe on a checkpoint's frozen encoder, beside random
initialisations of the same shape; every kind of checkpoint it accepts, its data (the procedural
set with its labels, or an ImageFolder), and its one-line errors.

Small and fast: the micro factory, a few dozen images, a few epochs. Whether pretraining beats a
random encoder is a measurement of the default run, stated in the README, not asserted here.
"""

import re

import pytest
import torch
from PIL import Image

import fastmae
from fastmae.cli import main
from fastmae.cli.checkpoint import save_checkpoint
from fastmae.cli.probe import _random_like, eval_transform
from fastmae.data import ProceduralImages
from fastmae.vit import VisionTransformer

pytestmark = pytest.mark.usefixtures("cpu_default_device")  # see tests/conftest.py

QUICK = ["--epochs", "2", "--warmup-epochs", "1", "--device", "cpu"]


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = fastmae.create_model("mae_vit_micro_patch4")
    path = tmp_path / "micro.pth"
    save_checkpoint({"model": model.state_dict(), "args": {"model": "mae_vit_micro_patch4"}}, path)
    return model, path


def probe(capsys, *argv):
    code = main(["probe", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def top1(out, what):
    return float(re.search(rf"{what}.*?top-1 ([\d.]+)%", out).group(1))


def test_probe_reports_the_checkpoint_and_the_random_encoders(checkpoint, capsys):
    _, path = checkpoint
    code, out, err = probe(capsys, "--checkpoint", path, "--num-images", "48", "--random-inits", "2", *QUICK)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 4, out
    assert "48 training and 12 test images, 6 classes (chance 16.7%)" in lines[0]
    pretrained, random = top1(out, "pretrained encoder"), top1(out, "random encoders")
    assert 0 <= pretrained <= 100 and 0 <= random <= 100
    gap = float(re.search(r"pretraining: ([+-][\d.]+) points", out).group(1))
    assert gap == pytest.approx(pretrained - random, abs=0.11)  # both printed to one decimal
    # the same run again prints the same figures (seeded split, heads and random encoders)
    again = probe(capsys, "--checkpoint", path, "--num-images", "48", "--random-inits", "2", *QUICK)[1]
    untimed = lambda text: re.sub(r" \[[\d.]+s\]", "", text)  # noqa: E731
    assert untimed(again) == untimed(out)


def test_every_checkpoint_kind_gives_the_same_encoder_figure(checkpoint, tmp_path, capsys):
    # a full MAE, its encoder-only export and a fine-tuned ViT with a head: the same encoder weights
    model, path = checkpoint
    encoder_only = tmp_path / "encoder.pth"
    save_checkpoint({"model": fastmae.checkpoints.encoder_of(model.state_dict())}, encoder_only)
    vit = VisionTransformer.from_checkpoint(model.state_dict(), num_classes=5)
    finetuned = tmp_path / "vit.pth"
    save_checkpoint({"model": vit.state_dict()}, finetuned)
    figures = set()
    for ckpt in (path, encoder_only, finetuned):
        code, out, err = probe(capsys, "--checkpoint", ckpt, "--num-images", "40", "--random-inits", "0", *QUICK)
        assert code == 0, err
        figures.add(re.search(r"pretrained encoder: (.*) \[", out).group(1))
    assert len(figures) == 1, figures


def test_procedural_split_is_the_default_runs_images_and_new_ones(checkpoint, monkeypatch, capsys):
    # training images: the default run's set (seed 0); test images: a quarter as many from seed 1
    seen = []
    original = ProceduralImages.__init__

    def spy(self, num_images=2048, size=64, seed=0):
        seen.append((num_images, size, seed))
        original(self, num_images, size, seed)

    monkeypatch.setattr(ProceduralImages, "__init__", spy)
    _, path = checkpoint
    assert probe(capsys, "--checkpoint", path, "--num-images", "40", "--random-inits", "0", *QUICK)[0] == 0
    assert seen == [(40, 64, 0), (10, 64, 1)]


def test_image_folder_classes_and_holdout(checkpoint, tmp_path, capsys):
    for c, colour in enumerate(((200, 30, 30), (30, 200, 30))):
        (tmp_path / "data" / f"class{c}").mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (40 + i, 36), colour).save(tmp_path / "data" / f"class{c}" / f"{i}.png")
    _, path = checkpoint
    code, out, err = probe(capsys, "--checkpoint", path, "--data", tmp_path / "data", "--holdout", "0.25",
                           "--random-inits", "0", *QUICK)
    assert code == 0, err
    assert "15 training and 5 test images, 2 classes" in out


def test_eval_transform_is_the_official_resize_and_centre_crop():
    img = Image.new("RGB", (80, 40))
    img.paste((255, 255, 255), (0, 0, 20, 40))  # a white left quarter, cut away by the centre crop
    out = eval_transform(img, 32)  # shorter side 40 -> 36, width 72; centre 32 x 32 from x = 20
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    black = (0 - torch.tensor(fastmae.reference.IMAGENET_MEAN)) / torch.tensor(fastmae.reference.IMAGENET_STD)
    torch.testing.assert_close(out[:, :, 4:], black[:, None, None].expand(3, 32, 28), atol=1e-5, rtol=0)


def test_random_encoders_are_seeded_fresh_and_leave_the_global_rng(checkpoint):
    model, _ = checkpoint
    encoder = VisionTransformer.from_checkpoint(model.state_dict(), num_classes=0)
    state = torch.random.get_rng_state()
    a, b, a2 = _random_like(encoder, 1), _random_like(encoder, 2), _random_like(encoder, 1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.blocks[0].attn.qkv.weight, a2.blocks[0].attn.qkv.weight)
    assert not torch.equal(a.blocks[0].attn.qkv.weight, b.blocks[0].attn.qkv.weight)
    assert not torch.equal(a.blocks[0].attn.qkv.weight, encoder.blocks[0].attn.qkv.weight)
    assert a.state_dict().keys() == encoder.state_dict().keys()


@pytest.mark.parametrize("extra, message", [
    (["--warmup-epochs", "2", "--epochs", "2"], "--warmup-epochs 2 must be less than --epochs 2"),
    (["--data", "{flat}", "--num-images", "10"], "--num-images applies to the procedural set only"),
    (["--data", "{flat}"], "1 image outside a class sub-directory"),
    (["--data", "{missing}"], "data directory not found"),
    (["--holdout", "1"], "argument --holdout: must be in (0, 1), got 1"),
])
def test_user_errors_are_one_line(checkpoint, tmp_path, capsys, extra, message):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    extra = [e.format(flat=tmp_path / "flat", missing=tmp_path / "nope") for e in extra]
    _, path = checkpoint
    code, out, err = probe(capsys, "--checkpoint", path, *extra)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_a_missing_or_foreign_checkpoint_is_one_line(tmp_path, capsys):
    code, _, err = probe(capsys, "--checkpoint", tmp_path / "none.pth")
    assert code == 2 and err.count("\n") == 1 and "checkpoint not found" in err
    save_checkpoint({"model": {"weight": torch.zeros(2)}}, tmp_path / "other.pth")
    code, _, err = probe(capsys, "--checkpoint", tmp_path / "other.pth")
    assert code == 2 and err.count("\n") == 1 and "holds no encoder in an official layout" in err
