"""encoder_input (kernels/encoder_input.py) at ViT-B/16, 224 px, batch 256, mask 0.75.

The specialisations the JIT compiles for real tensors at the headline shape, for
``tools/kernel_resources.py`` and ``tests/test_gpu_readiness.py`` (see ``tools/kernel_specs/__init__.py``).
"""

from __future__ import annotations

from fastmae.kernels import encoder_input as k
from fastmae.kernels._common import NUM_WARPS, row_blocks


def compile_specs() -> list[dict]:
    """Each kernel at ViT-B/16 shapes: N=256, L=196, K=49, D=768, as the JIT would specialise it."""
    d = 768  # N = 256, L = 196 and K = 49 appear below only through their divisibility by 16
    block_r, block_d = row_blocks(d)
    fwd_ints = {"K": "i32", "L": "i32", "D": "i32", "n_rows": "i32"}
    fwd_const = {"BLOCK_R": block_r, "BLOCK_D": block_d}
    # D = 768 and n_rows = 256 * 50 = 12800 are multiples of 16; K = 49 and L = 196 are not.
    fwd_aligned = ["X", "POS", "CLS", "IDS", "OUT", "D", "n_rows"]
    specs = []
    for name, x_t, table_t, out_t in (
        ("encoder_input_fwd_bf16", "*bf16", "*bf16", "*bf16"),
        # the model's case under autocast: a bf16 GEMM output plus the float32 parameter tables
        ("encoder_input_fwd_bf16_fp32_tables", "*bf16", "*fp32", "*fp32"),
    ):
        specs.append({
            "name": name,
            "kernel": k._encoder_input_kernel,
            "signature": {"X": x_t, "POS": table_t, "CLS": table_t, "IDS": "*i64", "OUT": out_t, **fwd_ints,
                          "BLOCK_R": "constexpr", "BLOCK_D": "constexpr"},
            "constexprs": fwd_const,
            "aligned": fwd_aligned,
            "num_warps": NUM_WARPS,
            "expect_vector_io": True,
            "why_not_vector": "",
        })
    for name, has_pos in (("encoder_input_bwd_cls", False), ("encoder_input_bwd_cls_pos", True)):
        specs.append({
            "name": name,
            "kernel": k._encoder_input_bwd_kernel,
            "signature": {"G": "*bf16", "INV": "*i32", "PART": "*fp32", "N": "i32", "K": "i32", "L": "i32",
                          "D": "i32", "T": "i32" if has_pos else "constexpr", "HAS_POS": "constexpr",
                          "N_PER_PROG": "constexpr", "BLOCK_N": "constexpr", "BLOCK_D": "constexpr"},
            "constexprs": {"HAS_POS": has_pos, "N_PER_PROG": k._BWD_N_PER_PROG, "BLOCK_N": k._BWD_BLOCK_N,
                           "BLOCK_D": block_d, **({} if has_pos else {"T": 1})},
            # N = 256 and D = 768 are multiples of 16; T = L + 1 = 197 is not (and T = 1 is a constant).
            "aligned": ["G", "INV", "PART", "N", "D"],
            "num_warps": NUM_WARPS,
            "expect_vector_io": True,
            "why_not_vector": "",
        })
    return specs
