"""The per-op benchmark: cases by scope, the three providers, and the body of every ``test_bench_<op>.py``.

Providers: ``reference`` (eager official algorithm), ``reference-compiled`` (the same under
``torch.compile(fullgraph=True, dynamic=False)``), ``fastmae`` (``triton`` on CUDA, ``torch`` on CPU).
Passes: ``fwd`` (inputs require grad), ``bwd`` (``autograd.grad`` after an untimed forward), ``fwdbwd``.
Each result: times, minimal and reference bytes, GB/s (minimal / median time) and its % of the copy
bandwidth measured in the session, peak memory, device, versions, dtype and shapes.
"""

from dataclasses import dataclass

import torch

from .bytes_model import DTYPE_NAMES, op_bytes
from .cases import OPS, MAEShape, make_inputs, op_call, shape_for, variant_label
from .harness import BenchEnv, measure

SCOPES = ("cpu", "report", "full")
# Within a shape, the ops the model's fast path runs first: a time budget cuts patchify / unpatchify
# (whose reference is already a single copy) before the others.
OP_ORDER = ("masked_mse_loss", "decoder_input", "encoder_input", "masked_tokens", "patchify_gather",
            "masking_ids", "patchify", "unpatchify")
RESULTS: list[dict] = []  # every per-op result of the session, for the terminal summary


@dataclass(frozen=True)
class OpCase:
    """One benchmark: an op variant at a shape and dtype, one provider, one pass."""

    op: str
    variant: tuple  # sorted (key, value) pairs, hashable
    shape: MAEShape
    dtype: torch.dtype
    provider: str
    mode: str
    scope: str
    rank: int  # position of (shape, dtype) in the scope: the run order

    @property
    def id(self) -> str:
        """The pytest id: variant, model, batch, mask ratio, dtype, provider, pass."""
        sh = self.shape
        return "-".join([f"{k}={v}" for k, v in self.variant] + [f"{sh.model}-N{sh.batch}-m{sh.mask_ratio}",
                                                                 DTYPE_NAMES[self.dtype], self.provider, self.mode])


def scope_shapes(scope: str) -> list[tuple[MAEShape, torch.dtype]]:
    """The (shape, dtype) grid of a scope, headline first."""
    bf16, fp32 = torch.bfloat16, torch.float32
    if scope == "cpu":  # exercises every path on a 2-core CPU; not a speed claim
        sh = shape_for("mae_vit_micro_patch4", 4, 0.75)
        return [(sh, fp32), (sh, bf16)]
    base, large = "mae_vit_base_patch16", "mae_vit_large_patch16"
    if scope == "report":  # the headline shape alone: what the GPU report's few minutes of ops can cover
        return [(shape_for(base, 256, 0.75), bf16)]
    if scope == "full":  # ViT-B/16 and ViT-L/16, mask 0.75 / 0.9, batch 256 / 64, bf16 / fp32
        return [(shape_for(m, n, r), dt) for dt in (bf16, fp32) for m in (base, large) for n in (256, 64)
                for r in (0.75, 0.9)]
    raise ValueError(f"unknown scope {scope!r}; choose one of {SCOPES}")


def op_cases(op: str, variants, scope: str) -> list[OpCase]:
    """Every (variant, shape, dtype, provider, pass) to run for ``op``; cases whose inputs (shapes,
    dtypes) and static arguments (patch size, ``len_keep``...) are equal run once."""
    cases, seen = [], set()
    for variant in variants:
        items = tuple(sorted(variant.items()))
        for rank, (sh, dtype) in enumerate(scope_shapes(scope)):
            dtype = OPS[op].input_dtype or dtype
            inputs, _ = make_inputs(op, variant, sh, dtype, "meta", reference=True)
            key = (items, tuple((k, t.shape, t.dtype) for k, t in inputs.items()),
                   tuple(sorted(op_call(op, variant, sh).keywords.items())))
            if key in seen:
                continue
            seen.add(key)
            for provider in ("reference", "reference-compiled", "fastmae"):
                if provider == "reference-compiled" and scope == "cpu" and dtype != torch.float32:
                    continue  # inductor on CPU: one dtype keeps the suite's compile time down
                for mode in OPS[op].passes:
                    cases.append(OpCase(op, items, sh, dtype, provider, mode, scope, rank))
    return cases


_COMPILED: dict = {}


def _raise_recompile_limits() -> None:
    """Every (op, shape) compiles its own graph: keep dynamo from falling back to eager after 8. Process-wide
    on purpose, only ever raised: the benchmark session is its own process; no library code calls this."""
    cfg = torch._dynamo.config
    for name, floor in (("recompile_limit", 256), ("cache_size_limit", 256), ("accumulated_recompile_limit", 4096),
                        ("accumulated_cache_size_limit", 4096)):  # the names changed across torch releases
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), floor))


def provider_fn(case: OpCase, env: BenchEnv):
    """The callable ``fn(**inputs)`` a provider runs, and the backend name it reports."""
    variant = dict(case.variant)
    if case.provider == "fastmae":
        return op_call(case.op, variant, case.shape, env.fastmae_backend), env.fastmae_backend
    if case.provider == "reference":
        return op_call(case.op, variant, case.shape), "reference"
    key = (case.op, case.variant, case.shape, case.dtype)
    if key not in _COMPILED:
        _raise_recompile_limits()
        _COMPILED[key] = torch.compile(op_call(case.op, variant, case.shape), dynamic=False, fullgraph=True)
    return _COMPILED[key], "reference+inductor"


def run_op_benchmark(benchmark, case: OpCase, env: BenchEnv) -> dict:
    """Measure one case; fill ``benchmark.extra_info`` and ``RESULTS``; return the result."""
    fn, backend = provider_fn(case, env)
    variant = dict(case.variant)
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
    timing = measure(benchmark, env, target, setup, rounds=rounds, peak_memory=True,
                     warmup=warmup + (case.provider == "reference-compiled"))
    clear()
    traffic = op_bytes(case.op, variant, case.shape, case.dtype)[case.mode]
    gbps = traffic.minimal / timing["median_ms"] / 1e6
    info = {"op": case.op, "variant": variant_label(case.op, variant), "provider": case.provider,
            "backend": backend, "mode": case.mode, "dtype": DTYPE_NAMES[case.dtype], "shape": case.shape.as_dict(),
            "scope": case.scope, **timing, "minimal_bytes": traffic.minimal, "reference_bytes": traffic.reference,
            "effective_gbps": gbps, "pct_of_copy_bw": 100 * gbps / env.info["copy_gbps"],
            "ideal_ms_at_copy_bw": traffic.minimal / (env.info["copy_gbps"] * 1e6),
            **env.info}
    sh = case.shape
    benchmark.group = f"{info['variant']} {sh.model} N={sh.batch} mask={sh.mask_ratio} {info['dtype']} {case.mode}"
    benchmark.extra_info.update(info)
    RESULTS.append(info)
    return info
