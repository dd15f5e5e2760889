"""Test session set-up: where there is no GPU, the Triton interpreter on, before anything imports the kernels.

``TRITON_INTERPRET`` is read when a kernel is decorated, so it must be set before ``fastmae.kernels``
is imported; with it set, the ``"auto"`` backend runs the kernels on CPU tensors. Tests that mean
the torch or reference path name their backend explicitly. On a CUDA machine the interpreter stays
off unless asked for (``TRITON_INTERPRET=1``): the same tests then run on the GPU (``helpers.DEVICE``).
"""

import os
import zlib

import torch

if not torch.cuda.is_available():  # asks the driver only: no CUDA context is made here
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from helpers import DEVICE, interpreting

if DEVICE == "cuda":
    # With the interpreter off on a GPU machine, tensors the tests create without a device land on
    # the GPU, so the kernels compile and run for real.
    torch.set_default_device("cuda")
    # The bad-input tests expect out-of-range and repeated indices refused; on CUDA that check
    # reads the indices (a sync), so it is opt-in and turned on here.
    os.environ.setdefault("FASTMAE_CHECK_INDICES", "1")
    # The 1e-5 agreement is IEEE float32: cuDNN convolutions (the reference patch-embed) default to
    # TF32, which alone gives ~3e-4 relative differences.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def _interpreter_numpy_problem() -> str | None:
    """Why this Triton's interpreter cannot run the kernels with this numpy, or None.

    Triton 3.6's interpreter (and older) passes every scalar kernel argument as a 1-element array and
    turns it back into an int with ``int(array)`` (3.6.0: ``triton/runtime/interpreter.py:888``, the
    ``__index__`` it patches onto ``tl.tensor``); numpy 2.4 made that a TypeError, so every loop with a
    runtime bound (``range(0, K, BLOCK)``, ``tl.range`` alike) fails. Triton 3.7 fixed it
    (``int(array.squeeze())``). Compiled kernels never take that path.
    """
    if not interpreting():
        return None
    try:
        import numpy
        import triton
        from packaging.version import Version
    except ImportError:
        return None
    if Version(triton.__version__).release[:2] < (3, 7) and Version(numpy.__version__).release[:2] >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter needs numpy < 2.4 (numpy {numpy.__version__} is "
                "installed: its int() of a 1-element array fails every kernel loop with a runtime bound; "
                "fixed in Triton 3.7). Run: pip install 'numpy<2.4'")
    return None


def pytest_configure(config):
    # One clear stop before collection instead of a TypeError in every kernel test.
    problem = _interpreter_numpy_problem()
    if problem:
        pytest.exit(problem, returncode=pytest.ExitCode.USAGE_ERROR)


# CI installs every optional extra and sets FASTMAE_REQUIRE_EXTRAS=1: a test that would skip for a
# missing extra (its reason names "extra") fails there instead, so the interop, shard and TIFF tests
# provably run in CI.
REQUIRE_EXTRAS = os.environ.get("FASTMAE_REQUIRE_EXTRAS") == "1"


def _fail_a_skip_for_a_missing_extra(report):
    if REQUIRE_EXTRAS and report.skipped and "extra" in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"FASTMAE_REQUIRE_EXTRAS=1, yet skipped for a missing extra: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_a_skip_for_a_missing_extra(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_a_skip_for_a_missing_extra(outcome.get_result())


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Fresh random inputs per test, reproducible from the test's name (printed on failure)."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    yield seed


@pytest.fixture
def cpu_default_device():
    """For the command-line tests: the CLI runs on the CPU even where the GPU test run (above) has
    made CUDA the default device, so tensors created without a device stay on the CPU."""
    before = torch.get_default_device()
    torch.set_default_device("cpu")
    yield
    torch.set_default_device(before)


@pytest.fixture
def one_thread():
    """For the command-line tests: tiny models run faster on one thread, and stay fast when other
    jobs share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def without_webdataset(monkeypatch):
    """Imports of ``webdataset`` (the ``shards`` extra) fail, as where it is not installed."""
    import builtins

    real_import = builtins.__import__

    def no_webdataset(name, *args, **kwargs):
        if name == "webdataset" or name.startswith("webdataset."):
            raise ImportError("No module named 'webdataset'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_webdataset)
