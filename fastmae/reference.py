"""The official MAE semantics in plain PyTorch: one ``*_ref`` per fused op.

Every function here follows facebookresearch/mae ``models_mae.py`` step for step (generalised to any
channel count and non-square images). Tests and benchmarks import these functions as the ground
truth; the fused Triton kernels and the fast torch path must agree with them.

Shapes: ``N`` batch, ``C`` channels, ``H x W`` image, ``p`` patch size, ``h = H/p``, ``w = W/p``,
``L = h*w`` patches, ``P = p*p*C`` values per patch, ``K`` kept (visible) patches, ``M = L - K``
masked patches, ``D`` token width.

Conventions: patches are row-major over the ``h x w`` grid; inside a patch the order is (row, column,
channel) with channel fastest. ``mask`` is float with **1 = removed (masked), 0 = kept**.
"""

from __future__ import annotations

import torch

from .pos_embed import square_side

__all__ = [
    "patchify_ref",
    "unpatchify_ref",
    "masking_ids_ref",
    "gather_tokens_ref",
    "patchify_gather_ref",
    "encoder_input_ref",
    "encoder_input_official_ref",
    "decoder_input_ref",
    "masked_tokens_ref",
    "masked_mse_loss_ref",
    "NORM_PIX_EPS",
]

NORM_PIX_EPS = 1e-6  # the official norm_pix_loss epsilon, added to the (unbiased) variance


def patchify_ref(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, L, p*p*C]`` (official ``MaskedAutoencoderViT.patchify``)."""
    n, c, hh, ww = imgs.shape
    p = patch_size
    h, w = hh // p, ww // p
    x = imgs.reshape(n, c, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, h * w, p * p * c)


def unpatchify_ref(
    x: torch.Tensor, patch_size: int, grid_size: tuple[int, int] | None = None, in_chans: int | None = None
) -> torch.Tensor:
    """``[N, L, p*p*C]`` -> ``[N, C, H, W]`` (official ``unpatchify``).

    ``grid_size`` = ``(h, w)`` defaults to a square grid; ``in_chans`` defaults to ``P / p²``.
    """
    n, num_patches, pdim = x.shape
    p = patch_size
    c = in_chans if in_chans is not None else pdim // (p * p)
    if grid_size is None:
        side = square_side(num_patches)
        if side is None:
            raise ValueError(f"x has {num_patches} patches, not a square grid; pass grid_size=(h, w)")
        grid_size = (side, side)
    h, w = grid_size
    x = x.reshape(n, h, w, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, c, h * p, w * p)


def masking_ids_ref(
    noise: torch.Tensor, len_keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of ``noise`` (the index part of the official ``random_masking``).

    Args:
        noise: ``[N, L]``; small values are kept.
        len_keep: ``K``, how many patches each sample keeps.
    Returns:
        ``ids_keep [N, K]`` (int64, in noise order, not raster order), ``ids_restore [N, L]`` (int64,
        the inverse permutation of ``ids_shuffle``), ``mask [N, L]`` (float32, 1 = removed) and
        ``ids_masked [N, M]`` (int64, the removed patches in noise order: ``ids_shuffle[:, K:]``).

    The sort is stable, so equal noise values keep index order; for tie-free noise this is exactly
    the official (unstable) ``argsort``.
    """
    n, num_patches = noise.shape
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)  # [N, L] ascending: small is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # [N, L]
    ids_keep = ids_shuffle[:, :len_keep]  # [N, K]
    mask = torch.ones(n, num_patches, device=noise.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)  # [N, L] back in patch order
    return ids_keep, ids_restore, mask, ids_shuffle[:, len_keep:]


def gather_tokens_ref(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows of ``x [N, L, D]`` at ``ids [N, K]`` -> ``[N, K, D]`` (the encoder's visible-token gather)."""
    return torch.gather(x, dim=1, index=ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def patchify_gather_ref(imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The visible patches only: ``patchify`` then gather by ``ids_keep`` -> ``[N, K, P]``."""
    return gather_tokens_ref(patchify_ref(imgs, patch_size), ids_keep)


def encoder_input_ref(
    x_vis: torch.Tensor, pos_embed: torch.Tensor, cls_token: torch.Tensor, ids_keep: torch.Tensor
) -> torch.Tensor:
    """The encoder's token sequence from the embedded visible patches.

    Args:
        x_vis: ``[N, K, D]``, patch embeddings of the visible patches (in ``ids_keep`` order).
        pos_embed: ``[1, L+1, D]``, row 0 for cls.
        cls_token: ``[1, 1, D]``.
        ids_keep: ``[N, K]``.
    Returns:
        ``[N, K+1, D]``: ``cls_token + pos_embed[0]``, then ``x_vis[k] + pos_embed[1 + ids_keep[k]]``.

    Officially the position embedding is added to all ``L`` patches before the gather; adding the
    gathered rows afterwards is the same arithmetic on the kept rows.
    """
    n = x_vis.shape[0]
    pos = gather_tokens_ref(pos_embed[:, 1:, :].expand(n, -1, -1), ids_keep)  # [N, K, D]
    cls = (cls_token + pos_embed[:, :1, :]).expand(n, -1, -1)  # [N, 1, D]
    return torch.cat([cls, x_vis + pos], dim=1)


def encoder_input_official_ref(
    x: torch.Tensor, pos_embed: torch.Tensor, cls_token: torch.Tensor, ids_keep: torch.Tensor
) -> torch.Tensor:
    """The official encoder order (``forward_encoder`` after the patch embedding).

    Args:
        x: ``[N, L, D]``, patch embeddings of **every** patch.
        pos_embed: ``[1, L+1, D]``, row 0 for cls.
        cls_token: ``[1, 1, D]``.
        ids_keep: ``[N, K]``.
    Returns:
        ``[N, K+1, D]``, equal to ``encoder_input_ref`` on the kept rows of ``x``: positions are added
        to all ``L`` patches, the kept ones gathered, then ``cls_token + pos_embed[0]`` prepended.
    """
    x = x + pos_embed[:, 1:, :]  # [N, L, D]
    x = gather_tokens_ref(x, ids_keep)  # [N, K, D]
    cls = (cls_token + pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)  # [N, 1, D]
    return torch.cat((cls, x), dim=1)  # [N, K+1, D]


def decoder_input_ref(
    x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor, pos_embed: torch.Tensor
) -> torch.Tensor:
    """Append mask tokens, unshuffle to patch order and add positions (official ``forward_decoder``).

    Args:
        x: ``[N, K+1, D]``, decoder-embedded encoder output (cls first).
        ids_restore: ``[N, L]``.
        mask_token: ``[1, 1, D]``.
        pos_embed: ``[1, L+1, D]`` (the decoder's).
    Returns:
        ``[N, L+1, D]``.
    """
    n, k1, d = x.shape
    num_patches = ids_restore.shape[1]
    mask_tokens = mask_token.repeat(n, num_patches + 1 - k1, 1)  # [N, M, D]
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # [N, L, D], no cls token
    x_ = gather_tokens_ref(x_, ids_restore)  # unshuffle
    x = torch.cat([x[:, :1, :], x_], dim=1)  # [N, L+1, D], cls back in front
    return x + pos_embed


def masked_tokens_ref(x: torch.Tensor, ids_masked: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """The decoder's masked tokens: ``x [N, L+1, D]`` (cls first) -> ``[N, M, D]``, row ``m`` =
    ``x[1 + ids_masked[m]]``.

    ``ids_restore`` (what the fused backward uses to write every row once) is not needed here.
    """
    return gather_tokens_ref(x[:, 1:, :], ids_masked)


def masked_mse_loss_ref(
    pred: torch.Tensor,
    imgs: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    norm_pix_loss: bool = False,
    ids_masked: torch.Tensor | None = None,
) -> torch.Tensor:
    """The official ``forward_loss``: mean squared error per patch, averaged over masked patches.

    Args:
        pred: ``[N, L, P]``, or ``[N, M, P]`` for the patches ``ids_masked`` names.
        imgs: ``[N, C, H, W]``.
        mask: ``[N, L]``, 1 = removed (these patches count), 0 = kept. Ignored with ``ids_masked``.
        norm_pix_loss: normalise each target patch by its mean and unbiased variance (+1e-6).
        ids_masked: ``[N, M]``, the masked patches ``pred`` holds; every one counts with weight 1.
    Returns:
        A scalar. Where the official code divides 0 by 0 (no patch masked, ``mask_ratio=0``),
        this returns 0: there is nothing to reconstruct.
    """
    if ids_masked is not None:
        target = patchify_gather_ref(imgs, ids_masked, patch_size)  # [N, M, P]
        mask = torch.ones(ids_masked.shape, dtype=torch.float32, device=pred.device)
    else:
        target = patchify_ref(imgs, patch_size)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as the official code
        target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)  # [N, L], mean loss per patch
    den = mask.sum()
    # 0 / 0 only when no patch is masked; the numerator is then 0 as well, so divide by 1 instead.
    return (loss * mask).sum() / torch.where(den > 0, den, torch.ones_like(den))


# --------------------------------------------------------------------------------------------------
# input pipeline: crop, antialiased bicubic resize, flip and normalise a ragged batch of images
# --------------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # per RGB channel, of pixel / 255 (the official Normalize)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What a source value is divided by before mean and std apply. The units of every mean/std in fastmae:
# the full integer range mapped to [0, 1] for uint8 and uint16 images, the stored value for float32.
FULL_SCALE = {torch.uint8: 255.0, torch.uint16: 65535.0, torch.float32: 1.0}

__all__ += ["resized_crop_ref", "IMAGENET_MEAN", "IMAGENET_STD", "FULL_SCALE"]


def resized_crop_ref(
    data: torch.Tensor,
    meta: torch.Tensor,
    boxes: torch.Tensor,
    flip: torch.Tensor,
    size: tuple[int, int],
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    out_dtype: torch.dtype = torch.float32,
    vflip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop, resize (antialiased bicubic), flip and normalise each image of a ragged batch.

    Args:
        data: ``[B]`` uint8, uint16 or float32, the HWC pixels of ``N`` images of ``C = len(mean)``
            channels one after another.
        meta: int64 ``[N, 3]``, per image ``(element offset into data, height H, width W)``.
        boxes: int64 ``[N, 4]``, per image the crop ``(top, left, height h, width w)`` in its pixels.
        flip: bool ``[N]``, mirror the result left to right; vflip: bool ``[N]`` or None, upside down.
        size: ``(S_h, S_w)``, the output size (an int: square).
        mean, std: ``C`` floats each; the output is ``(value / FULL_SCALE[data.dtype] - mean) / std``
            per channel (uint8 and uint16 values mapped to [0, 1], float32 values as stored).
        out_dtype: float32, bfloat16 or float16.
    Returns:
        ``[N, C, S_h, S_w]`` in ``out_dtype``.

    The resize is ``F.interpolate(crop, size, mode="bicubic", antialias=True, align_corners=False)``
    on the float crop: Pillow's bicubic kernel (a = -0.5) with its support widened by the downscale
    factor, separable, taps clamped at the crop's edges and each output's weights renormalised to sum
    to 1. A per-image loop that reads ``meta`` and ``boxes`` on the host: the definition, not a fast path.
    """
    import torch.nn.functional as F

    size = (size, size) if isinstance(size, int) else tuple(size)
    c = len(mean)
    full = FULL_SCALE[data.dtype]
    mean_t = torch.tensor(mean, dtype=torch.float32, device=data.device).view(c, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=data.device).view(c, 1, 1)
    vflips = vflip.tolist() if vflip is not None else [False] * meta.shape[0]
    out = []
    for (off, hh, ww), (top, left, h, w), mirror, upside_down in zip(meta.tolist(), boxes.tolist(),
                                                                     flip.tolist(), vflips):
        img = data[off:off + hh * ww * c].view(hh, ww, c)  # [H, W, C]
        crop = img[top:top + h, left:left + w].permute(2, 0, 1).float()  # [C, h, w]
        x = F.interpolate(crop[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]
        if mirror:
            x = x.flip(-1)
        if upside_down:
            x = x.flip(-2)
        out.append(((x / full - mean_t) / std_t).to(out_dtype))  # [C, S_h, S_w]
    if not out:
        return torch.empty((0, c, *size), dtype=out_dtype, device=data.device)
    return torch.stack(out)
