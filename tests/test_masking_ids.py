"""The random-masking kernel against ``masking_ids_ref`` (a stable argsort of the noise).

Results are indices and a 0/1 mask, so every comparison is exact (``torch.equal``), and every launch
runs with poisoned outputs (NaN / -1) so an element the kernel forgets to write fails.
"""

from __future__ import annotations

import pytest
import torch

import helpers
from fastmae import ops
from fastmae.reference import masking_ids_ref

pytestmark = helpers.requires_kernels


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor (compares NaNs too)."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _check(noise: torch.Tensor, len_keep: int):
    """Kernel == reference, exactly, with dtypes and shapes as documented; returns the kernel's outputs."""
    before = noise.clone()
    with helpers.poisoned():
        ids_keep, ids_restore, mask, ids_masked = ops.masking_ids(noise, len_keep, backend="triton")
    want = masking_ids_ref(noise, len_keep)
    n, num_patches = noise.shape
    for name, got, ref, shape, dtype in (
        ("ids_keep", ids_keep, want[0], (n, len_keep), torch.int64),
        ("ids_restore", ids_restore, want[1], (n, num_patches), torch.int64),
        ("mask", mask, want[2], (n, num_patches), torch.float32),
        ("ids_masked", ids_masked, want[3], (n, num_patches - len_keep), torch.int64),
    ):
        assert got.dtype == dtype and tuple(got.shape) == shape, (name, got.dtype, got.shape)
        assert torch.equal(got, ref), f"{name} differs from the reference at {(got != ref).nonzero()[:5].tolist()}"
    assert torch.equal(_bits(noise), _bits(before)), "noise was modified"
    return ids_keep, ids_restore, mask


# (N, L, K) by regime
SHAPES = [
    pytest.param(1, 196, 49, id="vit-b16-224-batch1"),  # the real shape: L = 14*14, ratio 0.75
    pytest.param(2, 256, 64, id="patch14-224"),  # L a power of two: exactly two full i-blocks
    pytest.param(3, 7, 3, id="odd-L-tiny"),  # L smaller than every block: masked lanes everywhere
    pytest.param(2, 300, 1, id="keep-one"),  # K = 1, three i-blocks, the last partial
    pytest.param(1, 50, 50, id="keep-all"),  # K = L: the mask is all zeros, ids_keep = ids_shuffle
    pytest.param(1, 1025, 1000, id="L-1025"),  # past a power of two: 9 i-blocks, 33 j-steps, int64 rows
]


@pytest.mark.parametrize("n,num_patches,len_keep", SHAPES)
def test_matches_reference(n, num_patches, len_keep):
    _check(torch.rand(n, num_patches, device=helpers.DEVICE), len_keep)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_dtypes(dtype):
    # fp16/bf16 noise from torch.rand has many ties (bf16 has 8 mantissa bits): they are broken by index
    noise = torch.rand(2, 196, device=helpers.DEVICE).to(dtype)
    _check(noise, 49)


def test_float64_is_compared_in_float64():
    # two values that round to the same float32: a float32 comparison would call them a tie
    noise = torch.tensor([[0.5 + 2**-40, 0.5, 0.25]], dtype=torch.float64, device=helpers.DEVICE)
    ids_keep, ids_restore, _ = _check(noise, 2)
    assert ids_keep.tolist() == [[2, 1]] and ids_restore.tolist() == [[2, 1, 0]]


@pytest.mark.parametrize("levels", [1, 3, 17])
def test_ties_broken_by_index(levels):
    # repeated values: a stable sort orders equal noise by patch index (levels=1: every value equal)
    noise = torch.randint(0, levels, (2, 150), device=helpers.DEVICE).float() / levels
    ids_keep, ids_restore, mask = _check(noise, 60)
    if levels == 1:
        assert ids_keep.tolist() == [list(range(60))] * 2


def test_nan_inf_and_signed_zero():
    # NaN goes last (after +inf), NaNs among themselves by index; -0.0 ties +0.0, as torch's stable argsort
    row = [float("nan"), 1.0, float("inf"), -float("nan"), -0.0, 0.0, float("-inf"), 1.0, float("nan")]
    noise = torch.tensor([row, row[::-1]], device=helpers.DEVICE)
    ids_keep, ids_restore, mask = _check(noise, 4)
    want_order = [6, 4, 5, 1, 7, 2, 0, 3, 8]  # torch.argsort(row, stable=True), checked by hand
    assert ids_restore[0].argsort().tolist() == want_order
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        _check(noise.to(dtype), 6)


def test_non_contiguous_noise():
    noise = torch.rand(40, 3, device=helpers.DEVICE).t()  # [3, 40], transposed: ops makes it contiguous
    _check(noise, 10)


def test_no_gradient():
    noise = torch.rand(2, 20, device=helpers.DEVICE, requires_grad=True)
    out = ops.masking_ids(noise, 5, backend="triton")
    assert not any(t.requires_grad for t in out)
    mask = out.mask
    (noise * mask).sum().backward()  # the mask is a constant: d/dnoise = mask
    assert torch.equal(noise.grad, mask)


def test_custom_op_registration():
    # schema, fake (meta) implementation and autograd registration agree with the real kernel
    torch.library.opcheck(torch.ops.fastmae.masking_ids.default, (torch.rand(2, 9, device=helpers.DEVICE), 4))


def test_torch_compile_fullgraph():
    def fn(noise):
        ids_keep, ids_restore, mask, ids_masked = ops.masking_ids(noise, 12, backend="triton")
        return ids_keep + 1, ids_restore, mask * 2, ids_masked

    noise = torch.rand(2, 49, device=helpers.DEVICE)
    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(noise)
    want = fn(noise)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.parametrize(
    "noise,len_keep,exc,words",
    [
        (lambda: torch.rand(196), 49, ValueError, "noise"),  # rank 1
        (lambda: torch.randint(0, 9, (2, 196)), 49, TypeError, "noise"),  # integer noise
        (lambda: torch.rand(2, 196), 0, ValueError, "len_keep"),  # keeps nothing
        (lambda: torch.rand(2, 196), 197, ValueError, "len_keep"),  # keeps more than L
        (lambda: torch.rand(2, 196), 49.0, TypeError, "len_keep"),  # not an int
        (lambda: torch.rand(0, 196), 49, ValueError, "noise"),  # empty batch
    ],
)
def test_bad_input(noise, len_keep, exc, words):
    with pytest.raises(exc, match=words):
        ops.masking_ids(noise().to(helpers.DEVICE), len_keep, backend="triton")
