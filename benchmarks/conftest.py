"""The benchmark session: options, the per-op cases and their measurement, order, time budget, one JSON
line per benchmark as it ends, and the figures after the run (``benchmarks/NOTES.md``, "Running the
suite"). Never under the Triton interpreter: on CPU the fastmae provider is the torch backend,
single-threaded (``FASTMAE_BENCH_THREADS``): a shared 2-core machine stalls ~15 ms whenever an OpenMP
region wakes a descheduled worker.
"""
import json
import os
import time
from typing import NamedTuple

import pytest
import torch

from . import harness, train_step
from .bytes_model import DTYPE_NAMES, op_bytes
from .cases import OPS, MAEShape, make_inputs, op_call, shape_for, variant_label
from .report import ops_tables, step_table

_START = time.monotonic()
SCOPES = ("cpu", "report", "full")
PROVIDERS = ("reference", "reference-compiled", "fastmae")
# Within a shape, the ops the model's fast path runs first: a time budget cuts patchify / unpatchify
# (whose reference is already a single copy) before the others.
OP_ORDER = ("masked_mse_loss", "decoder_input", "encoder_input", "masked_tokens", "patchify_gather",
            "masking_ids", "patchify", "unpatchify")
OP_RESULTS: list[dict] = []  # every per-op result of the session, for the terminal summary
_COMPILED: dict = {}  # (op, variant, shape, dtype) -> the compiled reference, shared by its passes


def pytest_addoption(parser):
    group = parser.getgroup("fastmae benchmarks")
    group.addoption("--bench-scope", default=os.environ.get("FASTMAE_BENCH_SCOPE", "auto"),
                    choices=("auto",) + SCOPES, help="which shapes to benchmark (auto: full on CUDA, cpu without)")
    group.addoption("--bench-budget", type=float, default=float(os.environ.get("FASTMAE_BENCH_BUDGET_S", "0")),
                    help="skip the benchmarks that would start after (or, by their bench_cost, end after) "
                         "this many seconds (0: no limit)")
    group.addoption("--bench-cpu-compile", action="store_true",
                    default=os.environ.get("FASTMAE_BENCH_CPU_COMPILE") == "1",
                    help="run the compiled training-step arms on CPU too (inductor: 30-50 s per arm on 2 cores)")
    group.addoption("--bench-jsonl", default=os.environ.get("FASTMAE_BENCH_JSONL"),
                    help="append one JSON line per benchmark to this file as it ends")


def pytest_configure(config):
    if not torch.cuda.is_available():
        torch.set_num_threads(int(os.environ.get("FASTMAE_BENCH_THREADS", "1")))
    elif os.environ.get("TRITON_INTERPRET") == "1":  # a GPU benchmark under the interpreter would time Python
        raise pytest.UsageError("TRITON_INTERPRET=1 is set: run the benchmarks on CUDA without the Triton "
                                "interpreter (a separate pytest run from tests/, TRITON_INTERPRET=0)")


def bench_scope(config) -> str:
    """The scope asked for, ``auto`` resolved; a GPU scope without CUDA is a usage error."""
    scope = config.getoption("--bench-scope")
    if scope == "auto":
        return "full" if torch.cuda.is_available() else "cpu"
    if scope != "cpu" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--bench-scope {scope} needs CUDA; this machine has none (use cpu or auto)")
    return scope


def scope_shapes(scope: str) -> list[tuple[MAEShape, torch.dtype]]:
    """The (shape, dtype) grid of a scope, headline first."""
    bf16, fp32, base, large = torch.bfloat16, torch.float32, "mae_vit_base_patch16", "mae_vit_large_patch16"
    if scope == "cpu":  # exercises every path on a 2-core CPU; not a speed claim
        sh = shape_for("mae_vit_micro_patch4", 4, 0.75)
        return [(sh, fp32), (sh, bf16)]
    if scope == "report":  # the headline shape alone: what the GPU report's few minutes of ops can cover
        return [(shape_for(base, 256, 0.75), bf16)]
    return [(shape_for(m, n, r), dt) for dt in (bf16, fp32) for m in (base, large) for n in (256, 64)
            for r in (0.75, 0.9)]


class OpCase(NamedTuple):
    """One per-op benchmark: an op variant at a shape and dtype, one provider, one pass."""

    op: str
    variant: tuple  # sorted (key, value) pairs, hashable
    shape: MAEShape
    dtype: torch.dtype
    provider: str
    mode: str
    scope: str
    rank: int  # position of (shape, dtype) in the scope: the run order

    def id(self) -> str:
        sh = self.shape
        return "-".join([f"{k}={v}" for k, v in self.variant] + [f"{sh.model}-N{sh.batch}-m{sh.mask_ratio}",
                                                                 DTYPE_NAMES[self.dtype], self.provider, self.mode])


def op_cases(op: str, variants, scope: str) -> list[OpCase]:
    """Every (variant, shape, dtype, provider, pass) of ``op``; cases with equal arguments (tensors'
    shapes and dtypes, the others' values) run once."""
    cases, seen = [], set()
    for variant in variants:
        items = tuple(sorted(variant.items()))
        for rank, (sh, dtype) in enumerate(scope_shapes(scope)):
            dtype = OPS[op].input_dtype or dtype
            kwargs, _ = make_inputs(op, variant, sh, dtype, "meta", reference=True)
            key = (items, *((k, (v.shape, v.dtype) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()))
            if key in seen:
                continue
            seen.add(key)
            cases += [OpCase(op, items, sh, dtype, provider, mode, scope, rank) for provider in PROVIDERS
                      for mode in OPS[op].passes  # inductor on CPU: one dtype keeps the compile time down
                      if not (provider == "reference-compiled" and scope == "cpu" and dtype != torch.float32)]
    return cases


def pytest_generate_tests(metafunc):
    """``op_case``: the cases of the test's ``bench_op`` marker (its variants, else the descriptor's);
    ``e2e``: the training-step arms."""
    if "op_case" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("bench_op")
        cases = op_cases(marker.args[0], marker.args[1:] or OPS[marker.args[0]].variants,
                         bench_scope(metafunc.config))
        metafunc.parametrize("op_case", cases, ids=[c.id() for c in cases])
    if "e2e" in metafunc.fixturenames:
        params = [pytest.param((model, batch, arm), id=f"{model}-N{batch}-{arm}", marks=pytest.mark.bench_cost(cost))
                  for model, batch, arm, cost in train_step.e2e_params(bench_scope(metafunc.config))]
        metafunc.parametrize("e2e", params)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Every op at the first (headline) shape, then resized_crop, the data pipeline, the training step,
    then the ops at the other shapes; by op within a shape; stable otherwise."""
    later = ("test_bench_resized_crop", "test_bench_data", "test_bench_train_step")

    def order(item):
        case = item.callspec.params.get("op_case") if hasattr(item, "callspec") else None
        if case is not None:
            return (0 if case.rank == 0 else 4, case.rank, OP_ORDER.index(case.op))
        name = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        return (1 + later.index(name) if name in later else 5, 0, 0)

    items[:] = sorted(items, key=order)


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
    torch.manual_seed(0)


def _compiled_reference(case: OpCase):
    """The reference under ``torch.compile(fullgraph=True, dynamic=False)``, once per (op, shape, dtype)."""
    key = (case.op, case.variant, case.shape, case.dtype)
    if key not in _COMPILED:
        # Every (op, shape) compiles its own graph: keep dynamo from falling back to eager after 8. Only
        # ever raised, in the benchmark session's own process; the names changed across torch releases.
        cfg = torch._dynamo.config
        for name, floor in (("recompile_limit", 256), ("cache_size_limit", 256),
                            ("accumulated_recompile_limit", 4096), ("accumulated_cache_size_limit", 4096)):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), floor))
        _COMPILED[key] = torch.compile(op_call(case.op), dynamic=False, fullgraph=True)
    return _COMPILED[key]


@pytest.fixture
def op_result(benchmark, op_case: OpCase, bench_env) -> dict:
    """Times ``op_case`` (``benchmarks/NOTES.md``: the providers and passes); its figures go into
    ``benchmark.extra_info``."""
    case, env, variant = op_case, bench_env, dict(op_case.variant)
    if case.provider == "fastmae":
        fn, backend = op_call(case.op, env.fastmae_backend), env.fastmae_backend
    elif case.provider == "reference":
        fn, backend = op_call(case.op), "reference"
    else:
        fn, backend = _compiled_reference(case), "reference+inductor"
    inputs, grad_of = make_inputs(case.op, variant, case.shape, case.dtype, env.device,
                                  reference=case.provider != "fastmae")
    state: dict = {}

    def forward():
        state["out"] = fn(**inputs)

    def backward():
        out = state.pop("out")
        grad = state.setdefault("grad", torch.ones_like(out) if out.dim() == 0 else torch.randn_like(out))
        torch.autograd.grad(out, [inputs[k] for k in grad_of], grad)

    def clear():
        state.pop("out", None)

    target, setup = {"fwd": (forward, clear), "bwd": (backward, forward),
                     "fwdbwd": (lambda: (forward(), backward()), clear)}[case.mode]
    rounds, warmup = (10 if case.scope == "report" else 20, 3) if env.is_cuda else (5, 2)
    timing = harness.measure(benchmark, env, target, setup, rounds=rounds, peak_memory=True,
                             warmup=warmup + (case.provider == "reference-compiled"))
    clear()
    traffic = op_bytes(case.op, variant, case.shape, case.dtype)[case.mode]
    gbps = traffic.minimal / timing["median_ms"] / 1e6
    info = {"op": case.op, "variant": variant_label(case.op, variant), "provider": case.provider,
            "backend": backend, "mode": case.mode, "dtype": DTYPE_NAMES[case.dtype], "shape": case.shape.as_dict(),
            "scope": case.scope, **timing, "minimal_bytes": traffic.minimal, "reference_bytes": traffic.reference,
            "effective_gbps": gbps, "pct_of_copy_bw": 100 * gbps / env.info["copy_gbps"],
            "ideal_ms_at_copy_bw": traffic.minimal / (env.info["copy_gbps"] * 1e6), **env.info}
    benchmark.group = " ".join([info["variant"], case.shape.model, f"N={case.shape.batch}",
                                f"mask={case.shape.mask_ratio}", info["dtype"], case.mode])
    benchmark.extra_info.update(info)
    OP_RESULTS.append(info)
    return info


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With ``--bench-jsonl``: one line per benchmark when its test body ends (or its setup skips or fails
    it): test id, table (``ops``, else the module's name less ``test_bench_``), outcome, skip reason or
    error, its ``extra_info``; the file is opened, appended and closed each time."""
    report = (yield).get_result()
    path = item.config.getoption("--bench-jsonl")
    if not path or "benchmark" not in getattr(item, "fixturenames", ()):
        return
    if not (report.when == "call" or report.when == "setup" and not report.passed):
        return
    module = item.module.__name__.rsplit(".", 1)[-1]
    table = "ops" if item.get_closest_marker("bench_op") else module.removeprefix("test_bench_")
    row = {"test": item.nodeid, "table": table, "outcome": report.outcome, "when": report.when}
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
    if OP_RESULTS:
        first = OP_RESULTS[0]
        terminalreporter.section("fastmae per-op: median_ms of the call alone (not pytest-benchmark's table)")
        write(f"device {first['device']}, copy bandwidth {first['copy_gbps']:.0f} GB/s, "
              f"torch {first['torch']}, triton {first['triton']}")
        write("\n".join(ops_tables(OP_RESULTS).lines))
    if train_step.RESULTS:
        terminalreporter.section("fastmae end-to-end")
        write("\n".join(step_table(list(train_step.RESULTS.values())).lines))
