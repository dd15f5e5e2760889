"""A ragged batch of uint8 crops in one buffer, and the one call that makes it the model's input.

Layout of ``RaggedBatch.buffer`` (uint8, one allocation, so one host-to-device copy moves all of it)::

    bytes [0, 64 N)        an int64 table [N, 8]: (offset, h, w, top, left, box_h, box_w, flip) per crop
    bytes [64 N, total)    the crops' HWC RGB pixels one after another, crop i at byte ``offset_i``

``(offset, h, w)`` is ``meta`` and ``(top, left, box_h, box_w)`` the box of ``fastmae.ops.resized_crop``;
the box is the whole crop (``0, 0, h, w``): workers cut the crop, the device resizes it. Offsets count
from the start of the buffer, so ``data`` is the buffer itself (the op never reads the table bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .. import ops
from ..reference import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["RaggedBatch", "collate_crops", "to_model_input"]

_TABLE_COLS = 8  # int64 columns of the table at the head of the buffer


@dataclass
class RaggedBatch:
    """What the loader yields: ``N`` crops of different sizes, uint8, plus host-side bookkeeping."""

    buffer: torch.Tensor  # uint8 [64 N + sum 3 h w]: the table, then the pixels (module docstring)
    size: tuple[int, int]  # (S_h, S_w) the crops are to be resized to
    index: torch.Tensor  # int64 [N], the dataset index of each sample (-1 for a stream)
    skipped: torch.Tensor  # int64 [N], the index a sample replaces (it failed to decode), else -1
    labels: torch.Tensor  # int64 [N], the class of each sample, -1 when unknown

    def __len__(self) -> int:
        return self.index.shape[0]

    @property
    def table(self) -> torch.Tensor:
        """int64 ``[N, 8]``, a view of the buffer's head (on the buffer's device)."""
        n = len(self)
        return self.buffer[:n * _TABLE_COLS * 8].view(torch.int64).view(n, _TABLE_COLS)

    @property
    def meta(self) -> torch.Tensor:
        return self.table[:, 0:3]  # [N, 3] (offset, h, w)

    @property
    def boxes(self) -> torch.Tensor:
        return self.table[:, 3:7]  # [N, 4] (top, left, h, w)

    @property
    def flip(self) -> torch.Tensor:
        return self.table[:, 7] != 0  # [N] bool

    def pin_memory(self) -> RaggedBatch:
        """The buffer in page-locked memory (what ``DataLoader(pin_memory=True)`` calls, in its thread)."""
        return replace(self, buffer=self.buffer.pin_memory())

    def to(self, device, non_blocking: bool = True) -> RaggedBatch:
        """The buffer on ``device`` (one copy; asynchronous from pinned memory); bookkeeping stays on the host."""
        return replace(self, buffer=self.buffer.to(device, non_blocking=non_blocking))


def _host_buffer(nbytes: int) -> torch.Tensor:
    """uint8 ``[nbytes]``; in a DataLoader worker allocated in shared memory, so that sending the
    batch to the main process moves a handle, not the bytes (what ``default_collate`` does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(nbytes, dtype=torch.uint8, device="cpu")
    storage = torch.UntypedStorage._new_shared(nbytes, device="cpu")
    return torch.empty(0, dtype=torch.uint8, device="cpu").set_(storage)


def collate_crops(samples, size: tuple[int, int]) -> RaggedBatch:
    """Pack worker samples (``fastmae.data.crops.Crop``) into one :class:`RaggedBatch` (one copy per crop)."""
    n = len(samples)
    head = n * _TABLE_COLS * 8
    nbytes = [s.pixels.nbytes for s in samples]
    offsets = head + np.concatenate([[0], np.cumsum(nbytes[:-1])]).astype(np.int64) if n else np.zeros(0, np.int64)
    buffer = _host_buffer(head + sum(nbytes))
    flat = buffer.numpy()
    table = np.empty((n, _TABLE_COLS), dtype=np.int64)
    for i, (s, off, nb) in enumerate(zip(samples, offsets, nbytes)):
        h, w = s.pixels.shape[:2]
        table[i] = (off, h, w, 0, 0, h, w, s.flip)
        flat[off:off + nb] = s.pixels.reshape(-1)
    flat[:head] = table.reshape(-1).view(np.uint8)
    ints = lambda name: torch.tensor([getattr(s, name) for s in samples], dtype=torch.int64, device="cpu")  # noqa: E731
    return RaggedBatch(buffer, tuple(size), ints("index"), ints("skipped"), ints("label"))


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
    table = buf[:len(batch) * _TABLE_COLS * 8].view(torch.int64).view(len(batch), _TABLE_COLS)  # [N, 8]
    return ops.resized_crop(buf, table[:, 0:3], table[:, 3:7], table[:, 7] != 0, batch.size, mean, std,
                            out_dtype=dtype, backend=backend)
