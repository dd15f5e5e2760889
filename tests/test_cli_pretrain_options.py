"""``fastmae pretrain`` as a new user meets it: defaults that fit the model, the official option
names, the official data layout, the output directory checked first, what the run prints and leaves
(loss curve, TensorBoard scalars, the next commands). Each test runs the command and checks its exit
code and the line it prints."""

import importlib.util
import os
import tempfile

import pytest
import torch
from PIL import Image

from fastmae.cli import main

pytestmark = pytest.mark.usefixtures("cpu_default_device", "one_thread")  # see tests/conftest.py


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def micro(out, *extra):
    """A quick micro-model run (16 px, 16 images, 1 epoch) on the torch backend."""
    return ["pretrain", "--model", "mae_vit_micro_patch4", "--input-size", "16", "--num-images", "16",
            "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0", "--backend", "torch", "--device",
            "cpu", "--output-dir", str(out), *extra]


# --- defaults that fit the model -----------------------------------------------------------------

@pytest.mark.parametrize("model, first_line", [
    # The official models: their own 224 px and the paper's recipe (stopped before building the model
    # by a batch larger than the data, so no ViT is built here).
    ("mae_vit_large_patch16", "pretraining mae_vit_large_patch16 at 224 px on cpu (1 process, 1 thread, amp off), "
                              "800 epochs at blr 0.00015 (40 warmup), into {out}"),
    ("mae_vit_base_patch16", "pretraining mae_vit_base_patch16 at 224 px on cpu (1 process, 1 thread, amp off), "
                             "800 epochs at blr 0.00015 (40 warmup), into {out}"),
    # The demo model keeps the demo's recipe, norm-pix loss included.
    ("mae_vit_tiny_patch4", "pretraining mae_vit_tiny_patch4 at 32 px on cpu (1 process, 1 thread, amp off), "
                            "28 epochs at blr 0.005 (3 warmup), norm-pix loss, into {out}"),
])
def test_image_size_and_recipe_default_to_the_models(tmp_path, capsys, model, first_line):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, ["pretrain", "--model", model, "--num-images", "4", "--batch-size", "8",
                                     "--device", "cpu", "--output-dir", str(out)])
    assert code == 2 and "--batch-size 8 is larger than the data (4 images)" in err
    assert stdout.splitlines()[0].startswith(first_line.format(out=out))


def test_norm_pix_loss_follows_the_recipe_unless_a_flag_says_otherwise(tmp_path, capsys):
    # The demo turns it on; --no-norm-pix-loss turns it off, and the checkpoint stores what ran.
    code, stdout, err = run(capsys, micro(tmp_path / "off", "--no-norm-pix-loss"))
    assert code == 0, err
    assert "norm-pix" not in stdout.splitlines()[0]
    assert torch.load(tmp_path / "off" / "checkpoint-last.pth", weights_only=True)["args"]["norm_pix_loss"] is False
    # The paper's models leave it off (the first line above, in test_image_size_and_recipe_default_to_the_models);
    # the official flag turns it on (stopped before building the model by a batch larger than the data).
    code, stdout, err = run(capsys, ["pretrain", "--model", "mae_vit_large_patch16", "--norm_pix_loss", "--num-images",
                                     "4", "--batch-size", "8", "--device", "cpu", "--output-dir", str(tmp_path / "l")])
    assert code == 2 and "(40 warmup), norm-pix loss, into" in stdout.splitlines()[0], stdout + err


def test_small_grid_and_few_kept_patches_are_warned_about(tmp_path, capsys):
    # 8 px at 4 px patches: a 2x2 grid, and mask ratio 0.75 keeps int(4 * 0.25) = 1 patch.
    argv = micro(tmp_path / "run", "--num-images", "8")
    argv[argv.index("--input-size") + 1] = "8"
    code, _, err = run(capsys, argv)
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0] == ("fastmae: warning: mae_vit_micro_patch4 at 8 px sees a 2x2 patch grid (4 px patches), "
                        "fewer than 4x4: raise --input-size (the model's own is the default) or choose a --model "
                        "with smaller patches")
    assert lines[1] == ("fastmae: warning: --mask-ratio 0.75 keeps 1 of the 4 patches, fewer than 4: lower "
                        "--mask-ratio or raise --input-size")


def test_a_4x4_grid_keeping_4_patches_is_not_warned_about(tmp_path, capsys):
    code, _, err = run(capsys, micro(tmp_path / "run"))  # 16 px: 4x4, keeps 4
    assert code == 0 and err == ""


# --- the official option names ---------------------------------------------------------------------

def _images(root, n, size=(20, 20)):
    root.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", size, (i * 40 % 256, 90, 160)).save(root / f"{i}.png")


def test_official_command_line_runs_unchanged(tmp_path, capsys):
    data, out = tmp_path / "imagenet", tmp_path / "run"
    _images(data / "train" / "n01", 8)
    _images(data / "val" / "n01", 4)
    argv = ["pretrain", "--model", "mae_vit_micro_patch4", "--data_path", str(data), "--input_size", "16",
            "--batch_size", "8", "--accum_iter", "1", "--mask_ratio", "0.75", "--norm_pix_loss",
            "--blr", "1e-3", "--weight_decay", "0.04", "--min_lr", "1e-6", "--warmup_epochs", "0",
            "--epochs", "1", "--output_dir", str(out), "--num_workers", "0", "--pin_mem", "--seed", "3",
            "--device", "cpu", "--backend", "torch"]
    code, stdout, err = run(capsys, argv)
    assert code == 0, err
    assert err == "fastmae: warning: ignoring --pin_mem: host memory is pinned on CUDA\n"
    ckpt = torch.load(out / "checkpoint-last.pth", weights_only=True)
    a = ckpt["args"]
    assert (a["input_size"], a["batch_size"], a["norm_pix_loss"], a["blr"], a["weight_decay"], a["min_lr"],
            a["warmup_epochs"], a["seed"]) == (16, 8, True, 1e-3, 0.04, 1e-6, 0, 3)
    # The official ImageNet layout: ROOT/train is the pretraining set, as main_pretrain.py reads it.
    assert a["data"] == str(data / "train")
    assert stdout.splitlines()[0] == (f"--data {data} holds train/ and val/: pretraining on {data / 'train'}, as "
                                      "the official main_pretrain.py does (val/ is left for evaluation)")
    assert "data " + str(data / "train") + " (8 images)" in stdout


def test_official_names_are_hidden_and_listed_once_at_the_end_of_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("The official main_pretrain.py names are accepted too: --data_path, --batch_size,")
    assert out.count("--batch_size") == 1 and out.count("--log_dir") == 1


def test_log_dir_writes_tensorboard_scalars_per_step(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason='the tensorboard extra: pip install -e ".[tensorboard]"')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, logs = tmp_path / "run", tmp_path / "tb"
    code, _, err = run(capsys, micro(out, "--epochs", "2", "--warmup-epochs", "1", "--log_dir", str(logs)))
    assert code == 0, err
    events = EventAccumulator(str(logs))
    events.Reload()
    loss, lr = events.Scalars("train_loss"), events.Scalars("lr")
    # 2 iterations an epoch, one optimizer step each: x = int((iteration / 2 + epoch) * 1000).
    assert [e.step for e in loss] == [e.step for e in lr] == [0, 500, 1000, 1500]
    assert lr[0].value == 0.0 and all(e.value > 0 for e in loss)


def test_log_dir_without_tensorboard_is_one_line(tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard"
                        else find_spec(name, *a))
    code, stdout, err = run(capsys, micro(tmp_path / "run", "--log-dir", str(tmp_path / "tb")))
    assert code == 2 and stdout == ""
    assert err == ('fastmae: error: --log-dir needs tensorboard, the tensorboard extra: pip install -e '
                   '".[tensorboard]"\n')
    assert not (tmp_path / "run").exists()


# --- the output directory ---------------------------------------------------------------------------

def _unwritable_dir(tmp_path):
    """A directory this process cannot create files in: a read-only one, or, for root (whom
    permissions do not stop), /sys where the system mounts it read-only."""
    if os.geteuid() != 0:
        path = tmp_path / "locked"
        path.mkdir()
        path.chmod(0o500)
        return str(path)
    try:
        with tempfile.TemporaryFile(dir="/sys"):
            pass
    except OSError:
        return "/sys"
    pytest.skip("running as root, with no read-only directory to test against")


def test_unwritable_output_dir_is_refused_before_training(tmp_path, capsys):
    locked = _unwritable_dir(tmp_path)
    code, stdout, err = run(capsys, micro(locked))
    assert code == 2 and stdout == ""
    assert err == f"fastmae: error: cannot write to --output-dir {locked}: Permission denied\n"
    code, stdout, err = run(capsys, micro(os.path.join(locked, "run")))
    assert code == 2 and err == (f"fastmae: error: cannot write to --output-dir {os.path.join(locked, 'run')} "
                                 f"(cannot create it in {locked}): Permission denied\n")


# --- what the run prints and leaves ---------------------------------------------------------------

def test_run_names_its_directory_first_and_its_progress_and_next_commands(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, micro(out, "--epochs", "2", "--print-freq", "1"))
    assert code == 0, err
    lines = stdout.splitlines()
    assert f"into {out}: building the model" in lines[0]
    progress = [line for line in lines if line.startswith("epoch ") and "] loss " in line]
    assert [line.split(" loss ")[0] for line in progress] == ["epoch 1/2 [1/2]", "epoch 1/2 [2/2]",
                                                              "epoch 2/2 [1/2]", "epoch 2/2 [2/2]"]
    assert all(", ETA " in line for line in progress) and progress[-1].endswith(", ETA 0s")
    assert [line for line in lines if " done in " in line][0].startswith("epoch 1/2 done in ")
    ckpt = out / "checkpoint-last.pth"
    assert lines[-4:] == [
        "next:",
        f"  fastmae probe --checkpoint {ckpt} --num-images 16    # its encoder against random ones, on the "
        "procedural set's 6 labels",
        f"  fastmae visualize --checkpoint {ckpt} --images IMAGE.jpg    # reconstructions, as the official demo",
        f"  fastmae export --checkpoint {ckpt} --format hf --out {out}-hf    # for Hugging Face's "
        "ViTMAEForPreTraining"]
    with Image.open(out / "loss.png") as im:
        assert im.size == (640, 400)


# --- threads and the procedural set ----------------------------------------------------------------

def test_threads_hold_while_training_and_torchs_count_is_restored(tmp_path, capsys, monkeypatch):
    from fastmae.cli import pretrain

    torch.set_num_threads(2)  # torch's own here (the fixture restores it)
    seen, train_one_epoch = [], pretrain.train_one_epoch
    monkeypatch.setattr(pretrain, "train_one_epoch", lambda *a, **k: seen.append(torch.get_num_threads())
                        or train_one_epoch(*a, **k))
    code, stdout, err = run(capsys, micro(tmp_path / "two"))
    assert code == 0, err
    assert seen == [2] and "(1 process, 2 threads, amp off)" in stdout
    code, stdout, err = run(capsys, micro(tmp_path / "three", "--threads", "3"))
    assert code == 0, err
    assert seen == [2, 3] and "(1 process, 3 threads, amp off)" in stdout and torch.get_num_threads() == 2
    assert torch.load(tmp_path / "three" / "checkpoint-last.pth", weights_only=True)["args"]["threads"] == 3


def test_a_resumed_run_keeps_its_thread_count():
    from fastmae.cli import config, parse_args
    from fastmae.cli.distributed import DistInfo

    def threads(words, stored=None):
        args = parse_args(["pretrain", "--output-dir", "out", *words])
        return config.resolve(args, DistInfo(), torch.device("cpu"), stored).threads

    assert threads([]) is None and threads(["--threads", "4"]) == 4  # None: torch's own
    resume = ["--resume", "out/checkpoint-last.pth"]
    assert threads(resume, {"model": "mae_vit_tiny_patch4", "threads": 2}) == 2
    assert threads([*resume, "--threads", "1"], {"model": "mae_vit_tiny_patch4", "threads": 2}) == 1
    assert threads(resume, {"model": "mae_vit_tiny_patch4"}) is None  # a checkpoint from before --threads


def test_the_procedural_set_is_drawn_once_and_is_the_same_set():
    import pickle

    import numpy as np

    from fastmae.data import ProceduralImages
    from fastmae.data.synthetic import MadeOnce

    source = ProceduralImages(6, size=16)
    kept = pickle.loads(pickle.dumps(MadeOnce(source)))  # as a loader worker receives it
    assert len(kept) == 6 and kept.name == source.name and kept.signature == source.signature
    for i in range(6):
        assert np.array_equal(np.asarray(kept.image(i)), np.asarray(source.image(i)))
        assert kept.label(i) == source.label(i) == kept.open(i).info["label"]
        assert kept.open(i) is kept.image(i)  # made once
