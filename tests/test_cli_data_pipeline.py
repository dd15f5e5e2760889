"""``fastmae pretrain`` on the ``fastmae.data`` pipeline: loader workers, resume, tar shards."""

import io
import json
import tarfile

import pytest

import fastmae.data as fd
from test_cli_pretrain import base_args, run, trajectory

pytestmark = pytest.mark.usefixtures("cpu_default_device")  # see tests/conftest.py


@pytest.mark.slow  # worker processes start for every run (~1-2 s each)
def test_resume_with_persistent_workers_continues_bitwise(tmp_path, capsys):
    # The randomness is a function of (seed, epoch, sample), so loader workers — persistent across
    # epochs — change no batch: a run with 2 workers equals one without, and stopping after epoch 0
    # then resuming (workers started afresh) continues the same trajectory to the last bit.
    inline, workers, resumed = tmp_path / "inline", tmp_path / "workers", tmp_path / "resumed"
    assert run(capsys, base_args(inline, "--epochs", "3", "--num-workers", "0"))[0] == 0
    assert run(capsys, base_args(workers, "--epochs", "3", "--num-workers", "2"))[0] == 0
    assert run(capsys, base_args(resumed, "--epochs", "1", "--num-workers", "2"))[0] == 0
    code, stdout, err = run(capsys, ["pretrain", "--resume", str(resumed / "checkpoint-last.pth"), "--epochs", "3",
                                     "--num-workers", "2", "--backend", "torch", "--device", "cpu"])
    assert code == 0, err
    assert trajectory(workers) == trajectory(inline)
    assert trajectory(resumed) == trajectory(inline)


def _write_shard(path, count):
    """One WebDataset tar of ``count`` photo-like JPEGs (``.jpg``) with a class each (``.cls``)."""
    with tarfile.open(path, "w") as tar:
        for j in range(count):
            for name, payload in ((f"s{j:04d}.jpg", fd.photo_like_jpeg(j, width=40, height=30)),
                                  (f"s{j:04d}.cls", str(j % 3).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_tar_shards_as_data(tmp_path, capsys):
    pytest.importorskip("webdataset", reason='the shards extra is not installed (pip install -e ".[shards]")')
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(2):
        _write_shard(shards / f"train-{k:06d}.tar", 16)
    spec = str(shards / "train-{000000..000001}.tar")
    code, stdout, err = run(capsys, base_args(tmp_path / "run", "--data", spec, "--epochs", "1"))
    assert code == 0, err
    assert "data_wait" in stdout
    (line,) = [json.loads(x) for x in (tmp_path / "run" / "log.txt").read_text().splitlines()]
    assert line["epoch"] == 0 and line["train_loss"] > 0


def test_tar_shards_without_the_extra_is_one_line(tmp_path, capsys, without_webdataset):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "train-000000.tar").write_bytes(b"")
    code, _, err = run(capsys, base_args(tmp_path / "run", "--data", str(shards)))
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("fastmae: error: ") and 'pip install -e ".[shards]"' in err
