"""Property tests: over random shapes, patch sizes, channel counts and mask ratios, the fast path
(torch and Triton backends) equals the reference path, forward and backward.

The Triton backend runs under the interpreter on CPU, so it gets fewer and smaller examples.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastmae
from fastmae import ops, reference
from helpers import DEVICE, requires_kernels

BACKENDS = {"torch": 25, "triton": 6}  # backend -> examples
BACKEND_PARAMS = [pytest.param(b, marks=[requires_kernels] if b == "triton" else []) for b in BACKENDS]


@st.composite
def problems(draw, max_grid=5):
    p = draw(st.integers(1, 4))
    c = draw(st.sampled_from([1, 2, 3, 4]))
    h, w = draw(st.integers(1, max_grid)), draw(st.integers(1, max_grid))
    n = draw(st.integers(1, 3))
    num_patches = h * w
    len_keep = draw(st.integers(1, num_patches))
    seed = draw(st.integers(0, 2**31 - 1))
    norm_pix = draw(st.booleans()) and p * p * c > 1  # unbiased variance needs two values per patch
    return n, c, h * p, w * p, p, len_keep, seed, norm_pix


def _inputs(n, c, hh, ww, p, len_keep, seed):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(n, c, hh, ww, generator=g, device="cpu").to(DEVICE)
    noise = torch.rand(n, (hh // p) * (ww // p), generator=g, device="cpu").to(DEVICE)
    return imgs, noise


def _check_ops(backend, problem):
    n, c, hh, ww, p, len_keep, seed, norm_pix = problem
    imgs, noise = _inputs(n, c, hh, ww, p, len_keep, seed)
    num_patches, pdim, d = noise.shape[1], p * p * c, 8
    ids_keep, ids_restore, mask, _ = ops.masking_ids(noise, len_keep, backend=backend)
    r_keep, r_restore, r_mask, _ = reference.masking_ids_ref(noise, len_keep)
    assert ids_keep.equal(r_keep) and ids_restore.equal(r_restore) and mask.equal(r_mask)

    x = ops.patchify_gather(imgs, ids_keep, p, backend=backend)
    torch.testing.assert_close(x, reference.patchify_gather_ref(imgs, ids_keep, p), rtol=0, atol=0)

    pos, cls, tok = (torch.randn(1, num_patches + 1, d, device=DEVICE), torch.randn(1, 1, d, device=DEVICE),
                     torch.randn(1, 1, d, device=DEVICE))
    x_vis = torch.randn(n, len_keep, d, device=DEVICE, requires_grad=True)
    enc = ops.encoder_input(x_vis, pos, cls, ids_keep, backend=backend)
    enc_ref = reference.encoder_input_ref(x_vis, pos, cls, ids_keep)
    torch.testing.assert_close(enc, enc_ref, rtol=1e-5, atol=1e-5)
    dec_in = enc.detach().requires_grad_()
    dec = ops.decoder_input(dec_in, ids_restore, tok, pos, backend=backend)
    dec_ref = reference.decoder_input_ref(dec_in, ids_restore, tok, pos)
    torch.testing.assert_close(dec, dec_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(dec)
    (got,) = torch.autograd.grad(dec, dec_in, g)
    (want,) = torch.autograd.grad(dec_ref, dec_in, g)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    pred = torch.randn(n, num_patches, pdim, device=DEVICE, requires_grad=True)
    loss = ops.masked_mse_loss(pred, imgs, mask, p, norm_pix, backend=backend)
    loss_ref = reference.masked_mse_loss_ref(pred, imgs, mask, p, norm_pix)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    (got,) = torch.autograd.grad(loss, pred)
    (want,) = torch.autograd.grad(loss_ref, pred)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_ops_equal_reference(backend):
    @settings(max_examples=BACKENDS[backend], deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(problems())
    def check(problem):
        _check_ops(backend, problem)

    check()


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_model_fast_path_equals_reference(backend):
    @settings(max_examples=max(BACKENDS[backend] // 3, 2), deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(problems(max_grid=4), st.sampled_from([0.0, 0.25, 0.5, 0.75]))
    def check(problem, ratio):
        n, c, hh, ww, p, _, seed, norm_pix = problem
        num_patches = (hh // p) * (ww // p)
        if int(num_patches * (1 - ratio)) < 1:
            return
        torch.manual_seed(seed)
        model = fastmae.MaskedAutoencoderViT((hh, ww), p, c, 16, 1, 2, 8, 1, 2, norm_pix_loss=norm_pix).to(DEVICE)
        imgs, noise = _inputs(n, c, hh, ww, p, 1, seed)
        results = {}
        for b in ("reference", backend):
            model.backend = b
            model.zero_grad()
            loss, pred, mask = model(imgs, ratio, noise)
            loss.backward()
            results[b] = (loss.detach(), pred.detach(), mask, [q.grad.clone() for q in model.parameters()
                                                               if q.grad is not None])
        ref, got = results["reference"], results[backend]
        torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-5)
        assert got[2].equal(ref[2]) and len(got[3]) == len(ref[3])
        for a, b in zip(got[3], ref[3]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(b.abs().max().item(), 1e-3))

    check()
