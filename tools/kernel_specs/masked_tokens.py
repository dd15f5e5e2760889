"""masked_tokens (kernels/masked_tokens.py) at the ViT-B/16 decoder, 224 px, batch 256, mask 0.75.

The specialisations the JIT compiles for real tensors at the headline shape, for
``tools/kernel_resources.py`` and ``tests/test_gpu_readiness.py`` (see ``tools/kernel_specs/__init__.py``).
"""

from __future__ import annotations

from fastmae.kernels import masked_tokens as k
from fastmae.kernels._common import NUM_WARPS, row_blocks


def compile_specs() -> list[dict]:
    """Both kernels at N = 256, L = 196, M = 147, Dd = 512, bf16 tokens, int64 ids."""
    block_r, block_d = row_blocks(512)
    ints = {"M": "i32", "L": "i32", "D": "i32", "n_rows": "i32"}
    consts = {"BLOCK_R": block_r, "BLOCK_D": block_d}
    return [
        {
            "name": "masked_tokens_fwd_bf16",
            "kernel": k._masked_tokens_kernel,
            "signature": {"X": "*bf16", "IDS": "*i64", "OUT": "*bf16", **ints,
                          "BLOCK_R": "constexpr", "BLOCK_D": "constexpr"},
            "constexprs": consts,
            # D = 512 and n_rows = 256 * 147 = 37632 are multiples of 16; M = 147 and L = 196 are not.
            "aligned": ["X", "IDS", "OUT", "D", "n_rows"],
            "num_warps": NUM_WARPS,
            "expect_vector_io": True,
            "why_not_vector": "",
        },
        {
            "name": "masked_tokens_bwd_bf16",
            "kernel": k._masked_tokens_bwd_kernel,
            "signature": {"G": "*bf16", "IDS_RESTORE": "*i64", "GX": "*bf16", **ints,
                          "BLOCK_R": "constexpr", "BLOCK_D": "constexpr"},
            "constexprs": consts,
            # n_rows = 256 * 197 = 50432 is a multiple of 16
            "aligned": ["G", "IDS_RESTORE", "GX", "D", "n_rows"],
            "num_warps": NUM_WARPS,
            "expect_vector_io": True,
            "why_not_vector": "",
        },
    ]
