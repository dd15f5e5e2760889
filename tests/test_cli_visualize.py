"""``fastmae visualize``: the demo's four panels and the grid, seeded, from fastmae and official
checkpoints, with norm-pix de-normalisation from the visible patches."""

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

import fastmae
from fastmae.cli import main
from fastmae.cli.panels import PANELS, denormalize_norm_pix, reconstruct
from fastmae.reference import NORM_PIX_EPS

pytestmark = pytest.mark.usefixtures("cpu_default_device")  # see tests/conftest.py


@pytest.fixture
def images(tmp_path):
    """Two inputs of different sizes and formats; both are resized to the model's 32 px."""
    rng = np.random.default_rng(0)
    paths = [tmp_path / "a.png", tmp_path / "b.jpg"]
    for path, shape in zip(paths, [(40, 48, 3), (32, 32, 3)]):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return paths


def micro_checkpoint(path, fmt="fastmae", norm_pix_loss=False):
    model = fastmae.create_model("mae_vit_micro_patch4", norm_pix_loss=norm_pix_loss)
    args = {"model": "mae_vit_micro_patch4", "input_size": 32, "norm_pix_loss": norm_pix_loss}
    ckpt = {"fastmae": {"model": model.state_dict(), "args": args, "epoch": 0},
            "official": {"model": model.state_dict(), "args": argparse.Namespace(**args), "epoch": 0},
            "bare": {"model": model.state_dict()}}[fmt]
    torch.save(ckpt, path)
    return path


def visualize(capsys, ckpt, images, out, *extra):
    code = main(["visualize", "--checkpoint", str(ckpt), "--images", *map(str, images), "--out",
                 str(out), "--backend", "torch", *extra])
    stdout, err = capsys.readouterr()
    return code, stdout, err


def read(path):
    with Image.open(path) as im:
        return np.asarray(im)


@pytest.mark.parametrize("fmt", ["fastmae", "official", "bare"])
def test_writes_four_panels_per_image_and_a_grid(tmp_path, capsys, images, fmt):
    ckpt = micro_checkpoint(tmp_path / "c.pth", fmt)  # "bare": the model is found from the shapes
    code, _, err = visualize(capsys, ckpt, images, tmp_path / "out")
    assert code == 0, err
    for stem in ("a", "b"):
        panels = [read(tmp_path / "out" / stem / f"{panel}.png") for panel in PANELS]
        assert all(p.shape == (32, 32, 3) for p in panels)
        original, masked, recon, pasted = (p.astype(int) for p in panels)
        visible = (masked == original).all(axis=-1)  # [32, 32]; removed patches are grey
        assert 0.15 < visible.mean() < 0.35  # 16 of 64 patches kept at mask ratio 0.75
        assert (pasted[visible] == original[visible]).all()
        assert (pasted[~visible] == recon[~visible]).all()
    assert read(tmp_path / "out" / "grid.png").shape[0] > 2 * 32


def test_seeded(tmp_path, capsys, images):
    ckpt = micro_checkpoint(tmp_path / "c.pth")
    for out, seed in (("x", "5"), ("y", "5"), ("z", "6")):
        assert visualize(capsys, ckpt, images, tmp_path / out, "--seed", seed)[0] == 0
    masked = {out: read(tmp_path / out / "a" / "masked.png") for out in "xyz"}
    assert (masked["x"] == masked["y"]).all() and not (masked["x"] == masked["z"]).all()


def test_norm_pix_checkpoint_says_it_approximates(tmp_path, capsys, images):
    ckpt = micro_checkpoint(tmp_path / "c.pth", "official", norm_pix_loss=True)
    code, stdout, err = visualize(capsys, ckpt, images, tmp_path / "out")
    assert code == 0, err
    assert "de-normalised with the mean and spread of the visible patches" in stdout


def test_denormalize_norm_pix_restores_visible_and_uses_their_stats_for_masked():
    target = torch.randn(2, 6, 12) * 3 + 1  # [N, L, P]
    mask = torch.tensor([[0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 1, 1]], dtype=torch.float32)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    pred = (target - mean) / (var + NORM_PIX_EPS) ** 0.5  # a perfect norm-pix prediction
    out = denormalize_norm_pix(pred, target, mask)
    visible = mask == 0
    torch.testing.assert_close(out[visible], target[visible])
    for n in range(2):
        vis_mean, vis_var = mean[n][visible[n]].mean(), var[n][visible[n]].mean()
        expected = pred[n][~visible[n]] * (vis_var + NORM_PIX_EPS) ** 0.5 + vis_mean
        torch.testing.assert_close(out[n][~visible[n]], expected)
    assert torch.equal(pred, (target - mean) / (var + NORM_PIX_EPS) ** 0.5)  # the input is untouched


def test_reconstruct_panels_in_normalised_space():
    model = fastmae.create_model("mae_vit_micro_patch4", backend="torch").eval()
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    original, masked, recon, pasted = reconstruct(model, imgs, 0.75, noise)
    _, pred, mask = model(imgs, 0.75, noise)
    removed = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, 48))
    assert torch.equal(original, imgs)
    assert torch.equal(masked, imgs * (1 - removed))
    torch.testing.assert_close(recon, model.unpatchify(pred))
    torch.testing.assert_close(pasted, imgs * (1 - removed) + recon * removed)


@pytest.mark.parametrize("extra, message", [
    (["--model", "mae_vit_tiny_patch4"], "holds a mae_vit_micro_patch4 model, not mae_vit_tiny_patch4"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--input-size", "30"], "cannot build mae_vit_micro_patch4"),
    (["--mask-ratio", "1.5"], "argument --mask-ratio: must be in (0, 1), got 1.5"),
    (["--mask-ratio", "0.99"], "--mask-ratio 0.99 keeps none of the 64 patches"),  # as pretrain
    (["--seed", "-1"], "argument --seed: must be an integer in [0, 2**32), got -1"),
    (["--device", "foo"], "invalid --device 'foo' (use cpu, cuda or cuda:N)"),  # as pretrain
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device "),
    (["--backend", "triton"], "--backend triton: backend 'triton' needs CUDA tensors"),
])
def test_bad_input_is_one_line(tmp_path, capsys, images, monkeypatch, extra, message):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # what a user's CPU machine has
    ckpt = micro_checkpoint(tmp_path / "c.pth")
    code, _, err = visualize(capsys, ckpt, images, tmp_path / "out", *extra)
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_missing_image_or_checkpoint(tmp_path, capsys, images):
    ckpt = micro_checkpoint(tmp_path / "c.pth")
    code, _, err = visualize(capsys, ckpt, [images[0], tmp_path / "gone.png"], tmp_path / "out")
    assert code == 2 and f"image not found: {tmp_path / 'gone.png'}" in err
    code, _, err = visualize(capsys, tmp_path / "none.pth", images, tmp_path / "out")
    assert code == 2 and "checkpoint not found" in err


# What the official release names as files with a decoder, in every "no decoder" message.
WITH_DECODER = ("reconstructions need a checkpoint with a decoder, such as the official "
                "mae_visualize_vit_base.pth or mae_visualize_vit_large.pth (dl.fbaipublicfiles.com/mae/visualize/)")


@pytest.mark.parametrize("args", [None, {"model": "mae_vit_micro_patch4"}])
def test_encoder_only_checkpoint_is_one_line_naming_a_file_with_a_decoder(tmp_path, capsys, images, args):
    state = fastmae.state_dicts.encoder_of(fastmae.create_model("mae_vit_micro_patch4").state_dict())
    ckpt = tmp_path / "mae_pretrain_vit_micro.pth"  # the layout of the official mae_pretrain_vit_*.pth
    torch.save({"model": state, **({"args": args} if args else {})}, ckpt)
    code, _, err = visualize(capsys, ckpt, images, tmp_path / "out")
    assert code == 2
    assert err == f"fastmae: error: {ckpt} holds the encoder only (no mask_token, no decoder): {WITH_DECODER}\n"
    assert not (tmp_path / "out").exists()


def test_fine_tuned_vit_checkpoint_is_one_line_too(tmp_path, capsys, images):
    ckpt = tmp_path / "mae_finetuned_vit_micro.pth"
    torch.save({"model": fastmae.create_vit("vit_micro_patch4", num_classes=10).state_dict()}, ckpt)
    code, _, err = visualize(capsys, ckpt, images, tmp_path / "out")
    assert code == 2
    assert err == f"fastmae: error: {ckpt} is a fine-tuned ViT (a classifier: no decoder): {WITH_DECODER}\n"


@pytest.mark.parametrize("name, size", [("mae_vit_micro_patch4", 16), ("mae_vit_tiny_patch4", 32)])
def test_model_and_size_come_from_the_shapes_without_args(tmp_path, capsys, images, name, size):
    ckpt = tmp_path / "bare.pth"
    torch.save({"model": fastmae.create_model(name, img_size=size).state_dict()}, ckpt)  # no args
    code, _, err = visualize(capsys, ckpt, images, tmp_path / "out")
    assert code == 0, err
    assert read(tmp_path / "out" / "a" / "reconstruction.png").shape == (size, size, 3)


@pytest.mark.parametrize("state, why", [
    (lambda: fastmae.MaskedAutoencoderViT(img_size=32, patch_size=4, embed_dim=48, depth=1, num_heads=2,
                                          decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2).state_dict(),
     "no fastmae factory has its shapes"),
    (lambda: fastmae.convert.to_hf(fastmae.create_model("mae_vit_micro_patch4").state_dict()),
     "its weights are in no official MAE layout"),
])
def test_unknown_shapes_ask_for_model(tmp_path, capsys, images, state, why):
    ckpt = tmp_path / "c.pth"
    torch.save({"model": state()}, ckpt)
    code, _, err = visualize(capsys, ckpt, images, tmp_path / "out")
    assert code == 2
    assert err == f"fastmae: error: cannot tell which model {ckpt} holds ({why}); pass --model\n"
