"""The bytes model (``benchmarks/NOTES.md``, "The bytes model"): per op and pass (``fwd``; ``bwd``, the
gradients a model trains through; ``fwdbwd``, both), the ``minimal`` bytes (``cases.Op.minimal``,
written by hand) and the ``reference`` bytes the eager reference path moves: counted by ``count_bytes``
on ``meta`` tensors under a ``TorchDispatchMode``, by the conventions of ``op_traffic``.

``python -m benchmarks.bytes_model [--model mae_vit_large_patch16 --batch 64 --dtype fp32 --mask-ratio 0.9]``
prints the tables ``benchmarks/NOTES.md`` quotes: per op and pass, and one training step.
"""

import argparse
import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import fastmae

from .cases import OP_VARIANTS, OPS, STEP, MAEShape, make_inputs, op_call, shape_for, variant_label

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
NOTES_BANDWIDTH = 3.0e12  # bytes/s: the H100 copy bandwidth the NOTES tables' ideal times assume
NOTES_SHAPE = ("mae_vit_base_patch16", 256, 0.75)  # model, batch, mask ratio of the NOTES tables


aten = torch.ops.aten
# Allocations (no write) and ``_unsafe_view`` (a view the schema does not mark as one) are free.
_FREE = {aten.empty.memory_format, aten.empty_like.default, aten.empty_strided.default, aten.new_empty.default,
         aten.new_empty_strided.default, aten._unsafe_view.default}
_GATHERS = {aten.gather.default, aten.index_select.default, aten.index.Tensor}  # one source element per output
_FILLS = {"zeros", "ones", "full", "new_zeros", "new_ones", "new_full", "zeros_like", "ones_like", "full_like",
          "scalar_tensor", "arange", "zero_", "fill_"}  # write their output, read nothing


def span_bytes(t: torch.Tensor) -> int:
    """Distinct bytes a tensor addresses: broadcast (stride 0) dimensions count once."""
    return math.prod(size for size, stride in zip(t.shape, t.stride()) if stride) * t.element_size()


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


def op_traffic(func, args, kwargs, out) -> int:
    """Bytes one ATen call reads and writes: inputs read once (a broadcast input its distinct elements),
    outputs written once, caches ignored, a sort one pass, views and allocations free; the cases below."""
    if func in _FREE or func.is_view:
        return 0
    inputs, outputs = _tensors((args, kwargs)), _tensors(out)
    name = func.overloadpacket.__name__
    if func in _GATHERS:  # gather(src, dim, index) / index(src, [indices]) / index_select(src, dim, index)
        return sum(span_bytes(i) for i in inputs[1:]) + 2 * sum(o.nbytes for o in outputs)
    if name in ("scatter_add_", "scatter_add"):
        # Eager gather backward runs ``new_zeros(...).scatter_add_``; under a dispatch mode it takes the
        # out-of-place branch, so both count as the in-place op.
        dst, index, src = args[0], args[2], args[3]
        return span_bytes(index) + src.nbytes + 2 * src.numel() * dst.element_size()
    if name == "slice_backward":  # zeros of the whole input, then the gradient copied into the slice
        grad, whole = args[0], outputs[0]
        return whole.nbytes + span_bytes(grad) + grad.numel() * whole.element_size()
    if name in _FILLS:
        return sum(o.nbytes for o in outputs)
    if name == "copy_":
        return span_bytes(args[1]) + args[0].nbytes
    if func._schema.is_mutable:  # add_, mul_, ...: read every input, write the mutated tensor once
        return sum(span_bytes(t) for t in inputs) + args[0].nbytes
    return sum(span_bytes(t) for t in inputs) + sum(o.nbytes for o in outputs)


class ByteCounter(TorchDispatchMode):
    """Adds ``op_traffic`` of every dispatched ATen op to ``self.total``."""

    total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Run the op, add its traffic."""
        out = func(*args, **(kwargs or {}))
        self.total += op_traffic(func, args, kwargs or {}, out)
        return out


def count_bytes(fn, inputs: dict, grad_of: tuple[str, ...] = (), backward: bool = False) -> tuple[int, int]:
    """Bytes moved by ``fn(**inputs)`` and, with ``backward``, by the gradients of ``grad_of`` (0 without).
    The output gradient is made before counting: it is the backward pass's input."""
    fwd, bwd = ByteCounter(), ByteCounter()
    with fwd:
        out = fn(**inputs)
    if backward:
        grad = torch.ones_like(out) if out.dim() == 0 else torch.empty_like(out)
        with bwd:
            torch.autograd.grad(out, [inputs[k] for k in grad_of], grad)
    return fwd.total, bwd.total


@dataclass(frozen=True)
class Traffic:
    """Bytes one pass of one op moves: the minimum, and what the eager reference path moves."""

    minimal: int
    reference: int


@lru_cache(maxsize=None)
def pass_bytes(op: str, variant: tuple, sh: MAEShape, reference: bool, dtype, table_dtype=None, imgs_dtype=None,
               requires_grad: bool = True, out_dtype=None) -> dict[str, int]:
    """Bytes per pass (``fwd``; ``bwd`` and ``fwdbwd`` where a gradient flows) on ``make_inputs``'s
    tensors (``variant``: sorted items): counted for the reference call, the minimal formula otherwise
    (``out_dtype``: patchify_gather's rows when written in another dtype than the images')."""
    kwargs, grad_of = make_inputs(op, dict(variant), sh, dtype, "meta", reference=reference, table_dtype=table_dtype,
                                  imgs_dtype=imgs_dtype, requires_grad=requires_grad)
    if reference:
        fwd, bwd = count_bytes(op_call(op), kwargs, grad_of, backward=bool(grad_of))
    else:
        sizes = {name: x.element_size() for name, x in kwargs.items() if isinstance(x, torch.Tensor)}
        mini = OPS[op].minimal(sh, kwargs, sizes, out_dtype.itemsize if out_dtype is not None else None)
        fwd, bwd = mini["fwd"], mini.get("bwd", 0)
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd} if grad_of else {"fwd": fwd}


def op_bytes(op: str, variant: dict, sh: MAEShape, dtype, table_dtype=None, imgs_dtype=None,
             requires_grad: bool = True) -> dict[str, Traffic]:
    """``Traffic`` per pass of ``op`` (dtypes as ``cases.make_inputs``)."""
    mini, ref = (pass_bytes(op, tuple(sorted(variant.items())), sh, reference, dtype, table_dtype, imgs_dtype,
                            requires_grad) for reference in (False, True))
    return {p: Traffic(mini[p], ref[p]) for p in mini}


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f}"


def table(sh: MAEShape, dtype, bandwidth: float = NOTES_BANDWIDTH) -> str:
    """Markdown: each op and pass, minimal MB, ideal µs at ``bandwidth``, reference MB, their ratio."""
    lines = [f"| op | pass | minimal MB | ideal µs at {bandwidth / 1e12:.1f} TB/s | reference MB "
             "| reference / minimal |", "|---|---|---:|---:|---:|---:|"]
    for op, variant in OP_VARIANTS:
        for mode, t in op_bytes(op, variant, sh, dtype).items():
            lines.append(f"| {variant_label(op, variant)} | {mode} | {_mb(t.minimal)} "
                         f"| {t.minimal / bandwidth * 1e6:.1f} | {_mb(t.reference)} "
                         f"| {t.reference / t.minimal:.1f}x |")
    return "\n".join(lines)


def step_rows(sh: MAEShape, amp_dtype=torch.bfloat16, imgs_dtype=None) -> list[dict]:
    """One row per fused op of a training step (``cases.STEP``) under ``amp_dtype`` autocast, images in
    ``imgs_dtype`` (default ``amp_dtype``, what ``fastmae pretrain`` feeds; float32 as the official
    loader gives them): ``minimal`` bytes, ``implementation`` (``+ cases.Op.extra``), and the official
    code's counted ``reference`` bytes."""
    rows = []
    for piece in STEP:
        dtypes = {**piece.dtypes(amp_dtype), "imgs_dtype": imgs_dtype or amp_dtype}
        gather = piece.op == "patchify_gather"  # its data input is the images, its rows written for the GEMM
        if gather:
            dtypes["dtype"] = dtypes["imgs_dtype"]
        mode = "fwdbwd" if piece.backward else "fwd"
        minimal = pass_bytes(piece.op, tuple(sorted(piece.variant.items())), sh, False, **dtypes,
                             out_dtype=amp_dtype if gather else None)[mode]
        ref = 0 if piece.official is None else pass_bytes(
            piece.official, tuple(sorted(piece.official_variant.items())), sh, True, **dtypes)[mode]
        rows.append({"piece": piece.piece, "fast": f"{variant_label(piece.op, piece.variant)} ({mode})",
                     "minimal": minimal, "implementation": minimal + OPS[piece.op].extra(sh, piece.variant),
                     "official": piece.official_label, "reference": ref})
    return rows


def step_table(sh: MAEShape, amp_dtype=torch.bfloat16, bandwidth: float = NOTES_BANDWIDTH, imgs_dtype=None) -> str:
    """Markdown for ``step_rows``, a total row, and the line of the fused ops' bytes against the minimal."""
    rows = step_rows(sh, amp_dtype, imgs_dtype)
    total = {key: sum(r[key] for r in rows) for key in ("minimal", "implementation", "reference")}
    lines = [f"| step piece | fast path op | minimal MB | ideal µs at {bandwidth / 1e12:.1f} TB/s | implementation MB "
             "| official path | reference MB |", "|---|---|---:|---:|---:|---|---:|"]
    for r in rows + [{"piece": "**total**", "fast": "", "official": "", **total}]:
        lines.append(f"| {r['piece']} | {r['fast']} | {_mb(r['minimal'])} | {r['minimal'] / bandwidth * 1e6:.1f} "
                     f"| {_mb(r['implementation'])} | {r['official']} | {_mb(r['reference'])} |")
    mini, now = total["minimal"], total["implementation"]
    return "\n".join(lines) + (f"\n\nfused ops per training step: {_mb(now)} MB moved = {now / mini:.3f}x the "
                               f"minimal {_mb(mini)} MB")


def heading(sh: MAEShape, dtype_name: str) -> str:
    """The line above the tables: the shape they are computed at."""
    d = sh.as_dict()
    return (f"{sh.model}, {d['H']}x{d['W']} px, patch {d['p']}, batch {d['N']}, {dtype_name}, mask {sh.mask_ratio} "
            f"(L={d['L']}, K={d['K']}, M={d['M']}, P={d['P']}, D={d['D']}, Dd={d['Dd']}); MB = 10^6 bytes")


def main(argv=None) -> None:
    """Print the per-op and training-step tables (defaults: the NOTES.md shape)."""
    ap = argparse.ArgumentParser(description="the bytes-model tables (benchmarks/NOTES.md)")
    ap.add_argument("--model", default=NOTES_SHAPE[0], choices=sorted(fastmae.MODELS))
    ap.add_argument("--batch", type=int, default=NOTES_SHAPE[1])
    ap.add_argument("--mask-ratio", type=float, default=NOTES_SHAPE[2])
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--bandwidth-tbps", type=float, default=NOTES_BANDWIDTH / 1e12)
    args = ap.parse_args(argv)
    sh, dtype, bw = shape_for(args.model, args.batch, args.mask_ratio), DTYPES[args.dtype], args.bandwidth_tbps * 1e12
    print(f"{heading(sh, args.dtype)}\n\n{table(sh, dtype, bw)}\n\n{step_text(sh, dtype, args.dtype, bw)}")


def step_text(sh: MAEShape, dtype, dtype_name: str, bandwidth: float = NOTES_BANDWIDTH) -> str:
    """The training-step tables: images in the autocast dtype (what ``fastmae pretrain`` feeds), then
    float32 images (a loader that normalises on the CPU, as the official one) beside it."""
    out = []
    for imgs_dtype, what in ((None, f"{dtype_name} images, as `fastmae pretrain` feeds them"),
                             (torch.float32, "float32 images, as the official loader gives them")):
        out.append(f"One training step under {dtype_name} autocast ({what}; float32 position tables and tokens; "
                   f"{dtype_name} activations), fast path vs official path:\n\n"
                   f"{step_table(sh, dtype, bandwidth, imgs_dtype)}")
    return "\n\n".join(out)


if __name__ == "__main__":
    main()
