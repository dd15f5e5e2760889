"""The loader's batches as the model's input, the next one copied and resized on a side CUDA stream
while the current step computes.

``to_model_input`` alone issues the batch's host-to-device copy and its ``resized_crop`` on the
current (compute) stream: behind the previous step's last kernels, so the step waits for its own
copy. :class:`Prefetcher` issues batch n+1's copy and resize on a side stream before it hands out
batch n, so they run while step n computes; the compute stream waits for the side stream only
where it takes the batch. On the CPU (or with ``overlap=False``) it is ``to_model_input`` on each
batch in turn, on the current stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..reference import IMAGENET_MEAN, IMAGENET_STD
from .batch import RaggedBatch, to_model_input

__all__ = ["Prefetcher"]


class Prefetcher:
    """Iterate ``(batch, imgs)``: each loader ``batch`` (a ``RaggedBatch``, its bookkeeping on the
    host) and ``imgs = to_model_input(batch, device, dtype, mean, std, backend=backend)``.

    On CUDA, with ``overlap`` (the default), the next batch is taken from ``batches`` and its copy
    and resize are queued on a side stream before the current one is handed out. Stream ordering:
    the current stream waits for the side stream (``wait_stream``) when it takes a batch, and
    ``imgs.record_stream`` tells the caching allocator that the current stream uses ``imgs``, so its
    memory is not handed to the side stream again before the step that reads it has run. The copy
    overlaps the step only if the host queues the step ahead of the device (no host sync in it); the
    host-side ``pin_memory`` (the loader's, on CUDA) is what makes the copy asynchronous at all.

    Args:
        batches: an iterable of ``RaggedBatch`` (a ``CropLoader``).
        device: where the model runs.
        dtype, mean, std, backend: as ``to_model_input`` takes them.
        overlap: False: every batch on the current stream when it is asked for (as
            ``to_model_input`` alone), whatever the device.
    """

    def __init__(self, batches: Iterable[RaggedBatch], device, dtype: torch.dtype = torch.float32,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, *, backend: str | None = None, overlap: bool = True):
        self.batches, self.device, self.dtype = batches, torch.device(device), dtype
        self.mean, self.std, self.backend, self.overlap = mean, std, backend, overlap

    def __len__(self) -> int:
        return len(self.batches)

    def _input(self, batch: RaggedBatch) -> torch.Tensor:
        return to_model_input(batch, self.device, self.dtype, self.mean, self.std, backend=self.backend)

    def __iter__(self) -> Iterator[tuple[RaggedBatch, torch.Tensor]]:
        if not (self.overlap and self.device.type == "cuda"):
            for batch in self.batches:
                yield batch, self._input(batch)
            return
        side = torch.cuda.Stream(self.device)
        batches = iter(self.batches)
        ahead = self._issue(batches, side)
        while ahead is not None:
            batch, imgs = ahead
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(side)  # before the next batch is queued there: waits for this one only
            imgs.record_stream(compute)
            ahead = self._issue(batches, side)
            yield batch, imgs

    def _issue(self, batches: Iterator[RaggedBatch], side) -> tuple[RaggedBatch, torch.Tensor] | None:
        """The next batch with its input queued on ``side`` (None at the end). The device copy of the
        batch's buffer is allocated, used and freed on ``side`` alone: no bookkeeping needed."""
        batch = next(batches, None)
        if batch is None:
            return None
        with torch.cuda.stream(side):
            return batch, self._input(batch)
