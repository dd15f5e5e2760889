"""``fastmae pretrain`` end to end on the micro model (16 px, a few dozen images, CPU)."""

import json
import os
import shlex
import subprocess
import sys

import pytest
import torch
from PIL import Image

import fastmae
from fastmae.cli import main, pretrain
from fastmae.cli.lr_sched import lr_at

pytestmark = pytest.mark.usefixtures("cpu_default_device", "one_thread")  # see tests/conftest.py


def base_args(out, *extra):
    # The torch backend: the test session turns the Triton interpreter on, which "auto" would pick.
    # The CPU: the bitwise resume test means float32 on the CPU, never CUDA with bf16.
    return ["pretrain", "--model", "mae_vit_micro_patch4", "--input-size", "16", "--num-images", "32",
            "--batch-size", "8", "--epochs", "2", "--warmup-epochs", "1", "--backend", "torch",
            "--device", "cpu", "--print-freq", "2", "--output-dir", str(out), *extra]


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def log_lines(out):
    return (out / "log.txt").read_text().splitlines()


def trajectory(out):
    """The log's lines without ``data_wait`` (a timing): what a bitwise resume must reproduce."""
    return [{k: v for k, v in json.loads(line).items() if k != "data_wait"} for line in log_lines(out)]


def test_trains_and_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, base_args(out, "--save-every", "1", "--blr", "2e-3"))
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["checkpoint-0.pth", "checkpoint-1.pth", "checkpoint-last.pth",
                                       "log.txt", "loss.png", "reconstructions.png"]
    lines = [json.loads(line) for line in log_lines(out)]
    assert [sorted(line) for line in lines] == [["data_wait", "epoch", "train_loss", "train_lr"]] * 2
    assert [line["epoch"] for line in lines] == [0, 1] and all(line["data_wait"] >= 0 for line in lines)
    assert "img/s" in stdout and "done: 2 epochs" in stdout
    assert stdout.count("data_wait ") == 2  # once per epoch, in the epoch line
    # Our checkpoints load with plain weights_only=True: args is a dict of plain values.
    ckpt = torch.load(out / "checkpoint-last.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["args"]["model"] == "mae_vit_micro_patch4"
    assert ckpt["args"]["lr"] == pytest.approx(2e-3 * 8 / 256)  # blr * effective batch / 256
    # 4 iterations per epoch, one optimizer step each.
    assert all(s["step"].item() == 8 for s in ckpt["optimizer"]["state"].values())
    # AdamW as the official recipe: betas (0.9, 0.95), no decay on the group of 1-D parameters.
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["betas"] for g in groups] == [(0.9, 0.95)] * 2
    assert [g["weight_decay"] for g in groups] == [0.0, 0.05]
    # The periodic checkpoint is checkpoint-last's bytes, not a second serialisation.
    assert (out / "checkpoint-1.pth").read_bytes() == (out / "checkpoint-last.pth").read_bytes()
    with Image.open(out / "reconstructions.png") as im:
        assert im.width > 4 * 16


def test_periodic_checkpoints_are_hard_links_that_keep_their_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, base_args(out, "--epochs", "3", "--save-every", "1"))[0] == 0
    last = os.stat(out / "checkpoint-last.pth")
    # The last epoch's periodic file is checkpoint-last itself (one inode, no second copy on disk).
    assert os.stat(out / "checkpoint-2.pth").st_ino == last.st_ino and last.st_nlink == 2
    # checkpoint-last was replaced (a new inode) after each link: the older links kept their bytes.
    for epoch in (0, 1):
        assert os.stat(out / f"checkpoint-{epoch}.pth").st_nlink == 1
        assert torch.load(out / f"checkpoint-{epoch}.pth", weights_only=True)["epoch"] == epoch


def test_messages_count_in_words(tmp_path, capsys):
    code, stdout, _ = run(capsys, base_args(tmp_path / "run", "--epochs", "1", "--num-images", "8"))
    assert code == 0
    assert "(1 process, 1 thread, amp off)" in stdout
    assert "1 epoch to train (epoch 0), 1 iteration per epoch" in stdout
    assert "done: 1 epoch in " in stdout


def test_first_line_comes_before_the_slow_set_up(tmp_path, capsys, monkeypatch):
    # Building the optimizer imports torch's compiler stack (seconds): a line says what is going on.
    make_optimizer = pretrain.make_optimizer
    printed = []

    def spy(*args):
        printed.append(capsys.readouterr().out)
        return make_optimizer(*args)

    monkeypatch.setattr(pretrain, "make_optimizer", spy)
    assert run(capsys, base_args(tmp_path / "run", "--epochs", "1"))[0] == 0
    assert printed == ["pretraining mae_vit_micro_patch4 at 16 px on cpu (1 process, 1 thread, amp off), 1 epoch at "
                       f"blr 0.005 (1 warmup), norm-pix loss, into {tmp_path / 'run'}: building the model and the "
                       "optimizer...\n"]


@pytest.mark.parametrize("extra, message", [
    # The warmup is the whole run: the lr of the last step (epoch 0.75) is 3/4 of the peak.
    # At --blr 0.01, batch 8: a peak of 3.125e-04.
    (["--epochs", "1", "--warmup-epochs", "1", "--blr", "0.01"], "--warmup-epochs 1 lasts past the last optimizer "
     "step (at epoch 0.75 of --epochs 1, 4 iterations per epoch), whose lr is 2.344e-04"),
    # An epoch of one optimizer step (4 iterations, --accum-iter 4): the only step is at epoch 1.
    (["--warmup-epochs", "1.5", "--accum-iter", "4"], "--warmup-epochs 1.5 lasts past the last "
     "optimizer step (at epoch 1.00 of --epochs 2, 4 iterations per epoch, --accum-iter 4)"),
])
def test_schedule_that_never_reaches_its_peak_is_warned_about(tmp_path, capsys, extra, message):
    code, _, err = run(capsys, base_args(tmp_path / "run", *extra))
    assert code == 0
    assert err.startswith("fastmae: warning: the lr never reaches its peak") and message in err
    assert "lower --warmup-epochs or raise --epochs" in err and len(err.splitlines()) == 1


def test_schedule_that_reaches_its_peak_is_not_warned_about(tmp_path, capsys):
    code, _, err = run(capsys, base_args(tmp_path / "run"))  # 2 epochs, warmup 1: peak at epoch 1
    assert code == 0 and err == ""


def test_accum_iter_steps_every_k_iterations(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(capsys, base_args(out, "--accum-iter", "2", "--epochs", "1", "--blr", "2e-3"))
    assert code == 0, err
    ckpt = torch.load(out / "checkpoint-last.pth", weights_only=True)
    assert all(s["step"].item() == 2 for s in ckpt["optimizer"]["state"].values())
    assert ckpt["args"]["lr"] == pytest.approx(2e-3 * 16 / 256)


def _interrupt_at(monkeypatch, stop_epoch):
    """Make the next run stop as Ctrl-C would, at the start of epoch ``stop_epoch``."""
    train_one_epoch = pretrain.train_one_epoch

    def interrupted(*args, **kwargs):
        if args[5] == stop_epoch:  # the epoch argument
            raise KeyboardInterrupt
        return train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(pretrain, "train_one_epoch", interrupted)


def test_interrupt_names_the_resume_command_which_continues_bitwise(tmp_path, capsys, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(capsys, base_args(straight, "--epochs", "4"))[0] == 0
    _interrupt_at(monkeypatch, 2)  # as a killed job: after epoch 1's checkpoint
    code, _, err = run(capsys, base_args(resumed, "--epochs", "4"))
    monkeypatch.undo()
    assert code == 130 and len(log_lines(resumed)) == 2
    last = resumed / "checkpoint-last.pth"
    # One line: what is saved, and the command; the trajectory options come from the checkpoint,
    # the device, backend and printing ones are repeated, --output-dir is the checkpoint's own.
    command = f"fastmae pretrain --resume {last} --backend torch --print-freq 2 --device cpu"
    assert err == (f"fastmae: interrupted: the last checkpoint is {last} (2 of 4 epochs done); "
                   f"resume with: {command}\n")
    code, stdout, err = run(capsys, shlex.split(command)[1:])
    assert code == 0, err
    assert "resumed from" in stdout and err == ""  # a bare resume warns about nothing
    assert trajectory(resumed) == trajectory(straight)  # every epoch's loss and lr, to the last bit
    a = torch.load(straight / "checkpoint-last.pth", weights_only=True)
    b = torch.load(resumed / "checkpoint-last.pth", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_interrupt_before_the_first_checkpoint(tmp_path, capsys, monkeypatch):
    _interrupt_at(monkeypatch, 0)
    code, _, err = run(capsys, base_args(tmp_path / "run"))
    assert code == 130
    assert err == ("fastmae: interrupted: no checkpoint was saved (the first epoch had not "
                   "finished); run the same command again to start over\n")
    monkeypatch.undo()
    assert run(capsys, base_args(tmp_path / "run"))[0] == 0  # the same command starts over


def test_interrupted_resume_repeats_the_options_that_differ_from_its_checkpoint(tmp_path, capsys,
                                                                                  monkeypatch):
    out = tmp_path / "run"
    assert run(capsys, base_args(out, "--epochs", "1"))[0] == 0
    last = out / "checkpoint-last.pth"
    _interrupt_at(monkeypatch, 1)  # before this run saves anything: the checkpoint is the old one
    code, _, err = run(capsys, base_args(out, "--epochs", "3", "--resume", str(last)))
    assert code == 130
    assert err.splitlines()[-1] == (
        f"fastmae: interrupted: the last checkpoint is {last} (1 of 3 epochs done); resume with: "
        f"fastmae pretrain --resume {last} --backend torch --epochs 3 --print-freq 2 --device cpu")


def test_bare_resume_takes_the_checkpoints_options(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, base_args(out, "--epochs", "1", "--seed", "7", "--blr", "3e-3",
                                 "--save-every", "1"))[0] == 0
    # Only --epochs is passed: the model, size, data, batch, lr and seed come from the checkpoint,
    # and the warning names --epochs (a longer cosine) alone, not the options not passed.
    last = out / "checkpoint-last.pth"
    code, stdout, err = run(capsys, ["pretrain", "--resume", str(last), "--epochs", "2",
                                     "--backend", "torch", "--device", "cpu"])
    assert code == 0, err
    assert err == (f"fastmae: warning: resuming with different --epochs than {last}: the run will "
                   "not continue its loss curve exactly\n")
    assert "mae_vit_micro_patch4 at 16 px" in stdout and "(32 images, 32 px)" in stdout
    args = torch.load(out / "checkpoint-last.pth", weights_only=True)["args"]
    assert args["seed"] == 7 and args["epochs"] == 2 and args["lr"] == pytest.approx(3e-3 * 8 / 256)
    assert len(log_lines(out)) == 2
    # checkpoint-0 stores --epochs 1 too: resumed with --seed 8, the warning names both.
    code, _, err = run(capsys, ["pretrain", "--resume", str(out / "checkpoint-0.pth"), "--epochs",
                                "2", "--seed", "8", "--backend", "torch", "--device", "cpu"])
    assert code == 0
    assert "resuming with different --epochs, --seed than" in err


def test_resume_beside_a_checkpoint_whose_directory_holds_no_run(tmp_path, capsys, monkeypatch):
    assert run(capsys, base_args(tmp_path / "run", "--epochs", "1"))[0] == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.replace(tmp_path / "run" / "checkpoint-last.pth", elsewhere / "mine.pth")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, ["pretrain", "--resume", "elsewhere/mine.pth", "--epochs", "2",
                                "--backend", "torch", "--device", "cpu"])
    assert code == 0, err
    assert sorted(os.listdir(elsewhere)) == ["checkpoint-1.pth", "checkpoint-last.pth", "log.txt", "loss.png",
                                             "mine.pth", "reconstructions.png"]
    assert not (tmp_path / "output").exists()


def test_resuming_a_finished_run_says_so_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, base_args(out, "--epochs", "1"))[0] == 0
    before = {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)}
    last = out / "checkpoint-last.pth"
    code, stdout, err = run(capsys, ["pretrain", "--resume", str(last), "--device", "cpu"])
    assert code == 0 and err == ""
    assert stdout.splitlines()[-1] == (
        f"the run is complete: {last} has 1 epoch of --epochs 1; nothing was trained or written. "
        f"Its files are in {out}; to train longer, resume with a larger --epochs")
    assert {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)} == before


def test_resume_from_official_weights_only_checkpoint(tmp_path, capsys):
    model = fastmae.create_model("mae_vit_micro_patch4", img_size=16)
    official = tmp_path / "official.pth"
    torch.save({"model": model.state_dict()}, official)
    code, stdout, err = run(capsys, base_args(tmp_path / "run", "--epochs", "1", "--resume", str(official)))
    assert code == 0, err
    assert "initialised mae_vit_micro_patch4 from the weights" in stdout


def test_resume_from_an_encoder_only_checkpoint_trains_the_decoder_from_scratch(tmp_path, capsys):
    from fastmae.cli import parse_args

    src = fastmae.create_model("mae_vit_micro_patch4", img_size=16)
    encoder = tmp_path / "mae_pretrain_vit_micro.pth"  # the layout of the official mae_pretrain_vit_*.pth
    torch.save({"model": fastmae.state_dicts.encoder_of(src.state_dict())}, encoder)
    # An lr of 1e-12 leaves the weights where they started: the encoder the file's, the decoder fresh.
    argv = base_args(tmp_path / "run", "--epochs", "1", "--warmup-epochs", "0", "--lr", "1e-12", "--resume",
                     str(encoder))
    model = pretrain.train(parse_args(argv))
    out, err = capsys.readouterr()
    assert err == (f"fastmae: warning: {encoder} holds the encoder only: the decoder and mask_token start from "
                   "their initialisation (20 entries not loaded), so the loss starts as an untrained decoder's\n")
    assert f"initialised the encoder of mae_vit_micro_patch4 from {encoder}; training from epoch 0" in out
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight)
    assert not torch.allclose(model.decoder_pred.weight, src.decoder_pred.weight)
    assert len(log_lines(tmp_path / "run")) == 1  # a new run of its own


def test_resume_from_a_fine_tuned_vit_or_another_encoder_is_one_line(tmp_path, capsys):
    vit, tiny = tmp_path / "mae_finetuned_vit_micro.pth", tmp_path / "tiny_encoder.pth"
    torch.save({"model": fastmae.create_vit("vit_micro_patch4", img_size=16, num_classes=3).state_dict()}, vit)
    tiny_state = fastmae.create_model("mae_vit_tiny_patch4", img_size=16).state_dict()
    torch.save({"model": fastmae.state_dicts.encoder_of(tiny_state)}, tiny)
    for path, message in (
            (vit, f"{vit} is a fine-tuned ViT (a classifier: no decoder): mae_vit_micro_patch4 starts from an MAE "
                  "checkpoint, with a decoder or encoder-only (as the official mae_pretrain_vit_*.pth)"),
            (tiny, f"{tiny} holds the encoder of a mae_vit_tiny_patch4, not mae_vit_micro_patch4 (pass --model "
                   "mae_vit_tiny_patch4)")):
        code, _, err = run(capsys, base_args(tmp_path / "run", "--resume", str(path)))
        assert code == 2 and err == f"fastmae: error: {message}\n"
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_on_cpu(tmp_path, capsys, amp):
    code, _, err = run(capsys, base_args(tmp_path / "run", "--epochs", "1", "--amp", amp))
    assert code == 0, err
    assert json.loads(log_lines(tmp_path / "run")[0])["train_loss"] > 0
    ckpt = torch.load(tmp_path / "run" / "checkpoint-last.pth", weights_only=True)
    assert (ckpt["scaler"] is not None) == (amp == "fp16")  # fp16 trains through a GradScaler


def _write_images(root, count, size=(24, 20)):
    gen = torch.Generator().manual_seed(0)
    for i in range(count):
        pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=gen, dtype=torch.uint8, device="cpu")
        ext = "png" if i % 2 else "jpg"
        os.makedirs(root / f"class{i % 3}", exist_ok=True)
        Image.fromarray(pixels.numpy()).save(root / f"class{i % 3}" / f"img{i}.{ext}")


def test_image_folder_skips_unreadable_files_with_a_count(tmp_path, capsys):
    data = tmp_path / "data"
    _write_images(data, 8)
    (data / "class0" / "broken.jpg").write_bytes(b"definitely not a jpeg")
    (data / "notes.txt").write_text("ignored: not an image extension")
    code, stdout, err = run(capsys, base_args(tmp_path / "run", "--data", str(data), "--epochs", "1",
                                               "--batch-size", "4"))
    assert code == 0, err
    assert "skipped 1 of 9 files" in err and "broken.jpg" in err
    assert "(8 images)" in stdout


@pytest.mark.parametrize("workers", [0, 1])
def test_image_that_fails_to_decode_midway_is_replaced_with_a_warning(tmp_path, capsys, workers):
    data = tmp_path / "data"
    _write_images(data, 4, size=(64, 64))
    jpeg = data / "class0" / "img0.jpg"
    data_bytes = jpeg.read_bytes()
    jpeg.write_bytes(data_bytes[: len(data_bytes) // 2])  # header intact, data cut: passes the scan
    code, stdout, err = run(capsys, base_args(tmp_path / "run", "--data", str(data),
                                              "--batch-size", "4", "--num-workers", str(workers)))
    assert code == 0, err
    # Warned once for the whole run (2 epochs), counted in each epoch line and the summary.
    assert err == (f"fastmae: warning: cannot decode image {jpeg}: replaced by the next image "
                   "that decodes (warned once per file)\n")
    assert stdout.count(", 1 undecodable image replaced") == 2
    assert ", 2 undecodable images replaced;" in stdout


def test_no_decodable_image_is_a_one_line_error(tmp_path, capsys):
    data = tmp_path / "data"
    _write_images(data, 4, size=(64, 64))
    for path in data.rglob("*.png"):
        path.unlink()
    for path in data.rglob("*.jpg"):  # the 2 JPEGs: header intact, data cut (they pass the scan)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, _, err = run(capsys, base_args(tmp_path / "run", "--data", str(data), "--batch-size", "2"))
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("fastmae: error: no image can be decoded")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, base_args(out, "--epochs", "1"))[0] == 0
    last = out / "checkpoint-last.pth"
    before, log_before = last.read_bytes(), log_lines(out)
    code, _, err = run(capsys, base_args(out, "--epochs", "3", "--lr", "1e30", "--resume", str(last)))
    assert code == 1
    error = err.strip().splitlines()[-1]
    assert error.startswith("fastmae: error: loss is ") and "at epoch 1, iteration" in error
    assert f"the last good checkpoint is {last}" in error and "Traceback" not in err
    assert last.read_bytes() == before and log_lines(out) == log_before
    assert not (out / "checkpoint-1.pth").exists()


def _foreign_checkpoint(path):
    torch.save({"model": fastmae.create_model("mae_vit_tiny_patch4", img_size=16).state_dict(),
                "args": {"model": "mae_vit_tiny_patch4"}}, path)
    return path


def _truncated_checkpoint(path):
    torch.save({"model": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:200])
    return path


@pytest.mark.parametrize("extra, message", [
    (["--data", "{tmp}/missing"], "data directory not found: {tmp}/missing"),
    (["--data", "{tmp}/tiny.pth"], "{tmp}/tiny.pth is not a directory"),
    (["--data", "{tmp}/empty"], "no .jpg/.jpeg/.png/.npy/.tif/.tiff images in data directory {tmp}/empty"),
    (["--data", "{tmp}/corrupt"], "none of the 2 image files in {tmp}/corrupt can be read"),
    (["--num-images", "6"], "--batch-size 8 is larger than the data (6 images)"),
    (["--accum-iter", "5"], "--accum-iter 5 is more than the 4 iterations"),
    (["--model", "mae_vit_nope"], "unknown model 'mae_vit_nope'; available: mae_vit_base_patch16"),
    (["--input-size", "18"], "cannot build mae_vit_micro_patch4 at --input-size 18"),
    (["--mask-ratio", "0.99"], "--mask-ratio 0.99 keeps none of the 16 patches"),
    (["--mask-ratio", "1"], "argument --mask-ratio: must be in (0, 1), got 1"),
    (["--resume", "{tmp}/nope.pth"], "checkpoint not found: {tmp}/nope.pth"),
    (["--resume", "{tmp}/tiny.pth"], "holds a mae_vit_tiny_patch4 model, not mae_vit_micro_patch4"),
    (["--resume", "{tmp}/truncated.pth"], "cannot read checkpoint {tmp}/truncated.pth: the file is "
                                           "truncated or corrupt"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt" / "a").mkdir(parents=True)
    for name in ("x.png", "y.jpeg"):
        (tmp_path / "corrupt" / "a" / name).write_bytes(b"\x89PNG not really")
    _foreign_checkpoint(tmp_path / "tiny.pth")
    _truncated_checkpoint(tmp_path / "truncated.pth")
    argv = base_args(tmp_path / "run", *[a.format(tmp=tmp_path) for a in extra])
    code, _, err = run(capsys, argv)
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("fastmae: error: ")
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "run").exists()  # nothing written


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, base_args(out, "--epochs", "1"))[0] == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    code, _, err = run(capsys, base_args(out, "--epochs", "1"))
    assert code == 2 and f"{out} already holds a run; continue it with --resume" in err
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_resume_of_another_run_into_an_existing_run_is_refused(tmp_path, capsys):
    first, other = tmp_path / "first", tmp_path / "other"
    assert run(capsys, base_args(first, "--epochs", "1"))[0] == 0
    assert run(capsys, base_args(other, "--epochs", "1", "--seed", "1"))[0] == 0
    before = {name: (first / name).read_bytes() for name in os.listdir(first)}
    code, _, err = run(capsys, base_args(first, "--epochs", "2", "--resume",
                                         str(other / "checkpoint-last.pth")))
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{first} already holds another run than {other / 'checkpoint-last.pth'}" in err
    assert {name: (first / name).read_bytes() for name in os.listdir(first)} == before
    # The same run through another spelling of its directory is accepted.
    code, _, err = run(capsys, base_args(first, "--epochs", "2", "--resume",
                                         str(tmp_path / "." / "first" / "checkpoint-last.pth")))
    assert code == 0, err


def test_resume_from_an_older_checkpoint_rewrites_the_later_log_lines(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, base_args(out, "--epochs", "3", "--save-every", "1"))[0] == 0
    old = trajectory(out)
    code, _, err = run(capsys, base_args(out, "--epochs", "3", "--resume",
                                         str(out / "checkpoint-0.pth")))
    assert code == 0, err
    # Epochs 1 and 2 retrained once each: no duplicate lines, the same values (a CPU run is exact).
    assert trajectory(out) == old


def test_resume_at_another_input_size_rebuilds_the_fixed_position_tables(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, base_args(out, "--epochs", "1"))[0] == 0
    code, stdout, err = run(capsys, base_args(out, "--epochs", "2", "--input-size", "32",
                                              "--resume", str(out / "checkpoint-last.pth")))
    assert code == 0, err
    assert "resumed from" in stdout and "different --input-size" in err
    ckpt = torch.load(out / "checkpoint-last.pth", weights_only=True)
    assert ckpt["model"]["pos_embed"].shape[1] == (32 // 4) ** 2 + 1


def test_triton_backend_without_cuda_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # what a user's CPU machine has
    code, _, err = run(capsys, base_args(tmp_path / "run", "--backend", "triton"))
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("fastmae: error: --backend triton: backend 'triton' needs CUDA tensors")
    assert not (tmp_path / "run").exists()


def test_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB ...")

    monkeypatch.setattr(pretrain, "train_one_epoch", oom)
    code, _, err = run(capsys, base_args(tmp_path / "run"))
    assert code == 1 and err == "fastmae: error: out of memory: lower --batch-size\n"


def test_stale_temporary_files_of_killed_saves_are_removed(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = out / f".checkpoint-last.pth.tmp-{dead.stdout.strip()}"
    live = out / f".checkpoint-last.pth.tmp-{os.getppid()}"  # a running process: left alone
    stale.write_bytes(b"partial")
    live.write_bytes(b"partial")
    assert run(capsys, base_args(out, "--epochs", "1"))[0] == 0
    assert not stale.exists() and live.exists()


def test_lr_schedule_matches_the_official_formula():
    # Linear warmup to the peak, then a half cosine to min_lr, as util/lr_sched.py.
    assert lr_at(0.0, 1.0, 0.1, 2, 10) == 0.0
    assert lr_at(1.0, 1.0, 0.1, 2, 10) == 0.5
    assert lr_at(2.0, 1.0, 0.1, 2, 10) == 1.0
    assert lr_at(6.0, 1.0, 0.1, 2, 10) == pytest.approx(0.55)
    assert lr_at(10.0, 1.0, 0.1, 2, 10) == pytest.approx(0.1)
    assert lr_at(3.0, 1.0, 0.0, 5, 5) == 0.6 and lr_at(5.0, 1.0, 0.0, 5, 5) == 1.0  # no 0/0


def test_param_groups_skip_decay_on_biases_and_1d_params():
    model = fastmae.create_model("mae_vit_micro_patch4")
    no_decay, decay = pretrain.param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    assert all(p.ndim == 1 for p in no_decay["params"])
    assert {names[id(p)] for p in decay["params"]} >= {"cls_token", "mask_token", "blocks.0.attn.qkv.weight"}
    frozen = {"pos_embed", "decoder_pos_embed"}
    assert len(no_decay["params"]) + len(decay["params"]) == len(names) - len(frozen)


def test_default_output_dir_never_refuses_nor_overwrites(tmp_path, capsys, monkeypatch):
    # The README's main command may be run twice: without --output-dir each run takes the first of
    # output/pretrain, output/pretrain-2, ... that holds no run; a resume continues in its own one.
    monkeypatch.chdir(tmp_path)
    argv = base_args("unused")
    i = argv.index("--output-dir")
    argv = argv[:i] + argv[i + 2:]  # no --output-dir
    for _ in range(2):
        code, _, err = run(capsys, argv)
        assert code == 0, err
    first, second = tmp_path / "output" / "pretrain", tmp_path / "output" / "pretrain-2"
    assert log_lines(first) and log_lines(second)
    before = (first / "checkpoint-last.pth").read_bytes()
    code, _, err = run(capsys, [*argv, "--epochs", "3", "--resume", str(first / "checkpoint-last.pth")])
    assert code == 0, err
    assert len(log_lines(first)) == 3 and (first / "checkpoint-last.pth").read_bytes() != before
    assert not (tmp_path / "output" / "pretrain-3").exists()
