"""One training step (forward, backward, AdamW), reference / fastmae x eager / compiled (``train_step.py``);
the arms are parametrised in ``conftest.py``."""
import math

import pytest

from .train_step import run_train_step


def test_train_step(benchmark, e2e, bench_env, request):
    model, batch, arm = e2e
    if arm.endswith("compiled") and not bench_env.is_cuda and not request.config.getoption("--bench-cpu-compile"):
        pytest.skip("compiled arm on CPU: inductor needs 30-50 s per arm to compile the model on a 2-core "
                    "machine (measured); run with --bench-cpu-compile to include it")
    info = run_train_step(benchmark, bench_env, model, arm, batch)
    assert info["images_per_s"] > 0 and math.isfinite(info["step_ms"])
