"""Mask generation on device (kernels/masking_ids.py): indices and mask from noise; forward only."""
import pytest

from .op_bench import run_op_benchmark


@pytest.mark.bench_op("masking_ids")
def test_masking_ids(benchmark, op_case, bench_env):
    run_op_benchmark(benchmark, op_case, bench_env)
