"""``build_loader``: the source -> workers -> ragged uint8 batches pipeline, sized and timed.

The loader yields :class:`~fastmae.data.batch.RaggedBatch`; ``fastmae.data.to_model_input`` turns one
into the model's input on the device. How long each step waited for its batch is recorded
(:class:`DataWait`), so a trainer can print it once per epoch (``data_wait``, the official code's
``data`` time).
"""

from __future__ import annotations

import functools
import math
import os
import time

import torch
from PIL import Image

from .batch import collate_crops
from .boxes import RATIO, SCALE
from .crops import CropDataset, CropSpec
from .sampler import EpochSampler
from .shards import Shards, ShardCrops, is_shard_spec
from .sources import ImageFolder

__all__ = ["CropLoader", "DataWait", "build_loader", "default_num_workers", "default_prefetch_factor", "open_source",
           "use_pillow_block_cache", "keep_freed_memory", "worker_memory_settings"]


def open_source(data: str, warn=print, num_samples: int | None = None, channels: int | None = None,
                layout: str = "auto"):
    """What ``--data`` names: tar shards (a ``.tar`` path, a brace pattern, or a folder of ``.tar``
    files) as :class:`~fastmae.data.shards.Shards`, else a folder of images as an ``ImageFolder``
    (``channels``: 1 converts photographs to grey; ``layout``: of ``.npy`` files, ``fastmae.data.arrays``).

    Raises:
        DataError: nothing usable there (see the two classes), or shards without ``webdataset``.
    """
    if is_shard_spec(data):
        return Shards(data, num_samples=num_samples, channels=channels, layout=layout)
    return ImageFolder(data, warn=warn, channels=channels, layout=layout)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on (taskset, cgroups)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_num_workers(local_world_size: int | None = None) -> int:
    """Loader workers for this process: the cores it may use, shared among the processes of this
    node (``local_world_size``, default ``$LOCAL_WORLD_SIZE`` as torchrun sets it, else 1), one left
    for the training process itself; at least 1."""
    local = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, _usable_cores() // max(1, local) - 1)


def default_prefetch_factor(num_workers: int) -> int:
    """Batches each worker keeps ready: at least 2 (torch's default) and at least 4 in flight in all.

    With enough workers to keep up, ``num_workers`` batches are being made at any time and two per
    worker are queued: a step never waits for more than one batch's jitter. Few workers (or a slow
    disk) get deeper queues to ride out a slow image; more cannot help workers that are slower than
    the step, and costs shared memory (a 256-image batch of ImageNet crops is ~60 MB of uint8).
    """
    return max(2, math.ceil(4 / max(1, num_workers)))


PILLOW_BLOCKS = 16  # memory blocks a worker's Pillow keeps for reuse (~1 MB each for ImageNet-sized images)


def use_pillow_block_cache(blocks: int = PILLOW_BLOCKS) -> None:
    """Let Pillow keep freed image memory for the next image (``PILLOW_BLOCKS_MAX``; off by default).

    Without it every decoded image and every crop is fresh memory, and first-touch page faults cost
    about as much as the copies themselves (measured: a 300x250 crop 0.23 ms fresh, 0.05 ms reused;
    a 500x375 decode 1.4 ms fresh, 1.1 ms reused, on the 2-core machine). The loader's workers turn it
    on; a setting the user made (the environment variable) is left alone.
    """
    if "PILLOW_BLOCKS_MAX" not in os.environ and Image.core.get_blocks_max() < blocks:
        Image.core.set_blocks_max(blocks)


def keep_freed_memory(threshold: int = 64 << 20) -> bool:
    """Let glibc's allocator serve large blocks from the heap and keep freed memory for reuse.

    By default glibc maps every allocation above ~128 KB afresh (a decoded crop's bytes, a batch
    buffer) and returns it on free, so each one page-faults in again: measured on the 2-core machine,
    a 300x250 crop's extraction costs 0.24 ms that way and 0.09 ms with this set. ``mallopt`` of
    ``M_MMAP_THRESHOLD`` (allocations up to ``threshold`` from the heap) and ``M_TRIM_THRESHOLD`` (keep
    up to 4x that free). For worker processes, whose memory is the loader's; a no-op (``False``) where
    the C library is not glibc.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold) and libc.mallopt(-1, 4 * threshold))  # M_MMAP_, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def worker_memory_settings() -> None:
    """What each loader worker sets at its start: Pillow's block cache and glibc's thresholds."""
    use_pillow_block_cache()
    keep_freed_memory()


def _worker_init(worker_id: int) -> None:
    worker_memory_settings()


class DataWait:
    """Time spent waiting for the next batch, per epoch (what a trainer reports as ``data_wait``)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.seconds, self.steps, self.started = 0.0, 0, time.perf_counter()

    def add(self, seconds: float) -> None:
        self.seconds += seconds
        self.steps += 1

    def summary(self) -> str:
        """One line: total wait, per step, and the share of the epoch's wall time so far."""
        wall = max(time.perf_counter() - self.started, 1e-9)
        per_step = 1e3 * self.seconds / max(self.steps, 1)
        return (f"data_wait {self.seconds:.2f}s over {self.steps} steps ({per_step:.1f} ms/step, "
                f"{100 * self.seconds / wall:.1f}% of {wall:.1f}s)")


class CropLoader:
    """The loader :func:`build_loader` returns: iterate it for ``RaggedBatch`` (host, pinned on CUDA).

    Attributes: ``dataloader`` (the torch ``DataLoader``), ``source``, ``size``, ``num_workers``,
    ``prefetch_factor``, ``wait`` (the :class:`DataWait` of the current epoch).
    """

    def __init__(self, dataloader, epoch_target, source, size, num_batches):
        self.dataloader, self._epoch_target, self.source, self.size = dataloader, epoch_target, source, size
        self.num_workers = dataloader.num_workers
        self.prefetch_factor = dataloader.prefetch_factor
        self._num_batches = num_batches
        self.wait = DataWait()

    def set_epoch(self, epoch: int) -> None:
        """Before each epoch: its order and randomness (persistent workers follow it)."""
        self._epoch_target.set_epoch(epoch)

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self):
        self.wait.reset()
        it = iter(self.dataloader)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait.add(time.perf_counter() - t)
            yield batch


def build_loader(
    source,
    batch_size: int,
    size,
    seed: int = 0,
    *,
    world_size: int = 1,
    rank: int = 0,
    num_workers: int | None = None,
    local_world_size: int | None = None,
    pin_memory: bool | None = None,
    persistent_workers: bool = True,
    prefetch_factor: int | None = None,
    shuffle: bool = True,
    draft: bool = True,
    scale=SCALE,
    ratio=RATIO,
    flip_p: float = 0.5,
    vflip_p: float = 0.0,
) -> CropLoader:
    """Ragged uint8 batches of RandomResizedCrop crops (not resized) with their flips, for this rank.

    Args:
        source: ``ProceduralImages``, ``ImageFolder``, ``Shards``, or a path for :func:`open_source`.
        batch_size: crops per batch (per process). Incomplete last batches are dropped.
        size: ``(S_h, S_w)`` or an int: the model's input size (for the JPEG draft decision and
            :func:`~fastmae.data.to_model_input`).
        seed: everything random is a pure function of ``(seed, epoch, sample)``.
        world_size, rank: this process's share (folders: ``EpochSampler``; shards: see ``shards``).
        num_workers: worker processes; default :func:`default_num_workers`; 0 loads in this process.
        pin_memory: page-locked batches for an asynchronous copy; default: when CUDA is available.
        persistent_workers: keep workers across epochs (needs ``num_workers > 0``).
        prefetch_factor: batches queued per worker; default :func:`default_prefetch_factor`.
        draft: let JPEGs decode at reduced scale where the crop stays at least ``size``.
        scale, ratio, flip_p: the augmentation's distributions (the official recipe's by default).
        vflip_p: the probability of an upside-down flip (0: none, the recipe; 0.5 for overhead imagery),
            applied on the device by ``resized_crop`` with the other flip.

    Raises:
        ValueError: ``batch_size`` is larger than this rank's share of the data.
        DataError: the source cannot be read (see :func:`open_source`), or too few shards.
    """
    from .._validate import out_size

    size = out_size(size)
    source = open_source(source) if isinstance(source, str) else source
    num_workers = default_num_workers(local_world_size) if num_workers is None else num_workers
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    spec = CropSpec(size, tuple(scale), tuple(ratio), flip_p, draft, vflip_p)
    workers = num_workers > 0
    prefetch_factor = (prefetch_factor or default_prefetch_factor(num_workers)) if workers else None
    # pinned batches are copied out of the worker's buffer before anyone reads them: the buffers can be
    # reused, one per batch a worker can have queued or in the pinning thread, plus the one it fills
    slots = (prefetch_factor or 0) + 2 if pin_memory else 0
    collate = functools.partial(collate_crops, size=size, pool_slots=slots)
    if isinstance(source, Shards):
        dataset = ShardCrops(source, spec, seed, batch_size, world_size, rank, shuffle)
        dataset.check_streams(num_workers)
        sampler, epoch_target, num_batches = None, dataset, dataset.batches
        per_rank = source.num_samples // world_size
    else:
        dataset = CropDataset(source, spec, seed)
        sampler = EpochSampler(len(source), seed, world_size, rank, shuffle)
        epoch_target, num_batches, per_rank = sampler, len(sampler) // batch_size, len(sampler)
    if batch_size > per_rank:
        share = f", {per_rank} per process over {world_size}" if world_size > 1 else ""
        raise ValueError(f"batch_size {batch_size} is larger than the data ({len(source)} images{share}); "
                         f"use {per_rank} or less")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=True, collate_fn=collate,
        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=persistent_workers and workers,
        prefetch_factor=prefetch_factor,
        # a private generator: the loader's per-iterator seed draw leaves the global RNG (the model's
        # masking noise) alone; nothing in the workers uses torch's RNG
        generator=torch.Generator(device="cpu").manual_seed(seed),
        worker_init_fn=_worker_init if workers else None,
    )
    return CropLoader(loader, epoch_target, source, size, num_batches)

