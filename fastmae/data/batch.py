"""A ragged batch of crops in one buffer, and the one call that makes it the model's input.

Layout of ``RaggedBatch.buffer`` (uint8, one allocation, so one host-to-device copy moves all of it)::

    bytes [0, 64)              a header: byte 0 is 1 while a pooled buffer holds a batch (see below)
    bytes [64, 64 + 64 N)      an int64 table [N, 8]: (offset, h, w, top, left, box_h, box_w, flip)
    bytes [64 + 64 N, total)   the crops' HWC pixels (C channels of ``dtype``) one after another

``(offset, h, w)`` is ``meta`` and ``(top, left, box_h, box_w)`` the box of ``fastmae.ops.resized_crop``;
the box is the whole crop (``0, 0, h, w``): workers cut the crop, the device resizes it. ``flip`` holds
bit 0 (left to right) and bit 1 (upside down). The batch's source ``dtype`` (uint8, uint16 or float32)
and channel count ``C`` travel with it; offsets count in elements of that dtype from the start of the
buffer (the header and table are a multiple of 4 bytes, and the total is padded to one), so ``data`` is
the buffer viewed as that dtype (the op never reads the other elements).

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

    buffer: torch.Tensor  # uint8 [64 + 64 N + sum C h w * itemsize (+ padding)]: header, table, pixels
    size: tuple[int, int]  # (S_h, S_w) the crops are to be resized to
    index: torch.Tensor  # int64 [N], the dataset index of each sample (-1 for a stream)
    skipped: torch.Tensor  # int64 [N], the index a sample replaces (it failed to decode), else -1
    labels: torch.Tensor  # int64 [N], the class of each sample, -1 when unknown
    pooled: bool = False  # the buffer is a worker's, to be released once copied (module docstring)
    dtype: torch.dtype = torch.uint8  # the pixels' source dtype: uint8, uint16 or float32
    channels: int = 3  # C, channels per pixel
    any_vflip: bool = False  # some crop is flipped upside down (else the op skips the vertical flags)

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
        return (self.table[:, 7] & 1) != 0  # [N] bool, left to right

    @property
    def vflip(self) -> torch.Tensor:
        return (self.table[:, 7] & 2) != 0  # [N] bool, upside down

    @property
    def data(self) -> torch.Tensor:
        """The buffer as ``[B]`` of the source dtype: ``fastmae.ops.resized_crop``'s ``data``."""
        return _pixels(self.buffer, self.dtype)

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


def _pixels(buffer: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return buffer if dtype == torch.uint8 else buffer.view(dtype)  # [B] elements (sizes are multiples of 4)


_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16,
                 np.dtype(np.float32): torch.float32}


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
    start = _HEAD + n * _TABLE_COLS * 8  # a multiple of 64 bytes: aligned for every source dtype
    first = samples[0].pixels if n else np.zeros((1, 1, 3), np.uint8)
    dtype, channels = first.dtype, first.shape[2]
    for s in samples:
        if s.pixels.dtype != dtype or s.pixels.shape[2] != channels:
            raise ValueError(f"a batch's crops must share channels and dtype: {channels} x {dtype.name}, then "
                             f"{s.pixels.shape[2]} x {s.pixels.dtype.name}")
    nbytes = [s.pixels.nbytes for s in samples]
    offsets = start + np.concatenate([[0], np.cumsum(nbytes[:-1])]).astype(np.int64) if n else np.zeros(0, np.int64)
    total = -(-(start + sum(nbytes)) // 4) * 4  # padded to 4 bytes, so the buffer views as any source dtype
    if pool_slots > 0:
        buffer, pooled = _pools.setdefault(os.getpid(), _Pool()).get(total, pool_slots)
    else:
        buffer, pooled = _fresh(total), False
    flat = buffer.numpy()
    flat[:_HEAD] = 0  # a deterministic header (a batch is bitwise reproducible, all of it)
    flat[0] = pooled  # in use until released
    flat[total - 4:] = 0  # and deterministic padding
    table = np.empty((n, _TABLE_COLS), dtype=np.int64)
    for i, (s, off, nb) in enumerate(zip(samples, offsets, nbytes)):
        h, w = s.pixels.shape[:2]
        table[i] = (off // dtype.itemsize, h, w, 0, 0, h, w, int(s.flip))  # offset in elements
        flat[off:off + nb].view(dtype).reshape(s.pixels.shape)[...] = s.pixels  # one copy, from a view too
    flat[_HEAD:start] = table.reshape(-1).view(np.uint8)
    ints = lambda name: torch.tensor([getattr(s, name) for s in samples], dtype=torch.int64, device="cpu")  # noqa: E731
    return RaggedBatch(buffer, tuple(size), ints("index"), ints("skipped"), ints("label"), pooled,
                       _TORCH_DTYPES[dtype], channels, bool((table[:, 7] & 2).any()))


def to_model_input(
    batch: RaggedBatch,
    device=None,
    dtype: torch.dtype = torch.float32,
    mean=None,
    std=None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """The model's input from a loader batch: ``[N, C, S_h, S_w]`` in ``dtype`` on ``device``.

    One non-blocking copy of the batch's buffer to ``device`` (pinned by the loader on CUDA), then
    ``fastmae.ops.resized_crop`` there — the Triton kernel on CUDA, the torch backend on the CPU, as
    ``fastmae.ops`` picks (or ``backend``) — resizing (antialiased bicubic), flipping and normalising
    every crop in one launch. Pass the autocast dtype (``torch.bfloat16``) to write the model's input
    dtype directly. ``device`` defaults to the buffer's. No host sync on CUDA.

    ``mean``/``std``: ``C`` values each, in ``resized_crop``'s units (``reference.FULL_SCALE``); default
    ImageNet's for 3-channel uint8 batches, required for any other (``fastmae stats`` computes them).
    """
    if mean is None or std is None:
        if (batch.channels, batch.dtype) != (3, torch.uint8):
            raise ValueError(f"mean and std are needed for images of {batch.channels} channel(s) of "
                             f"{str(batch.dtype).removeprefix('torch.')} (ImageNet's are for 8-bit RGB): "
                             f"compute them with fastmae stats")
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    buf = batch.buffer if device is None else batch.buffer.to(device, non_blocking=True)
    table = _table(buf, len(batch))  # [N, 8]
    flips = table[:, 7]
    return ops.resized_crop(_pixels(buf, batch.dtype), table[:, 0:3], table[:, 3:7], (flips & 1) != 0, batch.size,
                            mean, std, out_dtype=dtype, vflip=(flips & 2) != 0 if batch.any_vflip else None,
                            backend=backend)
