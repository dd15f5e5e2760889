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


# Past 2^31 elements (issue: int64 offsets). Each test builds a tensor whose last samples sit past
# element 2^31 and checks those samples, forward and backward, against the reference on a slice.
BIG = dict(device="cuda", dtype=torch.bfloat16)
TAIL = 4  # samples at the end of the batch that are compared
ONE_BF16_ULP = dict(rtol=2**-7, atol=1e-6)  # sums computed in fp32 and rounded once to bf16, as torch does


def _tail(t, n):
    return t[n - TAIL:]


@needs_cuda
def test_encoder_and_decoder_inputs_past_2_31_elements():
    # N * (K+1) * D and N * (L+1) * D > 2^31 with a wide D, to keep the batch small.
    n, num_patches, k, d = 1100, 196, 49, 40_000
    assert n * (k + 1) * d > 2**31
    ids_keep, ids_restore, _, _ = ops.masking_ids(torch.rand(n, num_patches, device="cuda"), k, backend="triton")
    pos, tok = torch.randn(1, num_patches + 1, d, **BIG), torch.randn(1, 1, d, **BIG)
    x_vis = torch.randn(n, k, d, **BIG, requires_grad=True)
    enc = ops.encoder_input(x_vis, pos, tok, ids_keep, backend="triton")  # [N, K+1, D]
    want = reference.encoder_input_ref(_tail(x_vis, n).detach(), pos, tok, _tail(ids_keep, n))
    torch.testing.assert_close(_tail(enc, n), want, **ONE_BF16_ULP)
    (g_vis,) = torch.autograd.grad(enc, x_vis, torch.ones_like(enc))
    assert _tail(g_vis, n).eq(1).all()
    del enc, g_vis, x_vis

    x = torch.randn(n, k + 1, d // 4, **BIG, requires_grad=True)  # decoder: N*(L+1)*D/4 = 2.2e9
    assert n * (num_patches + 1) * (d // 4) > 2**31
    dec = ops.decoder_input(x, ids_restore, tok[..., : d // 4], pos[..., : d // 4], backend="triton")
    want = reference.decoder_input_ref(_tail(x, n).detach(), _tail(ids_restore, n), tok[..., : d // 4],
                                       pos[..., : d // 4])
    torch.testing.assert_close(_tail(dec, n), want, **ONE_BF16_ULP)
    g = torch.randn_like(dec)
    (g_x,) = torch.autograd.grad(dec, x, g)
    x_tail = _tail(x, n).detach().requires_grad_()
    (want_g,) = torch.autograd.grad(reference.decoder_input_ref(x_tail, _tail(ids_restore, n),
                                                                tok[..., : d // 4], pos[..., : d // 4]),
                                    x_tail, _tail(g, n))
    torch.testing.assert_close(_tail(g_x, n), want_g, rtol=0, atol=0)


@needs_cuda
def test_patchify_gather_and_loss_past_2_31_elements():
    # N * C * H * W and N * L * P > 2^31 with 224 px images: N > 14,270.
    n, p, k = 14_400, 16, 49
    imgs = torch.randn(n, 3, 224, 224, **BIG)
    assert imgs.numel() > 2**31
    ids_keep, ids_restore, mask, _ = ops.masking_ids(torch.rand(n, 196, device="cuda"), k, backend="triton")
    x = ops.patchify_gather(imgs, ids_keep, p, backend="triton")
    torch.testing.assert_close(_tail(x, n), reference.patchify_gather_ref(_tail(imgs, n), _tail(ids_keep, n), p),
                               rtol=0, atol=0)
    del x
    pred = torch.randn(n, 196, 768, **BIG, requires_grad=True)
    weights = mask.clone()
    weights[: n - TAIL] = 0  # only the last samples count: their offsets pass 2^31
    loss = ops.masked_mse_loss(pred, imgs, weights, p, True, backend="triton")
    (grad,) = torch.autograd.grad(loss, pred)
    pred_tail = _tail(pred, n).detach().float().requires_grad_()
    want = reference.masked_mse_loss_ref(pred_tail, _tail(imgs, n).float(), _tail(weights, n), p, True)
    (want_grad,) = torch.autograd.grad(want, pred_tail)
    # both sides read the same bf16 values and accumulate in float32: only the summation order differs
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(_tail(grad, n).float(), want_grad, rtol=1e-2, atol=1e-6)  # grad rounded to bf16
    assert grad[: n - TAIL].eq(0).all()
