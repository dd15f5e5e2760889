"""Which implementation the ops run: the backend names, the per-call choice and its overrides.

    ``"triton"``     the fused kernels in ``fastmae.kernels`` (CUDA tensors, or CPU tensors under
                     ``TRITON_INTERPRET=1``);
    ``"torch"``      the same fast path written with torch ops (``fastmae.torch_ops``);
    ``"reference"``  the official algorithm (``fastmae.reference``), for checking and benchmarking;
    ``"auto"``       triton for CUDA tensors or under ``TRITON_INTERPRET=1``, torch otherwise.

Read on every call of a ``fastmae.ops`` op, in this order: the ``backend=`` argument, the innermost
``use_backend(...)`` context (per thread), the ``FASTMAE_BACKEND`` environment variable, ``"auto"``.
``fastmae.ops`` re-exports everything here; the branching on the result is there, op by op.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

import torch

__all__ = ["BACKENDS", "check_name", "get_backend", "use_backend", "resolve_backend"]

BACKENDS = ("auto", "triton", "torch", "reference")
_local = threading.local()


def check_name(name: str, what: str = "backend") -> str:
    """``name`` if it is one of ``BACKENDS``, else a ValueError naming ``what``."""
    if name not in BACKENDS:
        raise ValueError(f"{what} must be one of {BACKENDS}, got {name!r}")
    return name


def get_backend() -> str:
    """The backend requested now (before ``"auto"`` is resolved)."""
    stack = getattr(_local, "stack", None)
    if stack:
        return stack[-1]
    return check_name(os.environ.get("FASTMAE_BACKEND", "auto"), "FASTMAE_BACKEND")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed ops (and models built with ``backend="auto"``) on ``name``; restored on exit."""
    check_name(name)
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """``backend`` (or the current default) resolved to ``"triton"``, ``"torch"`` or ``"reference"``."""
    name = get_backend() if backend in (None, "auto") else check_name(backend)
    if name == "auto":
        return "triton" if device.type == "cuda" or _interpreting() else "torch"
    if name == "triton" and device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"backend 'triton' needs CUDA tensors (got {device}) or TRITON_INTERPRET=1 set before import"
        )
    return name
