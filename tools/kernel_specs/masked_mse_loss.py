"""masked_mse_loss (kernels/masked_mse_loss.py) at ViT-B/16, 224 px, batch 256, mask 0.75.

The specialisations the JIT compiles for real tensors at the headline shape, for
``tools/kernel_resources.py`` and ``tests/test_gpu_readiness.py`` (see ``tools/kernel_specs/__init__.py``).
Besides the common keys every spec carries ``"programs"`` (its grid at the headline shape) and
``"bytes"`` (the fewest DRAM bytes that launch moves there), which the waves and
bytes-per-instruction figures of ``tests/test_masked_mse_loss_sass.py`` are computed from.
"""

from __future__ import annotations

import inspect

import torch
import triton.language as tl

from fastmae.kernels import masked_mse_loss as k

N, C, IMG, PATCH = 256, 3, 224, 16
L = (IMG // PATCH) ** 2  # 196 patches
M = L - int(L * (1 - 0.75))  # 147 masked patches per image
P = PATCH * PATCH * C  # 768 values per patch

# (pred, imgs) dtypes: training under bf16 autocast (the decoder's bf16 pred, the loader's float32
# images; grad_pred is bf16), then one dtype throughout.
DTYPES = (("bf16", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "fp32"))
_TORCH = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_SIZE = {"bf16": 2, "fp16": 2, "fp32": 4}


def _name(direction: str, form: str, pred: str, imgs: str) -> str:
    # bf16 throughout keeps the names of the earlier tables (benchmarks/NOTES.md)
    if (pred, imgs) == ("bf16", "bf16"):
        suffix = ""
    elif pred == imgs:
        suffix = f"_{pred}"
    else:
        suffix = f"_{pred}_{imgs}imgs"
    return f"masked_mse_loss_{direction}_{form}{suffix}"


def _constexpr_args(kernel) -> set:
    """The ``tl.constexpr`` parameters of a ``@triton.jit`` function (compiled or interpreted)."""
    params = inspect.signature(kernel.fn).parameters.values()
    return {p.name for p in params if p.annotation in (tl.constexpr, "tl.constexpr")}


def _jit_view(kernel, args: dict, pointers: dict) -> dict:
    """``signature`` / ``constexprs`` / ``aligned`` as the JIT specialises ``args`` (pointer types
    from ``pointers``): an int equal to 1 becomes a constant, an int divisible by 16 is marked
    aligned, and so is every pointer (fresh torch allocations are 16-byte aligned)."""
    signature, constexprs, aligned = {}, {}, []
    const = _constexpr_args(kernel)
    for name in kernel.arg_names:
        value = args[name]
        if name in pointers:
            signature[name] = pointers[name]
            aligned.append(name)
        elif name in const:
            constexprs[name] = value
            signature[name] = "constexpr"
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif value == 1:
            constexprs[name] = 1
            signature[name] = "constexpr"
        else:
            signature[name] = "i32"
            if value % 16 == 0:
                aligned.append(name)
    return {"signature": signature, "constexprs": constexprs, "aligned": aligned}


# bf16 throughout: what `fastmae pretrain` runs (its input pipeline writes the autocast dtype); bf16
# pred with float32 images beside it (a loader that normalises on the CPU, as the official one)
def _odd_pred_specs() -> list[dict]:
    """The masked form with bf16 pred starting at an odd element (a contiguous view 2 bytes past a
    4-byte boundary, e.g. a slice of a larger buffer): read value by value, not as 32-bit words, and
    not 16-byte aligned for the JIT. Listed to show that path compiles cleanly; not a training launch."""
    rows = N * M
    pred = torch.empty(rows * P + 1, dtype=torch.bfloat16, device="meta")[1:].view(N, M, P)
    imgs = torch.empty(N, C, IMG, IMG, dtype=torch.bfloat16, device="meta")
    ids = torch.empty(N, M, dtype=torch.int64, device="meta")
    programs, _, kwargs = k._launch_args(pred, imgs, None, ids, PATCH, True)
    assert not kwargs["PRED_WORDS"] and kwargs["IMG_WORDS"]
    num_warps = kwargs.pop("num_warps")
    row_bytes = rows * P * 4 + rows * 8
    ptrs = {"PRED": "*bf16", "IMGS": "*bf16", "MASK": "*bf16", "IDS": "*i64"}
    specs = []
    for direction, kernel, args, extra_ptrs, nbytes in (
        ("fwd", k._masked_mse_loss_kernel, {**kwargs, "NUM_PROGRAMS": programs}, {"PARTIAL": "*fp32"},
         row_bytes + programs * 4),
        ("bwd", k._masked_mse_loss_bwd_kernel, kwargs, {"GRAD_LOSS": "*fp32", "INV_DEN": "*fp32", "GRAD_PRED": "*bf16"},
         row_bytes + rows * P * 2 + 8),
    ):
        pointers = {**ptrs, **extra_ptrs}
        view = _jit_view(kernel, {**args, **dict.fromkeys(pointers)}, pointers)
        view["aligned"] = [a for a in view["aligned"] if a not in ("PRED", "MASK")]  # MASK: pred, the dummy
        specs.append({"name": f"masked_mse_loss_{direction}_masked_bf16_odd_pred", "kernel": kernel, **view,
                      "num_warps": num_warps, "expect_vector_io": True, "why_not_vector": "",
                      "programs": programs, "bytes": nbytes})
    return specs


HEADLINE = ("masked_mse_loss_fwd_masked", "masked_mse_loss_bwd_masked",
            "masked_mse_loss_fwd_full", "masked_mse_loss_bwd_full",
            "masked_mse_loss_fwd_masked_bf16_fp32imgs", "masked_mse_loss_bwd_masked_bf16_fp32imgs",
            "masked_mse_loss_fwd_full_bf16_fp32imgs", "masked_mse_loss_bwd_full_bf16_fp32imgs",
            "masked_mse_loss_sum_masked")


def compile_specs() -> list[dict]:
    """Forward and backward row kernels for both forms and every training dtype, and the final sums.

    Forms: masked (pred [256, 147, 768], int64 ids; what the model's fast path calls) and full
    (pred [256, 196, 768], a float32 mask [256, 196]); norm-pix on (MAE's recipe). The launch
    arguments come from the launcher itself (``_launch_args`` on meta tensors), so the specs follow
    the block sizes it picks.

    Bytes, each input read once and each output written once (``s_p``, ``s_i``: bytes per pred /
    image value; ``rows`` = N * M masked, N * L full):
        forward   rows * P * (s_p + s_i) + rows * (8 B of id or 4 B of mask weight)
                  + programs * 4 B of partials (8 B in the full form: the weights' sum too)
        backward  rows * P * (2 s_p + s_i) + rows * (8 or 4 B) + 8 B (upstream gradient, 1 / den)
        sum       the partials read back + 8 B (loss, 1 / den)
    The image side counts only the pixels of the rows' patches (every pixel in the full form).
    """
    specs = []
    sum_programs = {}
    for form, rows_per_image in (("masked", M), ("full", L)):
        rows = N * rows_per_image
        for pred_t, img_t in DTYPES:
            pred = torch.empty(N, rows_per_image, P, dtype=_TORCH[pred_t], device="meta")
            imgs = torch.empty(N, C, IMG, IMG, dtype=_TORCH[img_t], device="meta")
            mask = torch.empty(N, L, dtype=torch.float32, device="meta") if form == "full" else None
            ids = torch.empty(N, M, dtype=torch.int64, device="meta") if form == "masked" else None
            programs, _, kwargs = k._launch_args(pred, imgs, mask, ids, PATCH, True)
            num_warps = kwargs.pop("num_warps")
            row_bytes = rows * P * (_SIZE[pred_t] + _SIZE[img_t]) + rows * (8 if form == "masked" else 4)
            ptrs = {"PRED": f"*{pred_t}", "IMGS": f"*{img_t}",
                    # the absent one of MASK / IDS is a dummy (pred) the kernel never reads
                    "MASK": "*fp32" if form == "full" else f"*{pred_t}",
                    "IDS": "*i64" if form == "masked" else f"*{pred_t}"}
            for direction, kernel, args, extra_ptrs, nbytes in (
                ("fwd", k._masked_mse_loss_kernel, {**kwargs, "NUM_PROGRAMS": programs}, {"PARTIAL": "*fp32"},
                 row_bytes + programs * 4 * (2 if form == "full" else 1)),
                ("bwd", k._masked_mse_loss_bwd_kernel, kwargs,
                 {"GRAD_LOSS": "*fp32", "INV_DEN": "*fp32", "GRAD_PRED": f"*{pred_t}"},
                 row_bytes + rows * P * _SIZE[pred_t] + 8),
            ):
                pointers = {**ptrs, **extra_ptrs}
                specs.append({
                    "name": _name(direction, form, pred_t, img_t),
                    "kernel": kernel,
                    **_jit_view(kernel, {**args, **dict.fromkeys(pointers)}, pointers),
                    "num_warps": num_warps,
                    "expect_vector_io": True,
                    "why_not_vector": "",
                    "programs": programs,
                    "bytes": nbytes,
                })
        sum_programs[form] = (programs, rows)
    specs += _odd_pred_specs()
    # The final reduction, one program: the same code for every dtype; the full form also sums weights.
    for form, has_mask in (("masked", False), ("full", True)):
        programs, rows = sum_programs[form]
        args = k._sum_args(programs, rows, has_mask)
        num_warps = args.pop("num_warps")
        pointers = {"PARTIAL": "*fp32", "LOSS": "*fp32", "INV_DEN": "*fp32"}
        specs.append({
            "name": f"masked_mse_loss_sum_{form}",
            "kernel": k._masked_mse_loss_sum_kernel,
            **_jit_view(k._masked_mse_loss_sum_kernel, {**args, **dict.fromkeys(pointers)}, pointers),
            "num_warps": num_warps,
            "expect_vector_io": True,
            "why_not_vector": "",
            "programs": 1,
            "bytes": programs * 4 * (2 if has_mask else 1) + 8,
        })
    # the training step's launches (bf16 autocast: pred bf16, images bf16 from the CLI or float32; the
    # masked form) and the full form the model's forward(full_pred=True) runs
    for spec in specs:
        spec["headline"] = spec["name"] in HEADLINE
    return specs
