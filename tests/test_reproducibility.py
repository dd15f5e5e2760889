"""Same seed and same noise -> bitwise identical loss and gradients across runs (no atomics anywhere),
and index arithmetic that holds past 2^31 elements (CUDA only: it needs > 8 GB of device memory)."""

import pytest
import torch

import fastmae
from fastmae import ops, reference
from helpers import DEVICE, requires_kernels

needs_cuda = pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA device (and the interpreter off)")


def _step(backend, device, norm_pix=True):
    torch.manual_seed(0)
    model = fastmae.create_model("mae_vit_micro_patch4", norm_pix_loss=norm_pix, backend=backend).to(device)
    g = torch.Generator().manual_seed(1)
    imgs = torch.randn(3, 3, 32, 32, generator=g, device="cpu").to(device)
    noise = torch.rand(3, 64, generator=g, device="cpu").to(device)
    loss, _, _ = model(imgs, 0.75, noise)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=requires_kernels)])
def test_two_runs_are_bitwise_identical(backend):
    loss_a, grads_a = _step(backend, DEVICE)
    loss_b, grads_b = _step(backend, DEVICE)
    assert loss_a.equal(loss_b)
    assert all(a.equal(b) for a, b in zip(grads_a, grads_b))


@needs_cuda
def test_two_runs_are_bitwise_identical_on_gpu_with_a_larger_batch():
    torch.manual_seed(0)
    model = fastmae.create_model("mae_vit_tiny_patch4", norm_pix_loss=True, backend="triton").cuda()
    imgs, noise = torch.randn(64, 3, 32, 32, device="cuda"), torch.rand(64, 64, device="cuda")
    runs = []
    for _ in range(2):
        model.zero_grad()
        loss, _, _ = model(imgs, 0.75, noise)
        loss.backward()
        runs.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert runs[0][0].equal(runs[1][0])
    assert all(a.equal(b) for a, b in zip(runs[0][1], runs[1][1]))


@needs_cuda
def test_indexing_past_2_31_elements():
    # N * (L+1) * D > 2^31 for the decoder input: 2^31 / (197 * 512) ~ 21,300 samples; use a wide D
    # instead to keep the batch small: N=1100, L=196, D=10,000 bf16 -> 2.17e9 elements (4.3 GB).
    n, num_patches, d, k = 1100, 196, 10_000, 49
    assert n * (num_patches + 1) * d > 2**31
    dt = torch.bfloat16
    noise = torch.rand(n, num_patches, device="cuda")
    ids_keep, ids_restore, mask = ops.random_masking(noise, k, backend="triton")
    x = torch.randn(n, k + 1, d, device="cuda", dtype=dt)
    tok = torch.randn(1, 1, d, device="cuda", dtype=dt)
    pos = torch.randn(1, num_patches + 1, d, device="cuda", dtype=dt)
    out = ops.decoder_input(x, ids_restore, tok, pos, backend="triton")  # [N, L+1, D]
    # check the last samples, whose offsets are past 2^31, against the reference on a slice
    tail = slice(n - 4, n)
    want = reference.decoder_input_ref(x[tail], ids_restore[tail], tok, pos)
    torch.testing.assert_close(out[tail], want)
    del out
    enc = ops.encoder_input(x[:, 1:], pos, tok, ids_keep, backend="triton")  # N*(K+1)*D = 0.55e9: fine
    torch.testing.assert_close(enc[tail], reference.encoder_input_ref(x[tail, 1:], pos, tok, ids_keep[tail]))
    del enc, x
    # loss: N*L*P > 2^31 with P = 768 needs N > 14,270 images of 224 px (~4.3 GB bf16 for imgs and pred each)
    n2 = 14_400
    imgs = torch.randn(n2, 3, 224, 224, device="cuda", dtype=dt)
    pred = torch.randn(n2, num_patches, 768, device="cuda", dtype=dt)
    m = (torch.rand(n2, num_patches, device="cuda") < 0.75).float()
    m[: n2 - 2] = 0  # only the last two samples count: their offsets pass 2^31
    loss = ops.masked_mse_loss(pred, imgs, m, 16, True, backend="triton")
    want = reference.masked_mse_loss_ref(pred[-2:].float(), imgs[-2:].float(), m[-2:], 16, True)
    # both sides read the same bf16 values and accumulate in float32: only the summation order differs
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-6)
