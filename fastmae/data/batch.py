"""A ragged batch of uint8 crops in one buffer, and the one call that makes it the model's input.

Layout of ``RaggedBatch.buffer`` (uint8, one allocation, so one host-to-device copy moves all of it)::

    bytes [0, 64)              a header: byte 0 is 1 while a pooled buffer holds a batch (see below)
    bytes [64, 64 + 64 N)      an int64 table [N, 8]: (offset, h, w, top, left, box_h, box_w, flip)
    bytes [64 + 64 N, total)   the crops' HWC RGB pixels one after another, crop i at byte ``offset_i``

``(offset, h, w)`` is ``meta`` and ``(top, left, box_h, box_w)`` the box of ``fastmae.ops.resized_crop``;
the box is the whole crop (``0, 0, h, w``): workers cut the crop, the device resizes it. Offsets count
from the start of the buffer, so ``data`` is the buffer itself (the op never reads the other bytes).

Buffer reuse: fresh memory costs a page fault per 4 KB on first touch, in a worker's shared memory
~0.3 ms for a 300 KB crop (measured on the 2-core machine) — a third of decoding it. When batches are
pinned (the CUDA path), nobody but the pinning copy ever reads the worker's buffer, so each worker
process keeps a few buffers (``pool_slots``) and reuses one once ``pin_memory`` has copied it out and
cleared its header byte. Without pinning (the CPU path, where the caller holds the batch itself) every
batch gets fresh memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import torch

from .. import ops
from ..reference import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["RaggedBatch", "collate_crops", "to_model_input"]

_HEAD = 64  # header bytes before the table (byte 0: in use)
_TABLE_COLS = 8  # int64 columns of the table


def _table(buffer: torch.Tensor, n: int) -> torch.Tensor:
    """int64 ``[N, 8]``, a view of the buffer (any device)."""
    return buffer[_HEAD:_HEAD + n * _TABLE_COLS * 8].view(torch.int64).view(n, _TABLE_COLS)


@dataclass
class RaggedBatch:
    """What the loader yields: ``N`` crops of different sizes, uint8, plus host-side bookkeeping."""

    buffer: torch.Tensor  # uint8 [64 + 64 N + sum 3 h w]: header, table, pixels (module docstring)
    size: tuple[int, int]  # (S_h, S_w) the crops are to be resized to
    index: torch.Tensor  # int64 [N], the dataset index of each sample (-1 for a stream)
    skipped: torch.Tensor  # int64 [N], the index a sample replaces (it failed to decode), else -1
    labels: torch.Tensor  # int64 [N], the class of each sample, -1 when unknown
    pooled: bool = False  # the buffer is a worker's, to be released once copied (module docstring)

    def __len__(self) -> int:
        return self.index.shape[0]

    @property
    def table(self) -> torch.Tensor:
        return _table(self.buffer, len(self))  # [N, 8]

    @property
    def meta(self) -> torch.Tensor:
        return self.table[:, 0:3]  # [N, 3] (offset, h, w)

    @property
    def boxes(self) -> torch.Tensor:
        return self.table[:, 3:7]  # [N, 4] (top, left, h, w)

    @property
    def flip(self) -> torch.Tensor:
        return self.table[:, 7] != 0  # [N] bool

    def release(self) -> None:
        """Give a pooled buffer back to its worker (after the last read of it)."""
        if self.pooled:
            # The copy out of the buffer has returned (and Python has taken locks since: a barrier),
            # so the worker's next writes cannot overtake it.
            self.buffer[0] = 0

    def pin_memory(self) -> RaggedBatch:
        """The batch in page-locked memory (``DataLoader(pin_memory=True)`` calls this in its thread);
        a pooled buffer goes back to its worker once copied."""
        pinned = replace(self, buffer=self.buffer.pin_memory(), pooled=False)
        self.release()
        return pinned

    def to(self, device, non_blocking: bool = True) -> RaggedBatch:
        """The buffer on ``device`` (one copy; asynchronous from pinned memory); bookkeeping stays on the host."""
        return replace(self, buffer=self.buffer.to(device, non_blocking=non_blocking), pooled=False)


class _Pool:
    """One process's reusable batch buffers (shared memory inside a DataLoader worker)."""

    def __init__(self):
        self.buffers: list[torch.Tensor] = []

    def get(self, nbytes: int, slots: int) -> tuple[torch.Tensor, bool]:
        """A buffer of at least ``nbytes`` marked in use, and whether it belongs to the pool."""
        small = None  # a released buffer too small for this batch: replaced by a larger one
        for k, buf in enumerate(self.buffers):
            flag = buf.numpy()[:1]
            if flag[0] == 0 and buf.numel() >= nbytes:
                flag[0] = 1
                return buf[:nbytes], True
            if flag[0] == 0 and small is None:
                small = k
        pooled = small is not None or len(self.buffers) < slots
        buf = _fresh(nbytes + nbytes // 4 if pooled else nbytes)  # room for a larger batch next time
        buf.numpy()[0] = 1
        if small is not None:
            self.buffers[small] = buf
        elif pooled:
            self.buffers.append(buf)
        return buf[:nbytes], pooled


_pools: dict[int, _Pool] = {}  # by process id: a forked worker must not reuse its parent's buffers


def _fresh(nbytes: int) -> torch.Tensor:
    """uint8 ``[nbytes]``; in a DataLoader worker in shared memory, so that sending the batch moves a
    handle, not the bytes (what ``default_collate`` does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(nbytes, dtype=torch.uint8, device="cpu")
    storage = torch.UntypedStorage._new_shared(nbytes, device="cpu")
    return torch.empty(0, dtype=torch.uint8, device="cpu").set_(storage)


def collate_crops(samples, size: tuple[int, int], pool_slots: int = 0) -> RaggedBatch:
    """Pack worker samples (``fastmae.data.crops.Crop``) into one :class:`RaggedBatch` (one copy per crop).

    ``pool_slots > 0`` reuses up to that many buffers per process; only for batches that are pinned
    (``pin_memory`` releases them) or released by the caller (:meth:`RaggedBatch.release`).
    """
    n = len(samples)
    start = _HEAD + n * _TABLE_COLS * 8
    nbytes = [s.pixels.nbytes for s in samples]
    offsets = start + np.concatenate([[0], np.cumsum(nbytes[:-1])]).astype(np.int64) if n else np.zeros(0, np.int64)
    if pool_slots > 0:
        buffer, pooled = _pools.setdefault(os.getpid(), _Pool()).get(start + sum(nbytes), pool_slots)
    else:
        buffer, pooled = _fresh(start + sum(nbytes)), False
    flat = buffer.numpy()
    flat[:_HEAD] = 0  # a deterministic header (a batch is bitwise reproducible, all of it)
    flat[0] = pooled  # in use until released
    table = np.empty((n, _TABLE_COLS), dtype=np.int64)
    for i, (s, off, nb) in enumerate(zip(samples, offsets, nbytes)):
        h, w = s.pixels.shape[:2]
        table[i] = (off, h, w, 0, 0, h, w, s.flip)
        flat[off:off + nb] = s.pixels.reshape(-1)
    flat[_HEAD:start] = table.reshape(-1).view(np.uint8)
    ints = lambda name: torch.tensor([getattr(s, name) for s in samples], dtype=torch.int64, device="cpu")  # noqa: E731
    return RaggedBatch(buffer, tuple(size), ints("index"), ints("skipped"), ints("label"), pooled)


def to_model_input(
    batch: RaggedBatch,
    device=None,
    dtype: torch.dtype = torch.float32,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """The model's input from a loader batch: ``[N, 3, S_h, S_w]`` in ``dtype`` on ``device``.

    One non-blocking copy of the batch's buffer to ``device`` (pinned by the loader on CUDA), then
    ``fastmae.ops.resized_crop`` there — the Triton kernel on CUDA, the torch backend on the CPU, as
    ``fastmae.ops`` picks (or ``backend``) — resizing (antialiased bicubic), flipping and normalising
    every crop in one launch. Pass the autocast dtype (``torch.bfloat16``) to write the model's input
    dtype directly. ``device`` defaults to the buffer's. No host sync on CUDA.
    """
    buf = batch.buffer if device is None else batch.buffer.to(device, non_blocking=True)
    table = _table(buf, len(batch))  # [N, 8]
    return ops.resized_crop(buf, table[:, 0:3], table[:, 3:7], table[:, 7] != 0, batch.size, mean, std,
                            out_dtype=dtype, backend=backend)
