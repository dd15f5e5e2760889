"""Crop, antialiased bicubic resize, flips and normalisation of a ragged batch of C-channel images, one launch.

    out[n, c, i, j] = (sum_y wy[i', y] * sum_x wx[j', x] * src[top + y, left + x, c] * unit - mean[c]) / std[c]

(``resized_crop_ref`` in ``fastmae/reference.py``), with ``src`` image ``n``'s HWC pixels at
``data[offset:]`` (uint8, uint16 or float32; ``unit`` = 1/255, 1/65535 or 1: ``mean``/``std`` are in
units of the full integer range, or of the stored float value), ``j' = S_w - 1 - j`` when image ``n`` is
flipped left to right (else ``j``), ``i' = S_h - 1 - i`` when flipped upside down, and the separable
weights of torch's antialiased bicubic (Pillow's kernel, a = -0.5), along y for a crop of height ``h``:

    scale = h / S_h,  stretch = max(scale, 1),  support = 2 * stretch,  center_i = scale * (i + 0.5)
    taps  y in [max(trunc(center_i - support + 0.5), 0), min(trunc(center_i + support + 0.5), h))
    wy[i, y] = cubic((y + 0.5 - center_i) / stretch) / (the same summed over the taps of i)

and the same along x with ``w / S_w``. An 8x downscale has 33 taps per axis.

Grid ``(N * G, cdiv(S_h, BLOCK_R), cdiv(S_w, BLOCK_W))`` with ``G = cdiv(C, BLOCK_C)`` channel groups:
program ``(n * G + g, r, c)`` writes output rows ``[r*BLOCK_R, +BLOCK_R)``, columns ``[c*BLOCK_W,
+BLOCK_W)`` and channels ``[g*BLOCK_C, +BLOCK_C)`` of image ``n`` (13 bands: four groups of 4 lanes,
the last with one band; 3 channels take a path of their own, three accumulators and no masked lane,
in one group). It walks the source rows its output rows need (from its first
row's first tap to its last row's last tap); for each source row the horizontal pass (every tap of its
columns, weights computed in registers from the box) gives one resampled row ``[BLOCK_C, BLOCK_W]``, and
the vertical pass adds that row into the ``[BLOCK_C, BLOCK_R, BLOCK_W]`` accumulator, scaled per output
row by that source row's weight (zero outside a row's window): a rank-1 update, so nothing
intermediate goes to memory. Float32 throughout, normalised and rounded once on the store. Per output
pixel that is about ``scale_y * (1 + 4 / BLOCK_R)`` horizontal rows of ``4 * scale_x`` taps plus
``BLOCK_R * scale_y + 4 * scale_y`` vertical multiply-adds (``scale`` at least 1), per channel lane.

Memory safety: offsets are int64; the box is clamped into its image and every pixel load is masked
to ``[0, B)``, so a bad ``meta`` or box (possible on CUDA, where values are not validated) never reads
out of bounds: an empty box gives the normalised value of zero.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake

from ._common import NUM_WARPS, empty, fake, launch, next_power_of_2, op

__all__ = ["resized_crop", "launch_blocks", "SOURCE_DTYPES"]

MAX_BLOCK_W = 128  # output columns per program: 128 threads, one column (all of its channel lanes) each
MAX_BLOCK_R = 8  # output rows per program: the horizontal pass of a source row serves 8 rows
MAX_BLOCK_C = 4  # channel lanes per program: RGB in one group (4 lanes), 13 bands in four
# source dtype -> (code the kernel branches on, full-scale value the pixel is divided by)
SOURCE_DTYPES = {torch.uint8: (0, 255.0), torch.uint16: (1, 65535.0), torch.float32: (2, 1.0)}


def launch_blocks(size: tuple[int, int], channels: int = 3) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_W, BLOCK_C)`` for an output of ``size = (S_h, S_w)`` and ``channels`` (powers of two)."""
    return (min(MAX_BLOCK_R, next_power_of_2(size[0])), min(MAX_BLOCK_W, next_power_of_2(size[1])),
            min(MAX_BLOCK_C, next_power_of_2(channels)))


# --------------------------------------------------------------------------------------------------
# kernel
# --------------------------------------------------------------------------------------------------


@triton.jit
def _cubic(x):
    # Pillow's bicubic kernel (torch's antialias one), a = -0.5:
    #   (a+2)|x|^3 - (a+3)|x|^2 + 1          for |x| < 1
    #   a(|x|^3 - 5|x|^2 + 8|x| - 4)          for 1 <= |x| < 2,  0 beyond
    x = tl.abs(x)
    near = (1.5 * x - 2.5) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5
    return tl.where(x < 1.0, near, tl.where(x < 2.0, far, 0.0))


@triton.jit
def _axis(o, n_out, n_in):
    # The resampling of n_in source samples (a crop side) to n_out outputs, at outputs o:
    # center, first tap, end of taps, 1/stretch and 1/(sum of the weights), as torch computes them.
    scale = n_in.to(tl.float32) / (n_out * 1.0)  # (n_out may be specialised to a constexpr 1)
    stretch = tl.maximum(scale, 1.0)
    inv = 1.0 / stretch
    support = 2.0 * stretch
    center = scale * (o.to(tl.float32) + 0.5)
    lo = tl.maximum((center - support + 0.5).to(tl.int32), 0)  # C's int(): truncation toward zero
    hi = tl.minimum((center + support + 0.5).to(tl.int32), n_in.to(tl.int32))
    n_taps = tl.max(hi - lo, axis=0)  # the widest window among these outputs
    total = tl.zeros_like(center)
    for t in range(0, n_taps):
        tap = lo + t
        total += tl.where(tap < hi, _cubic((tap.to(tl.float32) + 0.5 - center) * inv), 0.0)
    norm = tl.where(total != 0.0, 1.0 / tl.where(total != 0.0, total, 1.0), 0.0)
    return center, lo, hi, inv, norm, n_taps


@triton.jit
def _resized_crop_kernel(
    DATA,  # pointer to [B] pixels (uint8; int16 holding uint16 bits; float32): HWC images one after another
    META,  # pointer to int64 [N, 3]: (element offset into DATA, height H, width W) per image
    BOXES,  # pointer to int64 [N, 4]: the crop (top, left, height h, width w) per image, in its pixels
    FLIP,  # pointer to uint8 [N]: bit 0 = mirror the output left to right, bit 1 = upside down
    AFFINE,  # pointer to float32 [2, C]: scale[c] = unit / std[c], then bias[c] = -mean[c] / std[c]
    OUT,  # pointer to the output [N, C, S_h, S_w] (float32, bfloat16 or float16), contiguous
    n_elems,  # B: pixel loads are masked to [0, B)
    S_h,  # output rows
    S_w,  # output columns
    C: tl.constexpr,  # channels per pixel
    GROUPS: tl.constexpr,  # channel groups per image: cdiv(C, BLOCK_C)
    SRC_U16: tl.constexpr,  # DATA holds uint16 values as int16 bits
    BLOCK_R: tl.constexpr,  # output rows per program (power of two)
    BLOCK_W: tl.constexpr,  # output columns per program (power of two)
    BLOCK_C: tl.constexpr,  # channel lanes per program (power of two)
):
    pid = tl.program_id(0)
    n = (pid // GROUPS).to(tl.int64)  # the image; META, BOXES, FLIP loads are in bounds (grid = N * G)
    chans = (pid % GROUPS) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C] channels c
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] output rows i
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)  # [BLOCK_W] output columns j
    row_ok = rows < S_h
    col_ok = cols < S_w
    chan_ok = chans < C

    off = tl.load(META + n * 3)
    height = tl.maximum(tl.load(META + n * 3 + 1), 0)
    width = tl.maximum(tl.load(META + n * 3 + 2), 0)
    # The box clamped into the image (validation refuses one that leaves it, where it reads values).
    top = tl.minimum(tl.maximum(tl.load(BOXES + n * 4), 0), height)
    left = tl.minimum(tl.maximum(tl.load(BOXES + n * 4 + 1), 0), width)
    h = tl.minimum(tl.maximum(tl.load(BOXES + n * 4 + 2), 0), height - top)
    w = tl.minimum(tl.maximum(tl.load(BOXES + n * 4 + 3), 0), width - left)
    flips = tl.load(FLIP + n).to(tl.int32)
    mirror = (flips & 1) != 0
    upside_down = (flips & 2) != 0

    # Vertical weights per output row, horizontal per output column (a flipped output column j
    # samples like column S_w - 1 - j, an upside-down row i like row S_h - 1 - i).
    src_rows = tl.where(upside_down, S_h - 1 - rows, rows)
    cy, ylo, yhi, inv_y, norm_y, _ = _axis(src_rows, S_h, h)  # [BLOCK_R] each (inv_y a scalar)
    src_cols = tl.where(mirror, S_w - 1 - cols, cols)
    cx, xlo, xhi, inv_x, norm_x, n_taps = _axis(src_cols, S_w, w)  # [BLOCK_W] each
    xhi = tl.where(col_ok, xhi, xlo)  # padding columns take no tap
    ylo = tl.where(row_ok, ylo, h)
    yhi = tl.where(row_ok, yhi, 0)
    y_begin = tl.min(ylo, axis=0)  # the source rows any of these output rows reads
    y_end = tl.max(yhi, axis=0)

    if C == 3:
        # RGB (and any 3-channel image): three [BLOCK_R, BLOCK_W] accumulators, one per channel, so a
        # program holds no masked fourth lane (the registers of the photographs' path stay as they were)
        acc_r = tl.zeros((BLOCK_R, BLOCK_W), dtype=tl.float32)
        acc_g = tl.zeros((BLOCK_R, BLOCK_W), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_R, BLOCK_W), dtype=tl.float32)
        for y in range(y_begin, y_end):
            row_start = off + ((top + y) * width + left) * 3  # int64 element offset of the crop's row y
            h_r = tl.zeros((BLOCK_W,), dtype=tl.float32)
            h_g = tl.zeros((BLOCK_W,), dtype=tl.float32)
            h_b = tl.zeros((BLOCK_W,), dtype=tl.float32)
            for t in range(0, n_taps):
                x = xlo + t  # [BLOCK_W] source column of tap t
                wx = tl.where(x < xhi, _cubic((x.to(tl.float32) + 0.5 - cx) * inv_x), 0.0)
                p = row_start + x.to(tl.int64) * 3  # [BLOCK_W] element offsets of the pixels
                tap_ok = (x < xhi) & (p >= 0) & (p + 3 <= n_elems)
                v_r = tl.load(DATA + p, mask=tap_ok, other=0)
                v_g = tl.load(DATA + p + 1, mask=tap_ok, other=0)
                v_b = tl.load(DATA + p + 2, mask=tap_ok, other=0)
                if SRC_U16:  # the int16 bits read back as uint16
                    v_r, v_g, v_b = v_r.to(tl.int32) & 0xFFFF, v_g.to(tl.int32) & 0xFFFF, v_b.to(tl.int32) & 0xFFFF
                h_r += wx * v_r.to(tl.float32)
                h_g += wx * v_g.to(tl.float32)
                h_b += wx * v_b.to(tl.float32)
            wy = _cubic((y + 0.5 - cy) * inv_y)
            wy = tl.where((y >= ylo) & (y < yhi), wy * norm_y, 0.0)[:, None]  # [BLOCK_R, 1]
            acc_r += wy * (h_r * norm_x)[None, :]
            acc_g += wy * (h_g * norm_x)[None, :]
            acc_b += wy * (h_b * norm_x)[None, :]
        plane = S_h * S_w  # < 2**31 (validated)
        dst = OUT + n * 3 * plane + rows[:, None] * S_w + cols[None, :]  # [BLOCK_R, BLOCK_W], int64 offsets
        ok = row_ok[:, None] & col_ok[None, :]
        tl.store(dst, (acc_r * tl.load(AFFINE) + tl.load(AFFINE + 3)).to(OUT.dtype.element_ty), mask=ok)
        tl.store(dst + plane, (acc_g * tl.load(AFFINE + 1) + tl.load(AFFINE + 4)).to(OUT.dtype.element_ty), mask=ok)
        tl.store(dst + 2 * plane, (acc_b * tl.load(AFFINE + 2) + tl.load(AFFINE + 5)).to(OUT.dtype.element_ty),
                 mask=ok)
    else:
        acc = tl.zeros((BLOCK_C, BLOCK_R, BLOCK_W), dtype=tl.float32)
        for y in range(y_begin, y_end):
            # horizontal pass of source row y: hrow[c, j] = sum_x wx[j, x] * src[top + y, left + x, c]
            row_start = off + ((top + y) * width + left) * C  # int64 element offset of the crop's row y
            hrow = tl.zeros((BLOCK_C, BLOCK_W), dtype=tl.float32)
            for t in range(0, n_taps):
                x = xlo + t  # [BLOCK_W] source column of tap t
                wx = tl.where(x < xhi, _cubic((x.to(tl.float32) + 0.5 - cx) * inv_x), 0.0)
                p = row_start + x.to(tl.int64) * C  # [BLOCK_W] element offsets of the pixels
                tap_ok = (x < xhi) & (p >= 0) & (p + C <= n_elems)
                v = tl.load(DATA + p[None, :] + chans[:, None], mask=tap_ok[None, :] & chan_ok[:, None], other=0)
                if SRC_U16:
                    v = v.to(tl.int32) & 0xFFFF  # the int16 bits read back as uint16
                hrow += wx[None, :] * v.to(tl.float32)  # [BLOCK_C, BLOCK_W]
            # vertical pass: every output row i adds wy[i, y] * hrow (0 when y is outside i's window)
            wy = _cubic((y + 0.5 - cy) * inv_y)  # (y is a Python int under the interpreter)
            wy = tl.where((y >= ylo) & (y < yhi), wy * norm_y, 0.0)  # [BLOCK_R]
            acc += wy[None, :, None] * (hrow * norm_x[None, :])[:, None, :]

        # out = (v * unit - mean) / std = v * scale + bias, one rounding to the output dtype
        scale = tl.load(AFFINE + chans, mask=chan_ok, other=0.0)  # [BLOCK_C]
        bias = tl.load(AFFINE + C + chans, mask=chan_ok, other=0.0)
        val = acc * scale[:, None, None] + bias[:, None, None]
        plane = S_h * S_w  # < 2**31 (validated)
        dst = (OUT + n * C * plane + chans.to(tl.int64)[:, None, None] * plane  # [BLOCK_C, BLOCK_R, BLOCK_W]
               + (rows[None, :, None] * S_w + cols[None, None, :]))
        ok = chan_ok[:, None, None] & row_ok[None, :, None] & col_ok[None, None, :]
        tl.store(dst, val.to(OUT.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------------------------------
# launcher and custom op
# --------------------------------------------------------------------------------------------------


_AFFINE_CACHE: dict = {}  # (unit, mean, std, device) -> [2, C] on that device


def _affine(unit: float, mean: tuple, std: tuple, like: torch.Tensor) -> torch.Tensor:
    """float32 ``[2, C]`` (scale, bias) on ``like``'s device. Cached for real tensors, so a training loop
    copies it to the device once (a copy from pageable memory waits for the stream); built afresh
    while tracing (a fake tensor must not be kept)."""
    scale = [unit / s for s in std]
    bias = [-m / s for m, s in zip(mean, std)]
    if is_fake(like):
        return torch.tensor([scale, bias], dtype=torch.float32, device=like.device)
    key = (unit, mean, std, like.device)
    if key not in _AFFINE_CACHE:
        if len(_AFFINE_CACHE) >= 64:
            _AFFINE_CACHE.clear()
        _AFFINE_CACHE[key] = torch.tensor([scale, bias], dtype=torch.float32, device=like.device)
    return _AFFINE_CACHE[key]


def launch_forward(data, meta, boxes, flip, vflip, size, mean, std, out_dtype):
    n, c = meta.shape[0], len(mean)
    sh, sw = size
    out = empty((n, c, sh, sw), out_dtype, data.device)  # [N, C, S_h, S_w]
    if n == 0:
        return out
    block_r, block_w, block_c = launch_blocks((sh, sw), c)
    groups = triton.cdiv(c, block_c)
    code, full = SOURCE_DTYPES[data.dtype]
    src = data.view(torch.int16) if code == 1 else data  # uint16 read as int16 bits (every Triton release)
    flips = flip.view(torch.uint8) if vflip is None else flip.view(torch.uint8) | (vflip.view(torch.uint8) << 1)
    affine = _affine(1.0 / full, tuple(mean), tuple(std), data)
    grid = (n * groups, triton.cdiv(sh, block_r), triton.cdiv(sw, block_w))
    launch(_resized_crop_kernel)[grid](
        src, meta, boxes, flips, affine, out, data.numel(), sh, sw,
        C=c, GROUPS=groups, SRC_U16=code == 1, BLOCK_R=block_r, BLOCK_W=block_w, BLOCK_C=block_c,
        num_warps=NUM_WARPS,
    )
    return out


@op("fastmae::resized_crop")
def _resized_crop_op(
    data: torch.Tensor, meta: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, vflip: torch.Tensor | None,
    size: list[int], mean: list[float], std: list[float], out_dtype: torch.dtype,
) -> torch.Tensor:
    return launch_forward(data, meta, boxes, flip, vflip, size, mean, std, out_dtype)


@fake(_resized_crop_op)
def _(data, meta, boxes, flip, vflip, size, mean, std, out_dtype):
    return data.new_empty((meta.shape[0], len(mean), size[0], size[1]), dtype=out_dtype)


def resized_crop(
    data: torch.Tensor, meta: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: tuple[int, int],
    mean: tuple[float, ...], std: tuple[float, ...], out_dtype: torch.dtype, vflip: torch.Tensor | None = None,
) -> torch.Tensor:
    """``data`` uint8/uint16/float32 ``[B]``, ``meta [N, 3]``, ``boxes [N, 4]`` (int64), ``flip`` (and
    ``vflip``) bool ``[N]`` -> ``[N, C, S_h, S_w]`` with ``C = len(mean)``.

    Forward only (images need no gradient). Inputs come validated and contiguous from
    ``fastmae.ops.resized_crop``.
    """
    assert data.dim() == 1 and meta.dim() == 2 and boxes.dim() == 2 and flip.dim() == 1
    return _resized_crop_op(data, meta, boxes, flip, vflip, list(size), list(mean), list(std), out_dtype)
