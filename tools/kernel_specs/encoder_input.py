"""encoder_input (kernels/encoder_input.py) at ViT-B/16, 224 px, batch 256, mask 0.75.

The specialisations the JIT compiles for real tensors at the headline shape, for
``tools/kernel_resources.py`` and ``tests/test_gpu_readiness.py`` (see ``tools/kernel_specs/__init__.py``).
In training under autocast ``x_vis`` is the patch-embed GEMM's bf16/fp16 output and the tables are
float32 parameters, so the output (the promotion) and its gradient are float32.
"""

from __future__ import annotations

import triton

from fastmae.kernels import encoder_input as k
from fastmae.kernels._common import NUM_WARPS, persistent_groups, row_blocks

from . import D, ITEMSIZE, K, L, N, SMS, spec

# autocast (bf16 tokens, float32 tables: a float32 gradient) and pure bf16, forward and backward; the
# backward of MAE's fixed sin-cos table sums cls only, a model that trains its positions also them
HEADLINE = ('encoder_input_fwd_bf16_fp32_tables', 'encoder_input_bwd_fp32_cls',
            'encoder_input_fwd_bf16', 'encoder_input_bwd_bf16_cls', 'encoder_input_bwd_bf16_cls_pos')


def compile_specs() -> list[dict]:
    """Forward and backward at N = 256, L = 196, K = 49, D = 768, for the training dtypes."""
    block_r, block_d = row_blocks(D, k.FWD_TILE)
    n_rows = N * (K + 1)
    ints = {"K": "i32", "L": "i32", "D": "i32", "n_rows": "i32", "N": "i32", "T": "i32"}
    # D = 768, n_rows = 12800 and N = 256 are multiples of 16; K = 49, L = 196 and T = 197 are not.
    aligned = ["X", "POS", "CLS", "IDS", "OUT", "G", "INV", "PART", "D", "n_rows", "N"]
    fwd_blocks = triton.cdiv(K + 1, block_r) * triton.cdiv(D, block_d)
    specs = []
    for x, table in (("bf16", "fp32"), ("fp16", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "fp32")):
        out = "fp32" if "fp32" in (x, table) else x
        # x_vis and ids read, the table rows of the kept patches (at most all L+1) and cls read, output written
        nbytes = (N * K * D * ITEMSIZE[x] + N * K * 8 + (L + 2) * D * ITEMSIZE[table]
                  + n_rows * D * ITEMSIZE[out])
        # a persistent grid (kernels/_common.persistent_groups), as the launcher sizes it on an H100
        groups, trips = persistent_groups(N, fwd_blocks, SMS * k.fwd_programs_per_sm(ITEMSIZE[out]))
        specs.append(spec(f"encoder_input_fwd_{x}" + (f"_{table}_tables" if table != x else ""),
                          k._encoder_input_kernel,
                          {"X": f"*{x}", "POS": f"*{table}", "CLS": f"*{table}", "IDS": "*i64", "OUT": f"*{out}",
                           **ints},
                          {"BLOCK_R": block_r, "BLOCK_D": block_d}, aligned, NUM_WARPS, fwd_blocks * groups, nbytes,
                          loop_trips=(trips,), persistent=True, persistent_work=N, persistent_groups=groups))
    for grad in ("fp32", "bf16"):
        for has_pos in (False, True):
            t_rows = L + 1 if has_pos else 1
            splits = triton.cdiv(N, k._BWD_N_PER_PROG)
            # cls only: column 0 of the gradient; with positions every gradient row, plus the inverse map
            read = (n_rows if has_pos else N) * D * ITEMSIZE[grad] + (N * L * 4 if has_pos else 0)
            specs.append(spec(f"encoder_input_bwd_{grad}_{'cls_pos' if has_pos else 'cls'}",
                              k._encoder_input_bwd_kernel,
                              {"G": f"*{grad}", "INV": "*i32", "PART": "*fp32", **ints},
                              {"HAS_POS": has_pos, "N_PER_PROG": k._BWD_N_PER_PROG, "BLOCK_N": k._BWD_BLOCK_N,
                               "BLOCK_D": row_blocks(D)[1], **({} if has_pos else {"T": 1})},
                              aligned, NUM_WARPS, t_rows * triton.cdiv(D, block_d) * splits,
                              read + splits * t_rows * D * 4))
    for s in specs:
        s["headline"] = s["name"] in HEADLINE
    return specs
