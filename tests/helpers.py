"""Tolerances and comparisons shared by the tests (import as ``from helpers import ...``)."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

# Per-dtype (rtol, atol) for elementwise results: float32 is the 1e-5 contract of the library;
# bf16/fp16 allow one rounding of the output (bf16 has 8 mantissa bits, fp16 11).
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-10, 1e-12),
    torch.bfloat16: (1e-2, 1e-2),
    torch.float16: (1e-3, 1e-3),
}

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def reduction_tolerance(dtype: torch.dtype, reduced: int) -> tuple[float, float]:
    """Tolerances for a reduction over ``reduced`` elements: rounding error grows like sqrt(reduced)."""
    rtol, atol = TOLERANCES[dtype]
    grow = max(1.0, reduced**0.5 / 8)
    return rtol * grow, atol * grow


def assert_close(actual, expected, dtype=None, reduced: int | None = None, msg: str = ""):
    """Compare against the reference, which ran in float32 or higher, with the table above."""
    dtype = dtype or actual.dtype
    rtol, atol = reduction_tolerance(dtype, reduced) if reduced else TOLERANCES[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol, msg=msg or None)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of ``expected``."""
    diff = (actual.float() - expected.float()).abs().max()
    return (diff / expected.float().abs().max().clamp_min(1e-30)).item()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# Where the tests put their tensors: the GPU when there is one and the interpreter is off (the GPU
# report runs the suite so), otherwise the CPU, with the kernels interpreted.
DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"

# Kernel tests need the interpreter (CPU) or a GPU with it off; a CPU run with TRITON_INTERPRET=0 skips them.
requires_kernels = pytest.mark.skipif(DEVICE == "cpu" and not interpreting(),
                                      reason="the Triton kernels need TRITON_INTERPRET=1 or a CUDA device")


@contextlib.contextmanager
def poisoned():
    """Kernel outputs filled with NaN / -1 before launch, so an unwritten element fails a test."""
    from fastmae.kernels._common import poisoned_outputs

    with poisoned_outputs():
        yield
