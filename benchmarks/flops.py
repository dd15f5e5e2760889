"""FLOPs of one MAE training step, for images/s -> model FLOPs utilisation (MFU).

Per image, counting matrix multiplies only (a multiply-add is 2 FLOPs; norms, GELU, softmax and the
data-movement ops are left out, as MFU conventionally does):

    forward = 2·K·P·D                                  patch embed, visible patches only
            + depth · (24·T·D² + 4·T²·D),  T = K + 1  encoder blocks: qkv 6TD², proj 2TD², MLP 16TD²
                                                        (mlp_ratio 4); attention QKᵀ and AV 2·2·T²·D
            + 2·T·D·Dd                                 decoder_embed
            + dec_depth · (24·S·Dd² + 4·S²·Dd),  S = L + 1   decoder blocks
            + 2·M·Dd·P                                 decoder_pred on the masked patches
    train   = 3 · forward                              backward = 2 × forward

The linear terms are the usual ``6 · params_active · tokens`` (each block has ~12·D² weights seen by
its T tokens). This counts the FLOPs MAE *needs* (the fast path's); the official algorithm also
embeds the ``L - K`` masked patches and predicts the ``K`` visible ones, which are not credited:
every arm is measured against the same useful work, so MFU ratios equal throughput ratios.
ViT-B/16, 224 px, mask 0.75: 58.0 GFLOP per image (ViT-L/16: 123.7).
"""

from __future__ import annotations

from .bytes_model import MAEShape

# (encoder depth, decoder depth, mlp ratio) of the benchmarked models
MODEL_DEPTHS = {
    "vit_b16": (12, 8, 4),
    "vit_l16": (24, 8, 4),
    "vit_h14": (32, 8, 4),
    "tiny": (4, 2, 4),
    "micro": (2, 1, 4),
}

# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets, matched
# against torch.cuda.get_device_name(); FASTMAE_PEAK_TFLOPS overrides it.
PEAK_BF16_TFLOPS = (
    ("H100 SXM", 989.4), ("H100 80GB HBM3", 989.4), ("H100 NVL", 835.0), ("H100 PCIe", 756.0),
    ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0),
    ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("RTX 4090", 165.2),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The data-sheet bf16 peak of a GPU by name, or None when unknown."""
    import os

    if os.environ.get("FASTMAE_PEAK_TFLOPS"):
        return float(os.environ["FASTMAE_PEAK_TFLOPS"])
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def _blocks(tokens: int, width: int, depth: int, mlp_ratio: int) -> int:
    linear = 2 * tokens * width * width * (4 + 2 * mlp_ratio)  # qkv + proj + fc1 + fc2
    attention = 4 * tokens * tokens * width  # QK^T and AV
    return depth * (linear + attention)


def train_flops_per_image(sh: MAEShape, model: str | None = None) -> dict[str, int]:
    """``{"forward", "train"}`` FLOPs per image for ``sh`` (see the module docstring)."""
    depth, dec_depth, mlp = MODEL_DEPTHS[model or sh.model]
    k, m, num = sh.len_keep, sh.num_masked, sh.num_patches
    pd, d, dd = sh.patch_dim, sh.embed_dim, sh.decoder_dim
    forward = (
        2 * k * pd * d
        + _blocks(k + 1, d, depth, mlp)
        + 2 * (k + 1) * d * dd
        + _blocks(num + 1, dd, dec_depth, mlp)
        + 2 * m * dd * pd
    )
    return {"forward": forward, "train": 3 * forward}
