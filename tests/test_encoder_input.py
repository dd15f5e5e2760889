"""encoder_input (kernels/encoder_input.py) against encoder_input_ref, forward and every gradient.

The reference runs in float64 on the same values; the kernel's result is compared with the tolerance
of its own dtype (tests/helpers.py). Gradients that sum over the batch (cls, pos-embed) use the
reduction tolerance for N summed rows.
"""

from __future__ import annotations

import pytest
import torch

from fastmae.kernels import encoder_input as kernel
from fastmae.kernels._common import bf16_rows_as_words
from fastmae import ops
from fastmae.reference import encoder_input_ref
from helpers import DTYPES, assert_close, poisoned, requires_kernels
from op_checks import (check_against_reference, check_bad_input, check_compile_fullgraph, check_deterministic,
                       check_gradcheck)

pytestmark = requires_kernels

# (N, L, K, D), by regime:
SHAPES = [
    (2, 9, 4, 40),  # odd L, D not a power of two (one masked column block of 64)
    (1, 5, 3, 1280),  # batch 1, ViT-H width: five 256-wide column blocks, no masked columns
    (1, 4, 2, 768),  # batch 1, ViT-B width
    (2, 7, 5, 264),  # K+1 = 6 rows: a full and a half row block of 4; a second column block of 8 live columns
    (2, 6, 6, 8),  # K = L (mask ratio 0): every patch kept
    (3, 16, 1, 24),  # K = 1: one token per sample
    (2, 5, 0, 40),  # K = 0: cls only (no ids to read)
    (2, 9, 4, 33),  # odd D: bf16 rows start on odd elements
    (2, 7, 3, 1),  # D = 1: one column, one chunk of one column
]


def test_shapes_reach_their_regimes():
    """The launch geometry the SHAPES comments name: a change of the tile shows here first."""
    from fastmae.kernels import encoder_input
    from fastmae.kernels._common import row_blocks

    block_r, block_d = row_blocks(264, encoder_input.FWD_TILE)
    assert (block_r, block_d) == (4, 256) and block_r < 5 + 1 < 2 * block_r


def _inputs(n, num_patches, k, d, dtype, table_dtype=None, ids_dtype=torch.int64, pos_grad=True) -> dict:
    table_dtype = table_dtype or dtype
    return dict(
        x_vis=torch.randn(n, k, d, dtype=dtype, requires_grad=True),
        pos_embed=torch.randn(1, num_patches + 1, d, dtype=table_dtype, requires_grad=pos_grad),
        cls_token=torch.randn(1, 1, d, dtype=table_dtype, requires_grad=True),
        ids_keep=torch.stack([torch.randperm(num_patches)[:k] for _ in range(n)]).to(ids_dtype),  # distinct
    )


def _check(args: dict, backend="triton"):
    # grad of x_vis copies gradient rows; the cls and pos-embed grads sum N rows
    n = args["x_vis"].shape[0]
    return check_against_reference(ops.encoder_input, encoder_input_ref, args, backend,
                                   reduced={"pos_embed": n, "cls_token": n})


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_fp32(shape):
    _check(_inputs(*shape, torch.float32))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_pure_bf16(shape):
    # A model run in bf16 without autocast: tokens, cls and table all bf16, so the forward takes cls
    # through the masked load of x_vis itself.
    out, grads = _check(_inputs(*shape, torch.bfloat16))
    assert out.dtype == torch.bfloat16 and grads["pos_embed"].dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32], ids=str)
def test_dtypes(dtype, ids_dtype):
    _check(_inputs(2, 9, 4, 40, dtype, ids_dtype=ids_dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_tokens_with_float32_tables(dtype):
    # The model under autocast: a bf16/fp16 GEMM output plus the float32 parameters -> float32 out,
    # as the official `x + pos_embed` promotes.
    out, grads = _check(_inputs(2, 9, 4, 24, dtype, table_dtype=torch.float32))
    assert out.dtype == torch.float32 and grads["x_vis"].dtype == dtype


@pytest.mark.parametrize("groups", [2, 3])
@pytest.mark.parametrize("dtype, table_dtype", [(torch.float32, None), (torch.bfloat16, None),
                                                (torch.bfloat16, torch.float32)], ids=str)
def test_persistent_loop_over_samples(monkeypatch, groups, dtype, table_dtype):
    # On CUDA the forward has at most one wave of programs, each looping over every G-th sample; the
    # interpreter runs one sample per program unless told otherwise: G groups for seven samples here
    # (4 and 3 samples a program for G = 2; 3, 2 and 2 for G = 3). The pos-embed backward sizes its
    # grid the same way, asking for one share of each list (about 7 * 5 / 11 = 3 rows, under 32): it
    # gets G here, shares of one or two rows, and G shares of each of the two cls parts (7 rows).
    calls = []

    def fixed_groups(images, blocks, programs_per_sm, device):
        calls.append(images)
        return groups

    monkeypatch.setattr(kernel, "image_groups", fixed_groups)
    _check(_inputs(7, 11, 5, 40, dtype, table_dtype=table_dtype))
    assert calls == [7, 1]  # the forward's samples, the backward's shares of a list
    assert kernel.cls_parts(7, 5, 11) == 2


@pytest.mark.parametrize("value_bytes, groups, trips", [
    (2, 52, 5),  # pure bf16 output: 28 registers, 16 programs an SM
    (4, 37, 7),  # float32 output (autocast): 40 registers, 12 programs an SM
])
def test_persistent_grid_is_one_wave_at_the_headline(monkeypatch, value_bytes, groups, trips):
    # ViT-B/16 (K = 49, D = 768), batch 256, on an H100's 132 SMs: the forward's 13 row blocks of 4
    # rows times 3 column blocks, every program resident at once, each looping over `trips` or
    # `trips - 1` samples. The launcher's own sizing, asked for a CUDA device whose SM count is set.
    from fastmae.kernels._common import _SM_COUNT, image_groups, row_blocks

    block_r, block_d = row_blocks(768, kernel.FWD_TILE)
    blocks = (-(-50 // block_r)) * (768 // block_d)
    assert blocks == 39
    per_sm = kernel.fwd_programs_per_sm(value_bytes)
    device = torch.device("cuda", 0)
    monkeypatch.setitem(_SM_COUNT, device, 132)
    got = image_groups(256, blocks, per_sm, device)
    assert got == groups and blocks * got <= 132 * per_sm
    assert groups * (trips - 1) < 256 <= groups * trips


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_pos_backward_sums_lists_in_shares(dtype):
    # 130 samples keeping 2 of 4 patches: each patch's list of kept rows is about 65 long, so the
    # pos-embed backward cuts it in two shares of >= 32 rows, and the cls list (130 rows, twice a
    # patch's) in two parts of two shares each; every share's partial sum is added in a fixed order.
    assert kernel.pos_shares(130, 2, 4) == 2 and kernel.cls_parts(130, 2, 4) == 2
    _check(_inputs(130, 4, 2, 40, dtype))


def test_pos_backward_gradient_at_an_odd_element_is_read_value_by_value():
    # A contiguous bf16 gradient starting at an odd element (a view into a larger buffer): a 32-bit
    # word load there is a misaligned address on a GPU (the interpreter reads it anyway). The
    # pos-embed backward must read it value by value, and gives the same sums as from an aligned copy.
    n, num_patches, k, d = 3, 10, 4, 64
    grad = torch.randn(n, k + 1, d).to(torch.bfloat16)
    buf = torch.empty(grad.numel() + 1, dtype=torch.bfloat16)
    odd = buf[1:].view(grad.shape)
    odd.copy_(grad)
    assert odd.is_contiguous() and odd.data_ptr() % 4 == 2
    assert bf16_rows_as_words(grad) and not bf16_rows_as_words(odd)
    ids_keep = torch.stack([torch.randperm(num_patches)[:k] for _ in range(n)])
    with poisoned():
        sums = kernel._pos_sums(grad, ids_keep, num_patches)  # [L+1, D]
        sums_odd = kernel._pos_sums(odd, ids_keep, num_patches)
    want = torch.zeros(num_patches + 1, d, dtype=torch.float64)
    want[0] = grad[:, 0].double().sum(0)
    want.index_add_(0, (1 + ids_keep).flatten(), grad[:, 1:].double().flatten(0, 1))
    assert_close(sums, want, dtype=torch.float32, reduced=n)
    assert torch.equal(sums_odd, sums)


def test_pos_backward_grid_at_the_headline(monkeypatch):
    # ViT-B/16 (L = 196, K = 49, D = 768), batch 256, on an H100's 132 SMs: a patch's list holds 64
    # rows on average, summed in 2 shares of 32; cls (256 rows) in 4 parts of 2 shares; 200 lists
    # times 3 column blocks times 2 shares = 1,200 programs, all resident at once (32 registers: 16
    # programs of 4 warps an SM).
    from fastmae.kernels._common import _SM_COUNT, image_groups

    assert kernel.pos_shares(256, 49, 196) == 2 and kernel.cls_parts(256, 49, 196) == 4
    device = torch.device("cuda", 0)
    monkeypatch.setitem(_SM_COUNT, device, 132)
    blocks = (4 + 196) * 3
    shares = image_groups(kernel.pos_shares(256, 49, 196), blocks, kernel.POS_SUMS_PROGRAMS_PER_SM, device)
    assert shares == 2 and blocks * shares <= 132 * kernel.POS_SUMS_PROGRAMS_PER_SM


def test_pos_embed_without_grad():
    # MAE's pos_embed is a fixed table: only x_vis and cls_token get gradients (the cls-only kernel path).
    _check(_inputs(3, 10, 3, 40, torch.float32, pos_grad=False))


def test_batch_above_one_backward_span():
    # N = 70 > 64 samples per backward program: two partials summed in a fixed order.
    _check(_inputs(70, 6, 2, 8, torch.float32))


def test_torch_backend_matches_reference():
    _check(_inputs(2, 9, 4, 40, torch.float32), backend="torch")


def test_deterministic():
    check_deterministic(ops.encoder_input, _inputs(70, 6, 2, 8, torch.float32))


@pytest.mark.filterwarnings("ignore:Input #.* is not a double precision")
def test_gradcheck():
    check_gradcheck(kernel.encoder_input, _inputs(2, 5, 3, 8, torch.float32))


def test_out_of_range_ids_stay_in_bounds():
    # Called past the validation of fastmae.ops (CUDA skips the range check by default): a bad id adds
    # no position in the forward and credits no pos-embed row in the backward. The ids are chosen so
    # that clamping would hit a row no valid id of that sample names (1000 -> patch 4, -7 -> patch 0).
    x_vis, pos_embed, cls_token = (_inputs(2, 5, 3, 8, torch.float32)[k] for k in ("x_vis", "pos_embed", "cls_token"))
    ids_keep = torch.tensor([[0, 1000, 2], [3, 1, -7]])  # [N, K]; L = 5
    with poisoned():
        out = kernel.encoder_input(x_vis, pos_embed, cls_token, ids_keep)  # [N, K+1, D]
        grad = torch.randn_like(out)
        grad_pos, grad_cls = torch.autograd.grad(out, (pos_embed, cls_token), grad)
    valid = (ids_keep >= 0) & (ids_keep < 5)  # [N, K]
    pos_row = torch.where(valid, 1 + ids_keep, 0)  # [N, K]
    want = torch.where(valid[..., None], x_vis + pos_embed[0, pos_row], x_vis).detach()  # [N, K, D]
    assert_close(out[:, 1:], want)
    assert_close(out[:, 0], (cls_token[0] + pos_embed[0, :1]).detach().expand(2, -1))
    # grad_pos[0] = sum_n g[n, 0]; grad_pos[1 + l] sums g[n, 1 + k] over the valid ids equal to l only
    want_pos = torch.zeros(6, 8, dtype=torch.float64)
    want_pos[0] = grad[:, 0].double().sum(0)
    want_pos.index_add_(0, pos_row[valid], grad[:, 1:][valid].double())
    assert_close(grad_pos[0], want_pos, reduced=2)
    assert torch.equal(grad_pos[0, 5], torch.zeros(8)) and torch.equal(grad_pos[0, 1], grad[0, 1])
    assert_close(grad_cls[0, 0], want_pos[0], reduced=2)


@pytest.mark.slow
def test_compile_fullgraph():
    check_compile_fullgraph(kernel.encoder_input, _inputs(2, 5, 3, 8, torch.float32))


@pytest.mark.parametrize(
    "change, err, name",
    [
        (lambda a: {**a, "ids_keep": a["ids_keep"].float()}, TypeError, "ids_keep"),
        (lambda a: {**a, "ids_keep": a["ids_keep"] + 100}, ValueError, "ids_keep"),
        (lambda a: {**a, "ids_keep": a["ids_keep"][:, :2]}, ValueError, "ids_keep"),
        (lambda a: {**a, "x_vis": a["x_vis"][0]}, ValueError, "x_vis"),
        (lambda a: {**a, "x_vis": a["x_vis"].double()}, TypeError, "x_vis"),
        (lambda a: {**a, "pos_embed": a["pos_embed"][:, :, :4]}, ValueError, "pos_embed"),
        (lambda a: {**a, "cls_token": a["cls_token"].expand(1, 2, -1)}, ValueError, "cls_token"),
        (lambda a: {**a, "x_vis": a["x_vis"][:0]}, ValueError, "x_vis"),
    ],
)
def test_bad_input(change, err, name):
    check_bad_input(ops.encoder_input, _inputs(2, 5, 3, 8, torch.float32), change, err, name)
