"""``fastmae export``: each format round-trips (timm names written out in tests/test_vit.py; hf through
``ViTMAEForPreTraining.from_pretrained`` with the same loss for the same noise; the encoder back into
fastmae's ViT and MAE), only weights are written, a failure midway leaves no partial file, and every
user error is one line.

The micro factory throughout: 30 encoder entries, 20 decoder ones (mask_token and decoder_*).
"""

import json
import os
import sys
import warnings

import pytest
import torch

import fastmae
from fastmae import convert, state_dicts
from fastmae.cli import main
from fastmae.cli.run_state import rng_state, save_checkpoint
from hf_helpers import loading_info_is_clean, requires_transformers
from helpers import rel_err
from test_vit import timm_keys

pytestmark = pytest.mark.usefixtures("cpu_default_device")  # see tests/conftest.py

TRAINING_STATE = ("optimizer", "scaler", "epoch", "args", "rng")
LEFT_OUT = "left out: the decoder and mask_token (20 entries), optimizer, scaler, epoch, args, rng"


class NotAllowed:
    """A class weights-only loading refuses to unpickle."""


def micro(norm_pix=False):
    return fastmae.create_model("mae_vit_micro_patch4", norm_pix_loss=norm_pix, backend="reference")


@pytest.fixture
def trained(tmp_path):
    """A checkpoint as ``fastmae pretrain`` writes it (one AdamW step: real optimizer moments)."""
    model = micro(norm_pix=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 32, 32), 0.75)[0].backward()
    opt.step()
    path = tmp_path / "run" / "checkpoint-last.pth"
    path.parent.mkdir()
    save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": None, "epoch": 0,
                     "args": {"model": "mae_vit_micro_patch4", "norm_pix_loss": True}, "rng": rng_state()}, path)
    return model, path


def export(capsys, *argv):
    code = main(["export", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a, b):
    assert list(a) == list(b)
    assert all(a[k].equal(b[k]) for k in a)


@pytest.mark.parametrize("global_pool", [False, True])
def test_timm_is_the_encoder_in_timms_names(tmp_path, capsys, trained, global_pool):
    model, ckpt = trained
    out = tmp_path / "timm.pth"
    code, stdout, err = export(capsys, "--checkpoint", ckpt, "--format", "timm", "--out", out,
                               *(["--global-pool"] if global_pool else []))
    assert code == 0 and err == ""
    assert stdout.splitlines() == [
        f"wrote {out} (0.4 MB): the encoder of {ckpt} in timm's VisionTransformer names; {LEFT_OUT}",
        f"load it with: fastmae.VisionTransformer.from_checkpoint({str(out)!r}, num_classes=0), or timm's "
        "VisionTransformer built with these shapes (strictly)"]
    sd = load(out)
    assert list(sd) == timm_keys(2, global_pool=global_pool, head=False)  # only weights: nothing else
    assert all(sd[k].equal(v) for k, v in model.state_dict().items() if k in sd)
    vit = fastmae.create_vit("vit_micro_patch4", num_classes=0, global_pool=global_pool)
    vit.load_state_dict(sd, strict=True)  # timm's names are fastmae.VisionTransformer's
    want = fastmae.VisionTransformer.from_checkpoint(model.state_dict(), num_classes=0, global_pool=global_pool)
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert vit.eval()(imgs).equal(want.eval()(imgs))


def test_timm_keeps_a_fine_tuned_vits_layout(tmp_path, capsys):
    tuned = fastmae.create_vit("vit_micro_patch4", num_classes=5, global_pool=True).state_dict()
    ckpt, out = tmp_path / "mae_finetuned_vit_micro.pth", tmp_path / "timm.pth"
    torch.save({"model": tuned, "epoch": 99}, ckpt)
    code, stdout, err = export(capsys, "--checkpoint", ckpt, "--format", "timm", "--out", out)
    assert code == 0, err
    assert_same(load(out), tuned)  # fc_norm and head as they are: --global-pool is read from the file
    assert stdout.splitlines()[0].endswith("; left out: epoch")
    assert "num_classes=5" in stdout


def test_encoder_loads_back_into_the_vit_and_the_mae(tmp_path, capsys, trained):
    model, ckpt = trained
    out = tmp_path / "exports" / "encoder.pth"  # a missing parent is made
    code, stdout, err = export(capsys, "--checkpoint", ckpt, "--format", "encoder", "--out", out)
    assert code == 0 and err == ""
    assert stdout.splitlines()[0] == (f"wrote {out} (0.4 MB): the encoder of {ckpt} in the official "
                                      f"encoder-only layout; {LEFT_OUT}")
    saved = load(out)
    assert list(saved) == ["model"] and len(saved["model"]) == 30  # only weights: no training state
    assert state_dicts.inspect_state_dict(saved).kind == "mae_encoder"
    mae = micro()
    with pytest.warns(UserWarning, match=f"{out} holds the encoder only"):
        fastmae.load_official_checkpoint(out, mae)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    with torch.no_grad():
        assert mae.forward_encoder(imgs, 0.75, noise)[0].equal(model.forward_encoder(imgs, 0.75, noise)[0])
        vit = fastmae.VisionTransformer.from_checkpoint(out, num_classes=0).eval()
        want = fastmae.VisionTransformer.from_checkpoint(model.state_dict(), num_classes=0).eval()
        assert vit(imgs).equal(want(imgs))


@pytest.mark.slow
@requires_transformers
def test_hf_loads_cleanly_and_gives_the_same_loss(tmp_path, capsys, trained):
    from safetensors.torch import load_file
    from transformers import ViTMAEForPreTraining

    model, ckpt = trained
    out = tmp_path / "mae-hf"
    code, stdout, err = export(capsys, "--checkpoint", ckpt, "--format", "hf", "--out", out, "--mask-ratio", "0.6")
    assert code == 0 and err == ""
    assert stdout.splitlines() == [
        f"wrote {out} (0.5 MB): {ckpt} as a ViTMAEForPreTraining directory; left out: " + ", ".join(TRAINING_STATE),
        f"load it with: transformers.ViTMAEForPreTraining.from_pretrained({str(out)!r})"]
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert all(k.startswith(("vit.", "decoder.")) for k in load_file(out / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    assert config["norm_pix_loss"] is True and config["mask_ratio"] == 0.6  # from the args, from --mask-ratio
    assert (os.stat(out / "model.safetensors").st_mode & 0o777) == (os.stat(out / "config.json").st_mode & 0o777)
    hf, info = ViTMAEForPreTraining.from_pretrained(out, output_loading_info=True)
    assert loading_info_is_clean(info), info
    imgs, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 64)
    with torch.no_grad():
        got = hf.eval()(imgs, noise=noise)
        loss, pred, mask = model.eval()(imgs, 0.6, noise)
    assert got.mask.equal(mask) and rel_err(got.logits, pred) <= 1e-5
    assert abs(got.loss.item() - loss.item()) <= 1e-5 * loss.item()


def _fail_midway(monkeypatch, fmt):
    """Make the writer of ``fmt`` write part of its file, then fail as a full disk does."""
    def half_then_fail(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as g:
                g.write(b"partial")
        else:
            f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    if fmt == "hf":
        import safetensors.torch
        monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    else:
        monkeypatch.setattr(torch, "save", half_then_fail)


@pytest.mark.parametrize("fmt", ["timm", "encoder", pytest.param("hf", marks=requires_transformers)])
def test_a_failure_midway_leaves_no_partial_file(tmp_path, capsys, monkeypatch, trained, fmt):
    _, ckpt = trained
    exports = tmp_path / "exports"
    exports.mkdir()
    fresh = exports / ("fresh" if fmt == "hf" else "fresh.pth")
    earlier = exports / ("old" if fmt == "hf" else "old.pth")
    assert export(capsys, "--checkpoint", ckpt, "--format", fmt, "--out", earlier)[0] == 0
    before = {p.relative_to(exports): p.read_bytes() for p in exports.rglob("*") if p.is_file()}
    _fail_midway(monkeypatch, fmt)
    for out, extra in ((fresh, []), (earlier, ["--force"])):
        code, _, err = export(capsys, "--checkpoint", ckpt, "--format", fmt, "--out", out, *extra)
        assert code == 1 and err == f"fastmae: error: cannot write {out}: No space left on device\n"
    after = {p.relative_to(exports): p.read_bytes() for p in exports.rglob("*") if p.is_file()}
    assert after == before  # no partial file, no temporary, the earlier export intact


@pytest.mark.parametrize("fmt", ["timm", pytest.param("hf", marks=requires_transformers)])
def test_an_existing_out_needs_force(tmp_path, capsys, trained, fmt):
    _, ckpt = trained
    out = tmp_path / ("hf" if fmt == "hf" else "timm.pth")
    if fmt == "hf":
        out.mkdir()  # an empty directory holds nothing to overwrite: no --force needed
    assert export(capsys, "--checkpoint", ckpt, "--format", fmt, "--out", out)[0] == 0
    code, _, err = export(capsys, "--checkpoint", ckpt, "--format", fmt, "--out", out)
    assert code == 2
    assert err == f"fastmae: error: {out} already exists; pass --force to overwrite it or choose another --out\n"
    assert export(capsys, "--checkpoint", ckpt, "--format", fmt, "--out", out, "--force")[0] == 0


@requires_transformers
def test_hf_never_replaces_a_directory_with_other_files(tmp_path, capsys, trained):
    _, ckpt = trained
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = export(capsys, "--checkpoint", ckpt, "--format", "hf", "--out", out, "--force")
    assert code == 2 and err == (f"fastmae: error: --out {out} holds files other than an earlier export's "
                                 "(config.json, model.safetensors, preprocessor_config.json); "
                                 "choose a new or empty directory\n")
    assert os.listdir(out) == ["notes.txt"]


def test_hf_without_transformers_names_the_extra(tmp_path, capsys, monkeypatch, trained):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what `import transformers` sees when it is absent
    code, _, err = export(capsys, "--checkpoint", trained[1], "--format", "hf", "--out", tmp_path / "hf")
    assert code == 2
    assert err == 'fastmae: error: --format hf needs transformers, the interop extra: pip install -e ".[interop]"\n'
    assert not (tmp_path / "hf").exists()


def _files(tmp):
    """Checkpoints of every kind, and a directory that holds a pretraining run."""
    full = micro().state_dict()
    torch.save({"model": state_dicts.encoder_of(full)}, tmp / "encoder.pth")
    torch.save({"model": fastmae.create_vit("vit_micro_patch4", num_classes=3).state_dict()}, tmp / "vit.pth")
    torch.save({"model": convert.to_hf(full)}, tmp / "hfnames.pth")
    torch.save({"model": full, "args": NotAllowed()}, tmp / "unsafe.pth")
    (tmp / "adir").mkdir()
    (tmp / "afile").write_text("x")


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "{tmp}/nope.pth", "--format", "timm"], "checkpoint not found: {tmp}/nope.pth"),
    (["--checkpoint", "{tmp}/unsafe.pth", "--format", "timm"],
     "refusing to load {tmp}/unsafe.pth: it needs test_cli_export.NotAllowed, which is unsafe to unpickle"),
    (["--checkpoint", "{ckpt}", "--format", "onnx"], "argument --format: invalid choice: 'onnx'"),
    (["--checkpoint", "{ckpt}", "--format", "encoder", "--global-pool"],
     "--global-pool applies to --format timm only, not encoder"),
    (["--checkpoint", "{ckpt}", "--format", "timm", "--mask-ratio", "0.5"],
     "--mask-ratio applies to --format hf only, not timm"),
    (["--checkpoint", "{ckpt}", "--format", "timm", "--out", "{ckpt}", "--force"],
     "--out {ckpt} is the --checkpoint itself; choose another --out"),
    (["--checkpoint", "{tmp}/encoder.pth", "--format", "timm", "--out", "{run}/checkpoint-7.pth", "--force"],
     "--out {run}/checkpoint-7.pth is a file of the pretraining run in {run}; choose another name"),
    (["--checkpoint", "{ckpt}", "--format", "timm", "--out", "{tmp}/adir"],
     "--out {tmp}/adir is a directory; --format timm writes a file: name it, e.g. {tmp}/adir/timm.pth"),
    (["--checkpoint", "{tmp}/encoder.pth", "--format", "encoder", "--out", "{tmp}/afile"],
     "{tmp}/afile already exists; pass --force to overwrite it or choose another --out"),
    (["--checkpoint", "{tmp}/encoder.pth", "--format", "hf"],
     "{tmp}/encoder.pth holds the encoder only (no mask_token, no decoder): --format hf writes a "
     "ViTMAEForPreTraining, which has one; export it as --format timm or encoder"),
    (["--checkpoint", "{tmp}/vit.pth", "--format", "encoder"],
     "{tmp}/vit.pth is a fine-tuned ViT (a classifier: no decoder): --format encoder writes an MAE encoder "
     "without a head; export it as --format timm"),
    (["--checkpoint", "{tmp}/vit.pth", "--format", "timm", "--global-pool"],
     "--global-pool: {tmp}/vit.pth was fine-tuned without global pooling"),
    (["--checkpoint", "{tmp}/hfnames.pth", "--format", "timm"],
     "cannot export {tmp}/hfnames.pth: not an official MAE or ViT state dict: "),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, trained, argv, message):
    _files(tmp_path)
    names = {"tmp": tmp_path, "ckpt": trained[1], "run": trained[1].parent}
    argv = [a.format(**names) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    if "hf" in argv:
        # without it, the first line names the extra instead (tested elsewhere)
        pytest.importorskip("transformers",
                            reason="needs transformers, the optional extra: pip install -e '.[interop]'")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, stdout, err = export(capsys, *argv)
    assert code == 2 and stdout == ""
    assert len(err.splitlines()) == 1 and err.startswith("fastmae: error: ") and message.format(**names) in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
