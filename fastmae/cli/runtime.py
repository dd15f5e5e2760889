"""Checks shared by ``pretrain`` and ``visualize``, made before any work starts: the device, the
backend on that device, and a mask ratio that keeps at least one patch."""

import torch

import fastmae
from fastmae import _validate
from fastmae.cli.errors import UsageError


def parse_device(spec, local_rank=0, distributed=False):
    """The torch device for ``--device`` (default: CUDA when available), or a one-line ``UsageError``.

    ``cuda`` without an index (and any CUDA device under torchrun) becomes ``cuda:LOCAL_RANK``,
    which is made the current device.
    """
    if spec is None:
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"invalid --device '{spec}' (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA device is available")
        if distributed or device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UsageError(f"--device {spec}: only cpu and cuda are supported")
    return device


def check_backend(backend, device):
    """Resolve ``--backend`` for ``device`` now, so ``triton`` on the CPU fails before training."""
    try:
        return fastmae.ops.resolve_backend(backend, device)
    except ValueError as e:
        raise UsageError(f"--backend {backend}: {e}") from None


def check_keeps_patch(model, mask_ratio):
    """A one-line ``UsageError`` when ``mask_ratio`` keeps none of ``model``'s patches (the
    library's check of the official ``len_keep = int(L * (1 - mask_ratio))``)."""
    num_patches = model.patch_embed.num_patches
    try:
        _validate.len_keep(num_patches, mask_ratio)
    except ValueError:
        raise UsageError(f"--mask-ratio {mask_ratio} keeps none of the {num_patches} patches "
                         "(int(patches * (1 - ratio)) is 0); use a smaller --mask-ratio") from None


# Below these, MAE has almost nothing to learn from: a 2 x 2 grid with one visible patch predicts
# three patches from one, whatever the model.
MIN_GRID_SIDE = 4
MIN_KEPT = 4


def small_grid_warnings(model, mask_ratio, model_name):
    """Warnings (strings) for a patch grid smaller than 4 x 4 or a mask that keeps fewer than 4
    patches, naming the options that change them; ``[]`` when neither applies."""
    h, w = model.patch_embed.grid_size
    side = model.img_size
    kept = _validate.len_keep(model.patch_embed.num_patches, mask_ratio)
    out = []
    if min(h, w) < MIN_GRID_SIDE:
        out.append(f"{model_name} at {side[0]} px sees a {h}x{w} patch grid ({model.patch_size} px patches), "
                   f"fewer than {MIN_GRID_SIDE}x{MIN_GRID_SIDE}: raise --input-size (the model's own is "
                   "the default) or choose a --model with smaller patches")
    if kept < MIN_KEPT:
        out.append(f"--mask-ratio {mask_ratio:g} keeps {kept} of the {h * w} patches, fewer than {MIN_KEPT}: "
                   "lower --mask-ratio or raise --input-size")
    return out
