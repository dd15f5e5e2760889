"""WebDataset-style tar shards: many images per file, read in sequence (``pip install -e ".[shards]"``).

A folder of a million small files on a network filesystem makes every image an open and a seek;
shards (``train-000000.tar``, ... each holding ``<key>.jpg`` — or ``.png``, ``.npy``, ``.tif`` — and
optionally ``<key>.cls`` files, the WebDataset convention) make it a sequential read. ``--data`` takes a
directory of ``.tar`` files or a brace pattern (``shards/train-{000000..000146}.tar``). Reading uses the
``webdataset`` package.

Splitting, per epoch: the shard list is shuffled by ``(seed, epoch)``, then dealt out to the
``world_size * num_workers`` streams (rank-major: stream ``rank * num_workers + worker`` takes shards
``g, g + streams, ...``). Every rank yields the same number of batches, ``num_samples // (world_size *
batch_size)``, split over its workers; a stream that runs out of samples reads its shards again (a
new pass) until its share is full, as WebDataset's ``with_epoch`` does. A sample's randomness is a
pure function of ``(seed, epoch, shard, position, pass)``, so an epoch is bitwise reproducible for a
given number of ranks and workers (the batches' composition depends on both, unlike a folder's).
"""

from __future__ import annotations

import glob
import io
import os
import tarfile
import warnings

import numpy as np
import torch
from PIL import Image

from .boxes import sample_rng
from .arrays import ARRAY_EXTENSIONS, Signature, open_array
from .crops import Crop, CropSpec, load_crop
from .sources import IMAGE_EXTENSIONS, DataError, DataFormatError, decoded_rgb, is_16bit_grey

__all__ = ["Shards", "ShardCrops", "is_shard_spec", "require_webdataset"]

_IMAGE_SUFFIXES = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)


def decode_member(name: str, data: bytes, what: str, layout: str = "auto", photo_mode: str = "RGB"):
    """A shard member's image: a ``PIL.Image`` (a photograph, not yet decoded) or a ``[H, W, C]`` array
    (``.npy``, TIFF, 16-bit grey PNG); a :class:`DataError` when it does not decode."""
    if ("." + name.lower()).endswith(ARRAY_EXTENSIONS):
        return open_array("." + name, layout, data=data, what=what)
    try:
        im = Image.open(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - bytes that are no image
        raise DataError(f"cannot decode image {what}: {e}") from None
    if is_16bit_grey(im):
        return open_array(".png", "hwc", data=data, what=what)
    return im


def member_signature(image, photo_mode: str = "RGB") -> Signature:
    """What a decoded shard member gives the batch: an array's channels and dtype, a photograph's mode."""
    if isinstance(image, np.ndarray):
        return Signature(image.shape[2], image.dtype)
    return Signature(1 if photo_mode == "L" else 3, np.dtype(np.uint8))


def require_webdataset():
    """The ``webdataset`` module, or a one-line :class:`DataError` saying how to install it."""
    try:
        import webdataset
    except ImportError:
        raise DataError('reading tar shards needs the webdataset package: pip install -e ".[shards]" '
                        "(or pip install webdataset)") from None
    return webdataset


def _image_key(sample: dict) -> str | None:
    """The key of a WebDataset sample's image (``jpg``, ``png``, ...), or None when it has none."""
    return next((k for k in _IMAGE_SUFFIXES if k in sample), None)


def is_shard_spec(spec: str) -> bool:
    """Whether ``--data spec`` names shards: a ``.tar`` path or pattern, or a directory with ``.tar`` files."""
    if spec.endswith(".tar") or ("{" in spec and "}" in spec):
        return True
    return os.path.isdir(spec) and bool(glob.glob(os.path.join(spec, "*.tar")))


def _expand(spec: str) -> list[str]:
    if os.path.isdir(spec):
        return sorted(glob.glob(os.path.join(spec, "*.tar")))
    wds = require_webdataset()
    return list(wds.shardlists.expand_urls(spec))


def _count(path: str) -> int:
    """Samples (keys with an image file) in one shard, from its tar headers (no image is read)."""
    from webdataset.tariterators import base_plus_ext

    keys = set()
    with tarfile.open(path) as tf:
        for member in tf:
            if member.isfile():
                key, ext = base_plus_ext(member.name)
                if key and ext and ext.lower() in _IMAGE_SUFFIXES:
                    keys.add(key)
    return len(keys)


class Shards:
    """The shards named by ``spec`` and how many samples they hold.

    Args:
        spec: a directory of ``.tar`` files, one ``.tar`` path, or a brace pattern of them.
        num_samples: the total sample count, when known (skips reading every shard's headers).

    Raises:
        DataError: the package is missing, no shard matches, a shard is missing or not a tar file.
    """

    classes = None
    num_classes = 0

    def __init__(self, spec: str, num_samples: int | None = None, channels: int | None = None,
                 layout: str = "auto"):
        require_webdataset()
        if channels not in (None, 1, 3) and channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")
        self.layout, self.photo_mode = layout, "L" if channels == 1 else "RGB"
        self.urls = _expand(spec)
        if not self.urls:
            raise DataError(f"no .tar shards match {spec}")
        missing = [u for u in self.urls if not os.path.isfile(u)]
        if missing:
            raise DataError(f"{len(missing)} of {len(self.urls)} shards of {spec} do not exist (first: {missing[0]})")
        if num_samples is None:
            try:
                num_samples = sum(_count(u) for u in self.urls)
            except (tarfile.TarError, OSError) as e:
                raise DataError(f"cannot read the shards of {spec}: {e}") from None
        if num_samples < 1:
            raise DataError(f"the shards of {spec} hold no {'/'.join(IMAGE_EXTENSIONS)} sample")
        self.num_samples = num_samples
        self.signature = self._first_signature()
        self.name = f"{spec} ({len(self.urls)} shards, {num_samples} images)"

    def __len__(self) -> int:
        return self.num_samples

    def _image_members(self):
        """``(name, data, what)`` of each sample's image, in shard order (``what`` names it in errors)."""
        from webdataset.tariterators import tarfile_samples

        for url in self.urls:
            for sample in tarfile_samples([{"url": url}]):
                name = _image_key(sample)
                if name is not None:
                    yield name, sample[name], f"{sample.get('__key__')}.{name} in {url}"

    def _first_signature(self) -> Signature | None:
        """The channels and dtype of the first sample that decodes: every other must match it."""
        for name, data, what in self._image_members():
            try:
                return member_signature(decode_member(name, data, what, self.layout), self.photo_mode)
            except DataFormatError:
                raise
            except DataError:
                continue
        return None

    def first_images(self, count: int) -> list:
        """The first ``count`` images that decode, in shard order, as RGB/grey PIL images or arrays (a stream has no
        random access: for previews such as the pretraining run's reconstructions)."""
        images = []
        for name, data, what in self._image_members():
            try:
                im = decode_member(name, data, what, self.layout)
                images.append(im if isinstance(im, np.ndarray) else decoded_rgb(im, what, self.photo_mode))
            except Exception:  # noqa: BLE001 - a sample that does not decode is skipped, as in training
                continue
            if len(images) == count:
                return images
        return images


class ShardCrops(torch.utils.data.IterableDataset):
    """Crop samples streamed from :class:`Shards`: this rank's share, split across its workers.

    The epoch reaches the workers through a shared-memory tensor (``set_epoch`` writes it; each
    worker reads it when its epoch's iterator starts), so persistent workers follow it too.
    """

    def __init__(self, shards: Shards, spec: CropSpec, seed: int, batch_size: int, world_size: int = 1,
                 rank: int = 0, shuffle: bool = True):
        self.shards, self.spec, self.seed, self.shuffle = shards, spec, seed, shuffle
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.batches = shards.num_samples // (world_size * batch_size)  # per rank and epoch
        self._epoch = torch.zeros(1, dtype=torch.int64, device="cpu").share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    def check_streams(self, num_workers: int) -> None:
        """Refuse a split that leaves a stream without a shard."""
        streams = self.world_size * max(1, num_workers)
        if len(self.shards.urls) < streams:
            raise DataError(f"{len(self.shards.urls)} shards cannot feed {streams} readers ({self.world_size} "
                            f"process(es) x {max(1, num_workers)} worker(s)): use fewer workers or more shards")

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = int(self._epoch[0])
        order = np.arange(len(self.shards.urls))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        stream = self.rank * workers + worker
        mine = [int(i) for i in order[stream::self.world_size * workers]]
        quota = (self.batches // workers + (worker < self.batches % workers)) * self.batch_size
        return self._samples(mine, quota, epoch)

    def _samples(self, mine, quota, epoch):
        from webdataset.tariterators import tarfile_samples

        produced, passes = 0, 0
        while produced < quota and mine:
            before = produced
            for shard in mine:
                url = self.shards.urls[shard]
                for position, sample in enumerate(tarfile_samples([{"url": url}])):
                    if produced == quota:
                        return
                    crop = self._crop(sample, (self.seed, epoch, shard, position, passes), url)
                    if crop is not None:
                        produced += 1
                        yield crop
            if produced == before:
                raise DataError(f"no sample of the shards {[self.shards.urls[s] for s in mine]} decodes")
            passes += 1

    def _crop(self, sample, key, url):
        name = _image_key(sample)
        if name is None:
            return None
        what = f"{sample.get('__key__')}.{name} in {url}"
        rng = sample_rng(*key)
        shards = self.shards
        try:
            image = decode_member(name, sample[name], what, shards.layout)
            got = member_signature(image, shards.photo_mode)
            if shards.signature is not None and got != shards.signature:
                raise DataFormatError(f"{what} has {got}, but the shards' first image has {shards.signature}: "
                                      f"every image of a data set needs the same channels and dtype")
            pixels, flip = load_crop(image, self.spec, rng, what, shards.photo_mode)
        except DataFormatError:
            raise  # never skipped: the data set as a whole is wrong
        except Exception as e:  # DataError, or Image.open on bytes that are no image
            warnings.warn(f"skipping a sample that does not decode: {what}: {e}", stacklevel=2)
            return None
        label = int(sample["cls"]) if "cls" in sample else -1
        return Crop(pixels, flip, -1, -1, label)
