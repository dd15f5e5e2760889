"""End to end: one training step (forward, backward, AdamW) — reference and fastmae, eager and compiled.

Reports images/s, MFU (``benchmarks/flops.py``), peak memory and the fused ops' share of the step
(see ``benchmarks/train_step.py``). On CPU: a tiny model in float32, and the fast/reference ratio.
"""

import pytest
import torch

from .conftest import bench_scope
from .train_step import e2e_params, run_train_step


def pytest_generate_tests(metafunc):
    if "e2e" not in metafunc.fixturenames:
        return
    params = [
        pytest.param((model, batch, arm), id=f"{model}-N{batch}-{arm}", marks=pytest.mark.bench_cost(cost))
        for model, batch, arm, cost in e2e_params(bench_scope(metafunc.config))
    ]
    metafunc.parametrize("e2e", params)


def test_train_step(benchmark, e2e, bench_env, request):
    model, batch, arm = e2e
    cpu_compile = request.config.getoption("--bench-cpu-compile")
    if arm.endswith("compiled") and not bench_env.is_cuda and not cpu_compile:
        pytest.skip("compiled arm on CPU: inductor needs 30-50 s per arm to compile the model on a 2-core "
                    "machine (measured); run with --bench-cpu-compile to include it")
    info = run_train_step(benchmark, bench_env, model, arm, batch)
    assert info["images_per_s"] > 0 and torch.isfinite(torch.tensor(info["step_ms"]))
