"""The bytes model's reference formulas equal what the eager reference path really moves.

Plain tests (no ``benchmark`` fixture): ``pytest benchmarks/`` runs them; under
``--benchmark-only`` every per-op benchmark performs the same check for its own shape instead.
Counting runs on ``meta`` tensors, so the ViT shapes cost nothing.
"""

import pytest
import torch

from . import bytes_model as bm
from . import bytes_tables as bt
from .cases import make_inputs, reference_call
from .count_bytes import count_bytes

SHAPES = [
    bm.shape_for("vit_b16", 256, 0.75),  # the NOTES.md shape
    bm.shape_for("vit_l16", 64, 0.9),  # another width, batch and ratio (K = 19: odd)
    bm.shape_for("vit_h14", 2, 0.75),  # patch 14: P = 588, D = 1280
    bm.shape_for("micro", 3, 0.5),  # the CPU benchmark model
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s.model}-N{s.batch}-m{s.mask_ratio}")
@pytest.mark.parametrize("op,variant", bm.OP_VARIANTS,
                         ids=[bm.variant_label(o, v) for o, v in bm.OP_VARIANTS])
def test_reference_bytes_match_the_count(op, variant, shape, dtype):
    inputs, grad_of = make_inputs(op, variant, shape, dtype, "meta")
    fwd, bwd = count_bytes(reference_call(op, variant, shape), inputs, grad_of, backward=bool(grad_of))
    model = bm.op_bytes(op, shape, dtype, **variant)
    assert model["fwd"].reference == pytest.approx(fwd.total, rel=1e-3, abs=64), dict(fwd.per_op)
    if "bwd" in model:
        assert model["bwd"].reference == pytest.approx(bwd.total, rel=1e-3, abs=64), dict(bwd.per_op)
        assert model["fwdbwd"].reference == model["fwd"].reference + model["bwd"].reference


@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize("form", ["full", "masked"])
def test_loss_bytes_with_float32_images_and_bf16_pred(form, norm_pix):
    """The model's case under autocast: images float32, pred bf16 (the error promotes to float32)."""
    sh = bm.shape_for("vit_b16", 8, 0.75)
    inputs, grad_of = make_inputs("masked_mse_loss", {"form": form}, sh, torch.bfloat16, "meta")
    inputs["imgs"] = inputs["imgs"].float()
    variant = {"form": form, "norm_pix": norm_pix}
    fwd, bwd = count_bytes(reference_call("masked_mse_loss", variant, sh), inputs, grad_of, backward=True)
    model = bm.masked_mse_loss_bytes(sh, torch.bfloat16, form, norm_pix, imgs_dtype=torch.float32)
    assert model["fwd"].reference == pytest.approx(fwd.total, rel=1e-3, abs=64), dict(fwd.per_op)
    assert model["bwd"].reference == pytest.approx(bwd.total, rel=1e-3, abs=64), dict(bwd.per_op)


def test_minimal_bytes_by_hand():
    """Spot values at ViT-B/16, batch 256, bf16, mask 0.75 (L=196, K=49, M=147, P=768, D=768, Dd=512)."""
    sh = bm.shape_for("vit_b16", 256, 0.75)
    img = 256 * 3 * 224 * 224 * 2
    assert bm.op_bytes("patchify", sh, "bf16")["fwd"].minimal == 2 * img
    enc = bm.op_bytes("encoder_input", sh, "bf16")["fwd"].minimal
    assert enc == 256 * 49 * 768 * 2 + 256 * 49 * 8 + 197 * 768 * 2 + 768 * 2 + 256 * 50 * 768 * 2
    dec = bm.op_bytes("decoder_input", sh, "bf16")["bwd"].minimal
    assert dec == 256 * 197 * 512 * 2 + 256 * 196 * 8 + 256 * 50 * 512 * 2 + 512 * 2
    loss = bm.op_bytes("masked_mse_loss", sh, "bf16", form="masked", norm_pix=True)
    assert loss["fwd"].minimal == 2 * 256 * 147 * 768 * 2 + 256 * 147 * 8 + 4
    assert loss["bwd"].minimal == 3 * 256 * 147 * 768 * 2 + 256 * 147 * 8 + 4


def test_counter_sees_views_as_free_and_copies_as_two_passes():
    x = torch.empty(4, 8, device="meta")
    fwd, _ = count_bytes(lambda x: x.t().contiguous(), {"x": x})
    assert fwd.total == 2 * 4 * 8 * 4  # the transpose is free, the copy reads and writes once
    fwd, _ = count_bytes(lambda x: x.view(8, 4).expand(2, 8, 4), {"x": x})
    assert fwd.total == 0


def test_notes_table_is_current():
    """NOTES.md quotes the table this module prints; regenerate it when the formulas change."""
    from pathlib import Path

    notes = (Path(__file__).parent / "NOTES.md").read_text(encoding="utf-8")
    sh = bm.shape_for("vit_b16", 256, 0.75)
    for table in (bt.table(sh, "bf16"), bt.step_table(sh, "bf16")):
        assert table in notes, ("benchmarks/NOTES.md is stale: "
                                "paste `python -m benchmarks.bytes_model` into it")
