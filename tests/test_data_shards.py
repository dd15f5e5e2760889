"""WebDataset-style tar shards: made here in a temporary folder, read through the ``webdataset`` extra."""

from __future__ import annotations

import io
import tarfile

import pytest
import torch

import fastmae.data as fd
from fastmae.data.shards import require_webdataset

pytestmark = pytest.mark.usefixtures("cpu_default_device")

webdataset = pytest.importorskip("webdataset", reason='the shards extra is not installed (pip install -e ".[shards]")')


def _add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _write_shards(folder, shards, per_shard):
    """``shards`` tar files ``train-00000{k}.tar`` of ``per_shard`` photo-like JPEGs with a class each."""
    folder.mkdir(exist_ok=True)
    for k in range(shards):
        with tarfile.open(folder / f"train-{k:06d}.tar", "w") as tar:
            for j in range(per_shard):
                key = f"s{k:02d}{j:03d}"
                _add(tar, f"{key}.jpg", fd.photo_like_jpeg(100 * k + j, width=48, height=36))
                _add(tar, f"{key}.cls", str((k + j) % 5).encode())
    return folder


def _labels_and_sizes(loader, epoch):
    loader.set_epoch(epoch)
    batches = list(loader)
    return batches, sorted(label for b in batches for label in b.labels.tolist())


def test_shards_from_a_folder_and_a_brace_pattern(tmp_path):
    folder = _write_shards(tmp_path / "shards", 3, 4)
    by_dir, by_pattern = fd.open_source(str(folder)), fd.open_source(str(folder / "train-{000000..000002}.tar"))
    assert isinstance(by_dir, fd.Shards) and by_dir.urls == by_pattern.urls and len(by_dir.urls) == 3
    assert by_dir.num_samples == 12 and "3 shards, 12 images" in by_dir.name
    assert fd.is_shard_spec(str(folder / "train-000000.tar")) and not fd.is_shard_spec(str(tmp_path / "none"))


def test_shard_loader_reads_every_sample_once_per_epoch(tmp_path):
    folder = _write_shards(tmp_path / "shards", 4, 3)
    loader = fd.build_loader(str(folder), 3, 16, seed=0, num_workers=0)
    batches, labels = _labels_and_sizes(loader, 0)
    assert len(batches) == len(loader) == 4
    assert labels == sorted((k + j) % 5 for k in range(4) for j in range(3))  # every sample once
    batch = batches[0]
    out = fd.to_model_input(batch, backend="torch")
    assert out.shape == (3, 3, 16, 16) and torch.isfinite(out).all()


@pytest.mark.slow
def test_shards_split_across_ranks_and_workers(tmp_path):
    # 4 shards of 3 over 2 ranks x 2 workers: one shard per stream, 3 batches of 2 per rank (6 samples),
    # disjoint between the ranks; the same again on a second run (bitwise), another order next epoch
    folder = _write_shards(tmp_path / "shards", 4, 3)
    runs = []
    for _ in range(2):
        per_rank = []
        for rank in range(2):
            loader = fd.build_loader(str(folder), 2, 16, seed=5, world_size=2, rank=rank, num_workers=2)
            batches, _ = _labels_and_sizes(loader, 0)
            assert len(batches) == len(loader) == 3
            per_rank.append(torch.cat([b.buffer for b in batches]))
        runs.append(per_rank)
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    loader = fd.build_loader(str(folder), 2, 16, seed=5, num_workers=0)
    first, _ = _labels_and_sizes(loader, 0)
    second, _ = _labels_and_sizes(loader, 1)
    assert not torch.equal(first[0].buffer, second[0].buffer)


def test_shard_errors(tmp_path):
    folder = _write_shards(tmp_path / "shards", 2, 2)
    with pytest.raises(fd.DataError, match="2 shards cannot feed 4 readers"):
        fd.build_loader(str(folder), 1, 8, num_workers=4)
    with pytest.raises(fd.DataError, match="do not exist"):
        fd.Shards(str(folder / "train-{000000..000005}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(fd.DataError, match="no .tar shards"):
        fd.Shards(str(tmp_path / "empty"))


def test_a_clear_error_without_the_extra(without_webdataset):
    with pytest.raises(fd.DataError, match=r'pip install -e "\.\[shards\]"'):
        require_webdataset()
