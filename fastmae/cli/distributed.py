"""Process-group setup for ``torchrun`` (env ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

NCCL when the run is on CUDA, gloo otherwise. Without those variables everything is a single
process and none of this touches ``torch.distributed``.
"""

import os
from dataclasses import dataclass

import torch.distributed as dist

from fastmae.cli.errors import CLIError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_main(self):
        """Rank 0: the one process that prints, logs and writes files."""
        return self.rank == 0


def from_env():
    """Read the torchrun variables; a single process when they are absent."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                    int(os.environ.get("LOCAL_RANK", 0)))


def init(info, device):
    """Join the process group (when ``info.enabled``) with the backend that fits ``device``."""
    if not info.enabled:
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=info.rank, world_size=info.world_size,
                            device_id=device if device.type == "cuda" else None)


def cleanup(info):
    """Leave the process group, if this process joined one."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor):
    """Sum ``tensor`` over all ranks, in place. Queued on the device's stream under NCCL (the host
    does not wait for it; reading the result does); gloo returns when it is done."""
    dist.all_reduce(tensor)
    return tensor


def gather(obj, info):
    """Every rank's picklable ``obj`` in rank order (``[obj]`` for a single process)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info):
    """Wait for every rank (a no-op for a single process)."""
    if info.enabled:
        dist.barrier()


def from_main(make, info):
    """``make()`` run on rank 0 only and its (picklable) result sent to every rank.

    A ``CLIError`` raised by ``make`` on rank 0 is re-raised on every rank, so none waits forever.
    """
    if not info.enabled:
        return make()
    box = [None]
    if info.is_main:
        try:
            box[0] = (make(), None)
        except CLIError as e:
            box[0] = (None, e)
    dist.broadcast_object_list(box, src=0)
    value, error = box[0]
    if error is not None:
        raise error
    return value
