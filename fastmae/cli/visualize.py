"""``fastmae visualize``: the official MAE demo's four panels for a checkpoint and some images.

Panels: the original, the masked input (removed patches grey), the reconstruction and the
reconstruction pasted around the visible patches. Written per image as PNGs plus one grid.
"""

import os

import torch
from PIL import Image

import fastmae
from fastmae.cli.argtypes import positive_int, ratio, seed
from fastmae.cli.checkpoint import checkpoint_args, load_checkpoint, load_model_state
from fastmae.cli.data import resize_normalized
from fastmae.cli.errors import UsageError
from fastmae.cli.images import grid, open_image, output_names, to_uint8
from fastmae.cli.runtime import check_backend, check_keeps_patch, parse_device

PANELS = ("original", "masked", "reconstruction", "reconstruction_visible")
TITLES = ("original", "masked", "reconstruction", "reconstruction + visible")
NORM_PIX_NOTE = ("norm-pix-loss model: masked patches are de-normalised with the mean and spread "
                 "of the visible patches of their image (an approximation; the true statistics "
                 "are unknown)")


def denormalize_norm_pix(pred, target, mask, eps=1e-6):
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


def panel_rows(model, imgs, mask_ratio, seed):
    """Per image, the four panels as ``[H, W, 3]`` uint8 arrays, with masking noise drawn from a
    generator seeded by ``seed`` (the global RNG is left alone)."""
    was_training = model.training
    model.eval()
    num_patches = model.patchify(imgs[:1]).shape[1]
    noise = torch.rand(len(imgs), num_patches, generator=torch.Generator().manual_seed(seed), device="cpu")
    try:
        panels = reconstruct(model, imgs, mask_ratio, noise.to(imgs.device))
    finally:
        model.train(was_training)
    return [[to_uint8(p[i]) for p in panels] for i in range(len(imgs))]


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True,
                        help="a fastmae or official MAE checkpoint (loaded with weights_only)")
    parser.add_argument("--images", nargs="+", required=True, metavar="IMAGE",
                        help="JPEG/PNG files to reconstruct")
    parser.add_argument("--mask-ratio", type=ratio, default=0.75, help="fraction of patches removed")
    parser.add_argument("--out", default="output/visualize",
                        help="output directory: OUT/<image stem>/{%s}.png and OUT/grid.png"
                        % ",".join(PANELS))
    parser.add_argument("--seed", type=seed, default=2,
                        help="seed of the masking noise (the official demo uses 2)")
    parser.add_argument("--model", help="model name; default: the checkpoint's args.model, else "
                        "the model whose parameter shapes match the checkpoint")
    parser.add_argument("--input-size", type=positive_int,
                        help="image side; default: the checkpoint's args.input_size, else the "
                        "model's default")
    parser.add_argument("--norm-pix-loss", action="store_true", help="treat the model as trained "
                        "with norm-pix loss (default: the checkpoint's args.norm_pix_loss)")
    parser.add_argument("--backend", default="auto", choices=("auto", "triton", "torch",
                                                               "reference"),
                        help="op implementation passed to the model")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def infer_model_name(state):
    """The first model in ``fastmae.MODELS`` whose parameters have the shapes in ``state``.

    Candidates are built on the meta device: no memory, no initialisation work.
    """
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name in fastmae.MODELS:
        with torch.device("meta"):
            candidate = fastmae.create_model(name)
        if {k: tuple(v.shape) for k, v in candidate.state_dict().items()} == shapes:
            return name
    return None


def build_model(ckpt, args):
    """The checkpoint's model, loaded and in eval mode, with name and size resolved from ``args``,
    then the checkpoint's stored args, then its parameter shapes."""
    saved = checkpoint_args(ckpt)
    name = args.model or saved.get("model") or infer_model_name(ckpt["model"])
    if name is None:
        raise UsageError(f"cannot tell which model {args.checkpoint} holds; pass --model")
    if name not in fastmae.MODELS:
        raise UsageError(f"unknown model '{name}'; available: {', '.join(fastmae.MODELS)}")
    kwargs = {"norm_pix_loss": args.norm_pix_loss or bool(saved.get("norm_pix_loss", False)),
              "backend": args.backend}
    size = args.input_size or saved.get("input_size")
    if size:
        kwargs["img_size"] = size
    try:
        model = fastmae.create_model(name, **kwargs)
    except ValueError as e:
        raise UsageError(f"cannot build {name}: {e}") from None
    load_model_state(model, ckpt, args.checkpoint, name)
    return model.eval()


def run(args):
    """Write the panels and the grid; returns the exit code."""
    device = parse_device(args.device)
    check_backend(args.backend, device)
    images = [open_image(p) for p in args.images]
    model = build_model(load_checkpoint(args.checkpoint), args).to(device)
    check_keeps_patch(model, args.mask_ratio)
    imgs = torch.stack([resize_normalized(im, model.img_size) for im in images]).to(device)
    rows = panel_rows(model, imgs, args.mask_ratio, args.seed)
    for name, row in zip(output_names(args.images), rows):
        directory = os.path.join(args.out, name)
        os.makedirs(directory, exist_ok=True)
        for panel, array in zip(PANELS, row):
            Image.fromarray(array).save(os.path.join(directory, f"{panel}.png"))
    grid_path = os.path.join(args.out, "grid.png")
    grid(rows, TITLES).save(grid_path)
    if model.norm_pix_loss:
        print(f"note: {NORM_PIX_NOTE}")
    print(f"wrote {len(rows)} x {len(PANELS)} panels under {args.out} and {grid_path}")
    return 0
