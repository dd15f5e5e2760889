"""masking_ids (kernels/masking_ids.py) at ViT-B/16, 224 px, mask 0.75.

The specialisations the JIT compiles for real tensors at the headline shape, for
``tools/kernel_resources.py`` and ``tests/test_gpu_readiness.py`` (see ``tools/kernel_specs/__init__.py``).
"""

from __future__ import annotations

from fastmae.kernels import masking_ids as k

from . import L, N


def compile_specs() -> list[dict]:
    """The kernel at ViT-B/16, 224 px (L = 196, K = 49 at mask ratio 0.75), fp32 noise (``torch.rand``)."""
    block_i, block_j = k._blocks(196)
    return [
        {
            "name": "masking_ids",
            "kernel": k._masking_ids_kernel,
            "signature": {
                "NOISE": "*fp32", "IDS_KEEP": "*i64", "IDS_RESTORE": "*i64", "MASK": "*fp32", "IDS_MASKED": "*i64",
                "L": "i32", "K": "i32", "WIDE": "constexpr", "BLOCK_I": "constexpr", "BLOCK_J": "constexpr",
            },
            "constexprs": {"WIDE": False, "BLOCK_I": block_i, "BLOCK_J": block_j},
            # L = 196 and K = 49 are not multiples of 16: the JIT specialises the pointers only
            "aligned": ["NOISE", "IDS_KEEP", "IDS_RESTORE", "MASK", "IDS_MASKED"],
            "num_warps": k.NUM_WARPS,
            "expect_vector_io": False,
            # noise read; ids_keep + ids_masked (N*L int64), ids_restore, mask written
            "programs": N * -(-L // block_i), "bytes": N * L * (4 + 8 + 8 + 4),
            "loop_trips": (-(-L // block_j),), "headline": True,
            "why_not_vector": (
                "compare-bound (O(L^2) per row, 16 B of IO per patch); rows start at row*196 elements, "
                "not provably 16-byte aligned, and ids_keep / ids_masked are scatters by rank"
            ),
        }
    ]
