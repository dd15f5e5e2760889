"""Encoder input assembly (kernels/encoder_input.py): ``x_vis + pos_embed[1 + ids_keep]``, cls first.

Gradients: ``x_vis`` and ``cls_token`` (the position table is fixed, as in the model).
"""

import pytest

from .op_bench import run_op_benchmark


@pytest.mark.bench_op("encoder_input")
def test_encoder_input(benchmark, op_case, bench_env, scope):
    run_op_benchmark(benchmark, op_case, bench_env, scope)
