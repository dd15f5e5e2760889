"""Backend selection: one dispatch point, read per call, overridable and always restored."""

import pytest
import torch

import fastmae
from fastmae import ops


def test_auto_picks_triton_under_the_interpreter_and_torch_otherwise(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ops.resolve_backend("auto", cpu) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert ops.resolve_backend("auto", cpu) == "torch"
    assert ops.resolve_backend(None, torch.device("cuda")) == "triton"
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        ops.resolve_backend("triton", cpu)


def test_environment_variable_is_read_on_every_call(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("FASTMAE_BACKEND", "reference")
    assert ops.resolve_backend(None, cpu) == "reference"
    monkeypatch.setenv("FASTMAE_BACKEND", "torch")
    assert ops.resolve_backend("auto", cpu) == "torch"
    assert ops.resolve_backend("reference", cpu) == "reference"  # an explicit argument wins
    monkeypatch.setenv("FASTMAE_BACKEND", "cuda")
    with pytest.raises(ValueError, match="FASTMAE_BACKEND"):
        ops.resolve_backend(None, cpu)


def test_context_manager_nests_and_restores_even_on_error(monkeypatch):
    monkeypatch.delenv("FASTMAE_BACKEND", raising=False)
    assert ops.get_backend() == "auto"
    with ops.use_backend("reference"):
        assert ops.get_backend() == "reference"
        with pytest.raises(RuntimeError):
            with ops.use_backend("torch"):
                assert ops.get_backend() == "torch"
                raise RuntimeError("boom")
        assert ops.get_backend() == "reference"
    assert ops.get_backend() == "auto"
    with pytest.raises(ValueError, match="backend must be one of"):
        with ops.use_backend("fast"):
            pass


def test_the_model_reads_the_backend_per_call(monkeypatch):
    # every MAE step of the model is an ops call with the backend in force at that call; only the
    # reference path's official encoder order skips patchify_gather and encoder_input
    model = fastmae.create_model("mae_vit_micro_patch4")  # backend="auto"
    calls = []
    for name in ("masking_ids", "patchify_gather", "encoder_input", "decoder_input", "masked_tokens",
                 "masked_mse_loss"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name,
                            lambda *a, _n=name, _f=real, **k: calls.append((_n, k["backend"])) or _f(*a, **k))
    imgs = torch.randn(1, 3, 32, 32)
    with ops.use_backend("reference"):
        model(imgs)
    resolved = "reference"
    assert calls == [("masking_ids", resolved), ("decoder_input", resolved), ("masked_mse_loss", resolved)]
    calls.clear()
    with ops.use_backend("torch"):
        model(imgs, full_pred=False)
    assert [n for n, _ in calls] == ["masking_ids", "patchify_gather", "encoder_input", "decoder_input",
                                     "masked_tokens", "masked_mse_loss"]
    assert {b for _, b in calls} == {"torch"}


def test_model_refuses_unknown_backends():
    with pytest.raises(ValueError, match="backend"):
        fastmae.create_model("mae_vit_micro_patch4", backend="cuda")
