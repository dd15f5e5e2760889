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
            'encoder_input_fwd_bf16', 'encoder_input_bwd_bf16_cls', 'encoder_input_bwd_bf16_cls_pos',
            'encoder_input_bwd_kept_rows')


def compile_specs() -> list[dict]:
    """Forward and backward at N = 256, L = 196, K = 49, D = 768, for the training dtypes."""
    block_r, block_d = row_blocks(D, k.FWD_TILE)
    n_rows = N * (K + 1)
    ints = {"K": "i32", "L": "i32", "D": "i32", "N": "i32"}
    # D = 768 and N = 256 are multiples of 16; K = 49, L = 196 and C = 4 are not.
    aligned = ["X", "POS", "CLS", "IDS", "OUT", "G", "INV", "ROWS", "COUNT", "PART", "D", "N"]
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
    cls_splits = triton.cdiv(N, k._BWD_N_PER_PROG)
    bwd_block_d = row_blocks(D)[1]
    col_blocks = triton.cdiv(D, bwd_block_d)
    # the pos-embed backward: a patch's list holds N*K/L = 64 rows on average (uniform masking; each
    # draw varies), cut into S shares; the cls list (N rows) into C parts of S shares
    c = k.cls_parts(N, K, L)
    mean_list = N * K // L
    pos_blocks = (c + L) * col_blocks
    shares = persistent_groups(k.pos_shares(N, K, L), pos_blocks, SMS * k.POS_SUMS_PROGRAMS_PER_SM)[0]
    share_rows = triton.cdiv(mean_list, shares)
    for grad in ("fp32", "bf16"):
        # cls only: column 0 of the gradient read, the partials written
        specs.append(spec(f"encoder_input_bwd_{grad}_cls", k._cls_sums_kernel,
                          {"G": f"*{grad}", "PART": "*fp32", **ints},
                          {"N_PER_PROG": k._BWD_N_PER_PROG, "BLOCK_N": k._BWD_BLOCK_N, "BLOCK_D": bwd_block_d},
                          aligned, NUM_WARPS, col_blocks * cls_splits, N * D * ITEMSIZE[grad] + cls_splits * D * 4))
        # with positions: every gradient row read once (each is in one list), the lists and their
        # lengths read, the partials [S, C + L, D] written
        nbytes = n_rows * D * ITEMSIZE[grad] + n_rows * 4 + (L + 1) * 4 + shares * (c + L) * D * 4
        specs.append(spec(f"encoder_input_bwd_{grad}_cls_pos", k._pos_sums_kernel,
                          {"G": f"*{grad}", "ROWS": "*i32", "COUNT": "*i32", "PART": "*fp32", "STEP": "i32", **ints},
                          {"C": c, "S": shares, "BLOCK_E": k._POS_BLOCK_E, "BLOCK_D": bwd_block_d, "CHUNKS": NUM_WARPS,
                           "WORDS": grad == "bf16"}, aligned, NUM_WARPS,
                          pos_blocks * shares, nbytes, loop_trips=(triton.cdiv(share_rows, k._POS_BLOCK_E),),
                          persistent=True, persistent_work=mean_list, persistent_groups=shares))
    # the lists of the pos-embed backward: inv read a column at a time, the kept rows written
    block_n = min(1024, triton.next_power_of_2(N))
    specs.append(spec("encoder_input_bwd_kept_rows", k._kept_rows_kernel,
                      {"INV": "*i32", "ROWS": "*i32", "COUNT": "*i32", **ints}, {"BLOCK_N": block_n}, aligned,
                      NUM_WARPS, L + 1, N * L * 4 + n_rows * 4 + (L + 1) * 4, vector_io=False,
                      why_not_vector="reads one int32 of each sample's row of inv (a column of [N, L]) and writes "
                                     "the kept rows at data-dependent places",
                      loop_trips=(triton.cdiv(N, block_n),)))
    for s in specs:
        s["headline"] = s["name"] in HEADLINE
    return specs
