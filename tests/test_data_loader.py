"""fastmae.data's loader: the (epoch, index) sampler, the ragged collate, the device call, reproducibility.

Loaders with workers start processes (about a second each on 2 cores): the tests that need them use a
few small procedural images.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

import fastmae.data as fd
from fastmae.reference import resized_crop_ref
from helpers import DEVICE

pytestmark = pytest.mark.usefixtures("cpu_default_device")  # see tests/conftest.py


@pytest.mark.parametrize("num_items, world_size", [(10, 1), (10, 3), (7, 2)])  # even, padded, padded
def test_sampler_is_distributed_samplers_order_with_the_epoch(num_items, world_size):
    for rank in range(world_size):
        ours = fd.EpochSampler(num_items, seed=4, world_size=world_size, rank=rank)
        theirs = DistributedSampler(range(num_items), num_replicas=world_size, rank=rank, shuffle=True, seed=4)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            pairs = list(ours)
            assert [e for e, _ in pairs] == [epoch] * len(pairs)
            assert [i for _, i in pairs] == list(theirs)
        assert len(ours) == len(theirs)


def _crops(*shapes_and_flips):
    rng = np.random.default_rng(0)
    return [fd.Crop(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), flip, i, -1, i % 3)
            for i, ((h, w), flip) in enumerate(shapes_and_flips)]


def test_collate_ragged_layout():
    # three crops of different sizes, one of them a single pixel: a table then the pixels, packed
    samples = _crops(((5, 7), False), ((1, 1), True), ((3, 4), True))
    batch = fd.collate_crops(samples, (6, 6))
    n = len(batch)
    assert n == 3 and batch.buffer.dtype == torch.uint8 and batch.size == (6, 6)
    assert batch.buffer.numel() == 64 + 64 * n + sum(s.pixels.nbytes for s in samples)  # header, table, pixels
    offsets = [64 + 64 * n, 64 + 64 * n + 105, 64 + 64 * n + 108]
    assert batch.meta.tolist() == [[o, s.pixels.shape[0], s.pixels.shape[1]] for o, s in zip(offsets, samples)]
    assert batch.boxes.tolist() == [[0, 0, s.pixels.shape[0], s.pixels.shape[1]] for s in samples]
    assert batch.flip.tolist() == [False, True, True]
    for (o, h, w), s in zip(batch.meta.tolist(), samples):
        assert np.array_equal(batch.buffer[o:o + 3 * h * w].numpy().reshape(h, w, 3), s.pixels)
    assert batch.index.tolist() == [0, 1, 2] and batch.labels.tolist() == [0, 1, 2]
    assert batch.skipped.tolist() == [-1, -1, -1]


def test_pooled_buffers_are_reused_only_once_released():
    # pinned batches reuse their worker's buffers: never one still unreleased (it would be overwritten
    # before the pinning thread copied it), always a released one that is large enough
    samples = _crops(((5, 7), False), ((3, 4), True))
    first = fd.collate_crops(samples, (4, 4), pool_slots=2)
    second = fd.collate_crops(samples, (4, 4), pool_slots=2)
    assert first.pooled and second.pooled
    assert first.buffer.data_ptr() != second.buffer.data_ptr()  # first is still in use
    kept = first.buffer.clone()
    third = fd.collate_crops(_crops(((2, 2), False)), (4, 4), pool_slots=2)  # both slots busy: fresh memory
    assert not third.pooled and torch.equal(first.buffer, kept)
    first.release()
    fourth = fd.collate_crops(_crops(((6, 6), True)), (4, 4), pool_slots=2)
    assert fourth.pooled and fourth.buffer.data_ptr() == first.buffer.data_ptr()  # reused
    assert fourth.meta.tolist() == [[64 + 64, 6, 6]] and fourth.flip.tolist() == [True]
    unpooled = fd.collate_crops(samples, (4, 4))
    assert not unpooled.pooled


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_to_model_input_is_the_op_on_the_batch(backend):
    if backend == "triton" and DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton kernel needs TRITON_INTERPRET=1 or a CUDA device")
    batch = fd.collate_crops(_crops(((9, 7), False), ((4, 5), True)), (6, 4))
    out = fd.to_model_input(batch, DEVICE, torch.float32, backend=backend)  # [2, 3, 6, 4] on DEVICE
    ref = resized_crop_ref(batch.buffer, batch.meta, batch.boxes, batch.flip, (6, 4))  # on the host
    assert out.shape == (2, 3, 6, 4) and out.device.type == DEVICE and (out.cpu() - ref).abs().max() <= 1e-4
    assert fd.to_model_input(batch, DEVICE, torch.bfloat16, backend=backend).dtype == torch.bfloat16


def test_loader_draws_each_sample_from_its_key():
    # box and flip of a sample are random_resized_crop_box then draw_flip from sample_rng(seed, epoch,
    # index): a pure function of the key, whichever batch, worker or run the sample falls in
    source = fd.ProceduralImages(16, size=48)
    loader = fd.build_loader(source, 8, 24, seed=3, num_workers=0)
    loader.set_epoch(2)
    batch = next(iter(loader))
    for i, (h, w), flip in zip(batch.index.tolist(), batch.meta[:, 1:].tolist(), batch.flip.tolist()):
        rng = fd.sample_rng(3, 2, i)
        _, _, want_h, want_w = fd.random_resized_crop_box(48, 48, rng)
        assert (want_h, want_w) == (h, w) and flip == fd.draw_flip(rng)
    # the previous CPU path, given the same generator, crops the same box (its float32 output is the
    # crop resized): same shape, the same flip
    from fastmae.data.pillow_path import pillow_pretrain_transform

    first = int(batch.index[0])
    out = pillow_pretrain_transform(source.image(first), (24, 24), fd.sample_rng(3, 2, first))
    assert out.shape == (3, 24, 24)


def _run(loader, epochs):
    """Every batch's buffer and bookkeeping, over ``epochs``."""
    out = []
    for epoch in epochs:
        loader.set_epoch(epoch)
        out += [(b.buffer.clone(), b.index.clone(), b.labels.clone()) for b in loader]
    return out


def _same(a, b):
    return len(a) == len(b) and all(all(torch.equal(x, y) for x, y in zip(p, q)) for p, q in zip(a, b))


@pytest.mark.slow
def test_loader_is_bitwise_reproducible_across_runs_workers_and_persistence():
    # the same batches, byte for byte: twice in-process, with 1 and 2 workers, and with persistent
    # workers over two epochs (which never see set_epoch: the sampler sends the epoch with each index)
    source = fd.ProceduralImages(24, size=40)
    make = lambda **kw: fd.build_loader(source, 6, 20, seed=1, **kw)  # noqa: E731
    first = _run(make(num_workers=0), [0, 1])
    assert _same(first, _run(make(num_workers=0), [0, 1]))
    assert _same(first, _run(make(num_workers=2, persistent_workers=False), [0, 1]))
    persistent = make(num_workers=1, persistent_workers=True)
    assert _same(first, _run(persistent, [0, 1]))
    assert persistent.dataloader._iterator is not None  # the workers really persisted
    assert not torch.equal(first[0][0], first[4][0])  # epochs differ (4 batches an epoch)
    resumed = _run(make(num_workers=2), [1])  # a resume at epoch 1 sees epoch 1's batches
    assert _same(first[4:], resumed)


def test_loader_shards_ranks_and_drops_the_last_batch():
    source = fd.ProceduralImages(10, size=24)
    seen = []
    for rank in range(2):
        loader = fd.build_loader(source, 2, 12, seed=0, world_size=2, rank=rank, num_workers=0)
        loader.set_epoch(0)
        batches = list(loader)
        assert len(batches) == len(loader) == 2  # 5 images per rank: two full batches, one dropped
        seen += [i for b in batches for i in b.index.tolist()]
    assert len(set(seen)) == 8  # disjoint between the ranks


def test_decode_failure_is_replaced_by_the_next_image(tmp_path):
    fd.write_photo_like_jpegs(str(tmp_path), 4, width=40, height=30)
    files = sorted(os.listdir(tmp_path))
    folder = fd.ImageFolder(str(tmp_path))
    data = (tmp_path / files[1]).read_bytes()
    (tmp_path / files[1]).write_bytes(data[: len(data) // 3])  # passed the scan, fails to decode now
    dataset = fd.CropDataset(folder, fd.CropSpec((16, 16)), seed=0)
    crop = dataset[(0, 1)]
    assert crop.index == 1 and crop.skipped == 1  # the substitute (image 2) reports the failed index
    assert dataset[(0, 2)].pixels.shape[2] == 3 and dataset[(0, 2)].skipped == -1


def test_data_wait_counts_every_step():
    loader = fd.build_loader(fd.ProceduralImages(12, size=24), 4, 12, seed=0, num_workers=0)
    loader.set_epoch(0)
    list(loader)
    assert loader.wait.steps == 3 and loader.wait.seconds > 0
    assert loader.wait.summary().startswith("data_wait ") and "over 3 steps" in loader.wait.summary()


def test_worker_count_from_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert fd.default_num_workers() == 15  # one core left to the training process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert fd.default_num_workers() == 3  # 16 cores shared by 4 processes of this node
    assert fd.default_num_workers(local_world_size=8) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert fd.default_num_workers() == 1  # never 0: loading stays off the training process
    assert [fd.default_prefetch_factor(w) for w in (1, 2, 3, 15)] == [4, 2, 2, 2]


def test_build_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="batch_size 20 is larger than the data"):
        fd.build_loader(fd.ProceduralImages(10, size=16), 20, 8, num_workers=0)
    with pytest.raises(fd.DataError, match="not found"):
        fd.build_loader(str(tmp_path / "missing"), 2, 8, num_workers=0)
    with pytest.raises(ValueError, match="size must be"):
        fd.build_loader(fd.ProceduralImages(10, size=16), 2, 0, num_workers=0)


@pytest.mark.slow
def test_library_does_not_import_the_cli():
    import subprocess
    import sys

    code = "import sys, fastmae.data; sys.exit(any(m.startswith('fastmae.cli') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
