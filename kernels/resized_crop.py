"""Crop, antialiased bicubic resize, horizontal flip and normalisation of a ragged uint8 batch, one launch.

    out[n, c, i, j] = (sum_y wy[i, y] * sum_x wx[j', x] * src[top + y, left + x, c] / 255 - mean[c]) / std[c]

(``resized_crop_ref`` in ``fastmae/reference.py``), with ``src`` image ``n``'s HWC pixels at
``data[offset:]``, ``j' = S_w - 1 - j`` when ``flip[n]`` (else ``j``), and the separable weights of
torch's antialiased bicubic (Pillow's kernel, a = -0.5), along y for a crop of height ``h``:

    scale = h / S_h,  stretch = max(scale, 1),  support = 2 * stretch,  center_i = scale * (i + 0.5)
    taps  y in [max(trunc(center_i - support + 0.5), 0), min(trunc(center_i + support + 0.5), h))
    wy[i, y] = cubic((y + 0.5 - center_i) / stretch) / (the same summed over the taps of i)

and the same along x with ``w / S_w``. An 8x downscale has 33 taps per axis.

Grid ``(N, cdiv(S_h, BLOCK_R), cdiv(S_w, BLOCK_W))``: program ``(n, r, c)`` writes output rows
``[r*BLOCK_R, +BLOCK_R)`` and columns ``[c*BLOCK_W, +BLOCK_W)`` of image ``n``, all three channels. It
walks the source rows its output rows need (from its first row's first tap to its last row's last
tap); for each source row the horizontal pass (every tap of its columns, weights computed in
registers from the box) gives one resampled row ``[BLOCK_W]`` per channel, and the vertical pass adds
that row into the ``[BLOCK_R, BLOCK_W]`` accumulators, scaled per output row by that source row's
weight (zero outside a row's window): a rank-1 update, so nothing intermediate goes to memory. Float32
throughout, normalised and rounded once on the store. Per output pixel that is about
``scale_y * (1 + 4 / BLOCK_R)`` horizontal rows of ``4 * scale_x`` taps plus ``BLOCK_R * scale_y + 4 *
scale_y`` vertical multiply-adds (``scale`` at least 1).

Memory safety: offsets are int64; the box is clamped into its image and every pixel load is masked
to ``[0, B)``, so a bad ``meta`` or box (possible on CUDA, where values are not validated) never reads
out of bounds: an empty box gives the normalised value of black.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import empty, fake, launch, next_power_of_2, op

__all__ = ["resized_crop", "launch_blocks"]

NUM_WARPS = 4
MAX_BLOCK_W = 128  # output columns per program: 128 threads, one column (three channels) each
MAX_BLOCK_R = 8  # output rows per program: the horizontal pass of a source row serves 8 rows


def launch_blocks(size: tuple[int, int]) -> tuple[int, int]:
    """``(BLOCK_R, BLOCK_W)`` for an output of ``size = (S_h, S_w)`` (powers of two)."""
    return min(MAX_BLOCK_R, next_power_of_2(size[0])), min(MAX_BLOCK_W, next_power_of_2(size[1]))


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
    DATA,  # pointer to uint8 [B]: the images' HWC RGB pixels, one after another
    META,  # pointer to int64 [N, 3]: (byte offset into DATA, height H, width W) per image
    BOXES,  # pointer to int64 [N, 4]: the crop (top, left, height h, width w) per image, in its pixels
    FLIP,  # pointer to uint8 [N]: 1 = mirror the output left to right
    OUT,  # pointer to the output [N, 3, S_h, S_w] (float32, bfloat16 or float16), contiguous
    n_bytes,  # B: pixel loads are masked to [0, B)
    S_h,  # output rows
    S_w,  # output columns
    scale_r, scale_g, scale_b,  # 1 / (255 * std[c]) per channel
    bias_r, bias_g, bias_b,  # -mean[c] / std[c] per channel: out = pixel * scale + bias
    BLOCK_R: tl.constexpr,  # output rows per program (power of two)
    BLOCK_W: tl.constexpr,  # output columns per program (power of two)
):
    n = tl.program_id(0).to(tl.int64)  # the image; META, BOXES, FLIP loads are in bounds (grid = N)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] output rows i
    cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)  # [BLOCK_W] output columns j
    row_ok = rows < S_h
    col_ok = cols < S_w

    off = tl.load(META + n * 3)
    height = tl.maximum(tl.load(META + n * 3 + 1), 0)
    width = tl.maximum(tl.load(META + n * 3 + 2), 0)
    # The box clamped into the image (validation refuses one that leaves it, where it reads values).
    top = tl.minimum(tl.maximum(tl.load(BOXES + n * 4), 0), height)
    left = tl.minimum(tl.maximum(tl.load(BOXES + n * 4 + 1), 0), width)
    h = tl.minimum(tl.maximum(tl.load(BOXES + n * 4 + 2), 0), height - top)
    w = tl.minimum(tl.maximum(tl.load(BOXES + n * 4 + 3), 0), width - left)
    mirror = tl.load(FLIP + n) != 0

    # Vertical weights per output row, horizontal per output column (a flipped output column j
    # samples like column S_w - 1 - j).
    cy, ylo, yhi, inv_y, norm_y, _ = _axis(rows, S_h, h)  # [BLOCK_R] each (inv_y a scalar)
    src_cols = tl.where(mirror, S_w - 1 - cols, cols)
    cx, xlo, xhi, inv_x, norm_x, n_taps = _axis(src_cols, S_w, w)  # [BLOCK_W] each
    xhi = tl.where(col_ok, xhi, xlo)  # padding columns take no tap
    ylo = tl.where(row_ok, ylo, h)
    yhi = tl.where(row_ok, yhi, 0)
    y_begin = tl.min(ylo, axis=0)  # the source rows any of these output rows reads
    y_end = tl.max(yhi, axis=0)

    acc_r = tl.zeros((BLOCK_R, BLOCK_W), dtype=tl.float32)
    acc_g = tl.zeros((BLOCK_R, BLOCK_W), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_R, BLOCK_W), dtype=tl.float32)
    for y in range(y_begin, y_end):
        # horizontal pass of source row y: h_c[j] = sum_x wx[j, x] * src[top + y, left + x, c]
        row_start = off + ((top + y) * width + left) * 3  # int64 byte offset of the crop's row y
        h_r = tl.zeros((BLOCK_W,), dtype=tl.float32)
        h_g = tl.zeros((BLOCK_W,), dtype=tl.float32)
        h_b = tl.zeros((BLOCK_W,), dtype=tl.float32)
        for t in range(0, n_taps):
            x = xlo + t  # [BLOCK_W] source column of tap t
            wx = tl.where(x < xhi, _cubic((x.to(tl.float32) + 0.5 - cx) * inv_x), 0.0)
            p = row_start + x.to(tl.int64) * 3  # [BLOCK_W] byte offsets of the pixels
            ok = (x < xhi) & (p >= 0) & (p + 3 <= n_bytes)
            h_r += wx * tl.load(DATA + p, mask=ok, other=0).to(tl.float32)
            h_g += wx * tl.load(DATA + p + 1, mask=ok, other=0).to(tl.float32)
            h_b += wx * tl.load(DATA + p + 2, mask=ok, other=0).to(tl.float32)
        # vertical pass: every output row i adds wy[i, y] * h_c (0 when y is outside i's window)
        wy = _cubic((y + 0.5 - cy) * inv_y)  # (y is a Python int under the interpreter)
        wy = tl.where((y >= ylo) & (y < yhi), wy * norm_y, 0.0)[:, None]  # [BLOCK_R, 1]
        acc_r += wy * (h_r * norm_x)[None, :]
        acc_g += wy * (h_g * norm_x)[None, :]
        acc_b += wy * (h_b * norm_x)[None, :]

    # out = (v / 255 - mean) / std = v * scale + bias, one rounding to the output dtype
    plane = S_h * S_w  # < 2**31 (validated)
    dst = OUT + n * 3 * plane + rows[:, None] * S_w + cols[None, :]  # [BLOCK_R, BLOCK_W], int64 offsets
    ok = row_ok[:, None] & col_ok[None, :]
    tl.store(dst, (acc_r * scale_r + bias_r).to(OUT.dtype.element_ty), mask=ok)
    tl.store(dst + plane, (acc_g * scale_g + bias_g).to(OUT.dtype.element_ty), mask=ok)
    tl.store(dst + 2 * plane, (acc_b * scale_b + bias_b).to(OUT.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------------------------------
# launcher and custom op
# --------------------------------------------------------------------------------------------------


def _forward(data, meta, boxes, flip, size, mean, std, out_dtype):
    n = meta.shape[0]
    sh, sw = size
    out = empty((n, 3, sh, sw), out_dtype, data.device)  # [N, 3, S_h, S_w]
    if n == 0:
        return out
    block_r, block_w = launch_blocks((sh, sw))
    scale = [1.0 / (255.0 * s) for s in std]
    bias = [-m / s for m, s in zip(mean, std)]
    grid = (n, triton.cdiv(sh, block_r), triton.cdiv(sw, block_w))
    launch(_resized_crop_kernel)[grid](
        data, meta, boxes, flip.view(torch.uint8), out, data.numel(), sh, sw, *scale, *bias,
        BLOCK_R=block_r, BLOCK_W=block_w, num_warps=NUM_WARPS,
    )
    return out


@op("fastmae::resized_crop")
def _resized_crop_op(
    data: torch.Tensor, meta: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: list[int],
    mean: list[float], std: list[float], out_dtype: torch.dtype,
) -> torch.Tensor:
    return _forward(data, meta, boxes, flip, size, mean, std, out_dtype)


@fake(_resized_crop_op)
def _(data, meta, boxes, flip, size, mean, std, out_dtype):
    return data.new_empty((meta.shape[0], 3, size[0], size[1]), dtype=out_dtype)


def resized_crop(
    data: torch.Tensor, meta: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: tuple[int, int],
    mean: tuple[float, float, float], std: tuple[float, float, float], out_dtype: torch.dtype,
) -> torch.Tensor:
    """``data`` uint8 ``[B]``, ``meta [N, 3]``, ``boxes [N, 4]`` (int64), ``flip`` bool ``[N]`` -> ``[N, 3, S_h, S_w]``.

    Forward only (images need no gradient). Inputs come validated and contiguous from
    ``fastmae.ops.resized_crop``.
    """
    assert data.dim() == 1 and meta.dim() == 2 and boxes.dim() == 2 and flip.dim() == 1
    return _resized_crop_op(data, meta, boxes, flip, list(size), list(mean), list(std), out_dtype)
