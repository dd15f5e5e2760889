"""The official MAE demo's four panels (original, masked, reconstruction, reconstruction pasted
around the visible patches), shared by ``visualize`` and the reconstructions ``pretrain`` writes."""

import torch

from fastmae.cli.images import to_uint8
from fastmae.reference import NORM_PIX_EPS

PANELS = ("original", "masked", "reconstruction", "reconstruction_visible")
TITLES = ("original", "masked", "reconstruction", "reconstruction + visible")
NORM_PIX_NOTE = ("norm-pix-loss model: masked patches are de-normalised with the mean and spread "
                 "of the visible patches of their image (an approximation; the true statistics "
                 "are unknown)")


def denormalize_norm_pix(pred, target, mask, eps=NORM_PIX_EPS):
    """Undo norm-pix-loss normalisation of ``pred`` as well as the visible patches allow.

    Visible patches get their own mean and (unbiased) variance back; masked patches, whose
    statistics the model never saw, get the average mean and variance of the visible patches of
    the same image.

    Args:
        pred: ``[N, L, P]`` predictions in per-patch normalised units.
        target: ``[N, L, P]`` patchified images.
        mask: ``[N, L]`` float, 1 = removed.

    Returns:
        ``[N, L, P]`` predictions in image units (a new tensor).
    """
    mean = target.mean(dim=-1, keepdim=True)  # [N, L, 1]
    var = target.var(dim=-1, keepdim=True)  # [N, L, 1], unbiased as the loss
    visible = (1 - mask).unsqueeze(-1)  # [N, L, 1]
    count = visible.sum(dim=1, keepdim=True)  # [N, 1, 1]
    mean_vis = (mean * visible).sum(dim=1, keepdim=True) / count  # [N, 1, 1]
    var_vis = (var * visible).sum(dim=1, keepdim=True) / count  # [N, 1, 1]
    removed = mask.unsqueeze(-1).bool()
    mean = torch.where(removed, mean_vis, mean)
    var = torch.where(removed, var_vis, var)
    return pred * (var + eps) ** 0.5 + mean


@torch.no_grad()
def reconstruct(model, imgs, mask_ratio, noise):
    """The four demo panels for normalised ``imgs`` ``[N, C, H, W]`` with masking ``noise`` ``[N, L]``.

    Returns a list of four ``[N, C, H, W]`` tensors in the normalised space of ``imgs``, in
    ``PANELS`` order; the masked panel is 0 (the ImageNet mean, grey) where patches were removed.
    """
    _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)  # [N, L, P], [N, L]
    pred, mask = pred.float(), mask.float()
    if model.norm_pix_loss:
        pred = denormalize_norm_pix(pred, model.patchify(imgs), mask)
    recon = model.unpatchify(pred)  # [N, C, H, W]
    removed = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, pred.shape[-1]))  # 1 = removed
    masked = imgs * (1 - removed)
    return [imgs, masked, recon, masked + recon * removed]


def panel_rows(model, imgs, mask_ratio, seed, to_image=None):
    """Per image, the four panels as ``[H, W, 3]`` uint8 arrays, with masking noise drawn from a
    generator seeded by ``seed`` (the global RNG is left alone).

    ``to_image(x [C, H, W], key)`` makes a panel displayable; default ``to_uint8`` (ImageNet RGB). For
    other images, ``fastmae.cli.bands.stretch_display`` (three bands, percentile-stretched per image:
    ``key`` is the image's index, so its four panels share one stretch)."""
    was_training = model.training
    model.eval()
    num_patches = model.patchify(imgs[:1]).shape[1]
    noise = torch.rand(len(imgs), num_patches, generator=torch.Generator().manual_seed(seed), device="cpu")
    try:
        panels = reconstruct(model, imgs, mask_ratio, noise.to(imgs.device))
    finally:
        model.train(was_training)
    if to_image is None:
        return [[to_uint8(p[i]) for p in panels] for i in range(len(imgs))]
    return [[to_image(p[i], i) for p in panels] for i in range(len(imgs))]
