"""Training data without torchvision: an embedded procedural image set, an image folder read with
Pillow, the official MAE augmentation, and the (distributed) loader.

Augmentation randomness is a pure function of ``(seed, epoch, index)``, and the sampler's order a
pure function of ``(seed, epoch)``, so the data a run sees does not depend on worker count or on
any global RNG: a resumed run sees exactly the batches the uninterrupted run would have.
"""

import math
import os

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fastmae.cli.errors import CLIError, UsageError
from fastmae.cli.images import imagenet_stats, open_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class DataError(CLIError):
    """An image that passed the scan but cannot be decoded during training."""


def to_normalized_tensor(img):
    """PIL RGB image -> ``[3, H, W]`` float32, ImageNet-normalised (ToTensor + Normalize)."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, H, W]
    mean, std = imagenet_stats()
    return (x - mean) / std


def resize_normalized(img, size):
    """Evaluation transform: bicubic resize to ``size`` ``(H, W)`` (no crop), then normalise."""
    return to_normalized_tensor(img.convert("RGB").resize((size[1], size[0]), Image.BICUBIC))


def random_resized_crop_box(width, height, rng, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    """Crop box ``(left, top, right, bottom)`` drawn as torchvision's ``RandomResizedCrop``.

    Ten tries at an area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``, then the
    largest centred crop with an allowed aspect ratio.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def pretrain_transform(img, size, rng):
    """Official MAE pretraining augmentation: RandomResizedCrop(scale 0.2-1, bicubic), horizontal
    flip with probability 1/2, ToTensor, ImageNet Normalize. ``size`` is ``(H, W)``.

    The crop and the resize are one Pillow ``resize(box=...)``, which samples the source inside the
    box but may read pixels just outside it for the bicubic kernel; torchvision crops first and so
    clamps at the crop's edge. Results differ slightly along the crop's border pixels.
    """
    img = img.convert("RGB")
    box = random_resized_crop_box(img.width, img.height, rng)
    img = img.resize((size[1], size[0]), Image.BICUBIC, box=box)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return to_normalized_tensor(img)


class ProceduralImages:
    """An embedded, download-free image set: gradients, stripe textures and filled shapes.

    Image ``i`` is drawn from a generator seeded by ``(seed, i)``, so the set is the same on every
    machine. The structure (smooth backgrounds, sharp-edged shapes, periodic textures) makes masked
    patches predictable from visible ones, so a small MAE's loss falls within minutes.
    """

    def __init__(self, num_images=2048, size=64, seed=0):
        self.num_images, self.size, self.seed = num_images, size, seed
        self.name = f"procedural ({num_images} images, {size} px)"

    def __len__(self):
        return self.num_images

    def image(self, index):
        """The ``index``-th image as a PIL RGB image of ``size`` x ``size``."""
        rng = np.random.default_rng([self.seed, index])
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s  # [s, s] each, in [0, 1)
        angle = rng.uniform(0, 2 * math.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.0) / 2.0  # [s, s], a linear ramp
        c0, c1 = rng.uniform(0, 255, (2, 3))
        canvas = c0 + t[..., None] * (c1 - c0)  # [s, s, 3]
        if rng.random() < 0.5:  # stripes: a sinusoid of random direction, period and colour
            phi = rng.uniform(0, math.pi)
            freq = rng.uniform(2.0, 6.0)
            wave = np.sin(2 * math.pi * freq * (np.cos(phi) * xx + np.sin(phi) * yy))
            canvas += wave[..., None] * rng.uniform(-60, 60, 3)
        img = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(1, 4)):
            self._draw_shape(draw, rng)
        return img

    def _draw_shape(self, draw, rng):
        """One ellipse, rectangle or triangle with a random solid colour, 1/8 to 1/2 of the side."""
        s = self.size
        r = rng.uniform(s / 8, s / 4)
        cx, cy = rng.uniform(r / 2, s - r / 2, 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse((cx - r, cy - r * rng.uniform(0.5, 1), cx + r, cy + r), fill=fill)
        elif kind == 1:
            draw.rectangle((cx - r, cy - r * rng.uniform(0.5, 1), cx + r, cy + r), fill=fill)
        else:
            angles = rng.uniform(0, 2 * math.pi) + np.array([0, 2, 4]) * math.pi / 3
            draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles], fill=fill)


class ImageFolder:
    """Every ``.jpg``/``.jpeg``/``.png`` under ``root`` (any case, recursively, sorted), so both the
    ImageFolder layout ``root/<class>/<image>`` and a flat folder work; labels are not used.

    Files are checked when the folder is scanned (``Image.open`` + ``verify``, no full decode): those
    that fail are skipped with one warning giving their count. A file that passes the check but
    fails to decode during training is replaced by another image (see :class:`Augmented`).

    Raises:
        UsageError: ``root`` is missing or not a directory, holds no image files, or none of them
            can be read.
    """

    def __init__(self, root, warn=print):
        if not os.path.exists(root):
            raise UsageError(f"data directory not found: {root}")
        if not os.path.isdir(root):
            raise UsageError(f"--data {root} is not a directory")
        files = sorted(
            os.path.join(d, f)
            for d, _, names in os.walk(root, followlinks=True)
            for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise UsageError(f"no .jpg/.jpeg/.png images in data directory {root}")
        self.files, bad = [], []
        for path in files:
            try:
                with Image.open(path) as im:
                    im.verify()
                self.files.append(path)
            except Exception as e:  # Pillow raises many types for a damaged file
                bad.append(f"{path} ({type(e).__name__})")
        if not self.files:
            raise UsageError(f"none of the {len(files)} image files in {root} can be read "
                             f"(first: {bad[0]})")
        if bad:
            warn(f"skipped {len(bad)} of {len(files)} files in {root} that are not readable "
                 f"images (first: {bad[0]})")
        self.name = f"{root} ({len(self.files)} images)"

    def __len__(self):
        return len(self.files)

    def image(self, index):
        """The ``index``-th image, decoded to RGB, or a ``DataError`` naming its file."""
        return open_image(self.files[index], error=DataError)


class Augmented(Dataset):
    """``images`` through :func:`pretrain_transform`, with randomness seeded by (seed, epoch, index).

    Each item is ``(image [3, H, W], skipped)``: when image ``index`` fails to decode, the next
    index that decodes (``index + 1``, ``index + 2``... modulo the length, so the substitute is the
    same on every run) takes its place and ``skipped`` is ``index``, else ``-1``. The training loop
    warns once per such file and counts them per epoch.

    Call :meth:`set_epoch` before each epoch, as for the sampler. The loader must not use persistent
    workers: workers receive a copy of this object when an epoch's iterator starts.

    Raises:
        DataError: from ``__getitem__`` when no image at all can be decoded.
    """

    def __init__(self, images, size, seed):
        self.images, self.size, self.seed = images, size, seed
        self.epoch = 0
        self._bad = set()  # indices known not to decode, in this process
        self.warned = set()  # indices the training loop has warned about (main process)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        first_error = None
        for k in range(len(self.images)):
            i = (index + k) % len(self.images)
            if i in self._bad:
                continue
            try:
                img = self.images.image(i)
            except DataError as e:
                self._bad.add(i)
                first_error = first_error or e
                continue
            return pretrain_transform(img, self.size, rng), (index if k else -1)
        raise DataError(f"no image can be decoded: {first_error or 'every file failed before'}")


class _Sampler(DistributedSampler):
    """``DistributedSampler`` drawing its permutation on the CPU whatever the default device: its
    generator is a CPU one, and ``torch.randperm`` would otherwise follow the default device."""

    def __iter__(self):
        with torch.device("cpu"):
            return super().__iter__()


def build_loader(dataset, batch_size, seed, num_workers, world_size=1, rank=0, pin_memory=False):
    """Shuffled loader of full batches, sharded over ranks by a ``DistributedSampler``.

    Raises:
        UsageError: ``batch_size`` is larger than the images one rank gets (no batch would run).
    """
    sampler = _Sampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed)
    if batch_size > len(sampler):
        per_rank = f", {len(sampler)} per process over {world_size}" if world_size > 1 else ""
        raise UsageError(f"--batch-size {batch_size} is larger than the data "
                         f"({len(dataset)} images{per_rank}); use --batch-size {len(sampler)} "
                         "or less")
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=True)


def iterate(loader):
    """Iterate ``loader``, turning a worker's wrapped ``DataError`` back into a one-line one."""
    try:
        yield from loader
    except DataError as e:
        # A worker's exception arrives with its traceback in the message; the last line is ours.
        last = str(e).strip().splitlines()[-1]
        raise DataError(last.split("DataError: ", 1)[-1]) from None
