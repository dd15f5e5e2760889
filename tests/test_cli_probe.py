"""``fastmae probe``: the official linear probe on a checkpoint's frozen encoder, beside random
initialisations of the same shape; every kind of checkpoint it accepts, its data (the procedural
set with its labels, or an ImageFolder), and its one-line errors.

Small and fast: the micro factory, a few dozen images, a few epochs. Whether pretraining beats a
random encoder is a measurement of the default run, stated in the README, not asserted here.
"""

import re

import numpy as np
import pytest
import torch
from PIL import Image

import fastmae
import fastmae.data as fd
from fastmae.cli import main
from fastmae.cli.run_state import save_checkpoint
from fastmae.cli.images import eval_transform
from fastmae.cli.probe import _random_like, _stratified_split
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


@pytest.mark.slow
def test_probe_reports_the_checkpoint_and_the_random_encoders(checkpoint, capsys):
    _, path = checkpoint
    code, out, err = probe(capsys, "--checkpoint", path, "--num-images", "48", "--test-images", "12", "--random-inits",
                           "2", *QUICK)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 4, out
    # the test split's labels (ProceduralImages(12, 64, seed=1)) are 3, 1, 2, 0, 3, 3 of the 6 classes
    assert "48 training and 12 test images, 6 classes (majority class 25.0% of the test images)" in lines[0]
    pretrained, random = top1(out, "pretrained encoder"), top1(out, "random encoders")
    assert 0 <= pretrained <= 100 and 0 <= random <= 100
    gap = float(re.search(r"pretraining: ([+-][\d.]+) points", out).group(1))
    assert gap == pytest.approx(pretrained - random, abs=0.11)  # both printed to one decimal
    # the same run again prints the same figures (seeded split, heads and random encoders)
    again = probe(capsys, "--checkpoint", path, "--num-images", "48", "--test-images", "12", "--random-inits", "2",
                  *QUICK)[1]
    untimed = lambda text: re.sub(r" \[[\d.]+s\]", "", text)  # noqa: E731
    assert untimed(again) == untimed(out)


def test_a_global_pool_vit_is_probed_on_its_pooled_features(checkpoint, tmp_path, capsys):
    # fine-tuned with global pooling (fc_norm, no norm: official main_finetune's default)
    model, _ = checkpoint
    vit = VisionTransformer.from_checkpoint(model.state_dict(), num_classes=5, global_pool=True)
    torch.nn.init.normal_(vit.fc_norm.weight)  # a trained fc_norm, not its initialisation
    path = tmp_path / "gp.pth"
    save_checkpoint({"model": vit.state_dict()}, path)
    code, out, err = probe(capsys, "--checkpoint", path, "--num-images", "40", "--random-inits", "1", *QUICK)
    assert code == 0, err
    assert "64-d global-pool (fc_norm) features" in out and "random encoders (1 init)" in out


def test_every_checkpoint_kind_gives_the_same_encoder_figure(checkpoint, tmp_path, capsys):
    # a full MAE, its encoder-only export and a fine-tuned ViT with a head: the same encoder weights
    model, path = checkpoint
    encoder_only = tmp_path / "encoder.pth"
    save_checkpoint({"model": fastmae.state_dicts.encoder_of(model.state_dict())}, encoder_only)
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
    # training images: the default run's set (seed 0); test images: as many new ones (seed 1), or --test-images
    seen = []
    original = ProceduralImages.__init__

    def spy(self, num_images=2048, size=64, seed=0):
        seen.append((num_images, size, seed))
        original(self, num_images, size, seed)

    monkeypatch.setattr(ProceduralImages, "__init__", spy)
    _, path = checkpoint
    assert probe(capsys, "--checkpoint", path, "--num-images", "40", "--random-inits", "0", *QUICK)[0] == 0
    assert probe(capsys, "--checkpoint", path, "--num-images", "40", "--test-images", "10", "--random-inits", "0",
                 *QUICK)[0] == 0
    assert seen == [(40, 64, 0), (40, 64, 1), (40, 64, 0), (10, 64, 1)]


def image_folder(root, sizes):
    """One class directory per entry of ``sizes`` (its number of images), each a plain colour."""
    for c, n in enumerate(sizes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40 + i, 36), (200 * (c % 2), 30 * c, 90)).save(root / f"class{c}" / f"{i}.png")
    return root


def test_image_folder_classes_and_a_stratified_holdout(checkpoint, tmp_path, capsys):
    # 12 and 8 images, --holdout 0.25: 3 and 2 of them held out; majority class 3 of the 5 test images
    _, path = checkpoint
    data = image_folder(tmp_path / "data", (12, 8))
    code, out, err = probe(capsys, "--checkpoint", path, "--data", data, "--holdout", "0.25",
                           "--random-inits", "0", *QUICK)
    assert code == 0, err
    assert "15 training and 5 test images, 2 classes (majority class 60.0% of the test images)" in out


def test_stratified_split_keeps_every_class_in_training():
    labels = [0] * 4 + [1] + [2] * 10
    train, test = _stratified_split(labels, 0.5, seed_value=3)
    assert sorted(train + test) == list(range(15))
    assert sorted(labels[i] for i in test) == [0, 0] + [2] * 5  # class 1's only image stays in training
    assert {labels[i] for i in train} == {0, 1, 2}
    assert _stratified_split(labels, 0.5, seed_value=3) == (train, test)  # seeded
    assert _stratified_split(labels, 0.5, seed_value=4) != (train, test)


def test_stratified_split_ignores_the_default_device():
    # Where the default device is not the CPU (CUDA in the GPU test run), the split's CPU generator
    # must still draw CPU permutations: the meta device stands in for CUDA on a CPU-only machine.
    labels = [0] * 4 + [1] + [2] * 10
    expected, before = _stratified_split(labels, 0.5, seed_value=3), torch.get_default_device()
    torch.set_default_device("meta")
    try:
        assert _stratified_split(labels, 0.5, seed_value=3) == expected
    finally:
        torch.set_default_device(before)


def test_undecodable_images_are_left_out_with_a_warning(checkpoint, tmp_path, monkeypatch, capsys):
    # files that pass the folder scan but fail to decode (as a damaged JPEG body can)
    _, path = checkpoint
    data = image_folder(tmp_path / "data", (6, 6))
    decode = fd.ImageFolder.image
    broken = {0, 9}

    def image(self, i):
        if i in broken:
            raise fd.DataError(f"cannot decode image {self.files[i]}: broken data stream")
        return decode(self, i)

    monkeypatch.setattr(fd.ImageFolder, "image", image)
    code, out, err = probe(capsys, "--checkpoint", path, "--data", data, "--random-inits", "0", *QUICK)
    assert code == 0, err
    assert "fastmae: warning: left out 1 image of the training split that could not be decoded" in err
    assert "9 training and 1 test images" in out and "warning" not in out  # 10 + 2, one broken in each
    # when fewer than 2 training images decode: one line, not the probe's own ValueError
    broken = set(range(1, 12))
    code, out, err = probe(capsys, "--checkpoint", path, "--data", data, "--random-inits", "0", *QUICK)
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"fastmae: error: --data {data}: fewer than 2 training images decode"), err


def test_eval_transform_is_the_official_resize_and_centre_crop():
    # official: Resize(int(32 / 0.875) = 36) on the shorter side, bicubic, then CenterCrop(32)
    gen = torch.Generator().manual_seed(0)
    img = Image.fromarray(torch.randint(0, 256, (40, 80, 3), dtype=torch.uint8, generator=gen).numpy())
    out = eval_transform(img, 32)
    expected = img.resize((72, 36), Image.BICUBIC).crop((20, 2, 52, 34))  # centre of 72 x 36
    mean, std = (torch.tensor(v)[:, None, None] for v in (fastmae.reference.IMAGENET_MEAN,
                                                         fastmae.reference.IMAGENET_STD))
    want = (torch.from_numpy(np.array(expected)).permute(2, 0, 1).float() / 255 - mean) / std
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


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
    (["--data", "{flat}", "--num-images", "2048"], "--num-images applies to the procedural set only"),
    (["--data", "{flat}", "--test-images", "100"], "--test-images applies to the procedural set only"),
    (["--holdout", "0.3"], "--holdout applies to --data only"),
    (["--num-images", "1"], "the probe needs at least 2 training images"),
    (["--data", "{flat}"], "1 image outside a class sub-directory"),
    (["--data", "{one_each}"], "leaves no test image"),
    (["--data", "{missing}"], "data directory not found"),
    (["--holdout", "1"], "argument --holdout: must be in (0, 1), got 1"),
])
def test_user_errors_are_one_line(checkpoint, tmp_path, capsys, extra, message):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    image_folder(tmp_path / "one_each", (1, 1))
    extra = [e.format(flat=tmp_path / "flat", missing=tmp_path / "nope", one_each=tmp_path / "one_each")
             for e in extra]
    _, path = checkpoint
    code, out, err = probe(capsys, "--checkpoint", path, *extra)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_a_checkpoint_no_factory_fits_needs_num_heads(tmp_path, capsys):
    torch.manual_seed(0)
    model = fastmae.MaskedAutoencoderViT(img_size=32, patch_size=4, embed_dim=48, depth=1, num_heads=3,
                                         decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1)
    save_checkpoint({"model": model.state_dict()}, tmp_path / "odd.pth")
    code, _, err = probe(capsys, "--checkpoint", tmp_path / "odd.pth", "--num-images", "20", *QUICK)
    assert code == 2 and err.count("\n") == 1 and "pass --num-heads" in err
    code, out, err = probe(capsys, "--checkpoint", tmp_path / "odd.pth", "--num-images", "20", "--num-heads", "3",
                           "--random-inits", "1", *QUICK)
    assert code == 0 and "48-d cls features" in out, err
    code, _, err = probe(capsys, "--checkpoint", tmp_path / "odd.pth", "--num-heads", "5", *QUICK)
    assert code == 2 and err.count("\n") == 1 and "cannot probe" in err, err


def test_a_missing_or_foreign_checkpoint_is_one_line(tmp_path, capsys):
    code, _, err = probe(capsys, "--checkpoint", tmp_path / "none.pth")
    assert code == 2 and err.count("\n") == 1 and "checkpoint not found" in err
    save_checkpoint({"model": {"weight": torch.zeros(2)}}, tmp_path / "other.pth")
    code, _, err = probe(capsys, "--checkpoint", tmp_path / "other.pth")
    assert code == 2 and err.count("\n") == 1 and "holds no encoder in an official layout" in err
