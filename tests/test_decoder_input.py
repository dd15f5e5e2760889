"""decoder_input (kernels/decoder_input.py) against decoder_input_ref, forward and every gradient.

The reference runs in float64 on the same values; the kernel's result is compared with the tolerance
of its own dtype (tests/helpers.py). The mask-token gradient sums N*(L-K) rows and the pos-embed
gradient N rows: both use the reduction tolerance for that many rows.
"""

from __future__ import annotations

import pytest
import torch

from fastmae.kernels import decoder_input as kernel
from fastmae.kernels._common import bf16_rows_as_words
from fastmae import ops
from fastmae.reference import decoder_input_ref
from helpers import DTYPES, assert_close, poisoned, requires_kernels
from op_checks import (check_against_reference, check_bad_input, check_compile_fullgraph, check_deterministic,
                       check_gradcheck)

pytestmark = requires_kernels

# (N, L, K, D), by regime:
SHAPES = [
    (2, 9, 4, 40),  # odd L, D not a power of two (one masked column block of 64)
    (1, 5, 3, 1280),  # batch 1, ViT-H width: five 256-wide column blocks
    (1, 4, 2, 512),  # batch 1, the MAE decoder width
    (3, 7, 2, 264),  # L+1 = 8 rows: two row blocks of 4 a sample; the second column block has 8 live columns
    (2, 6, 6, 8),  # K = L (mask ratio 0): no mask token at all, its gradient is 0
    (3, 16, 1, 24),  # K = 1: one visible token per sample
    (5, 33, 8, 256),  # 34 rows: several row blocks in both directions, partials summed
    (2, 9, 4, 33),  # odd D: bf16 rows start on odd elements, so the backward cannot read 32-bit words
    (2, 7, 3, 1),  # D = 1: one column, one chunk of one column
]


def test_shapes_reach_their_regimes():
    """The launch geometry the SHAPES comments name: a change of the tiles shows here first."""
    from fastmae.kernels import decoder_input
    from fastmae.kernels._common import row_blocks

    for tile in (decoder_input.FWD_TILE, decoder_input.bwd_tile(4)):
        block_r, block_d = row_blocks(264, tile)
        assert (block_r, block_d) == (4, 256) and (7 + 1) // block_r == 2


def _inputs(n, num_patches, k, d, dtype, table_dtype=None, ids_dtype=torch.int64, pos_grad=True) -> dict:
    table_dtype = table_dtype or dtype
    return dict(
        x=torch.randn(n, k + 1, d, dtype=dtype, requires_grad=True),
        ids_restore=torch.stack([torch.randperm(num_patches) for _ in range(n)]).to(ids_dtype),  # a permutation
        mask_token=torch.randn(1, 1, d, dtype=table_dtype, requires_grad=True),
        pos_embed=torch.randn(1, num_patches + 1, d, dtype=table_dtype, requires_grad=pos_grad),
    )


def _check(args: dict, backend="triton"):
    # grad of x copies gradient rows; the mask-token grad sums N*(L-K) rows, the pos-embed grad N
    n, k1, _ = args["x"].shape
    masked_rows = n * (args["ids_restore"].shape[1] + 1 - k1)
    return check_against_reference(ops.decoder_input, decoder_input_ref, args, backend,
                                   reduced={"mask_token": masked_rows or None, "pos_embed": n})


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_fp32(shape):
    _check(_inputs(*shape, torch.float32))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_pure_bf16(shape):
    # A model run in bf16 without autocast: tokens, mask token and table all bf16, so the forward
    # takes the mask token through the masked load itself and the backward sums 32-bit words of the
    # gradient (even D; D = 33 reads it value by value).
    out, grads = _check(_inputs(*shape, torch.bfloat16))
    assert out.dtype == torch.bfloat16 and grads["mask_token"].dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32], ids=str)
def test_dtypes(dtype, ids_dtype):
    _check(_inputs(2, 9, 4, 40, dtype, ids_dtype=ids_dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_tokens_with_float32_tables(dtype):
    # The model under autocast: a bf16/fp16 decoder_embed output with the float32 mask token and
    # table -> float32 out (the official cat + add promote); grad_x comes back in x's dtype.
    out, grads = _check(_inputs(2, 9, 4, 24, dtype, table_dtype=torch.float32))
    assert out.dtype == torch.float32 and grads["x"].dtype == dtype


@pytest.mark.parametrize("groups", [2, 3])
@pytest.mark.parametrize("dtype, table_dtype", [(torch.float32, None), (torch.bfloat16, None),
                                                (torch.bfloat16, torch.float32)], ids=str)
def test_persistent_loop_over_samples(monkeypatch, groups, dtype, table_dtype):
    # On CUDA a launch has at most one wave of programs, each looping over every G-th sample; the
    # interpreter runs one sample per program unless told otherwise: G groups for seven samples here
    # (4 and 3 samples a program for G = 2; 3, 2 and 2 for G = 3), in both directions.
    calls = []

    def fixed_groups(images, blocks, programs_per_sm, device):
        calls.append(images)
        return groups

    monkeypatch.setattr(kernel, "image_groups", fixed_groups)
    _check(_inputs(7, 11, 5, 40, dtype, table_dtype=table_dtype))
    assert calls == [7, 7]  # the forward and the backward launch


def test_gradient_at_an_odd_element_is_read_value_by_value():
    # A contiguous bf16 gradient starting at an odd element (a view into a larger buffer): its data
    # sit 2 bytes past a 4-byte boundary, where a 32-bit word load is a misaligned address on a GPU
    # (the interpreter reads it anyway). The backward must not read words there, and gives the same
    # sums as from the aligned copy.
    n, num_patches, k, d = 3, 10, 4, 64
    grad = torch.randn(n, num_patches + 1, d).to(torch.bfloat16)
    buf = torch.empty(grad.numel() + 1, dtype=torch.bfloat16)
    odd = buf[1:].view(grad.shape)
    odd.copy_(grad)
    assert odd.is_contiguous() and odd.data_ptr() % 4 == 2
    assert bf16_rows_as_words(grad) and not bf16_rows_as_words(odd)
    ids_restore = torch.stack([torch.randperm(num_patches) for _ in range(n)])
    with poisoned():
        gx, gm = kernel._backward_x_mask(grad, ids_restore, k + 1, torch.bfloat16)
        gx_odd, gm_odd = kernel._backward_x_mask(odd, ids_restore, k + 1, torch.bfloat16)
    masked = ids_restore >= k  # [N, L]
    want_gm = grad[:, 1:].double()[masked].sum(0)  # [D]
    assert_close(gm, want_gm, dtype=torch.float32, reduced=int(masked.sum()))
    assert torch.equal(gm_odd, gm) and torch.equal(gx_odd, gx)
    want_gx = torch.empty(n, k + 1, d, dtype=torch.bfloat16)
    want_gx[:, 0] = grad[:, 0]
    for i in range(n):
        for pos in range(num_patches):
            if ids_restore[i, pos] < k:
                want_gx[i, 1 + ids_restore[i, pos]] = grad[i, 1 + pos]
    assert torch.equal(gx, want_gx)


@pytest.mark.parametrize("direction, value_bytes, blocks, groups, trips", [
    ("forward", 2, 100, 20, 13),  # pure bf16 output: rows of 4, 2 column blocks; 28-32 registers, 16 an SM
    ("forward", 4, 100, 13, 20),  # float32 output (autocast): up to 48 registers, 10 programs an SM
    ("backward", 2, 50, 26, 10),  # bf16 gradient: rows of 8; up to 48 registers, 10 an SM
    ("backward", 4, 100, 15, 18),  # float32 gradient (autocast): rows of 4; 40 registers, 12 an SM
])
def test_persistent_grid_is_one_wave_at_the_headline(monkeypatch, direction, value_bytes, blocks, groups, trips):
    # The ViT-B/16 decoder (L = 196, Dd = 512), batch 256, on an H100's 132 SMs: every program of
    # the grid resident at once, each looping over `trips` or `trips - 1` samples. The launchers' own
    # sizing, asked for a CUDA device whose SM count is set.
    from fastmae.kernels._common import _SM_COUNT, image_groups, row_blocks

    tile = kernel.FWD_TILE if direction == "forward" else kernel.bwd_tile(value_bytes)
    block_r, block_d = row_blocks(512, tile)
    assert (-(-197 // block_r)) * (512 // block_d) == blocks
    per_sm = (kernel.fwd_programs_per_sm if direction == "forward" else kernel.bwd_programs_per_sm)(value_bytes)
    device = torch.device("cuda", 0)
    monkeypatch.setitem(_SM_COUNT, device, 132)
    got = image_groups(256, blocks, per_sm, device)
    assert got == groups and blocks * got <= 132 * per_sm
    assert groups * (trips - 1) < 256 <= groups * trips


def test_pos_embed_without_grad():
    # MAE's decoder_pos_embed is a fixed table: only x and mask_token get gradients.
    _check(_inputs(3, 10, 3, 40, torch.float32, pos_grad=False))


def test_torch_backend_matches_reference():
    _check(_inputs(2, 9, 4, 40, torch.float32), backend="torch")


def test_deterministic():
    check_deterministic(ops.decoder_input, _inputs(5, 33, 8, 256, torch.float32))


@pytest.mark.filterwarnings("ignore:Input #.* is not a double precision")
def test_gradcheck():
    check_gradcheck(kernel.decoder_input, _inputs(2, 5, 3, 8, torch.float32))


def test_out_of_range_ids_take_the_mask_token():
    # Called past the validation of fastmae.ops: an index outside [0, K) selects the mask token in the
    # forward and sends its gradient to the mask token in the backward; nothing outside is touched.
    x, ids_restore, mask_token, pos_embed = _inputs(1, 5, 3, 8, torch.float32, pos_grad=False).values()
    ids_restore[0, 1] = 1000
    ids_restore[0, 3] = -7
    out = kernel.decoder_input(x, ids_restore, mask_token, pos_embed)
    for pos in (1, 3):
        assert_close(out[0, 1 + pos], (mask_token[0, 0] + pos_embed[0, 1 + pos]).detach())
    grad = torch.randn_like(out)
    _, grad_mask = torch.autograd.grad(out, (x, mask_token), grad)
    masked = [pos for pos in range(5) if not 0 <= int(ids_restore[0, pos]) < 3]
    assert_close(grad_mask[0, 0], grad[0, [1 + pos for pos in masked]].sum(0), reduced=len(masked))


def test_compile_fullgraph():
    check_compile_fullgraph(kernel.decoder_input, _inputs(2, 5, 3, 8, torch.float32))


@pytest.mark.parametrize(
    "change, err, name",
    [
        (lambda a: {**a, "ids_restore": a["ids_restore"].float()}, TypeError, "ids_restore"),
        (lambda a: {**a, "ids_restore": a["ids_restore"] + 100}, ValueError, "ids_restore"),
        (lambda a: {**a, "ids_restore": a["ids_restore"][:, :3]}, ValueError, "ids_restore"),
        (lambda a: {**a, "x": a["x"][0]}, ValueError, "x"),
        (lambda a: {**a, "x": a["x"][:, :1]}, ValueError, "x"),
        (lambda a: {**a, "x": a["x"].double()}, TypeError, "x"),
        (lambda a: {**a, "mask_token": a["mask_token"][:, :, :4]}, ValueError, "mask_token"),
        (lambda a: {**a, "pos_embed": a["pos_embed"][:, :, :4]}, ValueError, "pos_embed"),
    ],
)
def test_bad_input(change, err, name):
    check_bad_input(ops.decoder_input, _inputs(2, 5, 3, 8, torch.float32), change, err, name)
