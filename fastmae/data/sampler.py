"""The order of an epoch, as ``(epoch, index)`` pairs: seeding that survives persistent workers.

``torch.utils.data.DistributedSampler`` yields bare indices, so the epoch has to reach the dataset
some other way (the previous loader's ``set_epoch`` on the dataset, which persistent workers never
see: they keep the copy they were started with). This sampler yields the epoch with each index; the
sampler lives in the main process, and the workers get the pair.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

__all__ = ["EpochSampler"]


class EpochSampler(torch.utils.data.Sampler):
    """``DistributedSampler``'s order, yielded as ``(epoch, index)``.

    Args:
        num_items: the dataset's length.
        seed: the shuffle's seed; epoch ``e`` is ``torch.randperm(num_items)`` under ``seed + e``.
        world_size, rank: this process's share: the order is padded by repeating its start to a
            multiple of ``world_size`` (as ``DistributedSampler`` with ``drop_last=False``), then rank
            ``r`` takes every ``world_size``-th index from ``r``.
        shuffle: ``False`` walks ``0 .. num_items-1`` (evaluation).

    The same ``(seed, epoch)`` gives the same pairs on every run, whatever the number of workers.
    Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, num_items: int, seed: int = 0, world_size: int = 1, rank: int = 0, shuffle: bool = True):
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size = {world_size}), got {rank}")
        self.num_items, self.seed, self.world_size, self.rank, self.shuffle = num_items, seed, world_size, rank, shuffle
        self.epoch = 0
        self.num_samples = math.ceil(num_items / world_size)  # per rank
        self.total_size = self.num_samples * world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def order(self) -> list[int]:
        """This rank's indices for the current epoch."""
        if self.shuffle:
            g = torch.Generator()  # a CPU generator, whatever the default device
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.num_items, generator=g, device="cpu").tolist()
        else:
            indices = list(range(self.num_items))
        pad = self.total_size - len(indices)
        indices += (indices * math.ceil(pad / len(indices)))[:pad]
        return indices[self.rank:self.total_size:self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return iter([(epoch, i) for i in self.order()])
