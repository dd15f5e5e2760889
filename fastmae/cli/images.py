"""Image files in and out for ``visualize`` and ``mask``: opening named images, output names,
ImageNet de-normalisation and a titled grid."""

import math
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from fastmae.cli.data import IMAGENET_MEAN, IMAGENET_STD
from fastmae.cli.errors import UsageError


def open_image(path):
    """Open ``path`` as an RGB PIL image, or raise a one-line ``UsageError`` naming it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise UsageError(f"image not found: {path}") from None
    except Exception as e:  # Pillow raises many types for a damaged or non-image file
        raise UsageError(f"cannot read image {path}: {e}") from None


def output_names(paths):
    """One output name per input: the file stem, with ``-2``, ``-3``... added to repeated stems."""
    names, seen = [], {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def to_uint8(x):
    """ImageNet-normalised ``[C, H, W]`` tensor -> ``[H, W, C]`` uint8 array, as the official demo
    shows it: ``clip((x * std + mean) * 255, 0, 255)``, truncated."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    img = torch.clip((x.detach().float().cpu() * std + mean) * 255, 0, 255)
    return img.permute(1, 2, 0).to(torch.uint8).numpy()


def grid(rows, titles, min_cell=128, pad=2):
    """Lay out ``rows`` (lists of equal-size ``[H, W, 3]`` uint8 arrays) under a row of ``titles``.

    Cells smaller than ``min_cell`` pixels wide are enlarged by an integer factor (nearest
    neighbour, so patches stay sharp) to leave room for the titles.
    """
    h, w = rows[0][0].shape[:2]
    scale = max(1, math.ceil(min_cell / w))
    ch, cw = h * scale, w * scale
    title_h = 14
    cols = len(titles)
    canvas = Image.new("RGB", (cols * (cw + pad) + pad, title_h + len(rows) * (ch + pad) + pad),
                       "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
        draw.text((pad + c * (cw + pad), 1), title, fill="black")
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            img = Image.fromarray(np.ascontiguousarray(cell)).resize((cw, ch), Image.NEAREST)
            canvas.paste(img, (pad + c * (cw + pad), title_h + pad + r * (ch + pad)))
    return canvas
