"""The benchmark environment (device, copy bandwidth, GEMM rate, versions, bf16 peak) and the timer
(``benchmarks/NOTES.md``, "Timing"). ``python3 -m benchmarks.harness --json PATH`` writes the
environment alone (the GPU report's first step).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2 (H100: 50 MB)
QUEUE_AHEAD_CYCLES = 2_000_000  # GPU cycles (~1 ms) spun before the start event while the host queues the call
# Dense bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets, matched against the device name
# (first match wins: H100 SXM / HBM3 and GH200 fall under H100 / H200); FASTMAE_PEAK_TFLOPS overrides it.
PEAK_BF16_TFLOPS = (("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("B200", 2250.0),
                    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("RTX 4090", 165.2))


def peak_bf16_tflops(device_name: str) -> float | None:
    """The data-sheet bf16 peak of a GPU by name (``FASTMAE_PEAK_TFLOPS`` first), None when unknown."""
    if os.environ.get("FASTMAE_PEAK_TFLOPS"):
        return float(os.environ["FASTMAE_PEAK_TFLOPS"])
    return next((v for key, v in PEAK_BF16_TFLOPS if key.lower() in device_name.lower()), None)


@dataclass
class BenchEnv:
    """The device, the fastmae provider's backend (triton on CUDA, torch on CPU), the L2-flush buffer,
    and ``info``: what every result is stored with (device, copy bandwidth, GEMM rate, versions)."""

    device: torch.device
    fastmae_backend: str
    flush_buffer: torch.Tensor | None
    info: dict

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)


def make_env() -> BenchEnv:
    """The device (CUDA when available), its copy bandwidth (bytes read + written over the time of a
    512 MB copy, 64 MB on CPU), on CUDA its 8192³ bf16 GEMM rate (the practical MFU ceiling), versions."""
    try:
        from triton import __version__ as triton_version
    except ImportError:
        triton_version = None
    info = {"torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
            "python": platform.python_version(), "gemm_tflops": None}
    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
        props = torch.cuda.get_device_properties(device)
        info.update(device=props.name, sm=f"{props.major}{props.minor}", gpu_mem_gib=round(props.total_memory / 2**30))
        env = BenchEnv(device, "triton", torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=device), info)
    else:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            cpu = platform.processor() or platform.machine()
        info["device"] = f"CPU: {cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
        env = BenchEnv(torch.device("cpu"), "torch", None, info)
    info.update(device_type=env.device.type, fastmae_backend=env.fastmae_backend)
    nbytes = (512 if env.is_cuda else 64) * 2**20
    src = torch.ones(nbytes // 4, device=env.device)
    dst = torch.empty_like(src)
    copy_s = statistics.median(time_calls(env, lambda: dst.copy_(src), rounds=10, warmup=3))
    info["copy_gbps"] = round(2 * nbytes / copy_s / 1e9, 1)
    src = dst = None  # the copy buffers are freed before the GEMM allocates its own
    if env.is_cuda:
        a = torch.randn(8192, 8192, device=env.device, dtype=torch.bfloat16)
        gemm_s = statistics.median(time_calls(env, lambda: a @ a, rounds=10, warmup=3))
        info["gemm_tflops"] = round(2 * 8192**3 / gemm_s / 1e12, 1)
    return env


def timed(env: BenchEnv, fn, flush: bool = False, queue_ahead: bool = True) -> float:
    """Seconds of one ``fn()``: between CUDA events (L2 flushed first if asked), or wall time on CPU."""
    if not env.is_cuda:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if flush:
        env.flush_buffer.zero_()
    if queue_ahead:
        torch.cuda._sleep(QUEUE_AHEAD_CYCLES)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def time_calls(env: BenchEnv, fn, rounds: int, warmup: int, setup=lambda: None, flush: bool = False) -> list[float]:
    """Seconds per call of ``fn`` after ``warmup`` calls, ``setup()`` untimed before each (no pytest-benchmark)."""
    times = []
    for i in range(warmup + rounds):
        setup()
        env.sync()
        if i < warmup:
            fn()
        else:
            times.append(timed(env, fn, flush))
    return times


def measure(benchmark, env: BenchEnv, target, setup=lambda: None, *, rounds: int, warmup: int, flush: bool = True,
            queue_ahead: bool = True, peak_memory: bool = False) -> dict:
    """Time ``target()`` in pytest-benchmark's pedantic mode after ``warmup`` calls, ``setup()`` untimed
    before each: ``median_ms``, ``min_ms``, ``rounds``, ``timer`` (``queue_ahead=False``: the host's own
    time counts too, as for a whole training step); ``peak_mem_mb`` with ``peak_memory``: allocated at
    the peak of one more call above what was allocated before it (CUDA; None on CPU)."""
    time_calls(env, target, 0, warmup, setup)  # compile / JIT / autotune outside the numbers
    samples: list[float] = []

    def synced_setup():  # returns None: pytest-benchmark reads a returned value as the call's arguments
        setup()
        env.sync()

    benchmark.pedantic(lambda: samples.append(timed(env, target, flush, queue_ahead)), setup=synced_setup,
                       rounds=rounds, warmup_rounds=0, iterations=1)
    timer = "wall clock (perf_counter)"
    if env.is_cuda:
        timer = ("CUDA events around the call" + (", host queued ahead" if queue_ahead else "")
                 + (", L2 flushed before each call" if flush else ""))
    out = {"median_ms": statistics.median(samples) * 1e3, "min_ms": min(samples) * 1e3, "rounds": len(samples),
           "timer": timer, **({"peak_mem_mb": None} if peak_memory else {})}
    if peak_memory and env.is_cuda:
        synced_setup()
        torch.cuda.reset_peak_memory_stats(env.device)
        base = torch.cuda.memory_allocated(env.device)
        target()
        env.sync()
        out["peak_mem_mb"] = (torch.cuda.max_memory_allocated(env.device) - base) / 1e6
    return out


def main(argv=None) -> dict:
    """Write the environment every result is stored with (``make_env``'s ``info``, the driver added) to
    PATH; print it on one line."""
    ap = argparse.ArgumentParser(description="measure the benchmark environment and write it as JSON")
    ap.add_argument("--json", type=Path, required=True, help="where to write it")
    args = ap.parse_args(argv)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = ""
    info = {**make_env().info, "driver": driver.splitlines()[0].strip() if driver else None}
    args.json.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    gemm = f", bf16 GEMM {info['gemm_tflops']:.0f} TFLOP/s" if info["gemm_tflops"] else ""
    print(f"{info['device']} (driver {info['driver'] or '-'}), torch {info['torch']}, triton {info['triton']}, "
          f"CUDA {info['cuda']}, Python {info['python']}; copy {info['copy_gbps']:.0f} GB/s{gemm}")
    return info


if __name__ == "__main__":
    main()
