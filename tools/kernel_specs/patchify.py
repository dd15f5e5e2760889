"""Patchify family (kernels/patchify.py) at ViT-B/16, 224 px, batch 256, mask 0.75.

The specialisations the JIT compiles for real tensors at the headline shape, for
``tools/kernel_resources.py`` and ``tests/test_gpu_readiness.py`` (see ``tools/kernel_specs/__init__.py``).
In training, ``patchify_gather`` reads the images (bf16 from ``fastmae pretrain``'s input pipeline,
float32 from a loader that normalises on the CPU) and writes the autocast dtype; the other specs are
the bf16 / fp16 / fp32 cases of the public ops.
"""

from __future__ import annotations

import triton

from fastmae.kernels import patchify as k
from fastmae.kernels._common import _inverse_ids_kernel, persistent_groups

from . import IMG, ITEMSIZE, K, L, N, P, PATCH, C, SMS, spec

_PIXELS = N * C * IMG * IMG  # = N * L * P


def _persistent(blocks: int, num_warps: int, src: str, dst: str, gather: bool) -> dict:
    """Grid size, loop trips and the persistent-grid keys of a launch on an H100, as the launcher
    sizes it (``kernels/_common.persistent_groups`` with ``patchify.programs_per_sm``)."""
    per_sm = k.programs_per_sm(num_warps, ITEMSIZE[src], ITEMSIZE[dst], gather)
    groups, trips = persistent_groups(N, blocks, SMS * per_sm)
    return dict(programs=blocks * groups, loop_trips=(trips,), persistent=True,
                persistent_work=N, persistent_groups=groups)


# the model's gather from the CLI's bf16 images (bf16 rows) and from float32 images; the other ops' bf16 case
HEADLINE = ('patchify_bf16', 'unpatchify_bf16', 'patchify_gather_bf16', 'patchify_gather_fp32_to_bf16',
            'patchify_gather_bwd_bf16', 'patchify_gather_inverse_ids')


def compile_specs() -> list[dict]:
    """Each kernel at ViT-B/16 (C = 3, p = 16, L = 196, K = 49), as the JIT specialises it."""
    tile = k._tile(C, PATCH)
    num_warps = tile.pop("num_warps")
    ints = {"N": "i32", "K": "i32", "R": "i32"}
    grid = {"GH": IMG // PATCH, "GW": IMG // PATCH}
    # K = 196 or 49 and R are not multiples of 16: only the pointers are marked aligned
    aligned = ["IMG", "OUT", "X", "IDS", "INV"]
    specs = []

    def patchify_spec(name, src, dst, ids):
        rows = N * (K if ids else L)
        nbytes = rows * P * (ITEMSIZE[src] + ITEMSIZE[dst]) + (rows * 8 if ids else 0)
        grid_keys = _persistent(triton.cdiv(K if ids else L, tile["PATCHES"]), num_warps, src, dst, ids)
        programs = grid_keys.pop("programs")
        specs.append(spec(name, k._patchify_kernel, {"IMG": f"*{src}", "IDS": "*i64", "OUT": f"*{dst}", **ints},
                          {**tile, **grid, "HAS_IDS": ids, **({} if ids else {"IDS": None})}, aligned,
                          num_warps, programs, nbytes, **grid_keys))

    def unpatchify_spec(name, src, dst, inv):
        rows = N * (K if inv else L)  # rows of X read
        nbytes = rows * P * ITEMSIZE[src] + _PIXELS * ITEMSIZE[dst] + (N * L * 4 if inv else 0)
        grid_keys = _persistent(triton.cdiv(L, tile["PATCHES"]), num_warps, src, dst, False)
        programs = grid_keys.pop("programs")
        specs.append(spec(name, k._unpatchify_kernel, {"X": f"*{src}", "INV": "*i32", "OUT": f"*{dst}", **ints},
                          {**tile, **grid, "HAS_INV": inv, **({} if inv else {"INV": None})}, aligned,
                          num_warps, programs, nbytes, **grid_keys))

    for dt in ("bf16", "fp32"):
        patchify_spec(f"patchify_{dt}", dt, dt, False)
        unpatchify_spec(f"unpatchify_{dt}", dt, dt, False)
    # the model's visible-patch gather under autocast: float32 images in, the GEMM's dtype out
    patchify_spec("patchify_gather_fp32_to_bf16", "fp32", "bf16", True)
    patchify_spec("patchify_gather_fp32_to_fp16", "fp32", "fp16", True)
    for dt in ("bf16", "fp16", "fp32"):
        patchify_spec(f"patchify_gather_{dt}", dt, dt, True)
    unpatchify_spec("patchify_gather_bwd_bf16_to_fp32", "bf16", "fp32", True)
    unpatchify_spec("patchify_gather_bwd_bf16", "bf16", "bf16", True)
    # The inverse-ids kernel (kernels/_common.py) is listed once, here; encoder_input's backward
    # launches it with the same specialisation (K = 49 -> BLOCK_K = 64, int64 ids).
    specs.append(spec("patchify_gather_inverse_ids", _inverse_ids_kernel,
                      {"IDS": "*i64", "INV": "*i32", "K": "i32", "L": "i32"}, {"BLOCK_K": 64}, ["IDS", "INV"], 4,
                      N, N * K * 8 + N * L * 4 * 2, vector_io=False, loop_trips=(1,),
                      why_not_vector="stores go to data-dependent addresses (a scatter); row starts n*K with "
                      "K = 49 are unaligned"))
    for s in specs:
        s["headline"] = s["name"] in HEADLINE
    return specs
