"""The whole model on the Triton fast path (under the interpreter on CPU) against the reference path:
loss, pred, mask and every parameter gradient; bf16 autocast; and torch.compile(fullgraph=True)."""

import pytest
import torch

import fastmae
from helpers import DEVICE, rel_err, requires_kernels

pytestmark = requires_kernels


def _run(model, backend, imgs, noise, full_pred=True, autocast=None):
    model.backend = backend
    model.zero_grad()
    with torch.autocast(DEVICE, dtype=autocast, enabled=autocast is not None):
        loss, pred, mask = model(imgs, 0.75, noise, full_pred=full_pred)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), None if pred is None else pred.detach().float(), mask, grads


@pytest.mark.parametrize("full_pred", [True, False])
@pytest.mark.parametrize("norm_pix", [False, True])
def test_triton_fast_path_equals_reference_in_float32(norm_pix, full_pred):
    model = fastmae.create_model("mae_vit_micro_patch4", norm_pix_loss=norm_pix).to(DEVICE)
    imgs, noise = torch.randn(2, 3, 32, 32, device=DEVICE), torch.rand(2, 64, device=DEVICE)
    ref = _run(model, "reference", imgs, noise)
    got = _run(model, "triton", imgs, noise, full_pred)
    assert got[2].equal(ref[2])
    assert abs(got[0].item() - ref[0].item()) <= 1e-5 * ref[0].item()
    if full_pred:
        assert rel_err(got[1], ref[1]) <= 1e-5
    assert got[3].keys() == ref[3].keys()
    for name in ref[3]:
        assert rel_err(got[3][name], ref[3][name]) <= 1e-5, name


def test_triton_fast_path_under_bf16_autocast():
    # Documented bf16 tolerance: the two paths round at different places (the fast path embeds the
    # gathered patches with a bf16 GEMM, the reference embeds with a bf16 conv; the loss reads bf16
    # pred in both). With 8 mantissa bits (2^-8 = 0.4%) and a handful of roundings per value on
    # the way through two blocks, 3% of the largest value bounds every output and gradient.
    model = fastmae.create_model("mae_vit_micro_patch4", norm_pix_loss=True).to(DEVICE)
    imgs, noise = torch.randn(2, 3, 32, 32, device=DEVICE), torch.rand(2, 64, device=DEVICE)
    ref = _run(model, "reference", imgs, noise, autocast=torch.bfloat16)
    got = _run(model, "triton", imgs, noise, autocast=torch.bfloat16)
    assert got[2].equal(ref[2])
    assert abs(got[0].item() - ref[0].item()) <= 3e-2 * ref[0].item()
    assert rel_err(got[1], ref[1]) <= 3e-2
    for name in ref[3]:
        assert rel_err(got[3][name], ref[3][name]) <= 3e-2, name


@pytest.mark.slow
def test_torch_compile_fullgraph_traces_the_triton_ops():
    model = fastmae.create_model("mae_vit_micro_patch4", norm_pix_loss=True, backend="triton").to(DEVICE)
    imgs, noise = torch.randn(2, 3, 32, 32, device=DEVICE), torch.rand(2, 64, device=DEVICE)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss, pred, _ = compiled(imgs, 0.75, noise)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    eager_loss, eager_pred, _ = model(imgs, 0.75, noise)
    eager_loss.backward()
    torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(pred, eager_pred, rtol=1e-6, atol=1e-6)
    for a, p in zip(grads, [p for p in model.parameters() if p.grad is not None]):
        torch.testing.assert_close(a, p.grad, rtol=1e-6, atol=1e-7)
