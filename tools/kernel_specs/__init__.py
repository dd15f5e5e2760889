"""What each kernel looks like to the JIT at the headline shape, for compiling it without a GPU.

One module per kernel module of ``fastmae.kernels`` (same name), each with ``compile_specs()``: a list
of plain dicts, one per kernel specialisation the op launches at ViT-B/16, 224 px, batch 256, mask 0.75:

    name              a label for reports
    kernel            the ``@triton.jit`` function
    signature         argument -> Triton type (``"*bf16"``, ``"i32"``, ``"constexpr"``, ...)
    constexprs        the constexpr values the launcher passes
    aligned           pointer and int arguments the JIT would mark divisible by 16 for real tensors
    num_warps         as the launcher
    expect_vector_io  whether a 16-byte global access must appear in the SASS
    why_not_vector    the reason when it need not
    programs          the grid size the launcher gives at the headline shape
    bytes             the DRAM bytes that launch must move there (every input read once, every
                      output written once: the bytes model's minimal bytes for this launch)
    loop_trips        (kernels with loops) the trip count of each loop, outer first
    persistent        (optional) the grid is at most one wave of programs that loop over the work;
                      then also ``persistent_work`` (items looped over: images or samples, or the
                      rows of a list) and ``persistent_groups`` (programs sharing a block index, each
                      taking every ``persistent_groups``-th item or one of as many equal shares),
                      which the gate checks for balance
    headline          (optional) a launch a bf16-autocast training step makes at the headline shape:
                      ``fastmae pretrain``'s (bf16 images from its input pipeline, float32 tables,
                      bf16 GEMM outputs) and, beside it, the same step fed float32 images (a loader
                      that normalises on the CPU); for an op the step does not run, its bf16 case.
                      Also the launches of a model run in pure bf16 (``model.bfloat16()``, no
                      autocast): the ``*_bf16`` specs of encoder_input and decoder_input. The
                      launches the targets are read on

``tools/kernel_resources.py`` compiles them for sm_90 / sm_80; ``tests/test_gpu_readiness.py``
asserts on what comes out.
"""

from __future__ import annotations

import importlib
import inspect

from fastmae.kernel_modules import KERNEL_MODULES

# The headline shape: ViT-B/16 at 224 px, batch 256, mask ratio 0.75.
N, C, IMG, PATCH = 256, 3, 224, 16
L = (IMG // PATCH) ** 2  # 196 patches
K = int(L * (1 - 0.75))  # 49 kept
M = L - K  # 147 masked
P = PATCH * PATCH * C  # 768 values per patch
D, DD = 768, 512  # encoder and decoder widths
SMS = 132  # H100 SXM: what a persistent launch sizes its grid for
ITEMSIZE = {"bf16": 2, "fp16": 2, "fp32": 4, "i64": 8, "i32": 4}
TRAINING_DTYPES = ("bf16", "fp16", "fp32")


def spec(name: str, kernel, types: dict, constexprs: dict, aligned, num_warps: int, programs: int, nbytes: int,
         vector_io: bool = True, why_not_vector: str = "", **extra) -> dict:
    """One spec dict; the signature lists every argument of ``kernel``: ``"constexpr"`` for those in
    ``constexprs``, else its type from ``types``."""
    names = list(inspect.signature(kernel.fn).parameters)
    signature = {a: "constexpr" if a in constexprs else types[a] for a in names}
    return {"name": name, "kernel": kernel, "signature": signature, "constexprs": dict(constexprs),
            "aligned": [a for a in aligned if a in names and a not in constexprs], "num_warps": num_warps,
            "expect_vector_io": vector_io, "why_not_vector": why_not_vector, "programs": programs,
            "bytes": nbytes, **extra}


def compile_specs(module: str) -> list[dict]:
    """The specs of kernel module ``module`` (a name in ``fastmae.kernel_modules.KERNEL_MODULES``)."""
    if module not in KERNEL_MODULES:
        raise ValueError(f"unknown kernel module {module!r}; choose one of {KERNEL_MODULES}")
    return importlib.import_module(f"{__name__}.{module}").compile_specs()
