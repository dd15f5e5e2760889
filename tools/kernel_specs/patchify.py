"""Patchify family (kernels/patchify.py) at ViT-B/16, 224 px, bf16.

The specialisations the JIT compiles for real tensors at the headline shape, for
``tools/kernel_resources.py`` and ``tests/test_gpu_readiness.py`` (see ``tools/kernel_specs/__init__.py``).
"""

from __future__ import annotations

from fastmae.kernels import patchify as k
from fastmae.kernels._common import _inverse_ids_kernel


def compile_specs() -> list[dict]:
    """Each kernel at ViT-B/16, 224 px, bf16 (C = 3, p = 16, L = 196, K = 49), as the JIT specialises it."""
    tile = k._tile(3, 16)
    num_warps = tile.pop("num_warps")
    hw = {"L": "i32", "H": "i32", "W": "i32"}
    common = {"C": "constexpr", "PS": "constexpr", "C_PAD": "constexpr", "PP_PAD": "constexpr", "P_PAD": "constexpr"}
    specs = []
    for name, ids in (("patchify", None), ("patchify_gather", "*i64")):
        specs.append({
            "name": name,
            "kernel": k._patchify_kernel,
            "signature": {"IMG": "*bf16", "IDS": ids or "constexpr", "OUT": "*bf16", "K": "i32", **hw, **common,
                          "HAS_IDS": "constexpr"},
            "constexprs": {**tile, "HAS_IDS": ids is not None, **({} if ids else {"IDS": None})},
            # K = 196 or 49, L = 196: not multiples of 16; H = W = 224 are.
            "aligned": ["IMG", "OUT", "H", "W"] + (["IDS"] if ids else []),
            "num_warps": num_warps,
            "expect_vector_io": True,
            "why_not_vector": "",
        })
    for name, inv in (("unpatchify", None), ("patchify_gather_bwd", "*i32")):
        specs.append({
            "name": name,
            "kernel": k._unpatchify_kernel,
            "signature": {"X": "*bf16", "INV": inv or "constexpr", "OUT": "*bf16", "R": "i32", **hw, **common,
                          "HAS_INV": "constexpr"},
            "constexprs": {**tile, "HAS_INV": inv is not None, **({} if inv else {"INV": None})},
            "aligned": ["X", "OUT", "H", "W"] + (["INV"] if inv else []),
            "num_warps": num_warps,
            "expect_vector_io": True,
            "why_not_vector": "",
        })
    # The inverse-ids kernel (kernels/_common.py) is listed once, here; encoder_input's backward
    # launches it with the same specialisation (K = 49 -> BLOCK_K = 64, int64 ids).
    specs.append({
        "name": "patchify_gather_inverse_ids",
        "kernel": _inverse_ids_kernel,
        "signature": {"IDS": "*i64", "INV": "*i32", "K": "i32", "L": "i32", "BLOCK_K": "constexpr"},
        "constexprs": {"BLOCK_K": 64},
        "aligned": ["IDS", "INV"],
        "num_warps": 4,
        "expect_vector_io": False,
        "why_not_vector": "stores go to data-dependent addresses (a scatter); row starts n*K with K = 49 are unaligned",
    })
    return specs
