"""One training step (forward, backward, AdamW), reference / fastmae x eager / compiled (``train_step.py``);
the arms are parametrised in ``conftest.py``. Then the loop as ``fastmae pretrain`` runs it, its switches
flipped one at a time (``run_loop_arm``), and on CUDA one epoch of it under ``set_sync_debug_mode("error")``."""
import math

import pytest
import torch

from fastmae.cli import engine

from .train_step import LoopRun, loop_arms, loop_params, run_loop_arm, run_train_step


def test_train_step(benchmark, e2e, bench_env, request):
    model, batch, arm = e2e
    if arm.endswith("compiled") and not bench_env.is_cuda and not request.config.getoption("--bench-cpu-compile"):
        pytest.skip("compiled arm on CPU: inductor needs 30-50 s per arm to compile the model on a 2-core "
                    "machine (measured); run with --bench-cpu-compile to include it")
    info = run_train_step(benchmark, bench_env, model, arm, batch)
    assert info["images_per_s"] > 0 and math.isfinite(info["step_ms"])


_CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("arm", list(loop_arms(_CUDA)))
@pytest.mark.parametrize("loop_case", loop_params("cpu" if not _CUDA else "full"),
                         ids=lambda c: f"{c[0]}-{c[1]}px-N{c[2]}")
def test_train_loop(benchmark, bench_env, request, tmp_path, loop_case, arm):
    model, size, batch, iters = loop_case
    if loop_arms(bench_env.is_cuda)[arm]["compiled"] and not bench_env.is_cuda \
            and not request.config.getoption("--bench-cpu-compile"):
        pytest.skip("compiled arm on CPU: inductor needs 30-50 s per arm to compile the model on a 2-core "
                    "machine (measured); run with --bench-cpu-compile to include it")
    info = run_loop_arm(benchmark, bench_env, model, size, batch, iters, arm, str(tmp_path))
    assert info["images_per_s"] > 0 and math.isfinite(info["step_ms"])


@pytest.mark.skipif(not _CUDA, reason="torch.cuda.set_sync_debug_mode needs CUDA")
def test_train_loop_steps_do_not_sync_on_cuda(bench_env, tmp_path):
    """One epoch of the default loop under ``torch.cuda.set_sync_debug_mode("error")``, the device
    read at the epoch's end (the one sync of a step that prints) excepted."""
    model, size, batch, iters = loop_params("full")[0]
    loop = LoopRun(bench_env, model, size, 64, 4, loop_arms(True)["loop"], str(tmp_path))
    loop.epoch()  # compiles, starts the workers
    torch.cuda.synchronize()
    real_read = engine.NonFiniteGuard.read

    def read(self, n, dist):
        torch.cuda.set_sync_debug_mode(0)
        try:
            return real_read(self, n, dist)
        finally:
            torch.cuda.set_sync_debug_mode("error")
    engine.NonFiniteGuard.read = read
    torch.cuda.set_sync_debug_mode("error")
    try:
        loop.epoch()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        engine.NonFiniteGuard.read = real_read
