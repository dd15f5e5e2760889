"""decoder_input (kernels/decoder_input.py) at the ViT-B/16 decoder, 224 px, batch 256, mask 0.75.

The specialisations the JIT compiles for real tensors at the headline shape, for
``tools/kernel_resources.py`` and ``tests/test_gpu_readiness.py`` (see ``tools/kernel_specs/__init__.py``).
In training under autocast ``x`` is decoder_embed's bf16/fp16 output and the mask token and table are
float32 parameters: the output and its gradient are float32, ``grad_x`` is written in x's dtype.
"""

from __future__ import annotations

import triton

from fastmae.kernels import decoder_input as k
from fastmae.kernels._common import NUM_WARPS, row_blocks

from . import DD, ITEMSIZE, K, L, N, spec


HEADLINE = ('decoder_input_fwd_bf16_fp32_tables', 'decoder_input_bwd_fp32_to_bf16')


def compile_specs() -> list[dict]:
    """Forward and backward at N = 256, L = 196, K = 49, Dd = 512, for the training dtypes."""
    block_r, block_d = row_blocks(DD)
    n_rows = N * (L + 1)
    ints = {"K": "i32", "L": "i32", "D": "i32"}
    # D = 512 is a multiple of 16; K = 49 and L = 196 are not.
    aligned = ["X", "IDS", "MASK", "POS", "OUT", "G", "GX", "PART", "D"]
    col_blocks = triton.cdiv(DD, block_d)
    specs = []
    for x, table in (("bf16", "fp32"), ("fp16", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "fp32")):
        out = "fp32" if "fp32" in (x, table) else x
        # x (K+1 rows) and ids read, mask token and table read, output written
        nbytes = (N * (K + 1) * DD * ITEMSIZE[x] + N * L * 8 + (L + 2) * DD * ITEMSIZE[table]
                  + n_rows * DD * ITEMSIZE[out])
        specs.append(spec(f"decoder_input_fwd_{x}" + (f"_{table}_tables" if table != x else ""),
                          k._decoder_input_kernel,
                          {"X": f"*{x}", "IDS": "*i64", "MASK": f"*{table}", "POS": f"*{table}", "OUT": f"*{out}",
                           **ints},
                          {"BLOCK_R": block_r, "BLOCK_D": block_d}, aligned, NUM_WARPS,
                          N * triton.cdiv(L + 1, block_r) * col_blocks, nbytes))
    tiles = k._BWD_TILES_PER_PROG
    row_programs = N * triton.cdiv(L + 1, tiles * block_r)
    for grad, x in (("fp32", "bf16"), ("fp32", "fp16"), ("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "fp32")):
        # the gradient and ids read, grad_x (K+1 rows) and the mask-token partials written
        nbytes = (n_rows * DD * ITEMSIZE[grad] + N * L * 8 + N * (K + 1) * DD * ITEMSIZE[x]
                  + row_programs * DD * 4)
        specs.append(spec(f"decoder_input_bwd_{grad}" + (f"_to_{x}" if x != grad else ""),
                          k._decoder_input_bwd_kernel,
                          {"G": f"*{grad}", "IDS": "*i64", "GX": f"*{x}", "PART": "*fp32", **ints},
                          {"TILES": tiles, "BLOCK_R": block_r, "BLOCK_D": block_d}, aligned, NUM_WARPS,
                          row_programs * col_blocks, nbytes, loop_trips=(tiles,)))
    for s in specs:
        s["headline"] = s["name"] in HEADLINE
    return specs
