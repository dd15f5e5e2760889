"""masked_mse_loss (kernels/masked_mse_loss.py) at ViT-B/16, 224 px, batch 256, bf16, mask 0.75.

The specialisations the JIT compiles for real tensors at the headline shape, for
``tools/kernel_resources.py`` and ``tests/test_gpu_readiness.py`` (see ``tools/kernel_specs/__init__.py``).
"""

from __future__ import annotations

from fastmae.kernels import masked_mse_loss as k
from fastmae.reference import NORM_PIX_EPS


def compile_specs() -> list[dict]:
    """Each kernel at ViT-B/16 (p = 16, C = 3, P = 768), 224 px, batch 256, bf16, mask 0.75.

    Both forms: masked (pred [256, 147, 768], int64 ids; what the model's fast path calls) and full
    (pred [256, 196, 768], a float32 mask). Integers the JIT sees divisible by 16: NR (37632, 50176),
    H = W = 224 and G (9408, 12544 programs); R (147, 196), NUM_PATCHES (196) and GW (14) are not.
    """
    block_r, block_p = k._blocks(256 * 147, 768)
    consts = {"PATCH": 16, "C": 3, "EPS": NORM_PIX_EPS, "BLOCK_R": block_r, "BLOCK_P": block_p}
    types = {
        "PRED": "*bf16", "IMGS": "*bf16", "PARTIAL": "*fp32", "GRAD_LOSS": "*fp32", "INV_DEN": "*fp32",
        "GRAD_PRED": "*bf16", "LOSS": "*fp32", "DEN_ROWS": "fp32",
        **{k: "i32" for k in ("NR", "R", "NUM_PATCHES", "H", "W", "GW", "G")},
    }
    pointers_and_aligned_ints = ["PRED", "IMGS", "MASK", "IDS", "PARTIAL", "GRAD_LOSS", "INV_DEN",
                                 "GRAD_PRED", "LOSS", "NR", "H", "W", "G"]

    # Every kernel expects 16-byte accesses: loads of pred, stores of grad_pred, loads of the partials.
    # The image side is a channel-interleaved gather (2-byte loads, coalesced: p contiguous pixels per
    # channel and patch row).
    def spec(name, kernel, constexprs, extra_types):
        signature = {a: "constexpr" if a in constexprs else {**types, **extra_types}[a] for a in kernel.arg_names}
        aligned = [a for a in kernel.arg_names if a in pointers_and_aligned_ints]
        return {"name": name, "kernel": kernel, "signature": signature, "constexprs": constexprs,
                "aligned": aligned, "num_warps": k._NUM_WARPS, "expect_vector_io": True, "why_not_vector": ""}

    specs = []
    for form, has_mask in (("masked", False), ("full", True)):
        # the absent one of MASK / IDS is a dummy (pred) the kernel never reads
        extra = {"MASK": "*fp32", "IDS": "*bf16"} if has_mask else {"MASK": "*bf16", "IDS": "*i64"}
        flags = {"NORM_PIX": True, "HAS_MASK": has_mask, "HAS_IDS": not has_mask}
        specs.append(spec(f"masked_mse_loss_fwd_{form}", k._masked_mse_loss_kernel, {**consts, **flags}, extra))
        specs.append(spec(f"masked_mse_loss_bwd_{form}", k._masked_mse_loss_bwd_kernel, {**consts, **flags}, extra))
    specs.append(spec("masked_mse_loss_sum", k._masked_mse_loss_sum_kernel, {"HAS_MASK": True, "BLOCK_G": k._BLOCK_G}, {}))
    return specs
