"""A ``TorchDispatchMode`` that counts, per iteration of a loop, the calls that make the host wait
for the device (``tests/test_train_loop.py``)."""

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# What makes the host wait for the device: reading a value (item, bool, int, float: all
# _local_scalar_dense), an op whose output shape depends on the data, a copy to the host.
_SYNC_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
             torch.ops.aten.equal.default, torch.ops.aten.masked_select.default,
             torch.ops.aten._unique2.default, torch.ops.aten.unique_consecutive.default,
             torch.ops.aten.unique_dim.default, torch.ops.aten.repeat_interleave.Tensor}


class SyncCounter(TorchDispatchMode):
    """Counts, per iteration of the loop, the calls that synchronise the host with the device.

    ``Tensor.tolist()`` and ``Tensor.numpy()`` read a CPU tensor's memory without dispatching an
    op, so they are counted at the Python level too. Tensors that live on the host on every device
    are left out: the batches' bookkeeping (``RaggedBatch.skipped``, read with numpy) and a foreach
    AdamW's ``step`` counters (CPU tensors unless ``capturable``; the fused AdamW CUDA uses keeps
    them on the device and is counted in full).
    """

    def __init__(self, host_tensors):
        super().__init__()
        self.host = host_tensors  # callable: the data_ptrs of the host-side tensors right now
        self.per_iter = [[]]  # per iteration: the names of the syncing calls
        self._patched = {}
        self._paused = self._inside = False

    def new_iteration(self):
        self.per_iter.append([])

    @contextlib.contextmanager
    def paused(self):
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def _count(self, name, tensor):
        if self._paused:
            return
        if tensor is None or tensor.data_ptr() not in self.host():
            self.per_iter[-1].append(name)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if func in _SYNC_OPS:
            self._count(str(func), first)
        elif func is torch.ops.aten.index.Tensor and any(
                i is not None and i.dtype == torch.bool for i in args[1]):
            self._count("index with a bool mask", first)
        elif func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            src = args[1] if func is torch.ops.aten.copy_.default else first
            dst = kwargs.get("device") if func is torch.ops.aten._to_copy.default else first.device
            if src.device.type != "cpu" and dst is not None and torch.device(dst).type == "cpu":
                self._count("copy to the host", src)
        return func(*args, **kwargs)

    def __enter__(self):
        for name in ("tolist", "numpy"):
            original = getattr(torch.Tensor, name)
            self._patched[name] = original

            def wrapper(t, *a, _original=original, _name=name, **k):
                if self._inside:  # a __torch_function__ mode calling it again
                    return _original(t, *a, **k)
                self._count(f"Tensor.{_name}", t)
                self._inside = True
                try:
                    return _original(t, *a, **k)
                finally:
                    self._inside = False
            setattr(torch.Tensor, name, wrapper)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._patched.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)
