"""Small pieces every kernel module shares: output allocation (poisonable for tests) and sizes."""

from __future__ import annotations

import contextlib

import torch

_poison = False


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty`` for kernel outputs; inside :func:`poisoned_outputs` filled with NaN (floats) or -1.

    Tests poison outputs so that an element a kernel forgets to write fails the comparison.
    """
    out = torch.empty(shape, dtype=dtype, device=device)
    if _poison:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


@contextlib.contextmanager
def poisoned_outputs():
    """Fill every output allocated through :func:`empty` with garbage while the context is open."""
    global _poison
    before, _poison = _poison, True
    try:
        yield
    finally:
        _poison = before


def next_power_of_2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()
