"""Timing, environment and the per-op benchmark body shared by every ``test_bench_<op>.py``.

Timing (``measure``):
    CUDA  every round: the setup (e.g. the forward before a backward) and a synchronise, untimed;
          then a 256 MB write that flushes the L2 cache and a ~1 ms GPU spin (during which the host
          queues the call), then the call between two CUDA events. The median of the event times
          is the figure: GPU time, kernels back to back, cold L2 — as inside a training step, where
          the host runs ahead. pytest-benchmark's own statistics time the same calls with a host
          clock (flush, spin, Python and launch overhead included).
    CPU   wall clock (``time.perf_counter``) around each call; no cache flush.
Warm-up calls (Triton JIT, ``torch.compile``) run before any timed round.

Each result's ``benchmark.extra_info`` holds: the median and minimum time, the minimal and the
reference bytes (``benchmarks/bytes_model.py``), the effective bandwidth (minimal bytes / median
time), its percentage of the device copy bandwidth measured in the same session, peak memory,
the device, torch and triton versions, dtype and shapes.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field

import torch

from . import bytes_model as bm
from .cases import fastmae_call, make_inputs, reference_call
from .count_bytes import count_bytes

PROVIDERS = ("reference", "reference-compiled", "fastmae")
MODES = ("fwd", "bwd", "fwdbwd")
SCOPES = ("cpu", "report", "full")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2 (H100: 50 MB)


# --------------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------------


def versions() -> dict:
    """torch, triton, CUDA, Python versions (triton: ``None`` when not installed)."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        triton_version = None
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


@dataclass
class BenchEnv:
    """What every result is reported with: the device, its measured copy bandwidth, versions."""

    device: torch.device
    device_name: str
    copy_gbps: float
    gemm_tflops: float | None
    versions: dict
    flush_buffer: torch.Tensor | None = None
    fastmae_backend: str = "torch"
    info: dict = field(default_factory=dict)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def flush(self) -> None:
        """Evict the L2 cache by writing a buffer larger than it (CUDA only)."""
        if self.flush_buffer is not None:
            self.flush_buffer.zero_()

    def sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict:
        return {
            "device": self.device_name, "device_type": self.device.type, "copy_gbps": round(self.copy_gbps, 1),
            "gemm_tflops": None if self.gemm_tflops is None else round(self.gemm_tflops, 1),
            "fastmae_backend": self.fastmae_backend, **self.versions, **self.info,
        }


def make_env(measure_gemm: bool = True) -> BenchEnv:
    """Pick the device (CUDA when available), measure its copy bandwidth (and bf16 GEMM rate)."""
    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
        name = torch.cuda.get_device_name(device)
        flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=device)
        backend = "triton"
        props = torch.cuda.get_device_properties(device)
        info = {"sm": f"{props.major}{props.minor}", "gpu_mem_gib": round(props.total_memory / 2**30, 1),
                "l2_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1)}
    else:
        device = torch.device("cpu")
        name = f"CPU: {_cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
        flush, backend, info = None, "torch", {}
    env = BenchEnv(device, name, 0.0, None, versions(), flush, backend, info)
    env.copy_gbps = copy_bandwidth(env)
    if measure_gemm and env.is_cuda:
        env.gemm_tflops = gemm_tflops(env)
    return env


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def copy_bandwidth(env: BenchEnv) -> float:
    """Device-to-device copy bandwidth, GB/s (10^9 bytes/s): bytes read + bytes written over time."""
    nbytes = (512 if env.is_cuda else 64) * 2**20
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=env.device).fill_(1.0)
    dst = torch.empty_like(src)
    times = _time_calls(env, lambda: dst.copy_(src), rounds=10 if env.is_cuda else 5, warmup=2)
    del src, dst
    return 2 * nbytes / statistics.median(times) / 1e9


def gemm_tflops(env: BenchEnv, n: int = 8192) -> float:
    """bf16 GEMM rate, TFLOP/s, of an ``n x n x n`` matmul: the practical ceiling for MFU."""
    a = torch.randn(n, n, device=env.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=env.device, dtype=torch.bfloat16)
    times = _time_calls(env, lambda: a @ b, rounds=10, warmup=3)
    return 2 * n**3 / statistics.median(times) / 1e12


# --------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------


def _time_calls(env: BenchEnv, fn, rounds: int, warmup: int, setup=None, flush: bool = False) -> list[float]:
    """Seconds per call of ``fn`` (after ``setup``, untimed), without pytest-benchmark."""
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    times = []
    for _ in range(rounds):
        if setup:
            setup()
        env.sync()
        times.append(_timed(env, fn, flush))
    return times


# GPU cycles to spin before the start event (~1 ms): the host queues the timed call meanwhile, so
# its kernels run back to back and the events measure GPU time, not Python and launch overhead.
_QUEUE_AHEAD_CYCLES = 2_000_000


def _timed(env: BenchEnv, fn, flush: bool = False, queue_ahead: bool = True) -> float:
    """One call of ``fn``: time between CUDA events (L2 flushed first if asked), or wall time on CPU."""
    if env.is_cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if flush:
            env.flush()
        if queue_ahead and hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(_QUEUE_AHEAD_CYCLES)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@dataclass
class Timing:
    median_s: float
    min_s: float
    rounds: int
    timer: str

    def as_dict(self) -> dict:
        return {"median_ms": self.median_s * 1e3, "min_ms": self.min_s * 1e3, "rounds": self.rounds,
                "timer": self.timer}


def measure(benchmark, env: BenchEnv, target, setup=None, *, rounds: int, warmup: int, flush: bool = True,
            queue_ahead: bool = True) -> Timing:
    """Time ``target()`` with pytest-benchmark's pedantic mode; ``setup()`` runs untimed before each call.

    The figure is the median of the per-call times ``_timed`` takes (GPU time on CUDA; with
    ``queue_ahead=False`` the host's own time counts too, as for a whole training step); the
    pytest-benchmark statistics of the same calls are host-clock times that also include the L2
    flush, the queue-ahead spin and Python overhead.
    """
    samples: list[float] = []

    def _setup():
        if setup is not None:
            setup()
        env.sync()

    def _target():
        samples.append(_timed(env, target, flush, queue_ahead))

    for _ in range(warmup):  # compile / JIT / autotune outside the numbers
        _setup()
        target()
    env.sync()
    benchmark.pedantic(_target, setup=_setup, rounds=rounds, warmup_rounds=0, iterations=1)
    if env.is_cuda:
        timer = "CUDA events around the call" + (", host queued ahead" if queue_ahead else "") + (
            ", L2 flushed before each call" if flush else "")
    else:
        timer = "wall clock (perf_counter)"
    return Timing(statistics.median(samples), min(samples), len(samples), timer)


def peak_memory(env: BenchEnv, target, setup=None) -> int | None:
    """Bytes allocated at the peak of one ``target()`` call above what was allocated before it (CUDA)."""
    if not env.is_cuda:
        return None
    if setup is not None:
        setup()
    env.sync()
    torch.cuda.reset_peak_memory_stats(env.device)
    base = torch.cuda.memory_allocated(env.device)
    target()
    env.sync()
    return torch.cuda.max_memory_allocated(env.device) - base


# --------------------------------------------------------------------------------------------------
# the per-op cases
# --------------------------------------------------------------------------------------------------

# The dimensions each op's work depends on: cases equal on these are measured once.
_RELEVANT = {
    "patchify": ("N", "C", "H", "p"),
    "unpatchify": ("N", "C", "H", "p"),
    "patchify_gather": ("N", "C", "H", "p", "K"),
    "encoder_input": ("N", "L", "K", "D"),
    "decoder_input": ("N", "L", "K", "Dd"),
    "masked_mse_loss": ("N", "C", "H", "p", "K"),
    "random_masking": ("N", "L", "K"),
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
        parts += [f"{sh.model}-N{sh.batch}-m{sh.mask_ratio}", DTYPE_NAMES[self.dtype], self.provider, self.mode]
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
    modes = ("fwd",) if op == "random_masking" else MODES
    for variant in variants:
        for sh, dtype in scope_shapes(scope):
            if op == "random_masking":
                dtype = torch.float32  # the noise is float32 whatever the model's dtype
            dims = sh.as_dict()
            key = (tuple(sorted(variant.items())), tuple(dims[k] for k in _RELEVANT[op]), dtype)
            if key in seen:
                continue
            seen.add(key)
            for provider in PROVIDERS:
                if provider == "reference-compiled" and scope == "cpu" and dtype != torch.float32:
                    continue  # inductor on CPU: one dtype keeps the suite's compile time down
                for mode in modes:
                    cases.append(OpCase(op, tuple(sorted(variant.items())), sh, dtype, provider, mode))
    return cases


# --------------------------------------------------------------------------------------------------
# providers
# --------------------------------------------------------------------------------------------------

_COMPILED: dict = {}


def _raise_recompile_limits() -> None:
    """Every (op, shape) compiles its own graph; keep dynamo from falling back to eager after 8."""
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
        "op": case.op, "variant": case.label, "provider": case.provider, "backend": backend, "mode": case.mode,
        "dtype": DTYPE_NAMES[case.dtype], "shape": case.shape.as_dict(), "scope": scope,
        **timing.as_dict(),
        "minimal_bytes": traffic.minimal, "reference_bytes": traffic.reference,
        "effective_gbps": gbps, "copy_gbps": env.copy_gbps, "pct_of_copy_bw": 100 * gbps / env.copy_gbps,
        "ideal_ms_at_copy_bw": traffic.minimal / (env.copy_gbps * 1e9) * 1e3,
        "peak_mem_mb": None if peak is None else peak / 1e6,
        **env.describe(),
    }
    benchmark.group = f"{case.label} {case.shape.model} N={case.shape.batch} mask={case.shape.mask_ratio} {DTYPE_NAMES[case.dtype]} {case.mode}"
    benchmark.extra_info.update(info)
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
