"""The fast path written with torch ops: what the ``"torch"`` backend runs.

Same results as ``fastmae.reference`` but less work: read only the visible patches, touch only the
masked patches in the loss. Each function expects the checks in ``fastmae.ops`` to have run.
"""

from __future__ import annotations

import torch

from .reference import NORM_PIX_EPS, gather_tokens_ref, patchify_ref


def patchify_gather(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[N, C, H, W]``, ``ids_keep [N, K]`` -> ``[N, K, p*p*C]`` reading only the named patches."""
    n, c, hh, ww = imgs.shape
    p = patch_size
    w = ww // p
    grid = imgs.reshape(n, c, hh // p, p, w, p)  # a view
    rows, cols = ids_keep // w, ids_keep % w  # [N, K]
    batch = torch.arange(n, device=imgs.device)[:, None]  # [N, 1]
    # Advanced indexing on dims (0, 2, 4) with the slices between moves the indexed dims first:
    # [N, K, C, p, p], from which (p, q, c) order is one permute.
    patches = grid[batch, :, rows, :, cols, :]  # [N, K, C, p, p]
    return patches.permute(0, 1, 3, 4, 2).reshape(n, ids_keep.shape[1], p * p * c)


def encoder_input(
    x_vis: torch.Tensor, pos_embed: torch.Tensor, cls_token: torch.Tensor, ids_keep: torch.Tensor
) -> torch.Tensor:
    """``cls + pos[0]`` then ``x_vis + pos[1 + ids_keep]`` -> ``[N, K+1, D]`` (promoted dtype)."""
    n = x_vis.shape[0]
    pos = pos_embed[0, 1:][ids_keep]  # [N, K, D]
    cls = (cls_token + pos_embed[:, :1]).expand(n, -1, -1)  # [N, 1, D]
    return torch.cat([cls, x_vis + pos], dim=1)


def decoder_input(
    x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor, pos_embed: torch.Tensor
) -> torch.Tensor:
    """Visible rows to their restored places, the mask token elsewhere, plus positions -> ``[N, L+1, D]``."""
    n, k1, d = x.shape
    visible = ids_restore < k1 - 1  # [N, L]
    src = gather_tokens_ref(x[:, 1:], ids_restore.clamp(max=k1 - 2))  # [N, L, D]
    tokens = torch.where(visible[..., None], src, mask_token)  # [N, L, D]
    return torch.cat([x[:, :1], tokens], dim=1) + pos_embed


def masked_mse_loss(
    pred: torch.Tensor,
    imgs: torch.Tensor,
    mask: torch.Tensor | None,
    patch_size: int,
    norm_pix_loss: bool,
    ids_masked: torch.Tensor | None,
) -> torch.Tensor:
    """Per-patch MSE against the (normalised) target, averaged over masked patches, in float32."""
    if ids_masked is not None:
        target = patchify_gather(imgs, ids_masked, patch_size).float()  # [N, M, P]
    else:
        target = patchify_ref(imgs, patch_size).float()  # [N, L, P]
    if norm_pix_loss:
        var, mean = torch.var_mean(target, dim=-1, keepdim=True)  # unbiased variance
        target = (target - mean) * torch.rsqrt(var + NORM_PIX_EPS)
    err = (pred.float() - target).pow(2).mean(dim=-1)  # [N, L] or [N, M]
    if ids_masked is not None:
        return err.sum() / max(err.numel(), 1)
    mask = mask.float()
    den = mask.sum()
    return (err * mask).sum() / torch.where(den > 0, den, torch.ones_like(den))


# --------------------------------------------------------------------------------------------------
# input pipeline: resized_crop
# --------------------------------------------------------------------------------------------------

import functools  # noqa: E402  (this section's own imports, kept with it)
import math  # noqa: E402

# Crops whose sides are all at most this take batched matmuls with dense weight matrices (BLAS beats
# torch's per-image antialias loops there: the CPU demo's 64 px images); larger crops take torch's own
# separable antialias kernel per image, since a dense [S, w] matrix multiplies mostly zeros (a 300 px
# side resampled to 224 has ~7 non-zero taps per row): measured ~4x slower than the kernel at 224 px.
_DENSE_MAX_SIDE = 128
_DENSE_GROUP = 256  # images per batched matmul: bounds the padded crops to 256 * 3 * 128² * 4 B = 50 MB as float


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Pillow's (and torch's antialias) bicubic kernel, a = -0.5."""
    x = x.abs()
    near = (1.5 * x - 2.5) * x * x + 1  # (a+2)|x|³ - (a+3)|x|² + 1 for |x| < 1
    far = (((x - 5) * x + 8) * x - 4) * -0.5  # a(|x|³ - 5|x|² + 8|x| - 4) for 1 <= |x| < 2
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def aa_bicubic_weights(in_sizes: torch.Tensor, out_size: int, width: int) -> torch.Tensor:
    """Dense antialiased-bicubic resampling matrices: ``in_sizes [G]`` -> ``[G, out_size, width]`` float32.

    Row ``i`` of matrix ``g`` holds the weights output ``i`` gives input samples ``0 .. in_sizes[g]-1``
    (zero beyond): ``scale = in/out``, ``center = scale * (i + 0.5)``, ``support = 2 * max(scale, 1)``,
    taps ``x`` from ``trunc(center - support + 0.5)`` (clamped to 0) with weight
    ``cubic((x + 0.5 - center) * (1 / max(scale, 1)))``, dropped past the input's edge, renormalised to sum 1
    — torch's ``_compute_indices_min_size_weights_aa``, in float32.
    """
    device = in_sizes.device
    scale = in_sizes.to(torch.float32) / out_size  # [G]
    stretch = scale.clamp(min=1.0)  # the kernel widens by the downscale factor, never narrows
    center = scale[:, None] * (torch.arange(out_size, device=device, dtype=torch.float32) + 0.5)  # [G, S]
    first = (center - 2 * stretch[:, None] + 0.5).trunc().clamp(min=0)  # [G, S], C's int() truncation
    taps = 2 * math.ceil(2 * float(stretch.max())) + 1 if stretch.numel() else 1  # widest window
    x = first[..., None] + torch.arange(taps, device=device, dtype=torch.float32)  # [G, S, taps]
    w = _cubic((x + 0.5 - center[..., None]) * (1.0 / stretch)[:, None, None])  # [G, S, taps]
    w = torch.where(x < in_sizes[:, None, None], w, torch.zeros_like(w))  # taps past the edge dropped
    total = w.sum(-1, keepdim=True)
    w = w / torch.where(total != 0, total, torch.ones_like(total))
    dense = torch.zeros(in_sizes.shape[0], out_size, width, device=device)
    return dense.scatter_add_(2, x.long().clamp(max=width - 1), w)  # clamped taps carry weight 0


@functools.lru_cache(maxsize=8)
def _weight_table(out_size: int, device: torch.device) -> torch.Tensor:
    """``aa_bicubic_weights`` for every input size 1 .. ``_DENSE_MAX_SIDE`` -> ``[M, out_size, M]`` (cached).

    Row ``k`` is the matrix of an input of ``k + 1`` samples, zero past it, so ``table[s - 1, :, :m]``
    is exact for any width ``m >= s``: a batch's matrices are one indexing op, not a computation.
    """
    sides = torch.arange(1, _DENSE_MAX_SIDE + 1, device=device)
    return aa_bicubic_weights(sides, out_size, _DENSE_MAX_SIDE)


def resized_crop(
    data: torch.Tensor,
    meta: torch.Tensor,
    boxes: torch.Tensor,
    flip: torch.Tensor,
    size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    out_dtype: torch.dtype,
    vflip: torch.Tensor | None = None,
) -> torch.Tensor:
    """``resized_crop_ref`` without its per-image ``F.interpolate`` where crops are small: ``[N, C, S_h, S_w]``.

    Small crops (sides <= ``_DENSE_MAX_SIDE``), in groups: the crops padded into ``[G, h_max, w_max, C]``
    (HWC, as stored; uint8 stays uint8, other sources float32), then two batched matmuls with the
    separable weight matrices (``_weight_table``; zero on the padding; the flips folded into ``Wx`` and
    ``Wy`` by reversing their rows): the vertical pass ``Wy [G, S_h, h_max] @ crop [G, h_max, w_max * C]``,
    then the horizontal ``[G, C S_h, w_max] @ Wx^T [G, w_max, S_w]``, which is the output's layout.
    Larger crops: torch's antialias kernel per image. Then one normalisation pass. Reads ``meta`` and
    ``boxes`` on the host (one sync on CUDA, where the Triton kernel is the path).
    """
    import torch.nn.functional as F

    from .reference import FULL_SCALE

    n, c = meta.shape[0], len(mean)
    sh, sw = size
    dev = data.device
    vflip = torch.zeros_like(flip) if vflip is None else vflip
    out = torch.empty((n, c, sh, sw), dtype=torch.float32, device=dev)  # [N, C, S_h, S_w]
    rows = torch.cat([meta, boxes], 1).tolist()  # (offset, H, W, top, left, h, w) per image
    mirror, upside_down = flip.tolist(), vflip.tolist()
    small = [i for i, r in enumerate(rows) if max(r[5], r[6]) <= _DENSE_MAX_SIDE]
    pad_dtype = torch.uint8 if data.dtype == torch.uint8 else torch.float32
    for g0 in range(0, len(small), _DENSE_GROUP):
        group = small[g0:g0 + _DENSE_GROUP]
        g = len(group)
        idx = torch.tensor(group, device=dev)
        h_max, w_max = max(rows[i][5] for i in group), max(rows[i][6] for i in group)
        padded = torch.zeros((g, h_max, w_max, c), dtype=pad_dtype, device=dev)  # [G, h_max, w_max, C]
        src, dst = (data.numpy(), padded.numpy()) if dev.type == "cpu" else (data, padded)
        for k, i in enumerate(group):
            o, hh, ww, t, l, h, w = rows[i]
            crop = src[o:o + c * hh * ww].reshape(hh, ww, c)[t:t + h, l:l + w]
            dst[k, :h, :w] = crop if dev.type == "cpu" else crop.to(pad_dtype)
        wy = _weight_table(sh, dev)[boxes[idx, 2] - 1, :, :h_max]  # [G, S_h, h_max]
        wy = torch.where(vflip[idx, None, None], wy.flip(1), wy)  # an upside-down output reads rows backwards
        wx = _weight_table(sw, dev)[boxes[idx, 3] - 1, :, :w_max]  # [G, S_w, w_max]
        wx = torch.where(flip[idx, None, None], wx.flip(1), wx)  # a flipped output reads columns backwards
        vert = wy @ padded.view(g, h_max, w_max * c).float()  # [G, S_h, w_max * C] (HWC)
        vert = vert.view(g, sh, w_max, c).permute(0, 3, 1, 2).reshape(g, c * sh, w_max)  # [G, C S_h, w_max]
        res = torch.bmm(vert, wx.transpose(1, 2))  # [G, C S_h, S_w] = [G, C, S_h, S_w], contiguous
        if group == list(range(group[0], group[0] + g)):
            out[group[0]:group[0] + g] = res.view(g, c, sh, sw)  # a plain copy
        else:
            out[idx] = res.view(g, c, sh, sw)
    for i in sorted(set(range(n)) - set(small)):
        o, hh, ww, t, l, h, w = rows[i]
        crop = data[o:o + c * hh * ww].view(hh, ww, c)[t:t + h, l:l + w].permute(2, 0, 1).float()  # [C, h, w]
        x = F.interpolate(crop[None], size=(sh, sw), mode="bicubic", antialias=True, align_corners=False)[0]
        x = x.flip(-1) if mirror[i] else x
        out[i] = x.flip(-2) if upside_down[i] else x
    full = FULL_SCALE[data.dtype]
    scale = torch.tensor([1 / (full * s) for s in std], device=dev).view(c, 1, 1)
    bias = torch.tensor([-m / s for m, s in zip(mean, std)], device=dev).view(c, 1, 1)
    return out.mul_(scale).add_(bias).to(out_dtype)  # (x / full - mean) / std
