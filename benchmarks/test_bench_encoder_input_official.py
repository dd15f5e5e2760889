"""The official encoder order that encoder_input replaces: positions added to all ``L`` patches, gather, cls.

The reference for encoder_input's "vs eager" and "vs compiled" figures (``op_bench.REFERENCE_FOR``):
eager and compiled only, there is no fastmae provider. Gradients: ``x [N, L, D]`` and ``cls_token``.
"""

import pytest

from .op_bench import run_op_benchmark


@pytest.mark.bench_op("encoder_input_official")
def test_encoder_input_official(benchmark, op_case, bench_env, scope):
    run_op_benchmark(benchmark, op_case, bench_env, scope)
