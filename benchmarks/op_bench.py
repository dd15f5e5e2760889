"""The per-op benchmark: cases by scope, the three providers, and the body of every ``test_bench_<op>.py``.

Each result's ``benchmark.extra_info`` holds: the median and minimum time, the minimal and the
reference bytes (``benchmarks/bytes_model.py``), the effective bandwidth (minimal bytes / median
time), its percentage of the device copy bandwidth measured in the same session, peak memory,
the device, torch and triton versions, dtype and shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import bytes_model as bm
from .cases import fastmae_call, make_inputs, reference_call
from .count_bytes import count_bytes
from .harness import BenchEnv, measure, peak_memory

PROVIDERS = ("reference", "reference-compiled", "fastmae")
MODES = ("fwd", "bwd", "fwdbwd")
SCOPES = ("cpu", "report", "full")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# --------------------------------------------------------------------------------------------------
# the per-op cases
# --------------------------------------------------------------------------------------------------

# Reference-only ops: the official order a fused op replaces in the model, benchmarked (eager and
# compiled, no fastmae provider) as that op's reference. encoder_input_ref already gathers first
# (1.7x the minimal bytes); the official encoder adds positions to all L patches (4.7x).
REFERENCE_FOR = {"encoder_input_official": "encoder_input"}

# The dimensions each op's work depends on: cases equal on these are measured once.
_RELEVANT = {
    "patchify": ("N", "C", "H", "p"),
    "unpatchify": ("N", "C", "H", "p"),
    "patchify_gather": ("N", "C", "H", "p", "K"),
    "encoder_input": ("N", "L", "K", "D"),
    "encoder_input_official": ("N", "L", "K", "D"),
    "decoder_input": ("N", "L", "K", "Dd"),
    "masked_mse_loss": ("N", "C", "H", "p", "K"),
    "masking_ids": ("N", "L", "K"),
}


@dataclass(frozen=True)
class OpCase:
    op: str
    variant: tuple  # sorted (key, value) pairs, hashable
    shape: bm.MAEShape
    dtype: torch.dtype
    provider: str
    mode: str

    @property
    def variant_dict(self) -> dict:
        return dict(self.variant)

    @property
    def label(self) -> str:
        return bm.variant_label(self.op, self.variant_dict)

    @property
    def id(self) -> str:
        sh = self.shape
        v = "-".join(f"{k}={v}" for k, v in self.variant)
        parts = [v] if v else []
        parts += [f"{sh.model}-N{sh.batch}-m{sh.mask_ratio}", DTYPE_NAMES[self.dtype], self.provider,
                  self.mode]
        return "-".join(parts)


def scope_shapes(scope: str) -> list[tuple[bm.MAEShape, torch.dtype]]:
    """The (shape, dtype) grid of a scope, in the order the benchmarks run."""
    if scope == "cpu":
        # A micro ViT at batch 4: exercises every path on a 2-core CPU; not a speed claim.
        sh = bm.shape_for("micro", 4, 0.75)
        return [(sh, torch.float32), (sh, torch.bfloat16)]
    if scope == "report":
        # The headline shapes, sized for the 10-minute GPU report.
        return [
            (bm.shape_for("vit_b16", 256, 0.75), torch.bfloat16),
            (bm.shape_for("vit_l16", 256, 0.75), torch.bfloat16),
            (bm.shape_for("vit_b16", 256, 0.75), torch.float32),
        ]
    if scope == "full":
        # The grid: ViT-B/16 and ViT-L/16 at 224 px, mask 0.75 / 0.9, batch 64 / 256, bf16 / fp32.
        return [
            (bm.shape_for(model, batch, ratio), dtype)
            for dtype in (torch.bfloat16, torch.float32)
            for model in ("vit_b16", "vit_l16")
            for batch in (256, 64)
            for ratio in (0.75, 0.9)
        ]
    raise ValueError(f"unknown scope {scope!r}; choose one of {SCOPES}")


def op_cases(op: str, variants, scope: str) -> list[OpCase]:
    """Every (variant, shape, dtype, provider, mode) to run for ``op``, duplicates removed."""
    cases, seen = [], set()
    modes = ("fwd",) if op == "masking_ids" else MODES
    for variant in variants:
        for sh, dtype in scope_shapes(scope):
            if op == "masking_ids":
                dtype = torch.float32  # the noise is float32 whatever the model's dtype
            dims = sh.as_dict()
            key = (tuple(sorted(variant.items())), tuple(dims[k] for k in _RELEVANT[op]), dtype)
            if key in seen:
                continue
            seen.add(key)
            for provider in PROVIDERS:
                if provider == "fastmae" and op in REFERENCE_FOR:
                    continue
                if provider == "reference-compiled" and scope == "cpu" and dtype != torch.float32:
                    continue  # inductor on CPU: one dtype keeps the suite's compile time down
                for mode in modes:
                    cases.append(OpCase(op, tuple(sorted(variant.items())), sh, dtype, provider, mode))
    return cases


# --------------------------------------------------------------------------------------------------
# providers
# --------------------------------------------------------------------------------------------------

_COMPILED: dict = {}
RESULTS: list[dict] = []  # every per-op result of the session, for conftest's terminal summary


def _raise_recompile_limits() -> None:
    """Every (op, shape) compiles its own graph; keep dynamo from falling back to eager after 8.

    Process-wide on purpose, and only ever raised: the benchmark session is its own pytest process
    whose every compiled provider needs the headroom; no library code path calls this.
    """
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 256))
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 4096))


def provider_fn(case: OpCase, env: BenchEnv):
    """The callable ``fn(**inputs)`` a provider runs, and the backend name it reports."""
    if case.provider == "reference":
        return reference_call(case.op, case.variant_dict, case.shape), "reference"
    if case.provider == "reference-compiled":
        key = (case.op, case.variant, case.shape, case.dtype)
        if key not in _COMPILED:
            _raise_recompile_limits()
            fn = reference_call(case.op, case.variant_dict, case.shape)
            _COMPILED[key] = torch.compile(fn, dynamic=False, fullgraph=True)
        return _COMPILED[key], "reference+inductor"
    if case.provider == "fastmae":
        return fastmae_call(case.op, case.variant_dict, case.shape, env.fastmae_backend), env.fastmae_backend
    raise ValueError(f"unknown provider {case.provider!r}")


# --------------------------------------------------------------------------------------------------
# the benchmark body
# --------------------------------------------------------------------------------------------------


def rounds_for(env: BenchEnv, scope: str) -> tuple[int, int]:
    """(timed rounds, warm-up calls)."""
    if not env.is_cuda:
        return 5, 2
    return (10, 3) if scope == "report" else (20, 3)


def run_op_benchmark(benchmark, case: OpCase, env: BenchEnv, scope: str) -> dict:
    """Measure one op case; fill ``benchmark.extra_info``; return it."""
    fn, backend = provider_fn(case, env)
    inputs, grad_of = make_inputs(case.op, case.variant_dict, case.shape, case.dtype, env.device)
    wrt = [inputs[k] for k in grad_of]
    state: dict = {}

    def forward():
        state["out"] = fn(**inputs)

    def backward():
        out = state.pop("out")
        if "grad" not in state:
            state["grad"] = torch.ones_like(out) if out.dim() == 0 else torch.randn_like(out)
        torch.autograd.grad(out, wrt, state["grad"])

    def clear():
        state.pop("out", None)

    if case.mode == "fwd":
        target, setup = forward, clear
    elif case.mode == "bwd":
        target, setup = backward, forward
    else:
        target, setup = (lambda: (forward(), backward())), clear

    rounds, warmup = rounds_for(env, scope)
    if case.provider == "reference-compiled":
        warmup += 1
    timing = measure(benchmark, env, target, setup, rounds=rounds, warmup=warmup, flush=True)
    peak = peak_memory(env, target, setup)
    clear()

    traffic = bm.op_bytes(case.op, case.shape, case.dtype, **case.variant_dict)[case.mode]
    _check_reference_bytes(case, traffic)
    gbps = traffic.minimal / timing.median_s / 1e9
    info = {
        "op": case.op, "variant": case.label, "provider": case.provider, "backend": backend,
        "mode": case.mode,
        "dtype": DTYPE_NAMES[case.dtype], "shape": case.shape.as_dict(), "scope": scope,
        **timing.as_dict(),
        "minimal_bytes": traffic.minimal, "reference_bytes": traffic.reference,
        "effective_gbps": gbps, "copy_gbps": env.copy_gbps, "pct_of_copy_bw": 100 * gbps / env.copy_gbps,
        "ideal_ms_at_copy_bw": traffic.minimal / (env.copy_gbps * 1e9) * 1e3,
        "peak_mem_mb": None if peak is None else peak / 1e6,
        **env.describe(),
    }
    sh = case.shape
    benchmark.group = (f"{case.label} {sh.model} N={sh.batch} mask={sh.mask_ratio} "
                       f"{DTYPE_NAMES[case.dtype]} {case.mode}")
    benchmark.extra_info.update(info)
    RESULTS.append(info)
    return info


_CHECKED: set = set()


def _check_reference_bytes(case: OpCase, traffic: bm.Traffic) -> None:
    """The reported reference bytes must be what the eager reference really moves (counted on meta)."""
    key = (case.op, case.variant, case.shape, case.dtype, case.mode)
    if key in _CHECKED or case.mode == "fwdbwd":
        return
    inputs, grad_of = make_inputs(case.op, case.variant_dict, case.shape, case.dtype, "meta")
    fwd, bwd = count_bytes(reference_call(case.op, case.variant_dict, case.shape), inputs, grad_of,
                           backward=case.mode == "bwd")
    counted = (fwd if case.mode == "fwd" else bwd).total
    assert abs(counted - traffic.reference) <= 1e-3 * counted + 64, (
        f"bytes model for {case.label} {case.mode} says {traffic.reference} reference bytes, "
        f"the eager reference moved {counted} (benchmarks/count_bytes.py)"
    )
    _CHECKED.add(key)
