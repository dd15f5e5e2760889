"""Image files in and out: opening an image (one path for every command), output names, the
ImageNet statistics, de-normalisation and a titled grid."""

import math
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from fastmae.cli.errors import UsageError
from fastmae.data.pillow_path import to_normalized_tensor
from fastmae.reference import IMAGENET_MEAN, IMAGENET_STD


def imagenet_stats():
    """ImageNet ``(mean, std)`` as ``[3, 1, 1]`` float32 tensors, on the CPU whatever the default
    device is (images are decoded and normalised on the CPU)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device="cpu").view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device="cpu").view(3, 1, 1)
    return mean, std


def resize_normalized(img, size):
    """Evaluation transform: bicubic resize to ``size`` ``(H, W)`` (no crop), then ImageNet-normalise:
    ``[3, H, W]`` float32 on the CPU (the demo panels of ``visualize`` and ``pretrain``)."""
    return to_normalized_tensor(img.convert("RGB").resize((size[1], size[0]), Image.BICUBIC))


EVAL_CROP = 0.875  # the official evaluation: Resize(size / 0.875) then CenterCrop(size)


def eval_transform(img, size):
    """The official evaluation transform: the shorter side to ``size / 0.875`` (bicubic), the centre
    ``size`` x ``size`` crop, ImageNet normalisation: ``[3, size, size]`` float32."""
    w, h = img.size
    short = int(size / EVAL_CROP)
    scale = short / min(w, h)
    w2, h2 = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.convert("RGB").resize((w2, h2), Image.BICUBIC)
    left, top = (w2 - size) // 2, (h2 - size) // 2
    return to_normalized_tensor(img.crop((left, top, left + size, top + size)))


def open_image(path, error=UsageError):
    """Open ``path`` as an RGB PIL image, or raise a one-line ``error`` naming it.

    ``error`` is ``UsageError`` for files named on the command line, ``data.DataError`` for a
    training image that passed the scan but fails to decode.
    """
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise error(f"image not found: {path}") from None
    except Exception as e:  # Pillow raises many types for a damaged or non-image file
        raise error(f"cannot {'read' if error is UsageError else 'decode'} image {path}: {e}") from None


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
    mean, std = imagenet_stats()
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
