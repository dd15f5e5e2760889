"""masked_tokens (kernels/masked_tokens.py) at the ViT-B/16 decoder, 224 px, batch 256, mask 0.75.

The specialisations the JIT compiles for real tensors at the headline shape, for
``tools/kernel_resources.py`` and ``tests/test_gpu_readiness.py`` (see ``tools/kernel_specs/__init__.py``).
In training the decoder's residual stream is float32 under autocast (decoder_input's output is the
float32 promotion and every block adds to it), so the op moves float32 rows; bf16 and fp16 are the
models run in those dtypes throughout.
"""

from __future__ import annotations

import triton

from fastmae.kernels import masked_tokens as k
from fastmae.kernels._common import NUM_WARPS, row_blocks

from . import DD, ITEMSIZE, L, M, N, TRAINING_DTYPES, spec


# under autocast the decoder's residual stream is float32; a model run in pure bf16 launches the bf16 ones
HEADLINE = ('masked_tokens_fwd_fp32', 'masked_tokens_bwd_fp32', 'masked_tokens_fwd_bf16', 'masked_tokens_bwd_bf16')


def compile_specs() -> list[dict]:
    """Both kernels at N = 256, L = 196, M = 147, Dd = 512, int64 ids, for each dtype."""
    block_r, block_d = row_blocks(DD)
    ints = {"M": "i32", "L": "i32", "D": "i32"}
    consts = {"BLOCK_R": block_r, "BLOCK_D": block_d}
    # D = 512 is a multiple of 16; M = 147 and L = 196 are not.
    aligned = ["X", "IDS", "OUT", "G", "IDS_RESTORE", "GX", "D"]
    col_blocks = triton.cdiv(DD, block_d)
    specs = []
    for dt in TRAINING_DTYPES:
        s = ITEMSIZE[dt]
        specs.append(spec(f"masked_tokens_fwd_{dt}", k._masked_tokens_kernel,
                          {"X": f"*{dt}", "IDS": "*i64", "OUT": f"*{dt}", **ints}, consts, aligned, NUM_WARPS,
                          N * triton.cdiv(M, block_r) * col_blocks,
                          2 * N * M * DD * s + N * M * 8))  # masked rows read, written; ids
        specs.append(spec(f"masked_tokens_bwd_{dt}", k._masked_tokens_bwd_kernel,
                          {"G": f"*{dt}", "IDS_RESTORE": "*i64", "GX": f"*{dt}", **ints}, consts, aligned, NUM_WARPS,
                          N * triton.cdiv(L + 1, block_r) * col_blocks,
                          N * M * DD * s + N * L * 8 + N * (L + 1) * DD * s))  # grad read, ids, grad_x written
    for s in specs:
        s["headline"] = s["name"] in HEADLINE
    return specs
