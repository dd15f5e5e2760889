"""patchify, unpatchify (each the other's backward) and patchify_gather (visible patches only): kernels/patchify.py."""
import pytest

from .op_bench import run_op_benchmark


@pytest.mark.bench_op("patchify")
def test_patchify(benchmark, op_case, bench_env):
    run_op_benchmark(benchmark, op_case, bench_env)


@pytest.mark.bench_op("unpatchify")
def test_unpatchify(benchmark, op_case, bench_env):
    run_op_benchmark(benchmark, op_case, bench_env)


@pytest.mark.bench_op("patchify_gather")
def test_patchify_gather(benchmark, op_case, bench_env):
    run_op_benchmark(benchmark, op_case, bench_env)
