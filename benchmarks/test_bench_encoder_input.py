"""Encoder input assembly (kernels/encoder_input.py); the references run the official encoder order."""
import pytest

from .op_bench import run_op_benchmark


@pytest.mark.bench_op("encoder_input")
def test_encoder_input(benchmark, op_case, bench_env):
    run_op_benchmark(benchmark, op_case, bench_env)
