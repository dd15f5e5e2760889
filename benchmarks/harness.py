"""The benchmark environment (device, copy bandwidth, GEMM rate, versions) and the timer.

Timing (``measure``):
    CUDA  every round: the setup (e.g. the forward before a backward) and a synchronise, untimed;
          then a 256 MB write that flushes the L2 cache and a ~1 ms GPU spin (during which the host
          queues the call), then the call between two CUDA events. The median of the event times
          is the figure: GPU time, kernels back to back, cold L2 — as inside a training step, where
          the host runs ahead. pytest-benchmark's own statistics time the same calls with a host
          clock (flush, spin, Python and launch overhead included).
    CPU   wall clock (``time.perf_counter``) around each call; no cache flush.
Warm-up calls (Triton JIT, ``torch.compile``) run before any timed round.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field

import torch

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
            "device": self.device_name, "device_type": self.device.type,
            "copy_gbps": round(self.copy_gbps, 1),
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
    times = time_calls(env, lambda: dst.copy_(src), rounds=10 if env.is_cuda else 5, warmup=2)
    del src, dst
    return 2 * nbytes / statistics.median(times) / 1e9


def gemm_tflops(env: BenchEnv, n: int = 8192) -> float:
    """bf16 GEMM rate, TFLOP/s, of an ``n x n x n`` matmul: the practical ceiling for MFU."""
    a = torch.randn(n, n, device=env.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=env.device, dtype=torch.bfloat16)
    times = time_calls(env, lambda: a @ b, rounds=10, warmup=3)
    return 2 * n**3 / statistics.median(times) / 1e12


# --------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------


def time_calls(env: BenchEnv, fn, rounds: int, warmup: int, setup=None, flush: bool = False) -> list[float]:
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
