"""Small pieces the kernel modules share: op registration, output allocation (poisonable for tests),
block sizes for the row-tiled kernels, the persistent-grid size, and the inverse-ids kernel (a patch
-> row map built from an ids tensor)."""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

# --------------------------------------------------------------------------------------------------
# registration: torch.library.triton_op where it can be used, custom_op otherwise
# --------------------------------------------------------------------------------------------------

# ``triton_op`` (torch >= 2.6) lets torch.compile see the Triton kernels inside an op: inductor
# traces the op's body, finds the ``wrap_triton`` launches and schedules them with the code around
# them, where a ``custom_op`` is an opaque call. Its fake implementation is the body itself, run on
# fake tensors (the launches are recorded, not run). Triton's interpreter runs InterpretedFunctions,
# which that tracing cannot record, so under TRITON_INTERPRET=1 — read when the kernels are
# decorated, as Triton does — the ops are custom_ops with the fake implementations written out.
USE_TRITON_OP = hasattr(torch.library, "triton_op") and os.environ.get("TRITON_INTERPRET") != "1"


def op(name: str):
    """Decorator: register ``fn`` as the torch op ``name`` (``triton_op`` or ``custom_op``, see above)."""
    def register(fn):
        if USE_TRITON_OP:
            return torch.library.triton_op(name, fn, mutates_args=())
        return torch.library.custom_op(name, fn, mutates_args=())
    return register


def fake(registered):
    """Decorator: the fake (meta) implementation of ``registered``; a ``triton_op`` derives its own."""
    def register(fn):
        if not USE_TRITON_OP:
            registered.register_fake(fn)
        return fn
    return register


def launch(kernel):
    """``kernel`` as launched inside an op: wrapped for triton_op's tracing (``kernel[grid](...)`` as usual)."""
    return torch.library.wrap_triton(kernel) if USE_TRITON_OP else kernel


_poison = False


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty`` for kernel outputs; inside :func:`poisoned_outputs` filled with NaN (floats) or -1.

    Tests poison outputs so that an element a kernel forgets to write fails the comparison.
    """
    out = torch.empty(shape, dtype=dtype, device=device)
    if _poison:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


@contextlib.contextmanager
def poisoned_outputs():
    """Fill every output allocated through :func:`empty` with garbage while the context is open."""
    global _poison
    before, _poison = _poison, True
    try:
        yield
    finally:
        _poison = before


def next_power_of_2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


_SM_COUNT: dict = {}
# Programs of a persistent launch per SM: 64 resident warps / 4 warps per program (the kernels that
# use it need few enough registers for that: <= 32 at sm_90; a specialisation that needs more passes
# its own count, and tests/test_gpu_readiness.py checks every persistent grid against the registers
# it compiles to).
PERSISTENT_WARPS_PER_SM = 64


def resident_programs(registers: int, num_warps: int) -> int:
    """Programs of ``num_warps`` warps an SM holds at once at ``registers`` a thread (sm_80 / sm_90:
    65,536 registers an SM, allocated 8 a thread at a time; at most ``PERSISTENT_WARPS_PER_SM`` warps)."""
    return min(PERSISTENT_WARPS_PER_SM, 65536 // (-(-registers // 8) * 8 * 32)) // num_warps


def persistent_groups(images: int, blocks: int, slots: int) -> tuple[int, int]:
    """``(groups, trips)`` of a persistent launch: ``blocks`` programs per group of images, at most
    ``slots`` resident programs on the whole GPU.

    ``groups = slots // blocks`` (at least 1, at most ``images``), so that the ``blocks * groups``
    programs are all resident at once (one wave, never a second round of a few late programs); each
    group then takes ``trips = ceil(images / groups)`` images; the groups are then cut to
    ``ceil(images / trips)``, the fewest that need no more trips, so every program runs ``trips`` or
    ``trips - 1`` images (the work is balanced within one trip).
    """
    groups = max(1, min(images, slots // max(blocks, 1)))
    trips = -(-images // groups)
    return -(-images // trips), trips


def image_groups(images: int, blocks: int, programs_per_sm: int, device: torch.device) -> int:
    """How many groups of images a persistent launch of ``blocks`` programs per image group uses.

    On CUDA: :func:`persistent_groups` for ``SMs * programs_per_sm`` resident programs; elsewhere
    (the interpreter) one group per image, no loop.
    """
    if device.type != "cuda":
        return max(1, images)
    if device not in _SM_COUNT:
        _SM_COUNT[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return persistent_groups(images, blocks, _SM_COUNT[device] * programs_per_sm)[0]


def bf16_rows_as_words(t: torch.Tensor) -> bool:
    """Whether a contiguous ``t [..., D]`` can be read as 32-bit words of two bf16 values each: bf16,
    an even ``D`` (every row starts on a word) and data on a 4-byte boundary (read on the host, no
    sync; a word load from an odd element would be a misaligned address)."""
    return t.dtype == torch.bfloat16 and t.shape[-1] % 2 == 0 and words_aligned(t)


def promoted_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype torch's type promotion gives ``a + b + ...`` (bf16 tokens + fp32 tables -> fp32)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def words_aligned(t: torch.Tensor) -> bool:
    """Whether ``t``'s data starts on a 4-byte boundary (read on the host, no sync).

    A tensor without an address (fake tensors while torch.compile traces, meta tensors) counts its
    storage as aligned and checks the offset into it, as Inductor does for its own inputs (a compiled
    graph copies an input whose address turns out misaligned at run time).
    """
    from torch._subclasses.fake_tensor import is_fake

    if is_fake(t) or t.device.type == "meta":
        return bool((t.storage_offset() * t.element_size()) % 4 == 0)
    return t.data_ptr() % 4 == 0


# --------------------------------------------------------------------------------------------------
# row-tiled kernels (encoder_input, decoder_input): a program covers a [BLOCK_R, BLOCK_D] tile of a
# [rows, D] tensor
# --------------------------------------------------------------------------------------------------

MAX_BLOCK_D = 256  # columns per program: one warp covers 256 bf16 values with 16-byte accesses
ROW_TILE = 2048  # elements per tile (BLOCK_R * BLOCK_D): 16 per thread at 4 warps
NUM_WARPS = 4


def row_blocks(d: int, tile: int = ROW_TILE) -> tuple[int, int]:
    """``(BLOCK_R, BLOCK_D)`` for rows of width ``d``: BLOCK_D a power of two, columns in cdiv(d, BLOCK_D) programs."""
    block_d = min(MAX_BLOCK_D, next_power_of_2(d))
    return max(1, tile // block_d), block_d


# --------------------------------------------------------------------------------------------------
# inverse ids (the backward of patchify_gather, the pos-embed gradient of encoder_input)
# --------------------------------------------------------------------------------------------------


@triton.jit
def _inverse_ids_kernel(
    IDS,  # pointer to ids [N, K] (int32 or int64), distinct within a row
    INV,  # pointer to int32 [N, L], filled with -1 beforehand; receives inv[n, ids[n, k]] = k
    K,  # ids per image
    L,  # patches per image (ids outside [0, L) are skipped)
    BLOCK_K: tl.constexpr,  # ids per step, a power of two
):
    # inv[n, ids[n, k]] = k. Distinct ids: every address is written at most once, no atomics needed.
    n = tl.program_id(0).to(tl.int64)  # one program per image
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        ids = tl.load(IDS + n * K + k, mask=k < K, other=-1).to(tl.int64)
        tl.store(INV + n * L + ids, k, mask=(k < K) & (ids >= 0) & (ids < L))


def inverse_ids(ids: torch.Tensor, num_patches: int) -> torch.Tensor:
    """``ids [N, K]`` -> ``inv [N, L]`` int32: ``inv[n, ids[n, k]] = k``, -1 where no id names the patch.

    An id outside ``[0, L)`` names no patch (it is skipped). The ids of a row are expected distinct
    (``masking_ids`` makes them so); then the result is deterministic.
    """
    n, k = ids.shape
    inv = torch.full((n, num_patches), -1, dtype=torch.int32, device=ids.device)  # [N, L]
    if k and n:
        launch(_inverse_ids_kernel)[(n,)](ids, inv, k, num_patches, BLOCK_K=min(1024, next_power_of_2(k)),
                                          num_warps=NUM_WARPS)
    return inv
