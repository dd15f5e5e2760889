"""Benchmark session set-up: scope, time budget, order, the parametrisation, the results as they come,
and the figures after the run.

Options (or FASTMAE_BENCH_SCOPE, _BUDGET_S, _CPU_COMPILE=1, _JSONL): ``--bench-scope`` (auto: full on
CUDA, cpu without), ``--bench-budget``, ``--bench-cpu-compile``, ``--bench-jsonl`` (one line per
benchmark appended as it ends: a killed session keeps all but the case it was in). Never under the
Triton interpreter: on CPU the fastmae provider is the torch backend, single-threaded
(FASTMAE_BENCH_THREADS overrides): on a shared 2-core machine an OpenMP region that wakes a
descheduled worker stalls ~15 ms, drowning every figure. ``FASTMAE_BENCH_FAIL_AFTER_TIMING=TEXT``
makes every benchmark whose test id contains TEXT raise once its timing is done, before its test
stores a figure: what the GPU report's own check uses to show such a failure is counted, not fatal.
"""
import json
import os
import time

import pytest
import torch

from . import harness, op_bench, train_step
from .cases import OPS
from .report import ops_tables, step_table

_START = time.monotonic()


def pytest_addoption(parser):
    """The options of the module docstring."""
    group = parser.getgroup("fastmae benchmarks")
    group.addoption("--bench-scope", default=os.environ.get("FASTMAE_BENCH_SCOPE", "auto"),
                    choices=("auto",) + op_bench.SCOPES, help="which shapes to benchmark (default: auto)")
    group.addoption("--bench-budget", type=float, default=float(os.environ.get("FASTMAE_BENCH_BUDGET_S", "0")),
                    help="skip the benchmarks that would start after (or, by their bench_cost, end after) "
                         "this many seconds (0: no limit)")
    group.addoption("--bench-cpu-compile", action="store_true",
                    default=os.environ.get("FASTMAE_BENCH_CPU_COMPILE") == "1",
                    help="run the compiled training-step arms on CPU too (inductor: 30-50 s per arm on 2 cores)")
    group.addoption("--bench-jsonl", default=os.environ.get("FASTMAE_BENCH_JSONL"),
                    help="append one JSON line per benchmark to this file as it ends (test id, table, outcome, "
                         "skip reason or error, the figures of its extra_info)")


def pytest_configure(config):
    """CPU threads, the interpreter refused on CUDA, the markers."""
    if not torch.cuda.is_available():
        torch.set_num_threads(int(os.environ.get("FASTMAE_BENCH_THREADS", "1")))
    elif os.environ.get("TRITON_INTERPRET") == "1":  # a GPU benchmark under the interpreter would time Python
        raise pytest.UsageError("TRITON_INTERPRET=1 is set: run the benchmarks on CUDA without the Triton "
                                "interpreter (a separate pytest run from tests/, TRITON_INTERPRET=0)")
    config.addinivalue_line("markers", "bench_op(op, *variants): the fused op (and variants) a benchmark measures")
    config.addinivalue_line("markers", "bench_cost(seconds): a benchmark's expected run time, for --bench-budget")


def bench_scope(config) -> str:
    """The scope asked for, ``auto`` resolved; a GPU scope without CUDA is a usage error."""
    scope = config.getoption("--bench-scope")
    if scope == "auto":
        return "full" if torch.cuda.is_available() else "cpu"
    if scope != "cpu" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--bench-scope {scope} needs CUDA; this machine has none (use cpu or auto)")
    return scope


def pytest_generate_tests(metafunc):
    """``op_case``: the cases of the test's ``bench_op`` marker; ``e2e``: the training-step arms."""
    if "op_case" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("bench_op")
        op = marker.args[0]  # the variants: the marker's, else the op's descriptor's (benchmarks/cases.py)
        cases = op_bench.op_cases(op, marker.args[1:] or OPS[op].variants, bench_scope(metafunc.config))
        metafunc.parametrize("op_case", cases, ids=[c.id for c in cases])
    if "e2e" in metafunc.fixturenames:
        params = [pytest.param((model, batch, arm), id=f"{model}-N{batch}-{arm}", marks=pytest.mark.bench_cost(cost))
                  for model, batch, arm, cost in train_step.e2e_params(bench_scope(metafunc.config))]
        metafunc.parametrize("e2e", params)


def run_order(item) -> tuple:
    """Where a benchmark runs: every op at the first (headline) shape, then resized_crop, the data
    pipeline, the training step, then the ops at the other shapes; by op within a shape."""
    case = item.callspec.params.get("op_case") if hasattr(item, "callspec") else None
    if case is not None:
        return (0 if case.rank == 0 else 4, case.rank, op_bench.OP_ORDER.index(case.op))
    later = ("test_bench_resized_crop", "test_bench_data", "test_bench_train_step")
    name = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
    return (1 + later.index(name) if name in later else 5, 0, 0)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """The ``run_order``; stable: variants, providers, passes and arms keep their order."""
    items[:] = sorted(items, key=run_order)


def pytest_runtest_setup(item):
    """Skip a benchmark that would start past ``--bench-budget`` (or, by its ``bench_cost``, end past it)."""
    budget = item.config.getoption("--bench-budget")
    cost = item.get_closest_marker("bench_cost")
    expected, elapsed = (cost.args[0] if cost else 0.0), time.monotonic() - _START
    if budget and elapsed + expected > budget:
        pytest.skip(f"benchmark time budget: {elapsed:.0f} s spent + ~{expected:.0f} s expected > {budget:.0f} s "
                    "(--bench-budget / FASTMAE_BENCH_BUDGET_S)")


@pytest.fixture(scope="session")
def bench_env() -> harness.BenchEnv:
    """The device and its copy bandwidth, measured once per session."""
    return harness.make_env()


@pytest.fixture(autouse=True)
def _seed():
    """The same random inputs in every run."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fail_after_timing(request):
    """``FASTMAE_BENCH_FAIL_AFTER_TIMING``: the module docstring's injected failure."""
    text = os.environ.get("FASTMAE_BENCH_FAIL_AFTER_TIMING")
    if not text or text not in request.node.nodeid or "benchmark" not in request.fixturenames:
        return
    bench = request.getfixturevalue("benchmark")
    timed = bench.pedantic

    def pedantic(*args, **kwargs):
        timed(*args, **kwargs)
        raise RuntimeError(f"failure injected after the timing (FASTMAE_BENCH_FAIL_AFTER_TIMING={text!r})")

    bench.pedantic = pedantic


def _table(item) -> str:
    """Which table of the report a benchmark's figures belong to: ``ops`` for a ``bench_op`` benchmark,
    else its module's name without ``test_bench_`` (``resized_crop``, ``data``, ``train_step``)."""
    if item.get_closest_marker("bench_op"):
        return "ops"
    return item.module.__name__.rsplit(".", 1)[-1].removeprefix("test_bench_")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With ``--bench-jsonl``: one line per benchmark, when its test body ends (or its setup skips or
    fails it); the file is opened, appended and closed each time."""
    outcome = yield
    path = item.config.getoption("--bench-jsonl")
    report = outcome.get_result()
    if not path or "benchmark" not in getattr(item, "fixturenames", ()):
        return
    if not (report.when == "call" or report.when == "setup" and not report.passed):
        return
    row = {"test": item.nodeid, "table": _table(item), "outcome": report.outcome, "when": report.when}
    if report.skipped and isinstance(report.longrepr, tuple):
        row["reason"] = report.longrepr[2].removeprefix("Skipped: ")
    elif report.failed:
        row["error"] = call.excinfo.exconly()[:300] if call.excinfo else "failed"
    bench = getattr(item, "funcargs", {}).get("benchmark")
    stats = getattr(getattr(bench, "stats", None), "stats", None)
    if stats is not None and stats.data:  # rounds timed (none when the call raised in the first)
        row["host_median_s"] = stats.median  # pytest-benchmark's clock: flush and spin included
    row["extra_info"] = dict(bench.extra_info) if bench is not None else {}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")


def pytest_terminal_summary(terminalreporter):
    """The figures (pytest-benchmark's own table times each call on the host clock, L2 flush and on
    CUDA the ~1 ms spin included: not the figures)."""
    write = terminalreporter.write_line
    if op_bench.RESULTS:
        first = op_bench.RESULTS[0]
        terminalreporter.section("fastmae per-op: median_ms of the call alone (not pytest-benchmark's table)")
        write(f"device {first['device']}, copy bandwidth {first['copy_gbps']:.0f} GB/s, "
              f"torch {first['torch']}, triton {first['triton']}")
        write("\n".join(ops_tables(op_bench.RESULTS).lines))
    if train_step.RESULTS:
        terminalreporter.section("fastmae end-to-end")
        write("\n".join(step_table(list(train_step.RESULTS.values())).lines))
