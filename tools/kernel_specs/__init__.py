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

``tools/kernel_resources.py`` compiles them for sm_90 / sm_80; ``tests/test_gpu_readiness.py``
asserts on what comes out.
"""

from __future__ import annotations

import importlib

from fastmae.kernels import KERNEL_MODULES


def compile_specs(module: str) -> list[dict]:
    """The specs of kernel module ``module`` (a name in ``fastmae.kernels.KERNEL_MODULES``)."""
    if module not in KERNEL_MODULES:
        raise ValueError(f"unknown kernel module {module!r}; choose one of {KERNEL_MODULES}")
    return importlib.import_module(f"{__name__}.{module}").compile_specs()
