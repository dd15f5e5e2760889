"""masked_mse_loss (fastmae.ops, kernels/masked_mse_loss.py) against masked_mse_loss_ref.

The reference runs in float64 on the same (upcast) values, so a bf16/fp16 input is compared with
what exact arithmetic gives. Both backends compute in float32: the loss is a float32 scalar, and
grad_pred is rounded once to pred's dtype; the tolerances (LOSS_RTOL, GRAD_RTOL below) follow from that.
"""

import importlib

import pytest
import torch
import triton
import triton.language as tl

from helpers import DEVICE, DTYPES, TOLERANCES, assert_close, poisoned, requires_kernels
from fastmae import ops
from fastmae.reference import masked_mse_loss_ref

pytestmark = requires_kernels

kmod = importlib.import_module("fastmae.kernels.masked_mse_loss")

# (patch, C, H, W, N), by regime
SHAPES = [
    pytest.param(4, 3, 12, 16, 2, id="p4-c3-L12"),  # P = 48, a 3x4 grid, one program holds every row
    pytest.param(4, 3, 12, 20, 1, id="p4-c3-batch1-L15"),  # batch 1, odd L (a partial tile of rows)
    pytest.param(14, 3, 28, 42, 1, id="p14-P588"),  # 2-pixel chunks: 98 per patch, padded to 128
    pytest.param(16, 3, 32, 48, 2, id="p16-P768"),  # ViT-B/16's P = 768: 16-byte loads, a partial program
    pytest.param(16, 3, 32, 64, 4, id="p16-even"),  # 32 (full) and 24 (masked) rows: full programs, no row mask
    pytest.param(3, 3, 6, 9, 2, id="p3-odd"),  # odd patch side: one pixel per load, P = 27
    pytest.param(4, 1, 8, 12, 2, id="p4-c1"),  # one channel: no channel interleave
    pytest.param(4, 4, 8, 8, 2, id="p4-c4"),  # four channels (a power of two)
]
BACKENDS = ["triton", "torch"]

# Tolerances of _check against the float64 reference.
# The loss: the library's float32 contract, rtol 1e-5, whatever the input dtype (the sums run in
# float32; the measured error is ~1e-7). No absolute term: every loss _check sees is O(1) or larger.
LOSS_RTOL = 1e-5
# grad_pred: computed in float32 and rounded once to pred's dtype, so one ulp of that dtype (at most
# 2^-7 of the value for bf16, 2^-10 for fp16; float32 keeps the 1e-5 contract). One ulp, not the
# half ulp of a round-to-nearest: Triton's interpreter converts float32 -> bf16 by truncation, where
# the GPU rounds to nearest, so a CPU result can be one ulp off.
GRAD_RTOL = {torch.float32: 1e-5, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
# ... plus float32's atol for the elements near zero, where pred - target cancels and what is left
# is the float32 error of the (norm-pix) target, ~1e-7 of its O(1) values.
GRAD_ATOL = TOLERANCES[torch.float32][1]


def _images(n, c, h, w, dtype):
    return torch.randn(n, c, h, w).to(dtype)


def _mask(n, num_patches):
    mask = (torch.rand(n, num_patches) < 0.75).float()  # [N, L], 1 = removed (counts)
    mask[0, 0] = 1.0  # at least one counted patch
    return mask


def _ids_masked(n, num_patches, m):
    return torch.rand(n, num_patches).argsort(dim=1)[:, num_patches - m:]  # [N, M], noise order


def _reference(pred, imgs, mask, p, norm_pix, ids, upstream):
    """float64 loss and grad_pred of the reference, with ``upstream`` as d(out)/d(loss)."""
    pred64 = pred.detach().double().requires_grad_()
    mask64 = mask.double() if mask is not None else None
    loss = masked_mse_loss_ref(pred64, imgs.double(), mask64, p, norm_pix, ids_masked=ids)
    loss.backward(torch.tensor(upstream, dtype=torch.float64))
    return loss.detach(), pred64.grad


def _run(pred, imgs, mask, p, norm_pix, ids, backend, upstream):
    pred = pred.detach().requires_grad_()
    with poisoned():
        loss = ops.masked_mse_loss(pred, imgs, mask, p, norm_pix, ids_masked=ids, backend=backend)
        loss.backward(torch.tensor(upstream))
    return loss.detach(), pred.grad


def _check(pred, imgs, mask, p, norm_pix, ids, backend):
    dtype = pred.dtype
    # upstream gradient den * P / 2 makes grad_pred = w * (pred - target): O(1) values, so the
    # tolerances mean the same thing for every shape
    den = float(mask.sum()) if ids is None else float(ids.numel())
    upstream = den * pred.shape[2] / 2
    loss, grad = _run(pred, imgs, mask, p, norm_pix, ids, backend, upstream)
    ref_loss, ref_grad = _reference(pred, imgs, mask, p, norm_pix, ids, upstream)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert grad.dtype == dtype and grad.shape == pred.shape
    torch.testing.assert_close(loss.double(), ref_loss, rtol=LOSS_RTOL, atol=0.0)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=GRAD_RTOL[dtype], atol=GRAD_ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_pix", [False, True], ids=["plain", "normpix"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p, c, h, w, n", SHAPES)
def test_full_form(p, c, h, w, n, dtype, norm_pix, backend):
    num_patches = (h // p) * (w // p)
    imgs = _images(n, c, h, w, dtype)
    pred = torch.randn(n, num_patches, p * p * c).to(dtype)  # [N, L, P]
    _check(pred, imgs, _mask(n, num_patches), p, norm_pix, None, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_pix", [False, True], ids=["plain", "normpix"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p, c, h, w, n", SHAPES)
def test_masked_form(p, c, h, w, n, dtype, norm_pix, backend):
    num_patches = (h // p) * (w // p)
    m = num_patches - int(num_patches * 0.25)  # MAE's 75 %
    ids = _ids_masked(n, num_patches, m)
    imgs = _images(n, c, h, w, dtype)
    pred = torch.randn(n, m, p * p * c).to(dtype)  # [N, M, P]
    _check(pred, imgs, None, p, norm_pix, ids, backend)


@pytest.mark.parametrize("p, h, w", [(4, 8, 12), (16, 32, 48)], ids=["p4", "p16"])
@pytest.mark.parametrize("pred_dtype, img_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
                                                   (torch.float32, torch.float16)])
def test_images_in_another_dtype(pred_dtype, img_dtype, p, h, w):
    # the usual mixed-precision case: bf16 pred from the decoder, float32 images from the loader.
    # At p = 16 the loads of pred and of the image then hold different pixel counts (8 bf16 or 4
    # float32 values in 16 bytes), which the in-register permutation must line up.
    n, c = 2, 3
    num_patches = (h // p) * (w // p)
    imgs = _images(n, c, h, w, img_dtype)
    pred = torch.randn(n, num_patches, p * p * c).to(pred_dtype)
    _check(pred, imgs, _mask(n, num_patches), p, True, None, "triton")
    ids = _ids_masked(n, num_patches, 4)
    _check(pred[:, :4].contiguous(), imgs, None, p, True, ids, "triton")


def _at_odd_element(t):
    """``t``'s values in a contiguous view that starts one element into its storage."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = buf[1:].view(t.shape)
    view.copy_(t)
    return view


@pytest.mark.parametrize("form", ["full", "masked"])
@pytest.mark.parametrize("odd", ["pred", "imgs"])
def test_bf16_at_an_odd_element_is_read_value_by_value(odd, form):
    # A contiguous bf16 view starting at an odd element (a slice of a larger buffer): its data sit
    # 2 bytes past a 4-byte boundary, where a 32-bit word load is a misaligned address (on a GPU a
    # sticky error that ends the process; the interpreter reads it anyway). The launcher must read
    # such a tensor value by value and keep the word loads for the aligned one. p = 16: 8 bf16 a load,
    # the regime that reads words when aligned.
    n, c, h, w, p = 2, 3, 32, 48, 16
    num_patches = (h // p) * (w // p)
    rows = num_patches if form == "full" else 4
    imgs = _images(n, c, h, w, torch.bfloat16)
    pred = torch.randn(n, rows, p * p * c).to(torch.bfloat16)
    if odd == "pred":
        pred = _at_odd_element(pred)
    else:
        imgs = _at_odd_element(imgs)
    moved = pred if odd == "pred" else imgs
    assert moved.is_contiguous() and moved.storage_offset() == 1 and moved.data_ptr() % 4 == 2
    mask = _mask(n, num_patches) if form == "full" else None
    ids = _ids_masked(n, num_patches, rows) if form == "masked" else None
    _, _, kwargs = kmod._launch_args(pred, imgs, mask, ids, p, True)
    assert kmod.values_per_load(2, kwargs["S"]) == 8  # 8 bf16 a load, of pred and of the image
    assert (kwargs["PRED_WORDS"], kwargs["IMG_WORDS"]) == ((False, True) if odd == "pred" else (True, False))
    _check(pred, imgs, mask, p, True, ids, "triton")


def test_division_by_multiply_high():
    # the kernels divide by R (rows per image) and by the grid width with _magic's multiplier; check
    # it against // for divisors of every size and the dividends where rounding is closest
    import numpy as np

    rng = np.random.default_rng(0)
    divisors = list(range(1, 600)) + [2**k + e for k in range(10, 31) for e in (-1, 0, 1)]
    divisors += [int(d) for d in rng.integers(1, 2**31 - 1, 300)]
    for d in divisors:
        m, s = kmod._magic(d)
        m &= 0xFFFFFFFF  # the kernel reads the int32 bits as unsigned
        x = np.concatenate([rng.integers(0, 2**31, 2000), [0, 1, d - 1, d, d + 1, 2**31 - 1],
                            (np.arange(1, 40) * d) % 2**31, (np.arange(1, 40) * d - 1) % 2**31]).astype(np.uint64)
        got = ((x * 2 * np.uint64(m)) >> np.uint64(32)) >> np.uint64(s)  # umulhi(2x, m) >> s
        assert np.array_equal(got, x // np.uint64(d)), d


from fastmae.kernels._loss_rows import _div  # noqa: E402  (a @triton.jit helper the probe kernel calls)


@triton.jit
def _div_probe(X, OUT, MAGIC, SHIFT, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(OUT + offs, _div(tl.load(X + offs), MAGIC, SHIFT))


@pytest.mark.parametrize("d", [1, 2, 3, 7, 14, 147, 196, 2**20 + 1, 2**31 - 1])
def test_division_in_the_kernel(d):
    # the kernel's _div on dividends up to 2^31 - 1, where the multiply-high's top bit is set
    # (an arithmetic shift would then go wrong) and where rounding is closest
    m, s = kmod._magic(d)
    values = [0, 1, d - 1, d, d + 1, 2**31 - 1, 2**31 - 2, 2**31 - 1 - (2**31 - 1) % d,
              2**30 + 12345, 1610612736, 1999999999, 2**31 - d, 123456789, 5, 77, 999]
    x = torch.tensor([min(max(v, 0), 2**31 - 1) for v in values], dtype=torch.int32, device=DEVICE)
    out = torch.empty_like(x)
    _div_probe[(1,)](x, out, m, s, BLOCK=16)
    assert torch.equal(out.cpu(), x.cpu() // d), d


def test_int32_ids_and_fractional_weights():
    n, c, h, w, p = 2, 3, 8, 12, 4
    imgs = _images(n, c, h, w, torch.float32)
    ids = _ids_masked(n, 6, 5).to(torch.int32)
    _check(torch.randn(n, 5, 48), imgs, None, p, True, ids, "triton")
    weights = torch.rand(n, 6)  # mask as weights, not just 0/1
    _check(torch.randn(n, 6, 48), imgs, weights, p, False, None, "triton")


@pytest.mark.slow
def test_many_programs(monkeypatch):
    # one row per program (p = 4: 4 chunks of 4 pixels) and an 8-wide final reduction: 20 partials
    # summed in three steps, the last one partial
    monkeypatch.setattr(kmod, "_TILE", 16)
    monkeypatch.setattr(kmod, "_BLOCK_G", 8)
    n, c, h, w, p = 2, 3, 8, 20, 4  # N * L = 20 rows
    imgs = _images(n, c, h, w, torch.float32)
    pred = torch.randn(n, 10, 48)
    programs, _, kwargs = kmod._launch_args(pred, imgs, _mask(n, 10), None, p, True)
    assert (programs, kwargs["BLOCK_R"]) == (20, 1) and kmod._sum_args(programs, 20, True)["BLOCK_G"] == 8
    _check(pred, imgs, _mask(n, 10), p, True, None, "triton")
    _check(torch.randn(n, 10, 48), imgs, None, p, True, _ids_masked(n, 10, 10), "triton")


@pytest.mark.parametrize("norm_pix", [False, True], ids=["plain", "normpix"])
def test_nothing_masked_gives_zero(norm_pix):
    # official code: 0 / 0 = NaN; fastmae: 0, and a zero gradient
    n, c, h, w, p = 2, 3, 8, 8, 4
    imgs = _images(n, c, h, w, torch.float32)
    pred = torch.randn(n, 4, 48)
    loss, grad = _run(pred, imgs, torch.zeros(n, 4), p, norm_pix, None, "triton", 1.0)
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    empty_ids = torch.zeros(n, 0, dtype=torch.int64)
    loss, grad = _run(torch.randn(n, 0, 48), imgs, None, p, norm_pix, empty_ids, "triton", 1.0)
    assert loss.item() == 0.0 and grad.shape == (n, 0, 48)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_constant_patches_norm_pix_stay_finite(dtype):
    # variance 0: the target is 0 / sqrt(0 + 1e-6) = 0, not NaN
    n, c, h, w, p = 2, 3, 8, 8, 4
    imgs = torch.full((n, c, h, w), 3.0).to(dtype)
    imgs[1] = -7.0
    pred = torch.randn(n, 4, 48).to(dtype)
    mask = _mask(n, 4)
    loss, grad = _run(pred, imgs, mask, p, True, None, "triton", 1.0)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    _check(pred, imgs, mask, p, True, None, "triton")


@pytest.mark.parametrize("form", ["full", "masked"])
@pytest.mark.parametrize("where", ["imgs", "pred", "unmasked-patch"])
def test_nan_shows_in_the_loss(form, where):
    n, c, h, w, p = 2, 3, 8, 8, 4
    imgs = _images(n, c, h, w, torch.float32)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]])
    ids = torch.tensor([[0, 2, 3], [0, 1, 3]]) if form == "masked" else None
    pred = torch.randn(n, 3 if ids is not None else 4, 48)
    if where == "imgs":
        imgs[1, 2, 5, 6] = float("nan")  # patch 3 of image 1: counted in both forms
    elif where == "pred":
        pred[0, 1, 7] = float("nan")
    else:
        if form == "masked":
            pytest.skip("the masked form has no unmasked patch in pred")
        # weight 0 times NaN is NaN in the reference too: never silently dropped
        pred[0, 1, 7] = float("nan")
    loss = ops.masked_mse_loss(pred, imgs, None if ids is not None else mask, p, True, ids_masked=ids,
                               backend="triton")
    assert torch.isnan(loss)


@pytest.mark.parametrize("norm_pix", [False, True], ids=["plain", "normpix"])
def test_large_magnitudes_in_fp16(norm_pix):
    # (1e4 - -1e4)^2 = 4e8 overflows fp16 (max 65504): only fp32 accumulation keeps it finite
    n, c, h, w, p = 2, 3, 8, 8, 4
    imgs = (torch.sign(torch.randn(n, c, h, w)) * 1e4).half()
    pred = (-imgs.float().reshape(n, c, 2, 4, 2, 4).permute(0, 2, 4, 3, 5, 1).reshape(n, 4, 48)).half()
    mask = _mask(n, 4)
    loss, grad = _run(pred, imgs, mask, p, norm_pix, None, "triton", 1.0)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    if not norm_pix:
        assert loss.item() == pytest.approx(4e8, rel=1e-6)
    _check(pred, imgs, mask, p, norm_pix, None, "triton")


def test_deterministic():
    n, c, h, w, p = 2, 3, 16, 16, 4
    imgs = _images(n, c, h, w, torch.bfloat16)
    pred = torch.randn(n, 16, 48).bfloat16()
    mask = _mask(n, 16)
    first = _run(pred, imgs, mask, p, True, None, "triton", 1.0)
    second = _run(pred, imgs, mask, p, True, None, "triton", 1.0)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_out_of_range_ids_are_clamped():
    # fastmae.ops refuses these; the kernel alone must still never read outside the image
    n, c, h, w, p = 1, 3, 8, 8, 4
    imgs = _images(n, c, h, w, torch.float32)
    pred = torch.randn(n, 3, 48)
    bad = torch.tensor([[-5, 2, 9]])
    with poisoned():
        loss = kmod.masked_mse_loss(pred, imgs, None, p, True, bad)
    clamped = kmod.masked_mse_loss(pred, imgs, None, p, True, bad.clamp(0, 3))
    assert torch.equal(loss, clamped)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["full", "masked"])
def test_gradcheck(form):
    # The kernel has no float64; gradcheck it in float32, which is exact enough here: the loss is
    # quadratic in pred, so central differences equal the derivative up to rounding (eps 1e-2).
    n, c, h, w, p = 1, 1, 4, 4, 2
    imgs = _images(n, c, h, w, torch.float32)
    ids = torch.tensor([[3, 0]]) if form == "masked" else None
    mask = None if ids is not None else torch.tensor([[1.0, 0.0, 1.0, 0.5]])
    pred = torch.randn(n, 2 if ids is not None else 4, 4, requires_grad=True)

    def fn(x):
        return ops.masked_mse_loss(x, imgs, mask, p, True, ids_masked=ids, backend="triton")

    assert torch.autograd.gradcheck(fn, (pred,), eps=1e-2, atol=1e-4, rtol=1e-3)


def test_imgs_grad_goes_to_torch():
    # fastmae.ops sends d(loss)/d(imgs) requests to the torch implementation; the result still matches
    n, c, h, w, p = 1, 3, 8, 8, 4
    imgs = _images(n, c, h, w, torch.float32).requires_grad_()
    pred = torch.randn(n, 4, 48, requires_grad=True)
    mask = _mask(n, 4)
    ops.masked_mse_loss(pred, imgs, mask, p, True, backend="triton").backward()
    imgs64 = imgs.detach().double().requires_grad_()
    masked_mse_loss_ref(pred.detach().double(), imgs64, mask.double(), p, True).backward()
    assert_close(imgs.grad, imgs64.grad, dtype=torch.float32, reduced=48)


def _compiled_matches_eager(step, preds, backend):
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    results = []
    for fn in (step, compiled):
        leaves = [p.clone().requires_grad_() for p in preds]
        loss = fn(*leaves)
        loss.backward()
        results.append((loss.detach(), *(p.grad for p in leaves)))
    for eager, traced in zip(*results):
        assert_close(traced, eager, dtype=torch.float32)


def test_torch_compile_fullgraph():
    # both forms in one graph, with torch ops around them (aot_eager: traced, not code-generated)
    n, c, h, w, p = 2, 3, 8, 8, 4
    imgs = _images(n, c, h, w, torch.float32)
    ids = _ids_masked(n, 4, 3)
    mask = _mask(n, 4)

    def step(pf, pm):
        full = ops.masked_mse_loss(pf, imgs, mask, p, True, backend="triton")
        masked = ops.masked_mse_loss(pm, imgs, None, p, True, ids_masked=ids, backend="triton")
        return full + 2 * masked

    _compiled_matches_eager(step, (torch.randn(n, 4, 48), torch.randn(n, 3, 48)), "aot_eager")


@pytest.mark.slow  # inductor's first compile in a process takes ~20-30 s on CPU
def test_torch_compile_inductor():
    # the default backend, on the op alone (fewest generated kernels)
    n, c, h, w, p = 2, 3, 8, 8, 4
    imgs = _images(n, c, h, w, torch.float32)
    ids = _ids_masked(n, 4, 3)

    def step(pm):
        return ops.masked_mse_loss(pm, imgs, None, p, True, ids_masked=ids, backend="triton")

    _compiled_matches_eager(step, (torch.randn(n, 3, 48),), "inductor")


def test_bad_inputs_name_the_argument():
    imgs = torch.randn(2, 3, 8, 8)
    pred = torch.randn(2, 4, 48)
    mask = torch.ones(2, 4)
    with pytest.raises(ValueError, match="pred"):
        ops.masked_mse_loss(torch.randn(2, 4, 47), imgs, mask, 4, backend="triton")
    with pytest.raises(TypeError, match="pred"):
        ops.masked_mse_loss(pred.double(), imgs, mask, 4, backend="triton")
    with pytest.raises(ValueError, match="mask"):
        ops.masked_mse_loss(pred, imgs, torch.ones(2, 5), 4, backend="triton")
    with pytest.raises(ValueError, match="mask"):
        ops.masked_mse_loss(pred, imgs, None, 4, backend="triton")
    with pytest.raises(TypeError, match="ids_masked"):
        ops.masked_mse_loss(pred[:, :2], imgs, None, 4, ids_masked=torch.zeros(2, 2), backend="triton")
    with pytest.raises(ValueError, match="ids_masked"):
        ops.masked_mse_loss(pred[:, :2], imgs, None, 4, ids_masked=torch.full((2, 2), 4), backend="triton")
    with pytest.raises(TypeError, match="norm_pix_loss"):
        ops.masked_mse_loss(pred, imgs, mask, 4, norm_pix_loss=1, backend="triton")
    with pytest.raises(ValueError, match="imgs"):
        ops.masked_mse_loss(pred, torch.randn(2, 3, 8, 10), mask, 4, backend="triton")
