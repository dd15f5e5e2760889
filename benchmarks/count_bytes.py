"""Count the bytes an eager PyTorch function moves, op by op, to check the reference formulas.

``count_bytes(fn, *args)`` runs ``fn`` (and, optionally, its backward) under a
``TorchDispatchMode`` that sees every ATen op the eager path dispatches, forward and autograd
backward alike, and adds up what each op reads and writes at tensor level:

* an op's inputs are read once (a broadcast input — stride 0 — counts its distinct elements only)
  and its outputs written once;
* views (``view``, ``permute``, ``expand``, slicing, ``detach`` ...) and allocations (``empty``)
  move nothing;
* gathers read the index and one source element per output element, not the whole source;
  ``scatter_add_`` reads its source and index and read-modify-writes the destination elements it
  touches (the zero fill before it is its own op); ``slice_backward`` zero-fills its output and
  copies the gradient into the slice, as its eager kernel does;
* in-place fills (``zero_``, ``fill_``) write their tensor.

This is the convention of ``benchmarks/bytes_model.py`` ("every intermediate tensor written and
read"): it ignores caches (a small table broadcast to every row is counted once) and the extra
passes inside a sort. Run it on ``meta`` tensors to count ViT-B shapes without allocating.

    python -m benchmarks.count_bytes      # per-op breakdown of each reference op at ViT-B/16
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops that allocate without writing, or only carry metadata (``_unsafe_view`` is a view that the
# schema does not mark as one).
_FREE = {
    aten.empty.memory_format, aten.empty_like.default, aten.empty_strided.default,
    aten.new_empty.default, aten.new_empty_strided.default, aten.detach.default, aten.alias.default,
    aten.lift_fresh.default, aten._unsafe_view.default, aten.sym_size.int, aten.sym_stride.int,
    aten.sym_numel.default,
    aten.sym_storage_offset.default, aten.is_same_size.default,
}
# Ops that fetch one source element per output element through an index.
_GATHERS = {aten.gather.default, aten.index_select.default, aten.index.Tensor}


def span_bytes(t: torch.Tensor) -> int:
    """Distinct bytes a tensor addresses: broadcast (stride 0) dimensions count once."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


def _tensors(tree) -> list[torch.Tensor]:
    flat, _ = torch.utils._pytree.tree_flatten(tree)
    return [x for x in flat if isinstance(x, torch.Tensor)]


@dataclass
class Count:
    """Bytes read and written, in total and per ATen op (``name -> bytes``)."""

    total: int = 0
    per_op: Counter = field(default_factory=Counter)
    calls: Counter = field(default_factory=Counter)

    def add(self, name: str, nbytes: int) -> None:
        self.total += nbytes
        self.per_op[name] += nbytes
        self.calls[name] += 1


class ByteCounter(TorchDispatchMode):
    """Adds the tensor-level traffic of every dispatched ATen op to ``self.count``."""

    def __init__(self):
        super().__init__()
        self.count = Count()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.count.add(str(func.overloadpacket.__name__), self._traffic(func, args, kwargs, out))
        return out

    @staticmethod
    def _traffic(func, args, kwargs, out) -> int:
        if func in _FREE or func.is_view:
            return 0
        inputs = _tensors((args, kwargs))
        outputs = _tensors(out)
        if func in _GATHERS:
            # gather(src, dim, index) / index(src, [indices]) / index_select(src, dim, index)
            idx = inputs[1:]
            return sum(span_bytes(i) for i in idx) + 2 * sum(o.numel() * o.element_size() for o in outputs)
        name = func.overloadpacket.__name__
        if name in ("scatter_add_", "scatter_add"):
            # Eager autograd's gather backward runs ``new_zeros(...).scatter_add_`` in place; under a
            # dispatch mode it takes the out-of-place branch instead (tensors look subclass-like),
            # so both count as the in-place op: source and index read, touched elements updated.
            dst, index, src = args[0], args[2], args[3]
            return span_bytes(index) + src.numel() * src.element_size() + 2 * src.numel() * dst.element_size()
        if name == "slice_backward":
            # zeros of the input's size, then the gradient copied into the slice
            grad, whole = args[0], outputs[0]
            return (whole.numel() * whole.element_size() + span_bytes(grad)
                    + grad.numel() * whole.element_size())
        if name in ("zero_", "fill_"):
            return args[0].numel() * args[0].element_size()
        if name in ("zeros", "ones", "full", "new_zeros", "new_ones", "new_full", "zeros_like", "ones_like",
                    "full_like", "scalar_tensor", "arange"):
            return sum(o.numel() * o.element_size() for o in outputs)
        if name == "copy_":
            return span_bytes(args[1]) + args[0].numel() * args[0].element_size()
        if func._schema.is_mutable:
            # other in-place ops (add_, mul_, ...): read every input, write the mutated tensor once
            return sum(span_bytes(t) for t in inputs) + args[0].numel() * args[0].element_size()
        return sum(span_bytes(t) for t in inputs) + sum(o.numel() * o.element_size() for o in outputs)


def count_bytes(fn, inputs: dict, grad_of: tuple[str, ...] = (),
                backward: bool = False) -> tuple[Count, Count]:
    """Bytes moved by ``fn(**inputs)`` and, with ``backward``, by the gradients of ``grad_of``.

    Returns ``(forward, backward)`` counts; the backward count is empty without ``backward``.
    The output gradient is made before counting starts (it is an input of the backward pass).
    """
    fwd, bwd = ByteCounter(), ByteCounter()
    with fwd:
        out = fn(**inputs)
    if backward:
        grad = torch.ones_like(out) if out.dim() == 0 else torch.empty_like(out)
        with bwd:
            torch.autograd.grad(out, [inputs[k] for k in grad_of], grad)
    return fwd.count, bwd.count


def _main() -> None:  # pragma: no cover - a printing helper
    from . import bytes_model as bm
    from .cases import make_inputs, reference_call

    shape = bm.shape_for("vit_b16", 256, 0.75)
    for op, variant in bm.OP_VARIANTS:
        inputs, grad_of = make_inputs(op, variant, shape, torch.bfloat16, "meta")
        fwd, bwd = count_bytes(reference_call(op, variant, shape), inputs, grad_of, backward=bool(grad_of))
        model = bm.op_bytes(op, shape, torch.bfloat16, **variant)
        print(f"\n{op} {variant}")
        for mode, count in (("fwd", fwd), ("bwd", bwd)):
            if mode not in model:
                continue
            print(f"  {mode}: counted {count.total / 1e6:9.2f} MB, "
                  f"formula {model[mode].reference / 1e6:9.2f} MB")
            for name, nbytes in count.per_op.most_common():
                print(f"      {name:24s} x{count.calls[name]:<3d} {nbytes / 1e6:9.2f} MB")


if __name__ == "__main__":
    _main()
