"""resized_crop (kernels/resized_crop.py) at the ViT-B/16 pretraining input: 224 px, batch 256.

The specialisation the JIT compiles for real tensors at the headline shape, for
``tools/kernel_resources.py`` and ``tests/test_gpu_readiness.py`` (see ``tools/kernel_specs/__init__.py``).
"""

from __future__ import annotations

from fastmae.kernels import resized_crop as k


def compile_specs() -> list[dict]:
    """The kernel writing bf16 (the model's input under autocast) and float32, at 224 x 224."""
    block_r, block_w = k.launch_blocks((224, 224))
    specs = []
    for name, out_t in (("resized_crop_bf16", "*bf16"), ("resized_crop_fp32", "*fp32")):
        specs.append({
            "name": name,
            "kernel": k._resized_crop_kernel,
            "signature": {"DATA": "*u8", "META": "*i64", "BOXES": "*i64", "FLIP": "*u8", "OUT": out_t,
                          # a batch of 256 ImageNet crops is ~60 MB: n_bytes fits in 32 bits
                          "n_bytes": "i32", "S_h": "i32", "S_w": "i32",
                          "scale_r": "fp32", "scale_g": "fp32", "scale_b": "fp32",
                          "bias_r": "fp32", "bias_g": "fp32", "bias_b": "fp32",
                          "BLOCK_R": "constexpr", "BLOCK_W": "constexpr"},
            "constexprs": {"BLOCK_R": block_r, "BLOCK_W": block_w},
            # S_h = S_w = 224 are multiples of 16; the byte count of a ragged batch need not be
            "aligned": ["DATA", "META", "BOXES", "FLIP", "OUT", "S_h", "S_w"],
            "num_warps": k.NUM_WARPS,
            # the output rows are contiguous: 16-byte stores; the pixel reads are per-tap gathers of
            # single bytes (HWC rows at data-dependent offsets), which no wide load can serve
            "expect_vector_io": True,
            "why_not_vector": "",
        })
    return specs
