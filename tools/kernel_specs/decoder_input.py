"""decoder_input (kernels/decoder_input.py) at the ViT-B/16 decoder, 224 px, batch 256, mask 0.75.

The specialisations the JIT compiles for real tensors at the headline shape, for
``tools/kernel_resources.py`` and ``tests/test_gpu_readiness.py`` (see ``tools/kernel_specs/__init__.py``).
In training under autocast ``x`` is decoder_embed's bf16/fp16 output and the mask token and table are
float32 parameters: the output and its gradient are float32, ``grad_x`` is written in x's dtype. A
model run in pure bf16 (``model.bfloat16()``, no autocast) has every tensor bf16.
"""

from __future__ import annotations

import triton

from fastmae.kernels import decoder_input as k
from fastmae.kernels._common import NUM_WARPS, persistent_groups, row_blocks

from . import DD, ITEMSIZE, K, L, N, SMS, spec

# autocast (bf16 tokens, float32 tables) and pure bf16, forward and backward
HEADLINE = ('decoder_input_fwd_bf16_fp32_tables', 'decoder_input_bwd_fp32_to_bf16',
            'decoder_input_fwd_bf16', 'decoder_input_bwd_bf16')


def _persistent(blocks: int, per_sm: int) -> dict:
    """Grid size, loop trips and the persistent-grid keys of a launch on an H100, as the launcher
    sizes it (``kernels/_common.persistent_groups`` with ``decoder_input.programs_per_sm``)."""
    groups, trips = persistent_groups(N, blocks, SMS * per_sm)
    return dict(programs=blocks * groups, loop_trips=(trips,), persistent=True, persistent_work=N,
                persistent_groups=groups)


def compile_specs() -> list[dict]:
    """Forward and backward at N = 256, L = 196, K = 49, Dd = 512, for the training dtypes."""
    n_rows = N * (L + 1)
    ints = {"N": "i32", "K": "i32", "L": "i32", "D": "i32"}
    # N = 256 and D = 512 are multiples of 16; K = 49 and L = 196 are not.
    aligned = ["X", "IDS", "MASK", "POS", "OUT", "G", "GX", "PART", "N", "D"]
    specs = []
    block_r, block_d = row_blocks(DD, k.FWD_TILE)
    blocks = triton.cdiv(L + 1, block_r) * triton.cdiv(DD, block_d)
    for x, table in (("bf16", "fp32"), ("fp16", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "fp32")):
        out = "fp32" if "fp32" in (x, table) else x
        grid = _persistent(blocks, k.fwd_programs_per_sm(ITEMSIZE[out]))
        # x (K+1 rows) and ids read, mask token and table read, output written
        nbytes = (N * (K + 1) * DD * ITEMSIZE[x] + N * L * 8 + (L + 2) * DD * ITEMSIZE[table]
                  + n_rows * DD * ITEMSIZE[out])
        specs.append(spec(f"decoder_input_fwd_{x}" + (f"_{table}_tables" if table != x else ""),
                          k._decoder_input_kernel,
                          {"X": f"*{x}", "IDS": "*i64", "MASK": f"*{table}", "POS": f"*{table}", "OUT": f"*{out}",
                           **ints},
                          {"BLOCK_R": block_r, "BLOCK_D": block_d}, aligned, NUM_WARPS, grid.pop("programs"),
                          nbytes, **grid))
    for grad, x in (("fp32", "bf16"), ("fp32", "fp16"), ("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "fp32")):
        block_r, block_d = row_blocks(DD, k.bwd_tile(ITEMSIZE[grad]))
        row_blocks_ = triton.cdiv(L + 1, block_r)
        grid = _persistent(row_blocks_ * triton.cdiv(DD, block_d), k.bwd_programs_per_sm(ITEMSIZE[grad]))
        # the gradient and ids read, grad_x (K+1 rows) and the mask-token partials ([G * B, Dd]) written
        nbytes = (n_rows * DD * ITEMSIZE[grad] + N * L * 8 + N * (K + 1) * DD * ITEMSIZE[x]
                  + grid["persistent_groups"] * row_blocks_ * DD * 4)
        specs.append(spec(f"decoder_input_bwd_{grad}" + (f"_to_{x}" if x != grad else ""),
                          k._decoder_input_bwd_kernel,
                          {"G": f"*{grad}", "IDS": "*i64", "GX": f"*{x}", "PART": "*fp32", **ints},
                          {"BLOCK_R": block_r, "BLOCK_D": block_d, "CHUNKS": NUM_WARPS, "WORDS": grad == "bf16"},
                          aligned, NUM_WARPS,
                          grid.pop("programs"), nbytes, **grid))
    for s in specs:
        s["headline"] = s["name"] in HEADLINE
    return specs
