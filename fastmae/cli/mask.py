"""``fastmae mask``: the masking lesson end to end.

Each image is resized to ``--input-size`` (bicubic, as Pillow's default), masked by
``fastmae.MaskGenerator`` (SimMIM-style: ``ceil(ratio * patches)`` patches set to 0, the rest 1) and
written as ``OUT/<stem>/image.png``, ``OUT/<stem>/mask.png`` (255 * mask) and
``OUT/<stem>/masked_image.png`` (the image times the mask). The lesson writes only the first image,
straight into ``./output/``; here every image gets its own directory (repeated stems get ``-2``...)
under ``output/mask`` by default.

Files from an earlier run are not overwritten unless ``--force`` is given, and an ``--out`` inside a
pretraining run directory (one holding ``checkpoint-last.pth`` or ``log.txt``) is refused.
"""

import os

import numpy as np
from PIL import Image

import fastmae
from fastmae.cli.argtypes import fraction, positive_int, seed
from fastmae.cli.console import count
from fastmae.cli.errors import UsageError
from fastmae.cli.images import open_image, output_names
from fastmae.cli.rundir import enclosing_run

OUTPUTS = ("image", "mask", "masked_image")


def add_arguments(parser):
    parser.add_argument("--images", nargs="+", required=True, metavar="IMAGE",
                        help="image files (converted to RGB)")
    parser.add_argument("--input-size", type=positive_int, default=192,
                        help="side the images are resized to (192 as the lesson's class)")
    parser.add_argument("--mask-patch-size", type=positive_int, default=16,
                        help="side of a masked square in pixels; divides --input-size")
    parser.add_argument("--mask-ratio", type=fraction, default=0.8,
                        help="fraction of the squares masked (rounded up), in [0, 1]")
    parser.add_argument("--out", default=os.path.join("output", "mask"),
                        help="output directory; files go to OUT/<image stem>/{%s}.png. Never inside "
                        "a pretraining run directory" % ",".join(OUTPUTS))
    parser.add_argument("--force", action="store_true",
                        help="overwrite the files of an earlier run (default: refuse)")
    parser.add_argument("--seed", type=seed, help="seed of the mask draws (default: unseeded)")


def run(args):
    """Write the three PNGs per image; returns the exit code."""
    if args.input_size % args.mask_patch_size:
        raise UsageError(f"--input-size {args.input_size} is not a multiple of --mask-patch-size "
                         f"{args.mask_patch_size}")
    run_dir = enclosing_run(args.out)
    if run_dir is not None:
        raise UsageError(f"--out {args.out} is inside the pretraining run {run_dir}; choose "
                         "another --out")
    directories = [os.path.join(args.out, name) for name in output_names(args.images)]
    existing = [os.path.join(d, f"{n}.png") for d in directories for n in OUTPUTS
                if os.path.exists(os.path.join(d, f"{n}.png"))]
    if existing and not args.force:
        raise UsageError(f"{existing[0]} already exists ({count(len(existing), 'file')} would be "
                         "overwritten); pass --force to overwrite or choose another --out")
    size = (args.input_size, args.input_size)
    images = np.stack([np.array(open_image(p).resize(size, Image.BICUBIC))
                       for p in args.images])  # [N, S, S, 3] uint8
    try:
        generator = fastmae.MaskGenerator(input_size=args.input_size,
                                          mask_patch_size=args.mask_patch_size,
                                          mask_ratio=args.mask_ratio, seed=args.seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    mask_ids, _, masks = generator(images)
    for path, directory, image, mask, removed in zip(args.images, directories, images, masks, mask_ids):
        os.makedirs(directory, exist_ok=True)
        Image.fromarray(image).save(os.path.join(directory, "image.png"))
        Image.fromarray((255 * mask).astype(np.uint8)).save(os.path.join(directory, "mask.png"))
        masked = np.expand_dims(mask, -1) * image  # [S, S, 3], 0 where masked
        Image.fromarray(masked.astype(np.uint8)).save(os.path.join(directory, "masked_image.png"))
        print(f"{path}: masked {len(removed)} of {generator.token_count} patches -> "
              f"{directory}/{{image,mask,masked_image}}.png")
    return 0
