"""Decoder input assembly (kernels/decoder_input.py): mask tokens, unshuffle, + positions; grads x, mask_token."""
import pytest

from .op_bench import run_op_benchmark


@pytest.mark.bench_op("decoder_input")
def test_decoder_input(benchmark, op_case, bench_env):
    run_op_benchmark(benchmark, op_case, bench_env)
