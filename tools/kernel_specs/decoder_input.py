"""decoder_input (kernels/decoder_input.py) at the ViT-B/16 decoder, 224 px, batch 256, mask 0.75.

The specialisations the JIT compiles for real tensors at the headline shape, for
``tools/kernel_resources.py`` and ``tests/test_gpu_readiness.py`` (see ``tools/kernel_specs/__init__.py``).
"""

from __future__ import annotations

from fastmae.kernels import decoder_input as k
from fastmae.kernels._common import NUM_WARPS, row_blocks


def compile_specs() -> list[dict]:
    """Each kernel at the MAE ViT-B/16 decoder's shapes (N=256, L=196, K=49, D=512), as the JIT would specialise it."""
    d = 512
    block_r, block_d = row_blocks(d)
    ints = {"K": "i32", "L": "i32", "D": "i32", "n_rows": "i32"}
    # D = 512 and n_rows = 256 * 197 = 50432 are multiples of 16; K = 49 and L = 196 are not.
    specs = []
    for name, x_t, table_t, out_t in (
        ("decoder_input_fwd_bf16", "*bf16", "*bf16", "*bf16"),
        # the model's case under autocast: a bf16 decoder_embed output plus float32 mask token and table
        ("decoder_input_fwd_bf16_fp32_tables", "*bf16", "*fp32", "*fp32"),
    ):
        specs.append({
            "name": name,
            "kernel": k._decoder_input_kernel,
            "signature": {"X": x_t, "IDS": "*i64", "MASK": table_t, "POS": table_t, "OUT": out_t, **ints,
                          "BLOCK_R": "constexpr", "BLOCK_D": "constexpr"},
            "constexprs": {"BLOCK_R": block_r, "BLOCK_D": block_d},
            "aligned": ["X", "IDS", "MASK", "POS", "OUT", "D", "n_rows"],
            "num_warps": NUM_WARPS,
            "expect_vector_io": True,
            "why_not_vector": "",
        })
    specs.append({
        "name": "decoder_input_bwd_bf16",
        "kernel": k._decoder_input_bwd_kernel,
        "signature": {"G": "*bf16", "IDS": "*i64", "GX": "*bf16", "PART": "*fp32", **ints,
                      "TILES": "constexpr", "BLOCK_R": "constexpr", "BLOCK_D": "constexpr"},
        "constexprs": {"TILES": k._BWD_TILES_PER_PROG, "BLOCK_R": block_r, "BLOCK_D": block_d},
        "aligned": ["G", "IDS", "GX", "PART", "D", "n_rows"],
        "num_warps": NUM_WARPS,
        "expect_vector_io": True,
        "why_not_vector": "",
    })
    return specs
