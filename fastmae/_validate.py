"""Argument checks shared by the public ops, the model and the masking helpers.

Every check raises ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape, range or
device) whose message names the argument and says what was expected. Checks read shapes, dtypes and
devices only: nothing here reads tensor data, so nothing synchronises with the device.
"""

from __future__ import annotations

import math
import numbers
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INDEX_DTYPES = (torch.int64, torch.int32)


def _dtype_names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def tensor(name: str, t, ndim: int | None = None, dtypes=None) -> torch.Tensor:
    """``t`` is a tensor of rank ``ndim`` with a dtype in ``dtypes``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in ({_dtype_names(dtypes)}), got {str(t.dtype).replace('torch.', '')}")
    return t


def images(name: str, imgs, patch_size: int, in_chans: int | None = None) -> torch.Tensor:
    """``imgs`` is ``[N, C, H, W]`` floating point, ``N >= 1``, ``H`` and ``W`` divisible by the patch."""
    tensor(name, imgs, 4, FLOAT_DTYPES)
    n, c, hh, ww = imgs.shape
    if n == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(imgs.shape)}); need at least one image")
    if in_chans is not None and c != in_chans:
        raise ValueError(f"{name} has {c} channels, expected {in_chans} (shape {tuple(imgs.shape)})")
    if hh % patch_size or ww % patch_size or hh == 0 or ww == 0:
        raise ValueError(
            f"{name} size {hh}x{ww} must be a positive multiple of patch_size {patch_size} in both dimensions"
        )
    # The kernels index within one image, and over patch rows, with 32-bit offsets (64-bit beyond).
    if c * hh * ww >= 2**31 or n * (hh // patch_size) * (ww // patch_size) >= 2**31:
        raise ValueError(f"{name} of shape {tuple(imgs.shape)} is too large: one image must hold fewer than "
                         f"2**31 values and the batch fewer than 2**31 patches")
    return imgs


def sample_size(name: str, x: torch.Tensor, rows: int) -> None:
    """One sample's tokens, ``rows`` of ``x.shape[-1]`` values, fit in int32 offsets (the token kernels
    index inside a sample in int32 and across samples in int64)."""
    if rows * x.shape[-1] >= 2**31:
        raise ValueError(f"{name} of shape {tuple(x.shape)} is too large: one sample's {rows} rows of "
                         f"{x.shape[-1]} values must hold fewer than 2**31 values")


def patch_size(p) -> int:
    if isinstance(p, bool) or not isinstance(p, int):
        raise TypeError(f"patch_size must be an int, got {type(p).__name__}")
    if p < 1:
        raise ValueError(f"patch_size must be >= 1, got {p}")
    return p


def norm_pix(enabled: bool, values_per_patch: int) -> None:
    """norm-pix needs two values per patch: its unbiased variance divides by ``P - 1``."""
    if enabled and values_per_patch < 2:
        raise ValueError(f"norm_pix_loss needs at least 2 values per patch (patch_size² * channels), "
                         f"got {values_per_patch}")


def mask_ratio(r) -> float:
    """``r`` is a real number in ``[0, 1)`` (Python or NumPy scalars alike)."""
    if isinstance(r, bool) or not isinstance(r, numbers.Real):
        raise TypeError(f"mask_ratio must be a float in [0, 1), got {type(r).__name__}")
    if not math.isfinite(r) or not 0.0 <= r < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {r}")
    return float(r)


def len_keep(num_patches: int, ratio: float) -> int:
    """The official ``int(L * (1 - mask_ratio))``, refused when it keeps no patch."""
    ratio = mask_ratio(ratio)
    k = int(num_patches * (1 - ratio))
    if k < 1:
        raise ValueError(
            f"mask_ratio {ratio} keeps no patch out of {num_patches} (int(L * (1 - mask_ratio)) = 0); "
            f"use a smaller mask_ratio"
        )
    return k


def ids(name: str, t, n: int, length: int | None, upper: int, device: torch.device,
        distinct: bool = False) -> torch.Tensor:
    """An integer index tensor ``[n, length]`` on ``device`` with values in ``[0, upper)``.

    With ``distinct``, no value repeats within a row (so ``length == upper`` means a permutation):
    the fused backward passes write each index's gradient once, without atomics, and rely on it.

    Values are checked for CPU tensors (cheap, no device to wait for) and for CUDA tensors only when
    ``FASTMAE_CHECK_INDICES=1``, since reading them would synchronise every call. The kernels mask
    every access either way, so a bad index never reads or writes out of bounds; the torch and
    reference backends index with torch, which raises (on CUDA, a device-side assert).
    """
    tensor(name, t, 2, INDEX_DTYPES)
    if t.shape[0] != n or (length is not None and t.shape[1] != length):
        want = f"[{n}, {length if length is not None else 'K'}]"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    same_device(name, t, device)
    if t.shape[1] > upper:
        raise ValueError(f"{name} has {t.shape[1]} indices per row but only {upper} patches exist")
    if _reads_values(t):
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= upper:
            raise ValueError(f"{name} values must lie in [0, {upper}), got min {lo} and max {hi}")
        if distinct and t.shape[1] > 1:
            ordered = t.sort(dim=1).values
            repeats = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
            if bool(repeats.any()):
                row = int(repeats.nonzero()[0, 0])
                raise ValueError(f"{name} repeats a value within a row (first in row {row}); "
                                 f"each row must hold distinct patch indices")
    return t


def _reads_values(t: torch.Tensor) -> bool:
    """Whether index values may be read: eager, and a CPU tensor or ``FASTMAE_CHECK_INDICES=1``."""
    eager = not torch.compiler.is_compiling()  # a traced graph cannot branch on values
    return eager and bool(t.numel()) and (t.device.type == "cpu" or os.environ.get("FASTMAE_CHECK_INDICES") == "1")


def masked_of_restore(ids_masked: torch.Tensor, ids_restore: torch.Tensor) -> None:
    """``ids_masked [N, M]`` is what ``masking_ids`` returned with ``ids_restore [N, L]``:
    ``ids_restore[n, ids_masked[n, m]] == L - M + m`` (checked where index values are, see :func:`ids`)."""
    n, num_patches = ids_restore.shape
    m = ids_masked.shape[1]
    if not _reads_values(ids_masked):
        return
    ranks = ids_restore.gather(1, ids_masked.long())  # [N, M]
    want = torch.arange(num_patches - m, num_patches, device=ranks.device)
    if not bool((ranks == want).all()):
        raise ValueError("ids_masked and ids_restore do not belong together: ids_restore[ids_masked[m]] must "
                         "be L - M + m (pass both from one masking_ids call)")


def same_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (all inputs must share one device)")


def noise(t, n: int, num_patches: int, device: torch.device) -> torch.Tensor:
    tensor("noise", t, 2, FLOAT_DTYPES + (torch.float64,))
    if tuple(t.shape) != (n, num_patches):
        raise ValueError(f"noise must have shape [{n}, {num_patches}] (batch, patches), got {tuple(t.shape)}")
    same_device("noise", t, device)
    return t


# --------------------------------------------------------------------------------------------------
# input pipeline (resized_crop): a ragged uint8 batch, its crop boxes, the output size and statistics
# --------------------------------------------------------------------------------------------------

MAX_OUT_SIDE = 65536  # output rows and columns each (the kernel's grid tiles them: 65535 tiles at most)


def out_size(size) -> tuple[int, int]:
    """``size`` is an int ``S`` (square) or a pair ``(S_h, S_w)`` of ints in ``[1, 65536]``, ``S_h * S_w < 2**31``."""
    pair = (size, size) if isinstance(size, numbers.Integral) and not isinstance(size, bool) else size
    if not isinstance(pair, (tuple, list, torch.Size)) or len(pair) != 2 or any(
            isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in pair):
        raise TypeError(f"size must be an int or a pair of ints (S_h, S_w), got {size!r}")
    if not all(1 <= s <= MAX_OUT_SIDE for s in pair) or pair[0] * pair[1] >= 2**31:
        raise ValueError(f"size must be at least 1 and at most {MAX_OUT_SIDE} on each side with fewer than "
                         f"2**31 pixels, got {tuple(pair)}")
    return int(pair[0]), int(pair[1])


def channel_values(name: str, values, positive: bool = False, count: int | None = None) -> tuple[float, ...]:
    """At least one finite real number per channel (``count`` of them when given), all > 0 with ``positive``."""
    want = f"{count} " if count else ""
    try:
        vals = tuple(float(v) for v in values)
    except TypeError:
        raise TypeError(f"{name} must be {want}numbers (one per channel), got {values!r}") from None
    if not vals or (count and len(vals) != count) or not all(math.isfinite(v) for v in vals) or (
            positive and min(vals) <= 0):
        need = "positive finite" if positive else "finite"
        raise ValueError(f"{name} must be {want or 'one or more '}{need} numbers (one per channel), got {values!r}")
    return vals


def float_dtype(name: str, dtype) -> torch.dtype:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be one of ({_dtype_names(FLOAT_DTYPES)}), got {dtype!r}")
    return dtype


SOURCE_DTYPES = (torch.uint8, torch.uint16, torch.float32)  # what resized_crop reads


def ragged_batch(data, meta, boxes, flip, channels: int = 3, vflip=None) -> int:
    """``data`` uint8/uint16/float32 ``[B]``, ``meta`` int64 ``[N, 3]``, ``boxes`` int64 ``[N, 4]``, ``flip``
    (and ``vflip`` unless None) bool ``[N]``, one device.

    Values (where :func:`ids` would read them: CPU tensors, or ``FASTMAE_CHECK_INDICES=1``): each image
    ``(offset, H, W)`` of ``channels`` channels has ``H, W >= 1`` and lies inside ``data`` (``offset +
    C*H*W <= B``, in elements); each box ``(top, left, h, w)`` has ``h, w >= 1`` and lies inside its
    image. Returns ``N``.
    """
    tensor("data", data, 1, SOURCE_DTYPES)
    tensor("meta", meta, 2, (torch.int64,))
    tensor("boxes", boxes, 2, (torch.int64,))
    tensor("flip", flip, 1, (torch.bool,))
    n = meta.shape[0]
    checks = [("meta", meta, (n, 3)), ("boxes", boxes, (n, 4)), ("flip", flip, (n,))]
    if vflip is not None:
        tensor("vflip", vflip, 1, (torch.bool,))
        checks.append(("vflip", vflip, (n,)))
    for name, t, want in checks:
        if tuple(t.shape) != want:
            raise ValueError(f"{name} must have shape {list(want)} (N = {n} images, from meta), got {tuple(t.shape)}")
        same_device(name, t, data.device)
    if _reads_values(meta):
        off, hh, ww = meta.unbind(1)
        bad = (off < 0) | (hh < 1) | (ww < 1) | (off + channels * hh * ww > data.numel())
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"meta row {i} (offset, H, W) = {tuple(meta[i].tolist())} does not describe an "
                             f"image of {channels} channel(s) inside data of {data.numel()} elements (needs H, "
                             f"W >= 1, offset >= 0 and offset + {channels}*H*W <= {data.numel()})")
    if _reads_values(boxes):
        top, left, h, w = boxes.unbind(1)
        hh, ww = meta[:, 1], meta[:, 2]
        bad = (top < 0) | (left < 0) | (h < 1) | (w < 1) | (top + h > hh) | (left + w > ww)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"boxes row {i} (top, left, h, w) = {tuple(boxes[i].tolist())} leaves its image of "
                             f"{int(hh[i])}x{int(ww[i])} pixels (needs h, w >= 1 inside the image)")
    return n
