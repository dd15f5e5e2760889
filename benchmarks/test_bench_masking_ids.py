"""Mask generation on device (kernels/masking_ids.py): ``ids_keep``, ``ids_restore``, ``mask``
from noise. Forward only: the outputs are indices and a constant mask.
"""

import pytest

from .op_bench import run_op_benchmark


@pytest.mark.bench_op("masking_ids")
def test_masking_ids(benchmark, op_case, bench_env, scope):
    run_op_benchmark(benchmark, op_case, bench_env, scope)
