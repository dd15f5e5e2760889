"""``fastmae visualize``: the official MAE demo's four panels for a checkpoint and some images.

Panels: the original, the masked input (removed patches grey), the reconstruction and the
reconstruction pasted around the visible patches. Written per image as PNGs plus one grid.

The checkpoint needs a decoder: a full MAE (what ``fastmae pretrain`` writes, or the official
mae_visualize_vit_base.pth / mae_visualize_vit_large.pth). An encoder-only file (the official
mae_pretrain_vit_*.pth) or a fine-tuned ViT is refused with one line saying so. Without --model, the
model is the checkpoint's args.model, else the factory whose shapes fit its weights.

Multi-band, 16-bit and float images (``.npy``, ``.tif``, 16-bit PNG) are normalised with the
checkpoint's stored ``mean``/``std`` (what ``pretrain`` trained with) and shown as three bands
(``--bands R,G,B``; default the first three, or grey for one band), each stretched between its 2nd
and 98th percentile of the original.
"""

import os

import numpy as np
import torch
from PIL import Image

import fastmae
import fastmae.data as fd
from fastmae.cli import bands
from fastmae.state_dicts import OFFICIAL_WITH_DECODER
from fastmae.cli.argtypes import positive_int, ratio, seed
from fastmae.cli.run_state import inspect_checkpoint, load_checkpoint, load_model_state, without_decoder
from fastmae.cli.errors import UsageError
from fastmae.cli.images import grid, open_image, output_names, resize_normalized
from fastmae.cli.panels import NORM_PIX_NOTE, PANELS, TITLES, panel_rows
from fastmae.cli.runtime import check_backend, check_keeps_patch, parse_device
from fastmae.checkpoint_files import checkpoint_args


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True,
                        help="a fastmae or official MAE checkpoint (loaded with weights_only), or a Hugging Face "
                        "ViTMAE directory (export --format hf, save_pretrained, a hub snapshot)")
    parser.add_argument("--images", nargs="+", required=True, metavar="IMAGE",
                        help="JPEG/PNG files, or .npy/.tif/16-bit PNG images of the checkpoint's channels")
    parser.add_argument("--bands", help="for images of other than 3 channels: the three bands shown as R,G,B "
                        "(0-based, e.g. 3,2,1); default the first three, or grey for one band")
    parser.add_argument("--mask-ratio", type=ratio, default=0.75, help="fraction of patches removed")
    parser.add_argument("--out", default="output/visualize",
                        help="output directory: OUT/<image stem>/{%s}.png and OUT/grid.png"
                        % ",".join(PANELS))
    parser.add_argument("--seed", type=seed, default=2,
                        help="seed of the masking noise (the official demo uses 2)")
    parser.add_argument("--model", help="model name; default: the checkpoint's args.model, else "
                        "the factory whose parameter shapes match the checkpoint")
    parser.add_argument("--input-size", type=positive_int,
                        help="image side; default: the checkpoint's args.input_size, else the side "
                        "its position table was built for")
    parser.add_argument("--norm-pix-loss", action="store_true", help="treat the model as trained "
                        "with norm-pix loss (default: the checkpoint's args.norm_pix_loss)")
    parser.add_argument("--backend", default="auto", choices=fastmae.ops.BACKENDS,
                        help="op implementation passed to the model")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def build_model(ckpt, args):
    """The checkpoint's model, loaded and in eval mode, with name and size resolved from ``args``,
    then the checkpoint's stored args, then its parameter shapes (``fastmae.inspect_state_dict``:
    the factory they fit and the image side of the position table).

    A checkpoint without a decoder (encoder-only, or a fine-tuned ViT) is refused before any model
    is built: it cannot reconstruct.
    """
    saved = checkpoint_args(ckpt)
    info = inspect_checkpoint(ckpt)
    if info is not None and info.kind != "mae":
        raise UsageError(f"{without_decoder(args.checkpoint, info.kind)}: reconstructions need a checkpoint "
                         f"with a decoder, such as the official {OFFICIAL_WITH_DECODER}")
    name = args.model or saved.get("model") or (info.factory if info else None)
    if name is None:
        why = "no fastmae factory has its shapes" if info else "its weights are in no official MAE layout"
        raise UsageError(f"cannot tell which model {args.checkpoint} holds ({why}); pass --model")
    if name not in fastmae.MODELS:
        raise UsageError(f"unknown model '{name}'; available: {', '.join(fastmae.MODELS)}")
    kwargs = {"norm_pix_loss": args.norm_pix_loss or bool(saved.get("norm_pix_loss", False)),
              "backend": args.backend}
    size = args.input_size or saved.get("input_size") or (info.img_size if info else None)
    if size:
        kwargs["img_size"] = size
    weight = (ckpt.get("model", ckpt) if isinstance(ckpt, dict) else {}).get("patch_embed.proj.weight")
    if weight is not None and weight.shape[1] != 3:
        kwargs["in_chans"] = int(weight.shape[1])
    try:
        model = fastmae.create_model(name, **kwargs)
    except ValueError as e:
        raise UsageError(f"cannot build {name}: {e}") from None
    load_model_state(model, ckpt, args.checkpoint, name)
    return model.eval()


def _read_image(path, channels):
    """A photograph (RGB, or grey for a 1-channel model) as PIL, or another image as a ``[H, W, C]`` array."""
    if path.lower().endswith(fd.arrays.ARRAY_EXTENSIONS):
        try:
            return fd.open_array(path)
        except fd.DataError as e:
            raise UsageError(str(e)) from None
    if path.lower().endswith(".png") and os.path.isfile(path):
        with Image.open(path) as im:
            if fd.sources.is_16bit_grey(im):
                return fd.open_array(path)
    im = open_image(path)
    return im.convert("L") if channels == 1 else im


def run(args):
    """Write the panels and the grid; returns the exit code."""
    device = parse_device(args.device)
    check_backend(args.backend, device)
    ckpt = load_checkpoint(args.checkpoint)
    saved = checkpoint_args(ckpt)
    model = build_model(ckpt, args).to(device)
    check_keeps_patch(model, args.mask_ratio)
    channels = model.in_chans
    images = [_read_image(p, channels) for p in args.images]
    for path, im in zip(args.images, images):
        got = bands.image_array(im).shape[2] if isinstance(im, np.ndarray) or im.mode == "L" else 3
        if got != channels:
            raise UsageError(f"{path} has {got} channel(s), the model in {args.checkpoint} takes {channels}")
    photos = channels == 3 and not any(isinstance(im, np.ndarray) for im in images) and args.bands is None
    mean, std = saved.get("mean"), saved.get("std")
    if mean is None or len(mean) != channels:
        if channels not in (1, 3):
            raise UsageError(f"{args.checkpoint} stores no per-channel mean/std for its {channels} channels")
        mean, std = (fastmae.IMAGENET_MEAN, fastmae.IMAGENET_STD) if channels == 3 else ([0.449], [0.226])
    size = (model.img_size, model.img_size) if isinstance(model.img_size, int) else tuple(model.img_size)
    if photos and list(mean) == list(fastmae.IMAGENET_MEAN):
        imgs = torch.stack([resize_normalized(im, model.img_size) for im in images]).to(device)
    else:
        imgs = torch.stack([bands.whole_image_input(im, size, mean, std) for im in images]).to(device)
    to_image = None if photos else bands.stretch_display(bands.parse_bands(args.bands, channels))
    rows = panel_rows(model, imgs, args.mask_ratio, args.seed, to_image)
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
