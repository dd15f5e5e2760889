"""The public functional ops, and the one place that picks an implementation per call.

Backends:
    ``"triton"``     the fused kernels in ``fastmae.kernels`` (CUDA tensors, or CPU tensors under
                     ``TRITON_INTERPRET=1``);
    ``"torch"``      the same fast path written with torch ops (``fastmae.torch_ops``);
    ``"reference"``  the official algorithm (``fastmae.reference``), for checking and benchmarking;
    ``"auto"``       triton for CUDA tensors or under ``TRITON_INTERPRET=1``, torch otherwise.

The backend is read on every call, in this order: the ``backend=`` argument, the innermost
``use_backend(...)`` context, the ``FASTMAE_BACKEND`` environment variable, ``"auto"``
(``fastmae/backends.py``; re-exported here).

Every op validates its arguments before anything runs (shapes, dtypes, devices, index ranges where
cheap) and makes its inputs contiguous, so the implementations below see fixed-rank dense tensors.
Every op but ``masking_ids`` and ``resized_crop`` (they make indices and inputs) is differentiable.
None reads CUDA tensor data on the host (index checks there are opt-in: ``FASTMAE_CHECK_INDICES=1``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import _validate as check
from .backends import BACKENDS, get_backend, resolve_backend, use_backend
from .backends import check_name as check_backend_name
from .kernel_modules import kernels as _kernel_modules  # no Triton import until a kernel is used
from . import reference, torch_ops
from .pos_embed import square_side

__all__ = [
    "BACKENDS",
    "check_backend_name",
    "get_backend",
    "use_backend",
    "resolve_backend",
    "patchify",
    "unpatchify",
    "patchify_gather",
    "encoder_input",
    "decoder_input",
    "masked_tokens",
    "masked_mse_loss",
    "masking_ids",
    "MaskingIds",
]

def _kernels():
    # Triton is imported only when a kernel is first used, so fastmae works without Triton.
    return _kernel_modules


def _contiguous(*ts):
    return tuple(t.contiguous() for t in ts)


# --------------------------------------------------------------------------------------------------
# patchify / unpatchify
# --------------------------------------------------------------------------------------------------


def patchify(imgs: torch.Tensor, patch_size: int, *, backend: str | None = None) -> torch.Tensor:
    """Cut images into patches: ``[N, C, H, W]`` -> ``[N, L, p*p*C]``.

    Patches are row-major; inside a patch (row, column, channel) with channel fastest, as the
    official ``patchify``. Differentiable (the backward is ``unpatchify``).
    """
    check.patch_size(patch_size)
    check.images("imgs", imgs, patch_size)
    (imgs,) = _contiguous(imgs)
    impl = resolve_backend(backend, imgs.device)
    if impl == "triton":
        return _kernels().patchify.patchify(imgs, patch_size)
    return reference.patchify_ref(imgs, patch_size)


def unpatchify(
    x: torch.Tensor,
    patch_size: int,
    grid_size: tuple[int, int] | None = None,
    in_chans: int | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[N, L, p*p*C]`` -> ``[N, C, h*p, w*p]``.

    ``grid_size=(h, w)`` defaults to a square grid; ``in_chans`` defaults to ``P / p²``.
    """
    check.patch_size(patch_size)
    check.tensor("x", x, 3, check.FLOAT_DTYPES + (torch.float64,))
    n, num_patches, pdim = x.shape
    if in_chans is None:
        if pdim % (patch_size * patch_size):
            raise ValueError(f"x has {pdim} values per patch, not a multiple of patch_size² = {patch_size ** 2}")
        in_chans = pdim // (patch_size * patch_size)
    if pdim != patch_size * patch_size * in_chans:
        raise ValueError(f"x has {pdim} values per patch, expected patch_size² * in_chans = "
                         f"{patch_size ** 2 * in_chans}")
    if grid_size is None:
        side = square_side(num_patches)
        if side is None:
            raise ValueError(f"x has {num_patches} patches, not a square grid; pass grid_size=(h, w)")
        grid_size = (side, side)
    if grid_size[0] * grid_size[1] != num_patches:
        raise ValueError(f"grid_size {tuple(grid_size)} does not hold the {num_patches} patches of x")
    (x,) = _contiguous(x)
    impl = resolve_backend(backend, x.device)
    if impl == "triton" and x.dtype != torch.float64:
        return _kernels().patchify.unpatchify(x, patch_size, grid_size[0], grid_size[1], in_chans)
    return reference.unpatchify_ref(x, patch_size, tuple(grid_size), in_chans)


def patchify_gather(
    imgs: torch.Tensor, ids_keep: torch.Tensor, patch_size: int, *, out_dtype: torch.dtype | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """The patches ``ids_keep`` names, straight from the image: ``[N, C, H, W]`` -> ``[N, K, p*p*C]``.

    Equals ``patchify(imgs)`` gathered by ``ids_keep`` but reads only those patches' pixels. The
    result feeds a patch-embed GEMM whose weight is the conv weight permuted to (p, q, c) order
    (see ``MaskedAutoencoderViT.patch_embed_weight``). ``ids_keep`` must hold distinct patch indices
    in each row (the backward writes each patch's gradient once). ``out_dtype`` (default: the
    images') is the dtype the rows are written in — the model passes the autocast dtype, so the
    float32 image becomes bf16 rows in the same pass, with no cast after it; the gradient flows back
    in the images' dtype.
    """
    check.patch_size(patch_size)
    check.images("imgs", imgs, patch_size)
    if out_dtype is not None and out_dtype not in check.FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be one of float32, bfloat16, float16, got {out_dtype}")
    n, _, hh, ww = imgs.shape
    check.ids("ids_keep", ids_keep, n, None, (hh // patch_size) * (ww // patch_size), imgs.device, distinct=True)
    imgs, ids_keep = _contiguous(imgs, ids_keep)
    impl = resolve_backend(backend, imgs.device)
    if impl == "triton":
        return _kernels().patchify.patchify_gather(imgs, ids_keep, patch_size, out_dtype)
    if impl == "torch":
        rows = torch_ops.patchify_gather(imgs, ids_keep, patch_size)
    else:
        rows = reference.patchify_gather_ref(imgs, ids_keep, patch_size)
    return rows if out_dtype is None else rows.to(out_dtype)


# --------------------------------------------------------------------------------------------------
# encoder and decoder inputs
# --------------------------------------------------------------------------------------------------


def _tokens_and_table(x_name, x, pos_embed, token_name, token, ids_name, ids):
    """Shared checks: ``x [N, T, D]``, ``pos_embed [1, L+1, D]``, ``token [1, 1, D]``, one device."""
    check.tensor(x_name, x, 3, check.FLOAT_DTYPES)
    check.tensor("pos_embed", pos_embed, 3, check.FLOAT_DTYPES)
    check.tensor(token_name, token, 3, check.FLOAT_DTYPES)
    n, _, d = x.shape
    if n == 0:
        raise ValueError(f"{x_name} is an empty batch (shape {tuple(x.shape)})")
    if pos_embed.shape[0] != 1 or pos_embed.shape[2] != d or pos_embed.shape[1] < 2:
        raise ValueError(f"pos_embed must have shape [1, L+1, {d}], got {tuple(pos_embed.shape)}")
    if tuple(token.shape) != (1, 1, d):
        raise ValueError(f"{token_name} must have shape [1, 1, {d}], got {tuple(token.shape)}")
    for name, t in ((ids_name, ids), ("pos_embed", pos_embed), (token_name, token)):
        check.same_device(name, t, x.device)
    check.sample_size(x_name, x, pos_embed.shape[1])


def encoder_input(
    x_vis: torch.Tensor,
    pos_embed: torch.Tensor,
    cls_token: torch.Tensor,
    ids_keep: torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Assemble the encoder's tokens in one pass: ``[N, K, D]`` -> ``[N, K+1, D]``.

    Row 0 is ``cls_token + pos_embed[0]``; row ``1+k`` is ``x_vis[k] + pos_embed[1 + ids_keep[k]]``.
    ``ids_keep`` must hold distinct patch indices in each row.
    The result's dtype is the promotion of the three inputs' (as the official ``x + pos_embed``: a
    bf16 ``x_vis`` with a float32 table gives float32); sums are computed in float32.
    """
    _tokens_and_table("x_vis", x_vis, pos_embed, "cls_token", cls_token, "ids_keep", ids_keep)
    n, k, _ = x_vis.shape
    check.ids("ids_keep", ids_keep, n, k, pos_embed.shape[1] - 1, x_vis.device, distinct=True)
    x_vis, pos_embed, cls_token, ids_keep = _contiguous(x_vis, pos_embed, cls_token, ids_keep)
    impl = resolve_backend(backend, x_vis.device)
    if impl == "triton":
        return _kernels().encoder_input.encoder_input(x_vis, pos_embed, cls_token, ids_keep)
    if impl == "torch":
        return torch_ops.encoder_input(x_vis, pos_embed, cls_token, ids_keep)
    return reference.encoder_input_ref(x_vis, pos_embed, cls_token, ids_keep)


def decoder_input(
    x: torch.Tensor,
    ids_restore: torch.Tensor,
    mask_token: torch.Tensor,
    pos_embed: torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Mask-token scatter and unshuffle in one pass: ``[N, K+1, D]`` -> ``[N, L+1, D]``.

    Row 0 is ``x[0] + pos_embed[0]``; row ``1+l`` is ``x[1 + ids_restore[l]]`` when that index is
    below ``K`` (a visible patch) and ``mask_token`` otherwise, plus ``pos_embed[1+l]``.
    ``ids_restore`` must be a permutation of ``[0, L)`` in each row (as ``masking_ids`` gives). The
    result's dtype is the promotion of the three inputs' (as the official concatenation and sum).
    """
    _tokens_and_table("x", x, pos_embed, "mask_token", mask_token, "ids_restore", ids_restore)
    n, k1, _ = x.shape
    num_patches = pos_embed.shape[1] - 1
    if k1 < 2 or k1 > num_patches + 1:
        raise ValueError(f"x must have shape [N, K+1, D] with 1 <= K <= L = {num_patches}, got {tuple(x.shape)}")
    check.ids("ids_restore", ids_restore, n, num_patches, num_patches, x.device, distinct=True)
    x, ids_restore, mask_token, pos_embed = _contiguous(x, ids_restore, mask_token, pos_embed)
    impl = resolve_backend(backend, x.device)
    if impl == "triton":
        return _kernels().decoder_input.decoder_input(x, ids_restore, mask_token, pos_embed)
    if impl == "torch":
        return torch_ops.decoder_input(x, ids_restore, mask_token, pos_embed)
    return reference.decoder_input_ref(x, ids_restore, mask_token, pos_embed)


def masked_tokens(
    x: torch.Tensor, ids_masked: torch.Tensor, ids_restore: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """The decoder's masked tokens: ``x [N, L+1, D]`` (cls first) -> ``[N, M, D]``, row ``m`` =
    ``x[1 + ids_masked[m]]``.

    ``ids_masked [N, M]`` and ``ids_restore [N, L]`` are the ones :func:`masking_ids` returned
    together (``ids_restore[ids_masked[m]] == K + m``, ``K = L - M``): the fused backward writes each
    row of the gradient once, found through ``ids_restore``, with no zero fill and no atomics.
    """
    check.tensor("x", x, 3, check.FLOAT_DTYPES)
    n, l1, _ = x.shape
    if n == 0 or l1 < 2:
        raise ValueError(f"x must have shape [N, L+1, D] with N >= 1 and L >= 1, got {tuple(x.shape)}")
    check.sample_size("x", x, l1)
    check.ids("ids_restore", ids_restore, n, l1 - 1, l1 - 1, x.device, distinct=True)
    check.ids("ids_masked", ids_masked, n, None, l1 - 1, x.device, distinct=True)
    check.masked_of_restore(ids_masked, ids_restore)
    x, ids_masked, ids_restore = _contiguous(x, ids_masked, ids_restore)
    impl = resolve_backend(backend, x.device)
    if impl == "triton":
        return _kernels().masked_tokens.masked_tokens(x, ids_masked, ids_restore)
    return reference.masked_tokens_ref(x, ids_masked, ids_restore)


# --------------------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------------------


def masked_mse_loss(
    pred: torch.Tensor,
    imgs: torch.Tensor,
    mask: torch.Tensor | None,
    patch_size: int,
    norm_pix_loss: bool = False,
    ids_masked: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """MAE's reconstruction loss, with the target patchified from ``imgs`` on the fly.

    Two forms:
        ``pred [N, L, P]`` with ``mask [N, L]`` (1 = counts): ``sum(mask * e) / sum(mask)``;
        ``pred [N, M, P]`` with ``ids_masked [N, M]`` (``mask`` may be None): ``mean(e)``,
    where ``e`` is each patch's mean squared error against its (optionally norm-pix normalised,
    unbiased variance + 1e-6) target. Accumulates in float32; returns a float32 scalar. With no
    masked patch (``sum(mask) == 0`` or ``M == 0``) the loss is 0 rather than the official 0/0.
    """
    check.patch_size(patch_size)
    check.images("imgs", imgs, patch_size)
    check.tensor("pred", pred, 3, check.FLOAT_DTYPES)
    if not isinstance(norm_pix_loss, bool):
        raise TypeError(f"norm_pix_loss must be a bool, got {type(norm_pix_loss).__name__}")
    n, c, hh, ww = imgs.shape
    num_patches, pdim = (hh // patch_size) * (ww // patch_size), patch_size * patch_size * c
    check.norm_pix(norm_pix_loss, pdim)
    check.same_device("pred", pred, imgs.device)
    if ids_masked is not None:
        check.ids("ids_masked", ids_masked, n, None, num_patches, imgs.device)
        want = (n, ids_masked.shape[1], pdim)
        mask = None
    else:
        if mask is None:
            raise ValueError("mask is required when ids_masked is not given")
        check.tensor("mask", mask, 2, check.FLOAT_DTYPES)
        check.same_device("mask", mask, imgs.device)
        if tuple(mask.shape) != (n, num_patches):
            raise ValueError(f"mask must have shape [{n}, {num_patches}] for imgs {tuple(imgs.shape)}, "
                             f"got {tuple(mask.shape)}")
        want = (n, num_patches, pdim)
    if tuple(pred.shape) != want:
        raise ValueError(f"pred must have shape {list(want)} for imgs {tuple(imgs.shape)} and patch_size "
                         f"{patch_size}, got {tuple(pred.shape)}")
    pred, imgs = _contiguous(pred, imgs)
    mask = mask.contiguous() if mask is not None else None
    ids_masked = ids_masked.contiguous() if ids_masked is not None else None
    impl = resolve_backend(backend, imgs.device)
    # The kernel differentiates with respect to pred only; a caller who needs d(loss)/d(imgs) or
    # d(loss)/d(mask) gets the torch implementation, which differentiates everything.
    needs_other_grads = imgs.requires_grad or (mask is not None and mask.requires_grad)
    if impl == "triton" and not needs_other_grads:
        return _kernels().masked_mse_loss.masked_mse_loss(pred, imgs, mask, patch_size, norm_pix_loss, ids_masked)
    if impl == "reference":
        return reference.masked_mse_loss_ref(pred, imgs, mask, patch_size, norm_pix_loss, ids_masked).float()
    return torch_ops.masked_mse_loss(pred, imgs, mask, patch_size, norm_pix_loss, ids_masked)


# --------------------------------------------------------------------------------------------------
# masking
# --------------------------------------------------------------------------------------------------


class MaskingIds(NamedTuple):
    """What :func:`masking_ids` returns (a tuple: it unpacks as ``ids_keep, ids_restore, mask, ids_masked``)."""

    ids_keep: torch.Tensor  # [N, K] int64, the kept patches in noise order
    ids_restore: torch.Tensor  # [N, L] int64, each patch's rank in its row (the inverse of ids_shuffle)
    mask: torch.Tensor  # [N, L] float32, 1 = removed
    ids_masked: torch.Tensor  # [N, M] int64, the removed patches in noise order


def masking_ids(noise: torch.Tensor, len_keep: int, *, backend: str | None = None) -> MaskingIds:
    """MAE's masking indices from noise: ``noise [N, L]`` -> :class:`MaskingIds`.

    The ``K = len_keep`` smallest noise values of each row are kept, in ascending noise order
    (``ids_keep``), the others removed (``ids_masked``, also in noise order); ``ids_restore`` is each
    patch's rank, ``mask`` float32 with 1 = removed. Equal noise values are ordered by patch index (a
    stable sort), so results equal the official ``argsort`` whenever the noise has no ties; NaN sorts
    last. Not differentiable: the outputs are indices and a step function of the noise.
    The official ``random_masking(x, mask_ratio)`` is ``fastmae.random_masking``.
    """
    check.tensor("noise", noise, 2, check.FLOAT_DTYPES + (torch.float64,))
    n, num_patches = noise.shape
    if n == 0 or num_patches == 0:
        raise ValueError(f"noise must be a non-empty [N, L] tensor, got shape {tuple(noise.shape)}")
    if isinstance(len_keep, bool) or not isinstance(len_keep, int):
        raise TypeError(f"len_keep must be an int, got {type(len_keep).__name__}")
    if not 1 <= len_keep <= num_patches:
        raise ValueError(f"len_keep must be in [1, {num_patches}], got {len_keep}")
    (noise,) = _contiguous(noise)
    impl = resolve_backend(backend, noise.device)
    if impl == "triton":
        return MaskingIds(*_kernels().masking_ids.masking_ids(noise, len_keep))
    return MaskingIds(*reference.masking_ids_ref(noise, len_keep))


# --------------------------------------------------------------------------------------------------
# input pipeline
# --------------------------------------------------------------------------------------------------

__all__.append("resized_crop")


def resized_crop(
    data: torch.Tensor,
    meta: torch.Tensor,
    boxes: torch.Tensor,
    flip: torch.Tensor,
    size,
    mean=reference.IMAGENET_MEAN,
    std=reference.IMAGENET_STD,
    out_dtype: torch.dtype = torch.float32,
    *,
    vflip: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Crop, resize, flip and normalise a ragged batch of C-channel images: the model's input, in one launch.

    Args:
        data: ``[B]`` uint8, uint16 or float32, the HWC pixels of ``N`` images of any sizes and
            ``C = len(mean)`` channels, one after another.
        meta: int64 ``[N, 3]`` ``(element offset, H, W)``; boxes: int64 ``[N, 4]`` ``(top, left, h, w)``;
        flip: bool ``[N]`` (left to right); size: ``(S_h, S_w)`` or an int.
        mean, std: ``C`` floats each, in the units of ``reference.FULL_SCALE``: ``value / 255`` for uint8,
            ``value / 65535`` for uint16 (the integer range mapped to [0, 1]), the value for float32.
        out_dtype: float32, bfloat16 or float16 (the model's input dtype under autocast).
        vflip: bool ``[N]`` or None: also flip upside down (inside the same launch).
    Returns:
        ``[N, C, S_h, S_w]``: ``normalize(flip(resize(crop)))``, the resize antialiased bicubic with
        Pillow's kernel (a = -0.5, support widened by the downscale factor) as ``F.interpolate(crop,
        size, mode="bicubic", antialias=True)`` (``reference.resized_crop_ref``). Not differentiable.

    Bad dtypes, ranks, shapes or ``size`` raise before anything runs, as do (CPU tensors, or
    ``FASTMAE_CHECK_INDICES=1``) an image outside ``data`` or a box outside its image; unchecked on
    CUDA, the kernel clamps each box into its image and masks every load.
    """
    size = check.out_size(size)
    mean = check.channel_values("mean", mean)
    std = check.channel_values("std", std, positive=True, count=len(mean))
    check.float_dtype("out_dtype", out_dtype)
    check.ragged_batch(data, meta, boxes, flip, len(mean), vflip)
    data, meta, boxes, flip = _contiguous(data, meta, boxes, flip)
    if vflip is not None:
        (vflip,) = _contiguous(vflip)
    impl = resolve_backend(backend, data.device)
    if impl == "triton":
        return _kernels().resized_crop.resized_crop(data, meta, boxes, flip, size, mean, std, out_dtype, vflip)
    if impl == "torch":
        return torch_ops.resized_crop(data, meta, boxes, flip, size, mean, std, out_dtype, vflip)
    return reference.resized_crop_ref(data, meta, boxes, flip, size, mean, std, out_dtype, vflip)
