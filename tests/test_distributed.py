"""Data-parallel pretraining: two CPU processes with gloo, as ``torchrun --nproc_per_node=2`` runs them."""

import contextlib
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from fastmae.cli import parse_args, pretrain


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, out, extra=()):
    """One torchrun-like process: the env variables torchrun sets, then the pretrain command."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # Each rank its own --output-dir, so a file written by rank 1 would show; its stdout and stderr
    # go to a file, which must stay empty.
    run_dir = os.path.join(out, "run" if rank == 0 else f"run-rank{rank}")
    args = parse_args([
        "pretrain", "--model", "mae_vit_micro_patch4", "--input-size", "16", "--num-images", "32",
        "--batch-size", "4", "--epochs", "2", "--blr", "2e-3", "--backend", "torch", "--device", "cpu",
        "--output-dir", run_dir, *extra])
    with open(os.path.join(out, f"rank{rank}.out"), "w") as f:
        with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            model = pretrain.train(args)
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pth"))


@pytest.mark.slow  # two processes, two epochs each
def test_two_gloo_processes_stay_identical(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pth", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pth", weights_only=True)
    after_epoch0 = {k: v for k, v in torch.load(tmp_path / "run" / "checkpoint-0.pth",
                                           weights_only=True)["model"].items()}
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # replicas identical after training
    # Rank 0 alone prints and writes files.
    assert "done: 2 epochs" in (tmp_path / "rank0.out").read_text()
    assert (tmp_path / "rank1.out").read_text() == ""
    assert not (tmp_path / "run-rank1").exists()
    assert not all(torch.equal(rank0[k], after_epoch0[k]) for k in rank0)  # epoch 1 trained
    # Rank 0 alone logs: one line per epoch; 32 images over 2 ranks at batch 4 = 4 iterations each.
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1]
    ckpt = torch.load(tmp_path / "run" / "checkpoint-last.pth", weights_only=True)
    assert ckpt["args"]["lr"] == 2e-3 * 4 * 2 / 256  # the effective batch counts both processes
    assert len(ckpt["rng"]) == 2  # every rank's random state, for an exact resume
    assert all(s["step"].item() == 8 for s in ckpt["optimizer"]["state"].values())


@pytest.mark.slow  # two processes
def test_image_folder_is_scanned_on_rank_0_and_shared(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(16):
        pixels = torch.randint(0, 256, (20, 20, 3), generator=gen, dtype=torch.uint8, device="cpu")
        Image.fromarray(pixels.numpy()).save(data / f"img{i:02}.png")
    (data / "broken.png").write_bytes(b"not a png")  # skipped by the scan, with one warning
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), ["--data", str(data)]), nprocs=2,
             join=True)
    rank0 = (tmp_path / "rank0.out").read_text()
    assert rank0.count("skipped 1 of 17 files") == 1 and "(16 images)" in rank0
    assert (tmp_path / "rank1.out").read_text() == ""
