"""Benchmark session set-up: device, scope, time budget, and the per-op parametrisation.

Options (or environment variables, for scripts):
    --bench-scope {auto,cpu,report,full}   FASTMAE_BENCH_SCOPE   auto: full on CUDA, cpu without
    --bench-budget SECONDS                 FASTMAE_BENCH_BUDGET_S  skip the benchmarks that would
                                           start after this many seconds (the GPU report's clock)
    --bench-cpu-compile                    FASTMAE_BENCH_CPU_COMPILE=1  also run the compiled
                                           end-to-end arms on CPU (skipped by default: inductor
                                           takes 30-50 s per arm to compile the model on 2 cores)

The Triton interpreter is never used here: on CPU the fastmae provider is the torch backend.

On CPU the session runs single-threaded (FASTMAE_BENCH_THREADS overrides): on a shared 2-core
machine an OpenMP parallel region that must wake a descheduled worker stalls for ~15 ms, which
turned 50 µs ops into 17 ms ones and drowned every figure.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from . import harness, op_bench

_START = time.monotonic()


def pytest_addoption(parser):
    group = parser.getgroup("fastmae benchmarks")
    group.addoption("--bench-scope", default=os.environ.get("FASTMAE_BENCH_SCOPE", "auto"),
                    choices=("auto",) + op_bench.SCOPES, help="which shapes to benchmark (default: auto)")
    group.addoption("--bench-budget", type=float,
                    default=float(os.environ.get("FASTMAE_BENCH_BUDGET_S", "0")),
                    help="seconds after which remaining benchmarks are skipped (0: no limit)")
    group.addoption("--bench-cpu-compile", action="store_true",
                    default=os.environ.get("FASTMAE_BENCH_CPU_COMPILE") == "1",
                    help="run the compiled end-to-end arms on CPU too")


def pytest_configure(config):
    if not torch.cuda.is_available():
        torch.set_num_threads(int(os.environ.get("FASTMAE_BENCH_THREADS", "1")))
    elif os.environ.get("TRITON_INTERPRET") == "1":
        # tests/conftest.py turns the interpreter on; a GPU benchmark under it would time Python
        raise pytest.UsageError("TRITON_INTERPRET=1 is set: run the benchmarks on CUDA without the Triton "
                                "interpreter (a separate pytest run from tests/, TRITON_INTERPRET=0)")
    config.addinivalue_line("markers",
                            "bench_op(op, *variants): the fused op (and variants) a benchmark measures")
    config.addinivalue_line("markers",
                            "bench_cost(seconds): a benchmark's expected run time, for --bench-budget")


def bench_scope(config) -> str:
    scope = config.getoption("--bench-scope")
    if scope == "auto":
        return "full" if torch.cuda.is_available() else "cpu"
    if scope != "cpu" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--bench-scope {scope} needs CUDA; this machine has none (use cpu or auto)")
    return scope


def pytest_generate_tests(metafunc):
    if "op_case" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("bench_op")
    if marker is None:
        raise pytest.UsageError(f"{metafunc.function.__name__} needs @pytest.mark.bench_op(op, *variants)")
    op, variants = marker.args[0], marker.args[1:] or ({},)
    cases = op_bench.op_cases(op, variants, bench_scope(metafunc.config))
    metafunc.parametrize("op_case", cases, ids=[c.id for c in cases])


# Order of the ops within a shape: those the model's fast path runs first, so that a time budget
# cuts patchify / unpatchify (whose reference is already a single copy) before the others.
_OP_ORDER = ("masked_mse_loss", "decoder_input", "encoder_input", "encoder_input_official", "patchify_gather",
             "masking_ids", "patchify", "unpatchify")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Run every op at the first (headline) shape before any op at the next shape."""
    scope = bench_scope(config)
    rank = {}
    for i, (sh, dtype) in enumerate(op_bench.scope_shapes(scope)):
        rank.setdefault((sh, dtype), i)
        rank.setdefault((sh, None), i)

    def key(item):
        case = getattr(item, "callspec", None) and item.callspec.params.get("op_case")
        if case is None:
            return (len(rank), 0)  # not a per-op benchmark: after them, in collection order
        shape_rank = rank.get((case.shape, case.dtype), rank.get((case.shape, None), len(rank)))
        return (shape_rank, _OP_ORDER.index(case.op) if case.op in _OP_ORDER else len(_OP_ORDER))

    items[:] = sorted(items, key=key)  # stable: variants, providers and passes keep their order


def pytest_runtest_setup(item):
    budget = item.config.getoption("--bench-budget")
    cost = item.get_closest_marker("bench_cost")
    expected = cost.args[0] if cost else 0.0
    elapsed = time.monotonic() - _START
    if budget and elapsed + expected > budget:
        pytest.skip(f"benchmark time budget: {elapsed:.0f} s spent + ~{expected:.0f} s expected "
                    f"> {budget:.0f} s "
                    "(--bench-budget / FASTMAE_BENCH_BUDGET_S)")


@pytest.fixture(scope="session")
def scope(request) -> str:
    return bench_scope(request.config)


@pytest.fixture(scope="session")
def bench_env() -> harness.BenchEnv:
    """The device and its copy bandwidth, measured once per session."""
    return harness.make_env()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter):
    from .report import ops_tables
    from .train_step import summary_lines

    if op_bench.RESULTS:
        # The figures: pytest-benchmark's table times each call on the host clock, L2 flush and
        # (on CUDA) the ~1 ms spin included; median_ms here is the GPU time of the call alone.
        first = op_bench.RESULTS[0]
        terminalreporter.section("fastmae per-op: median_ms of the call alone (not pytest-benchmark's table)")
        terminalreporter.write_line(f"device {first.get('device')}, "
                                    f"copy bandwidth {first['copy_gbps']:.0f} GB/s, "
                                    f"torch {first.get('torch')}, triton {first.get('triton')}")
        for line in ops_tables(op_bench.RESULTS, with_targets=first.get("device_type") == "cuda"):
            terminalreporter.write_line(line)
    lines = summary_lines()
    if lines:
        terminalreporter.section("fastmae end-to-end")
        for line in lines:
            terminalreporter.write_line(line)
