"""The bytes-model tables: per op and pass, and one training step; the command line.

The formulas are in ``benchmarks/bytes_model.py``; ``python -m benchmarks.bytes_model`` (or
``python -m benchmarks.bytes_tables``) prints the tables that ``benchmarks/NOTES.md`` quotes, and
``benchmarks/test_bytes_model.py`` checks NOTES.md still holds them.
"""

from __future__ import annotations

import argparse

from .bytes_model import (
    _DTYPE_BYTES,
    MODEL_DIMS,
    NOTES_BANDWIDTH,
    OP_VARIANTS,
    MAEShape,
    decoder_input_bytes,
    encoder_input_bytes,
    encoder_input_official_bytes,
    masked_mse_loss_bytes,
    op_bytes,
    patchify_gather_bytes,
    masking_ids_bytes,
    shape_for,
    variant_label,
)



def table(shape: MAEShape, dtype, bandwidth: float = NOTES_BANDWIDTH) -> str:
    """A markdown table: each op and pass, minimal MB, ideal µs at ``bandwidth``, reference MB, ratio."""
    head = (
        f"| op | pass | minimal MB | ideal µs at {bandwidth / 1e12:.1f} TB/s | reference MB "
        "| reference / minimal |\n"
        "|---|---|---:|---:|---:|---:|"
    )
    lines = [head]
    for op, variant in OP_VARIANTS:
        for mode, t in op_bytes(op, shape, dtype, **variant).items():
            lines.append(
                f"| {variant_label(op, variant)} | {mode} | {t.minimal / 1e6:.1f} "
                f"| {t.minimal / bandwidth * 1e6:.1f} "
                f"| {t.reference / 1e6:.1f} | {t.reference / t.minimal:.1f}x |"
            )
    return "\n".join(lines)


def step_rows(shape: MAEShape, amp_dtype="bf16") -> list[tuple[str, str, int, str, int]]:
    """The data-movement ops of one training step under autocast, fast path vs official path.

    Dtypes as in the model under ``amp_dtype`` autocast: images, position tables and learned tokens
    float32, activations (GEMM outputs) ``amp_dtype``, so the assembled token tensors are float32.
    Rows: ``(piece, fast-path op, its minimal bytes fwd+bwd, official code, its reference bytes)``.
    """
    f32 = "fp32"
    enc = encoder_input_bytes(shape, amp_dtype, f32)["fwdbwd"].minimal
    enc_ref = encoder_input_official_bytes(shape, amp_dtype, f32)["fwdbwd"].reference
    dec = decoder_input_bytes(shape, amp_dtype, f32)["fwdbwd"]
    loss = masked_mse_loss_bytes(shape, amp_dtype, "masked", True, imgs_dtype=f32)["fwdbwd"].minimal
    loss_ref = masked_mse_loss_bytes(shape, amp_dtype, "full", True, imgs_dtype=f32)["fwdbwd"].reference
    mask = masking_ids_bytes(shape)["fwd"]
    gather = patchify_gather_bytes(shape, f32)["fwd"].minimal
    return [
        ("masking", "masking_ids (fwd)", mask.minimal, "argsort x2, gather", mask.reference),
        ("visible patches", "patchify_gather (fwd; images need no grad)", gather,
         "(inside the conv on all L)", 0),
        ("encoder input", "encoder_input (fwd+bwd)", enc, "pos add on all L, gather, cat", enc_ref),
        ("decoder input", "decoder_input (fwd+bwd)", dec.minimal, "repeat, cat, gather, cat, add",
         dec.reference),
        ("loss, norm-pix", "masked_mse_loss[masked] (fwd+bwd)", loss, "full-form reference loss", loss_ref),
    ]


def step_table(shape: MAEShape, amp_dtype="bf16", bandwidth: float = NOTES_BANDWIDTH) -> str:
    """Markdown for ``step_rows`` with totals and ideal times."""
    rows = step_rows(shape, amp_dtype)
    lines = [
        f"| step piece | fast path op | minimal MB | ideal µs at {bandwidth / 1e12:.1f} TB/s "
        "| official path "
        "| reference MB |",
        "|---|---|---:|---:|---|---:|",
    ]
    for piece, fast, fast_b, official, ref_b in rows:
        lines.append(f"| {piece} | {fast} | {fast_b / 1e6:.1f} | {fast_b / bandwidth * 1e6:.1f} | {official} "
                     f"| {ref_b / 1e6:.1f} |")
    tf, tr = sum(r[2] for r in rows), sum(r[4] for r in rows)
    lines.append(f"| **total** | | **{tf / 1e6:.1f}** | **{tf / bandwidth * 1e6:.1f}** | "
                 f"| **{tr / 1e6:.1f}** |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="the bytes-model tables (benchmarks/NOTES.md)")
    ap.add_argument("--model", default="vit_b16", choices=sorted(MODEL_DIMS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--dtype", default="bf16", choices=sorted(_DTYPE_BYTES))
    ap.add_argument("--bandwidth-tbps", type=float, default=NOTES_BANDWIDTH / 1e12)
    args = ap.parse_args(argv)
    sh = shape_for(args.model, args.batch, args.mask_ratio)
    d = sh.as_dict()
    print(
        f"{args.model}, {d['H']} px, patch {d['p']}, batch {d['N']}, {args.dtype}, mask {args.mask_ratio} "
        f"(L={d['L']}, K={d['K']}, M={d['M']}, P={d['P']}, D={d['D']}, Dd={d['Dd']}); MB = 10^6 bytes\n"
    )
    print(table(sh, args.dtype, args.bandwidth_tbps * 1e12))
    print(f"\nOne training step under {args.dtype} autocast (float32 images, position tables and tokens; "
          f"{args.dtype} activations), fast path vs official path:\n")
    print(step_table(sh, args.dtype, args.bandwidth_tbps * 1e12))


if __name__ == "__main__":
    main()
