"""patchify, unpatchify and patchify_gather (kernels/patchify.py): reference, reference compiled, fastmae.

The backward of ``patchify`` is ``unpatchify`` of the gradient and vice versa; ``patchify_gather``
reads only the visible patches (its backward writes the whole image gradient, zeros where masked).
"""

import pytest

from .op_bench import run_op_benchmark


@pytest.mark.bench_op("patchify")
def test_patchify(benchmark, op_case, bench_env, scope):
    run_op_benchmark(benchmark, op_case, bench_env, scope)


@pytest.mark.bench_op("unpatchify")
def test_unpatchify(benchmark, op_case, bench_env, scope):
    run_op_benchmark(benchmark, op_case, bench_env, scope)


@pytest.mark.bench_op("patchify_gather")
def test_patchify_gather(benchmark, op_case, bench_env, scope):
    run_op_benchmark(benchmark, op_case, bench_env, scope)
