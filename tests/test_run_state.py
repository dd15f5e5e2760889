"""Checkpoint safety: atomic saves, weights-only loads, clear errors for damaged or foreign files."""

import argparse
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastmae.cli import run_state
from fastmae.cli.run_state import CheckpointError, load_checkpoint, save_checkpoint


def _ckpt(value, numel=1000):
    return {"model": {"w": torch.full((numel,), float(value))}, "epoch": int(value),
            "args": {"model": "mae_vit_micro_patch4"}}


def test_roundtrip_is_plain_weights_only(tmp_path):
    path = tmp_path / "c.pth"
    save_checkpoint(_ckpt(3), path)
    # Our own checkpoints need no allow-list at all: args is a plain dict.
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.full((1000,), 3.0))
    assert load_checkpoint(path)["epoch"] == 3
    assert os.listdir(tmp_path) == ["c.pth"]  # no temporary file left behind


def test_official_format_with_namespace_loads(tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(model="m"), "epoch": 7}, path)
    ckpt = load_checkpoint(path)
    assert run_state.checkpoint_args(ckpt) == {"model": "m"} and ckpt["epoch"] == 7


class _Payload:
    """Unpickling this would create a file: the proof that arbitrary code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "flipped"])
def test_damaged_file_is_a_clear_error(tmp_path, damage):
    path = tmp_path / "c.pth"
    save_checkpoint(_ckpt(1), path)
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint" * 64,
               "flipped": data[:64] + bytes(b ^ 0xFF for b in data[64:512]) + data[512:]}[damage]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unsafe_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refusing to load .*open"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (None, "checkpoint not found"),
    ({"epoch": 1}, "no 'model' state dict"),
    ([1, 2, 3], "no 'model' state dict"),
])
def test_missing_or_not_a_checkpoint(tmp_path, content, message):
    path = tmp_path / "c.pth"
    if content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_save_failing_midway_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pth"
    save_checkpoint(_ckpt(1), path)

    def half_then_fail(obj, f):
        f.write(b"PK\x03\x04 partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_state.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(_ckpt(2), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["c.pth"]


_SAVER = """
import sys, torch
from fastmae.cli.run_state import save_checkpoint
big = {"model": {"w": torch.full((32 * 2**20,), 2.0)}, "epoch": 2}  # 128 MiB
print("saving", flush=True)
save_checkpoint(big, sys.argv[1])
print("saved", flush=True)
"""


@pytest.mark.slow  # a second process writes 128 MiB
def test_save_killed_midway_keeps_the_old_file(tmp_path):
    path = tmp_path / "c.pth"
    save_checkpoint(_ckpt(1), path)
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "saving"
    deadline = time.monotonic() + 60
    tmp = []
    while not tmp and time.monotonic() < deadline and proc.poll() is None:
        tmp = [p for p in tmp_path.iterdir() if p.name != "c.pth" and p.stat().st_size > 0]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert tmp, "the save finished before it could be killed"
    # Killed while the temporary file was being written: the old checkpoint is intact.
    assert load_checkpoint(path)["epoch"] == 1


def test_load_model_state_names_the_other_model(tmp_path):
    import fastmae

    micro = fastmae.create_model("mae_vit_micro_patch4")
    tiny = fastmae.create_model("mae_vit_tiny_patch4")
    ckpt = {"model": micro.state_dict(), "args": {"model": "mae_vit_micro_patch4"}}
    with pytest.raises(CheckpointError, match="holds a mae_vit_micro_patch4 model, not mae_vit_tiny"):
        run_state.load_model_state(tiny, ckpt, "c.pth", "mae_vit_tiny_patch4")
    # Without args the model is named from the shapes (fastmae.inspect_state_dict)...
    with pytest.raises(CheckpointError, match="holds a mae_vit_micro_patch4 model, not mae_vit_tiny"):
        run_state.load_model_state(tiny, {"model": micro.state_dict()}, "c.pth", "mae_vit_tiny_patch4")
    # ... and when no factory has them, the message names the first mismatching entry instead.
    odd = fastmae.MaskedAutoencoderViT(img_size=32, patch_size=4, embed_dim=48, depth=1, num_heads=2,
                                       decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    with pytest.raises(CheckpointError, match="does not fit mae_vit_tiny_patch4: 'cls_token' is"):
        run_state.load_model_state(tiny, {"model": odd.state_dict()}, "c.pth", "mae_vit_tiny_patch4")
    run_state.load_model_state(micro, ckpt, "c.pth", "mae_vit_micro_patch4")


def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    save_checkpoint({"model": {}, "rng": run_state.rng_state()}, tmp_path / "r.pth")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    run_state.set_rng_state(load_checkpoint(tmp_path / "r.pth")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and (expected[1] == got[1]).all() and expected[2] == got[2]


def test_fixed_position_tables_are_rebuilt_for_another_grid():
    import fastmae

    at16 = fastmae.create_model("mae_vit_micro_patch4", img_size=16)
    at32 = fastmae.create_model("mae_vit_micro_patch4", img_size=32)
    fresh = {k: v.clone() for k, v in at32.state_dict().items()}
    run_state.load_model_state(at32, {"model": at16.state_dict()}, "c.pth", "mae_vit_micro_patch4")
    state = at32.state_dict()
    # Trainable weights come from the checkpoint; the sin-cos tables stay the model's own.
    assert torch.equal(state["cls_token"], at16.state_dict()["cls_token"])
    assert torch.equal(state["pos_embed"], fresh["pos_embed"])
    assert torch.equal(state["decoder_pos_embed"], fresh["decoder_pos_embed"])
    # A missing trainable entry is still an error.
    partial = {k: v for k, v in at16.state_dict().items() if k != "cls_token"}
    with pytest.raises(CheckpointError, match="'cls_token' is missing"):
        run_state.load_model_state(at32, {"model": partial}, "c.pth", "mae_vit_micro_patch4")


def test_copy_and_text_writes_are_atomic_and_exact(tmp_path):
    src, dst, log = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "log.txt"
    save_checkpoint(_ckpt(1), src)
    run_state.copy_atomically(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    log.write_text("old\n")
    run_state.write_text_atomically("new\n", log)
    assert log.read_text() == "new\n"
    assert sorted(os.listdir(tmp_path)) == ["a.pth", "b.pth", "log.txt"]  # no temporaries left


def test_remove_stale_temporaries_only_of_dead_processes(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    names = [f".checkpoint-last.pth.tmp-{dead}", f".log.txt.tmp-{dead}",
             f".checkpoint-3.pth.tmp-{os.getpid()}", "checkpoint-last.pth", "notes.tmp-1"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = run_state.remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(names[:2])
    assert sorted(os.listdir(tmp_path)) == sorted(names[2:])


def test_link_keeps_its_bytes_when_the_source_is_saved_again(tmp_path):
    last, periodic = tmp_path / "checkpoint-last.pth", tmp_path / "checkpoint-0.pth"
    save_checkpoint(_ckpt(0), last)
    run_state.link_atomically(last, periodic)
    assert os.stat(periodic).st_ino == os.stat(last).st_ino  # one file on disk
    run_state.link_atomically(last, periodic)  # linking again is harmless
    save_checkpoint(_ckpt(1), last)  # a new inode, renamed over checkpoint-last
    assert load_checkpoint(periodic)["epoch"] == 0 and load_checkpoint(last)["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-0.pth", "checkpoint-last.pth"]


def test_link_falls_back_to_a_copy_where_links_are_refused(tmp_path, monkeypatch):
    last, periodic = tmp_path / "checkpoint-last.pth", tmp_path / "checkpoint-0.pth"
    save_checkpoint(_ckpt(0), last)

    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")  # as FAT or some network file systems

    monkeypatch.setattr(run_state.os, "link", no_links)
    run_state.link_atomically(last, periodic)
    assert periodic.read_bytes() == last.read_bytes()
    assert os.stat(periodic).st_ino != os.stat(last).st_ino
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-0.pth", "checkpoint-last.pth"]
