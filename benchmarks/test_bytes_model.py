"""The bytes model's pieces: the byte counter's conventions, the hand-written minimal bytes, the shapes
read from the model, the FLOP formula, and NOTES.md holding the tables the module prints.

Plain tests (no ``benchmark`` fixture): ``pytest benchmarks/`` runs them, ``--benchmark-only`` skips
them. Everything runs on ``meta`` tensors, so the ViT shapes cost nothing.
"""

from pathlib import Path

import pytest
import torch

import fastmae

from . import bytes_model as bm
from .bytes_model import count_bytes
from .cases import shape_for
from .train_step import train_flops_per_image

VIT_B = shape_for(*bm.NOTES_SHAPE)  # L=196, K=49, M=147, P=768, D=768, Dd=512, batch 256


def test_counter_conventions():
    """Views are free and a copy reads and writes once; a gather reads its index and one source row per
    output row, its backward is a zero fill and a scatter-add (grad and index read, touched rows read
    and written); a slice is free, its backward zero-fills and copies the slice in."""
    x = torch.empty(2, 10, 4, device="meta", requires_grad=True)  # fp32: 4 bytes
    ids = torch.zeros(2, 3, 4, dtype=torch.int64, device="meta")
    assert count_bytes(lambda x: x.transpose(1, 2).expand(3, 2, 4, 10).contiguous(), {"x": x}) == (320 + 3 * 320, 0)
    assert count_bytes(lambda x: torch.gather(x, 1, ids), {"x": x}, ("x",), backward=True) == (
        24 * 8 + 2 * 24 * 4, 80 * 4 + (24 * 8 + 24 * 4 + 2 * 24 * 4))
    assert count_bytes(lambda x: x[:, 1:], {"x": x}, ("x",), backward=True) == (0, 80 * 4 + 2 * 72 * 4)


def test_minimal_bytes_by_hand():
    """Spot values at ViT-B/16, batch 256, bf16, mask 0.75."""
    n, num, k, m = 256, 196, 49, 147

    def minimal(op, **variant):
        return {p: t.minimal for p, t in bm.op_bytes(op, variant, VIT_B, torch.bfloat16).items()}

    assert minimal("patchify")["fwd"] == 2 * n * 3 * 224 * 224 * 2
    assert minimal("encoder_input")["fwd"] == n * k * 768 * 2 + n * k * 8 + 197 * 768 * 2 + 768 * 2 + n * 50 * 768 * 2
    assert minimal("decoder_input")["bwd"] == n * 197 * 512 * 2 + n * num * 8 + n * 50 * 512 * 2 + 512 * 2
    tokens = minimal("masked_tokens")
    assert tokens["fwd"] == n * m * 512 * 2 + n * m * 8 + n * m * 512 * 2
    assert tokens["bwd"] == n * m * 512 * 2 + n * num * 8 + n * 197 * 512 * 2
    loss = minimal("masked_mse_loss", form="masked", norm_pix=True)
    assert loss["fwd"] == 2 * n * m * 768 * 2 + n * m * 8 + 4
    assert loss["bwd"] == 3 * n * m * 768 * 2 + n * m * 8 + 4
    assert loss["fwdbwd"] == loss["fwd"] + loss["bwd"]
    assert minimal("masking_ids") == {"fwd": n * num * (4 + 8 + 8 + 4)}


def test_reference_bytes_follow_the_inputs_dtypes():
    """patchify's reference is one copy (= the minimum); under autocast (bf16 pred, fp32 images) the
    loss's error promotes to float32, so the reference moves more than in bf16 alone."""
    assert all(t.reference == t.minimal for t in bm.op_bytes("patchify", {}, VIT_B, torch.bfloat16).values())
    loss = [bm.op_bytes("masked_mse_loss", {"form": "full"}, VIT_B, torch.bfloat16, imgs_dtype=dt)["fwd"].reference
            for dt in (torch.bfloat16, torch.float32)]
    assert loss[1] > loss[0]


@pytest.mark.parametrize("name", sorted(fastmae.MODELS))
def test_shapes_come_from_the_model(name):
    """``shape_for`` agrees with other attributes of the model than those it reads."""
    sh = shape_for(name, 2, 0.75)
    with torch.device("meta"):
        model = fastmae.create_model(name)
    assert sh.patch_dim == model.decoder_pred.out_features and sh.num_patches == model.patch_embed.num_patches
    assert (sh.embed_dim, sh.decoder_dim) == (model.decoder_embed.in_features, model.decoder_embed.out_features)
    assert (sh.depth, sh.decoder_depth, sh.mlp_ratio) == (len(model.blocks), len(model.decoder_blocks), 4)


def test_train_flops_of_vit_b16():
    """58.0 GFLOP per image for ViT-B/16 at 224 px, mask 0.75 (the figure NOTES.md quotes)."""
    assert round(train_flops_per_image(VIT_B) / 1e9, 1) == 58.0


def test_notes_tables_are_current():
    """NOTES.md quotes what ``python -m benchmarks.bytes_model`` prints; regenerate it when that changes."""
    notes = (Path(__file__).parent / "NOTES.md").read_text(encoding="utf-8")
    for text in (bm.heading(VIT_B, "bf16"), bm.table(VIT_B, torch.bfloat16),
                 bm.step_text(VIT_B, torch.bfloat16, "bf16")):
        assert text in notes, "benchmarks/NOTES.md is stale: paste `python -m benchmarks.bytes_model` into it"


def test_fused_ops_of_a_step_move_at_most_a_tenth_more_than_the_minimum():
    """At ViT-B/16, batch 256, bf16 autocast: the kernels as launched move within 10% of the minimal bytes."""
    rows = bm.step_rows(VIT_B)
    mini, now = (sum(r[k] for r in rows) for k in ("minimal", "implementation"))
    assert now <= 1.1 * mini


def test_a_steps_launches_add_up_to_its_bytes():
    """Three hand-written counts agree for every fused op of a bf16-autocast training step (bf16 images,
    as ``fastmae pretrain`` feeds them): the bytes its launches' compile specs give
    (``tools/kernel_specs``), plus what its launchers move in torch ops, are the bytes model's minimal
    bytes plus its kernels' extra (the partial sums)."""
    from fastmae.kernel_modules import KERNEL_MODULES
    from tools.kernel_specs import compile_specs

    from .cases import OPS

    launched = {s["name"]: s["bytes"] for m in KERNEL_MODULES for s in compile_specs(m) if "bytes" in s}
    for row, piece in zip(bm.step_rows(VIT_B), bm.STEP, strict=True):
        op = OPS[piece.op]
        assert op.step_launches, f"{piece.op}: no step_launches in benchmarks/cases.py"
        kernels = sum(launched[name] for name in op.step_launches)
        assert kernels + op.outside_kernels(VIT_B) == row["implementation"], piece.op
