"""``fastmae mask``: the masking lesson end to end, one output directory per image."""

import math

import numpy as np
import pytest
from PIL import Image

from fastmae.cli import main

pytestmark = pytest.mark.usefixtures("cpu_default_device")  # see tests/conftest.py


@pytest.fixture
def images(tmp_path):
    """An RGB JPEG, a grayscale PNG and a second file with the same stem in another folder."""
    rng = np.random.default_rng(0)
    (tmp_path / "other").mkdir()
    paths = [tmp_path / "dog.jpeg", tmp_path / "cat.png", tmp_path / "other" / "cat.jpg"]
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(paths[0])
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(paths[1])
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(paths[2])
    return paths


def mask(capsys, images, out, *extra):
    code = main(["mask", "--images", *map(str, images), "--input-size", "64", "--mask-patch-size", "16",
                 "--out", str(out), *extra])
    stdout, err = capsys.readouterr()
    return code, stdout, err


def read(path):
    with Image.open(path) as im:
        return np.asarray(im)


def test_writes_the_lesson_outputs_per_image(tmp_path, capsys, images):
    code, stdout, err = mask(capsys, images, tmp_path / "out", "--mask-ratio", "0.8", "--seed", "1")
    assert code == 0, err
    for stem in ("dog", "cat", "cat-2"):
        image, m, masked = (read(tmp_path / "out" / stem / f"{n}.png")
                            for n in ("image", "mask", "masked_image"))
        assert image.shape == masked.shape == (64, 64, 3) and m.shape == (64, 64)
        assert set(np.unique(m)) <= {0, 255}
        patches = m[::16, ::16]  # one value per 16 px mask patch
        assert (np.kron(patches, np.ones((16, 16), dtype=np.uint8)) == m).all()
        assert (patches == 0).sum() == math.ceil(16 * 0.8)  # the lesson: ceil(count * ratio)
        assert (masked == image * (m[..., None] // 255)).all()
    assert "masked 13 of 16 patches" in stdout


def test_seeded(tmp_path, capsys, images):
    for out, seed in (("x", "3"), ("y", "3"), ("z", "4")):
        assert mask(capsys, images[:1], tmp_path / out, "--seed", seed)[0] == 0
    m = {out: read(tmp_path / out / "dog" / "mask.png") for out in "xyz"}
    assert (m["x"] == m["y"]).all() and not (m["x"] == m["z"]).all()


def test_mask_ratio_edges(tmp_path, capsys, images):
    assert mask(capsys, images[:1], tmp_path / "none", "--mask-ratio", "0")[0] == 0
    assert (read(tmp_path / "none" / "dog" / "mask.png") == 255).all()
    assert mask(capsys, images[:1], tmp_path / "all", "--mask-ratio", "1")[0] == 0
    assert (read(tmp_path / "all" / "dog" / "masked_image.png") == 0).all()


@pytest.mark.parametrize("extra, message", [
    (["--mask-patch-size", "24"], "--input-size 64 is not a multiple of --mask-patch-size 24"),
    (["--mask-ratio", "1.2"], "argument --mask-ratio: must be in [0, 1], got 1.2"),
    (["--input-size", "0"], "argument --input-size: must be a positive integer, got 0"),
    (["--mask-ratio", "-0.1"], "argument --mask-ratio: must be in [0, 1], got -0.1"),
    (["--seed", "-1"], "argument --seed: must be an integer in [0, 2**32), got -1"),
])
def test_bad_arguments(tmp_path, capsys, images, extra, message):
    code, _, err = mask(capsys, images, tmp_path / "out", *extra)
    assert code == 2
    if message.startswith("argument "):  # argparse's errors point to the command's help
        message += " (see 'fastmae mask --help')"
    assert err == f"fastmae: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_unreadable_image_is_named(tmp_path, capsys, images):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    code, _, err = mask(capsys, [images[0], bad], tmp_path / "out")
    assert code == 2 and len(err.splitlines()) == 1 and f"cannot read image {bad}" in err
    assert not (tmp_path / "out").exists()


def test_default_out_is_its_own_directory(tmp_path, capsys, images, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["mask", "--images", str(images[0]), "--input-size", "64", "--seed", "0"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "output" / "mask" / "dog").iterdir()) == [
        "image.png", "mask.png", "masked_image.png"]
    assert sorted(p.name for p in (tmp_path / "output").iterdir()) == ["mask"]


@pytest.mark.parametrize("marker", ["checkpoint-last.pth", "log.txt"])
@pytest.mark.parametrize("inside", ["", "sub/dir"])
def test_out_inside_a_pretraining_run_is_refused(tmp_path, capsys, images, marker, inside):
    run_dir = tmp_path / "output" / "pretrain"
    run_dir.mkdir(parents=True)
    (run_dir / marker).write_text('{"train_lr": 0.001, "train_loss": 1.0, "epoch": 0}\n')
    out = run_dir / inside
    code, _, err = mask(capsys, images, out, "--force")
    assert code == 2
    assert err == (f"fastmae: error: --out {out} is inside the pretraining run {run_dir}; choose "
                   "another --out\n")
    assert sorted(p.name for p in run_dir.iterdir()) == [marker]


def test_an_unrelated_log_higher_up_is_not_a_run(tmp_path, capsys, images):
    (tmp_path / "log.txt").write_text("notes, not a training log\n")
    assert mask(capsys, images[:1], tmp_path / "out")[0] == 0


def test_existing_files_are_refused_unless_forced(tmp_path, capsys, images):
    out = tmp_path / "out"
    assert mask(capsys, images, out, "--seed", "1")[0] == 0
    before = (out / "dog" / "mask.png").read_bytes()
    code, _, err = mask(capsys, images, out, "--seed", "2")
    assert code == 2
    assert err == (f"fastmae: error: {out / 'dog' / 'image.png'} already exists (9 files would be "
                   "overwritten); pass --force to overwrite or choose another --out\n")
    assert (out / "dog" / "mask.png").read_bytes() == before
    assert mask(capsys, images, out, "--seed", "2", "--force")[0] == 0
    assert (out / "dog" / "mask.png").read_bytes() != before
