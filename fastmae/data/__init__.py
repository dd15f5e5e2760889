"""The input pipeline: the CPU reads and decodes, the device crops, resizes, flips and normalises.

Workers decode each image (Pillow; a JPEG at reduced scale where the crop allows), draw the official
RandomResizedCrop box and flip, and slice the crop — no resampling — so batches travel as uint8
(a quarter of float32's bytes). A collate packs a batch's crops into one ragged buffer (pinned on
CUDA); :func:`to_model_input` copies it to the device in one non-blocking transfer and runs
``fastmae.ops.resized_crop`` there (antialiased bicubic, flip, normalisation, the model's dtype)::

    import fastmae.data as fd

    source = fd.ProceduralImages(2048, size=64)           # or fd.open_source("imagenet/train")
    loader = fd.build_loader(source, batch_size=256, size=224, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:                              # RaggedBatch: uint8 crops + flips
            imgs = fd.to_model_input(batch, "cuda", torch.bfloat16)   # [256, 3, 224, 224]
            ...
        print(loader.wait.summary())                      # data_wait ... (once per epoch)

:class:`Prefetcher` does the same with the next batch's copy and resize on a side CUDA stream,
while the current step computes (``for batch, imgs in fd.Prefetcher(loader, "cuda", torch.bfloat16)``).

Randomness is a pure function of ``(seed, epoch, sample)``: batches are bitwise the same on every
run, for any number of workers (folders), with persistent workers, and after a resume at an epoch.
This package does not import ``fastmae.cli``; it raises :class:`DataError` and ``ValueError``.
"""

from .arrays import Signature, open_array, read_signature
from .bands import ProceduralBands
from .batch import RaggedBatch, collate_crops, to_model_input
from .boxes import RATIO, SCALE, draw_flip, random_resized_crop_box, sample_rng
from .crops import Crop, CropDataset, CropSpec, load_crop
from .loader import (CropLoader, DataWait, build_loader, default_num_workers, default_prefetch_factor, open_source,
                     use_pillow_block_cache, worker_memory_settings)
from .prefetch import Prefetcher
from .sampler import EpochSampler
from .shards import ShardCrops, Shards, is_shard_spec
from .sources import IMAGE_EXTENSIONS, DataError, DataFormatError, ImageFolder, ProceduralImages
from .synthetic import photo_like, photo_like_jpeg, write_photo_like_jpegs

__all__ = [
    "Crop", "CropDataset", "CropLoader", "CropSpec", "DataError", "DataFormatError", "DataWait", "ProceduralBands",
    "Signature", "open_array", "read_signature", "EpochSampler", "IMAGE_EXTENSIONS",
    "ImageFolder", "Prefetcher", "ProceduralImages", "RATIO", "RaggedBatch", "SCALE", "ShardCrops", "Shards",
    "build_loader",
    "collate_crops", "default_num_workers", "default_prefetch_factor", "draw_flip", "is_shard_spec", "load_crop",
    "open_source", "photo_like", "photo_like_jpeg", "random_resized_crop_box", "sample_rng", "to_model_input",
    "use_pillow_block_cache", "worker_memory_settings", "write_photo_like_jpegs",
]
