"""Test session set-up: the Triton interpreter on, before anything imports the kernels.

``TRITON_INTERPRET`` is read when a kernel is decorated, so it must be set before ``fastmae.kernels``
is imported; with it set, the ``"auto"`` backend runs the kernels on CPU tensors. Tests that mean
the torch or reference path name their backend explicitly.
"""

import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Fresh random inputs per test, reproducible from the test's name (printed on failure)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    yield seed
