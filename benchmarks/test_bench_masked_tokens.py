"""The decoder's masked tokens (kernels/masked_tokens.py): ``x [N, L+1, D] -> [N, M, D]``; grad x."""
import pytest

from .op_bench import run_op_benchmark


@pytest.mark.bench_op("masked_tokens")
def test_masked_tokens(benchmark, op_case, bench_env):
    run_op_benchmark(benchmark, op_case, bench_env)
