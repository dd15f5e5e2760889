"""torch.compile clones none of a fused op's inputs: its analysis of what each kernel writes is exact.

Under torch.compile a ``triton_op``'s launches are functionalised: every tensor argument that torch's
analysis of the kernel's TTIR (``identify_accessed_tensors``) finds written is cloned before the
launch. The clone of a buffer the op allocated for its output costs nothing (inductor drops it); the
clone of an input (pred and the images for the loss) is a copy of it on every call. The analysis
counts an argument as written when a store's address derives from it, including through the
values a ``@triton.jit`` helper returns, and gives up (every argument written) on code it cannot
read; so the kernels compute their store addresses in the kernel itself, from the program id and
the output pointer.

``tools/trace_triton_ops.py`` traces the fused ops forward and backward on fake CUDA tensors through
AOTAutograd's functionalisation with Triton shown an sm_90 target, once, in a subprocess (this
session interprets the kernels); per kernel these tests assert that every clone is of a buffer the
graph allocated, and that the analysis never gave up. Up to torch 2.11 the analysis built the TTIR
with every scalar argument a constant, where a scalar used as a tensor (``MAGIC.to(...)``) does not
compile: each kernel must build that way too.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from fastmae.kernel_modules import KERNEL_MODULES
from tools.sass import run_compiling

# the input pipeline's op is not part of a training step's graph, and is traced elsewhere
TRACED_MODULES = [m for m in KERNEL_MODULES if m != "resized_crop"]

pytestmark = pytest.mark.slow


def _kernel_names() -> list[str]:
    names = set()
    for module in TRACED_MODULES:
        mod = importlib.import_module(f"fastmae.kernels.{module}")
        names |= {name for name, v in vars(mod).items() if name.endswith("_kernel") and hasattr(v, "fn")}
    return sorted(names)


@pytest.fixture(scope="module")
def traced():
    if not hasattr(torch.library, "triton_op"):
        pytest.skip(f"torch {torch.__version__} has no torch.library.triton_op (torch >= 2.6)")
    return run_compiling("-m", "tools.trace_triton_ops", timeout=600)


def test_triton_ops_are_visible_to_torch_compile(traced):
    # Compiled (not interpreted), the ops are torch.library.triton_op: AOTAutograd's functionalised
    # graph of the fast path, what torch.compile hands inductor, launches every kernel of a training
    # step as a triton_kernel_wrapper node and keeps no fastmae op opaque.
    assert traced["use_triton_op"] and traced["opaque_ops"] == []
    missing = set(_kernel_names()) - set(traced["kernels"])
    assert not missing, sorted(missing)


def test_the_analysis_reads_every_kernel(traced):
    # a kernel the analysis cannot read logs a warning and has every input cloned
    assert traced["analysis_failures"] == []


@pytest.mark.parametrize("kernel", _kernel_names())
def test_compiled_graph_clones_no_input(traced, kernel):
    launches = [launch for launch in traced["launches"] if launch["kernel"] == kernel]
    assert launches, f"{kernel} is not launched by the traced step"
    for launch in launches:
        # every kernel writes something: an empty clone list would mean the launch was not analysed
        assert launch["clones"], launch
        not_allocated = {arg: src for arg, src in launch["clones"].items() if src != "allocation"}
        assert not_allocated == {}, f"{kernel} clones {not_allocated} before every launch"


@pytest.mark.parametrize("kernel", _kernel_names())
def test_kernel_builds_with_scalars_as_constants(traced, kernel):
    launches = [launch for launch in traced["launches"] if launch["kernel"] == kernel]
    assert launches, f"{kernel} is not launched by the traced step"
    assert [launch["scalars_as_constants"] for launch in launches] == [None] * len(launches)
