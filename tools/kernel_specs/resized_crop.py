"""resized_crop (kernels/resized_crop.py) at the ViT-B/16 pretraining input: 224 px, batch 256.

The specialisation the JIT compiles for real tensors at the headline shape, for
``tools/kernel_resources.py`` and ``tests/test_gpu_readiness.py`` (see ``tools/kernel_specs/__init__.py``):
8-bit RGB photographs (the headline), and 13-band uint16 (Sentinel-2-like) images.
"""

from __future__ import annotations

from fastmae.kernels import resized_crop as k


def compile_specs() -> list[dict]:
    """The kernel writing bf16 (the model's input under autocast) and float32 from uint8 RGB, and bf16
    from 13-band uint16, at 224 x 224."""
    specs = []
    cases = (("resized_crop_bf16", "*bf16", "*u8", 3, False), ("resized_crop_fp32", "*fp32", "*u8", 3, False),
             ("resized_crop_u16x13_bf16", "*bf16", "*i16", 13, True))
    for name, out_t, data_t, channels, u16 in cases:
        block_r, block_w, block_c = k.launch_blocks((224, 224), channels)
        specs.append({
            "name": name,
            "kernel": k._resized_crop_kernel,
            "signature": {"DATA": data_t, "META": "*i64", "BOXES": "*i64", "FLIP": "*u8", "AFFINE": "*fp32",
                          "OUT": out_t,
                          # a batch of 256 ImageNet crops is ~60 MB: the element count fits in 32 bits
                          "n_elems": "i32", "S_h": "i32", "S_w": "i32",
                          "C": "constexpr", "GROUPS": "constexpr", "SRC_U16": "constexpr",
                          "BLOCK_R": "constexpr", "BLOCK_W": "constexpr", "BLOCK_C": "constexpr"},
            "constexprs": {"C": channels, "GROUPS": -(-channels // block_c), "SRC_U16": u16,
                           "BLOCK_R": block_r, "BLOCK_W": block_w, "BLOCK_C": block_c},
            # S_h = S_w = 224 are multiples of 16; the element count of a ragged batch need not be
            "aligned": ["DATA", "META", "BOXES", "FLIP", "AFFINE", "OUT", "S_h", "S_w"],
            "num_warps": k.NUM_WARPS,
            # the output rows are contiguous: 16-byte stores; the pixel reads are per-tap gathers
            # (HWC rows at data-dependent offsets), which no wide load can serve
            "expect_vector_io": True,
            "why_not_vector": "",
        })
    return specs
