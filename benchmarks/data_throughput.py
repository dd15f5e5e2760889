"""What the CPU pays per image to feed the model, against the floor of decoding alone.

    python -m benchmarks.data_throughput --data DIR [--size 224] [--images 64] [--passes 3]
    python -m benchmarks.data_throughput --make DIR [--count 64]     # photo-like 500x375 q90 JPEGs
    python -m benchmarks.data_throughput --make DIR --multiband      # 13-band uint16 GeoTIFFs and .npy files

A folder of multi-band, 16-bit or float images (``.npy``, ``.tif``: ``fastmae.data.arrays``) is timed
with its own three paths (see ``array_report``); ``--make --multiband`` writes five such folders under
DIR: 13-band uint16 (the procedural satellite-like set, ``fastmae.data.ProceduralBands``) as GeoTIFFs
of 256 and 512 px, uncompressed and deflate-compressed, and as 512 px ``.npy`` files.

In one process with one thread, CPU seconds (``time.process_time``, so other load on the machine
counts less) per image for:

    (a) decode only: ``Image.open`` + ``load`` — the floor any Pillow loader pays;
    (b) the previous CPU path: Pillow RandomResizedCrop (bicubic) + flip + float32 normalisation
        (``fastmae.data.pillow_path``, what ``fastmae pretrain`` ran before);
    (c) fastmae's CPU side: open, box + flip draws, decode (JPEG draft where the crop allows), slice
        the crop, pack the batch into a reused buffer (``fastmae.data.CropDataset`` + ``collate_crops``),
        what a worker does when batches are pinned (the CUDA path: the loader's default there);
    (c') the same with ``draft=False`` (always a full decode);
    (c'') the same into a new shared-memory segment each batch, as a worker does for unpinned
        batches (CPU training with workers).

The pinning copy itself runs in the main process (torch's pin-memory thread), not in a worker.

Each method runs over all the images at a time (the file cache is warm for all); the methods take
turns pass by pass, the order reversed every other pass, and each figure is the median over passes.
On CUDA it also times ``fastmae.ops.resized_crop`` (the Triton kernel) on batches of 256 of the
crops from (c), images/s and GB/s (bytes: every crop pixel read once, the output written once, the
table read once). The last line is exactly:

    cpu cost per image: fastmae X ms, decode-only floor Y ms, floor/fastmae Z
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from unittest import mock

import numpy as np
import torch
from PIL import Image

import fastmae.data as fd
from fastmae.data.pillow_path import pillow_pretrain_transform

BATCH = 256  # images per kernel launch on CUDA (a ViT-B/16 pretraining batch)


class _Files:
    """The images to time, as a ``fastmae.data`` source (no scan, no labels)."""

    def __init__(self, files):
        self.files, self.name = list(files), f"{len(files)} files"

    def __len__(self):
        return len(self.files)

    def open(self, i):
        return Image.open(self.files[i])

    def label(self, i):
        return -1


def _decode(path, size, i):
    with Image.open(path) as im:
        im.load()


def _previous(path, size, i):
    with Image.open(path) as im:
        pillow_pretrain_transform(im, size, fd.sample_rng(0, 0, i))


def _fastmae(draft, pooled=True):
    def work(folder, spec, indices):
        dataset = fd.CropDataset(folder, spec._replace(draft=draft), seed=0)
        samples = [dataset[(0, i)] for i in indices]
        if pooled:
            batch = fd.collate_crops(samples, spec.size, pool_slots=4)
            batch.release()  # what the main process's pinning thread does once it has copied the batch
            return batch
        # unpinned, a worker's every batch is a new shared-memory segment: collate as in a worker
        with mock.patch("torch.utils.data.get_worker_info", return_value=object()):
            return fd.collate_crops(samples, spec.size)
    return work


def _per_image(fn, files, size):
    """A method that runs ``fn(path, size, i)`` on every image."""
    def run():
        for i, path in enumerate(files):
            fn(path, size, i)
    return run


def _take_turns(methods: dict, passes: int, count: int, before=None) -> dict:
    """CPU ms per image of each method, median over ``passes``: the methods take turns pass by pass, in
    reverse order every other pass, so that neither the load on the machine nor the method before
    (whose memory traffic cools the caches) favours one. ``before(name)`` runs untimed before each."""
    times = {k: [] for k in methods}
    for p in range(passes):
        for name in (list(methods) if p % 2 == 0 else list(methods)[::-1]):
            if before:
                before(name)
            t = time.process_time()
            methods[name]()
            times[name].append(1e3 * (time.process_time() - t) / count)
    return {k: statistics.median(v) for k, v in times.items()}


def measure(files, size, passes=3, batch=16) -> tuple[dict, list]:
    """CPU ms per image for each method (``{name: median over passes}``, ``_take_turns``) and the (c'')
    batches of the last pass. Each method runs over all the images in one go, as a worker runs only its
    own work."""
    folder = _Files(files)
    spec = fd.CropSpec(size)

    def per_batch(fn, keep):
        def run():
            for b0 in range(0, len(files), batch):
                out = fn(folder, spec, range(b0, min(b0 + batch, len(files))))  # handed on and dropped
                keep.append(out)
        return run

    batches = []  # (c'')'s: unpooled, so still intact afterwards, for the kernel
    methods = {"decode": _per_image(_decode, files, size), "previous": _per_image(_previous, files, size),
               "fastmae": per_batch(_fastmae(True), []), "fastmae_no_draft": per_batch(_fastmae(False), []),
               "fastmae_fresh": per_batch(_fastmae(True, pooled=False), batches)}
    ms = _take_turns(methods, passes, len(files), before=lambda name: name == "fastmae_fresh" and batches.clear())
    return ms, list(batches)


def kernel_throughput(batches, size, dtype=torch.bfloat16, reps=20) -> dict | None:
    """On CUDA: ``resized_crop`` on a batch of ``BATCH`` of the crops, images/s and GB/s; else None."""
    if not torch.cuda.is_available():
        return None
    crops = [fd.Crop(b.buffer[o:o + 3 * h * w].numpy().reshape(h, w, 3), f, -1, -1, -1)
             for b in batches for (o, h, w), f in zip(b.meta.tolist(), b.flip.tolist())]
    crops = (crops * (BATCH // len(crops) + 1))[:BATCH]
    batch = fd.collate_crops(crops, size).to("cuda")
    run = lambda: fd.to_model_input(batch, dtype=dtype)  # noqa: E731
    for _ in range(3):
        run()  # compile and warm
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        run()
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / reps
    pixels = sum(3 * c.pixels.shape[0] * c.pixels.shape[1] for c in crops)
    nbytes = pixels + BATCH * 3 * size[0] * size[1] * dtype.itemsize + BATCH * 64
    return {"images_per_s": BATCH / seconds, "gbps": nbytes / seconds / 1e9, "ms": 1e3 * seconds,
            "mb": nbytes / 1e6, "device": torch.cuda.get_device_name(), "dtype": str(dtype).replace("torch.", "")}


def report(files, size, passes=3) -> str:
    """The table and the last line, as printed."""
    torch.set_num_threads(1)
    fd.worker_memory_settings()  # as the loader's workers run (allocator reuse): for every method alike
    ms, batches = measure(files, size, passes)
    shapes = [Image.open(f).size for f in files]
    mean_w, mean_h = np.mean([s[0] for s in shapes]), np.mean([s[1] for s in shapes])
    crop_kb = np.mean([b.buffer.numel() / len(b) for b in batches]) / 1e3
    floor = ms["decode"]
    rows = [("(a) decode only: Pillow open + load (the floor)", ms["decode"]),
            ("(b) previous CPU path: Pillow RandomResizedCrop bicubic + flip + float32 normalise", ms["previous"]),
            ("(c) fastmae CPU side: decode (JPEG draft) + box + flip + slice + ragged collate (reused buffer)",
             ms["fastmae"]),
            ("(c') fastmae CPU side without JPEG draft", ms["fastmae_no_draft"]),
            ("(c'') fastmae CPU side, a new shared-memory batch each time (unpinned batches)", ms["fastmae_fresh"])]
    lines = [f"data throughput: {len(files)} images (mean {mean_w:.0f}x{mean_h:.0f}) from {os.path.dirname(files[0])}, "
             f"output {size[0]}x{size[1]}; 1 process, 1 thread, CPU seconds, median of {passes} passes, "
             f"allocator settings of the loader's workers (fastmae.data.worker_memory_settings); "
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, Pillow {Image.__version__}",
             "",
             "| path | CPU ms / image | images/s per core | floor / path |",
             "|---|---:|---:|---:|"]
    lines += [f"| {name} | {v:.3f} | {1e3 / v:,.0f} | {floor / v:.2f} |" for name, v in rows]
    lines += ["",
              f"shipped per image: previous float32 {3 * size[0] * size[1] * 4 / 1e3:.0f} KB, "
              f"fastmae uint8 crop {crop_kb:.0f} KB (table included)",
              f"16 cores at this cost: previous {16e3 / ms['previous']:,.0f} images/s, "
              f"fastmae {16e3 / ms['fastmae']:,.0f} images/s"]
    k = kernel_throughput(batches, size)
    if k is None:
        lines.append("resized_crop kernel: no CUDA device here (the CPU side only)")
    else:
        lines.append(f"resized_crop kernel on {k['device']}: batch {BATCH} to {size[0]}x{size[1]} {k['dtype']}, "
                     f"{k['ms']:.3f} ms, {k['images_per_s']:,.0f} images/s, {k['gbps']:.0f} GB/s ({k['mb']:.1f} MB)")
    lines.append(f"cpu cost per image: fastmae {ms['fastmae']:.2f} ms, decode-only floor {floor:.2f} ms, "
                 f"floor/fastmae {floor / ms['fastmae']:.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# multi-band, 16-bit and float images
# --------------------------------------------------------------------------------------------------

MULTIBAND_SETS = (("tif256", 256, "tif", None), ("tif256_deflate", 256, "tif", "zlib"),
                  ("tif512", 512, "tif", None), ("tif512_deflate", 512, "tif", "zlib"), ("npy512", 512, "npy", None))


def make_multiband(directory: str, count: int) -> list[str]:
    """The five folders of ``MULTIBAND_SETS`` under ``directory`` (``count`` 13-band uint16 images each)."""
    import tifffile

    made = []
    for name, side, kind, compression in MULTIBAND_SETS:
        folder = os.path.join(directory, name)
        os.makedirs(folder, exist_ok=True)
        scenes = fd.ProceduralBands(count, size=side, channels=13, dtype="uint16")
        for i in range(count):
            path = os.path.join(folder, f"scene_{i:05d}.{kind}")
            if kind == "npy":
                np.save(path, scenes.image(i))
            else:  # band-interleaved, as Sentinel-2 L2A GeoTIFF exports
                tifffile.imwrite(path, scenes.image(i), photometric="minisblack", planarconfig="contig",
                                 compression=compression)
        made.append(folder)
    return made


def _read_only(path, size, i):
    np.array(fd.open_array(path))  # every pixel read (a memory map too) or decoded


def _domain_reference(stats):
    """What the domain codebases do on the CPU: read, float32, per-channel normalise, then the crop and an
    antialiased torch resize (RandomResizedCrop's box and flips from the same draws as fastmae)."""
    import torch.nn.functional as F

    mean, std = stats

    def run(path, size, i):
        arr = np.array(fd.open_array(path))  # [H, W, C]
        full = 65535.0 if arr.dtype == np.uint16 else 255.0 if arr.dtype == np.uint8 else 1.0
        x = (torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1) / full - mean) / std  # [C, H, W]
        rng = fd.sample_rng(0, 0, i)
        top, left, h, w = fd.random_resized_crop_box(arr.shape[1], arr.shape[0], rng)
        out = F.interpolate(x[None, :, top:top + h, left:left + w], size=size, mode="bicubic", antialias=True)
        if fd.draw_flip(rng):
            out = out.flip(-1)
    return run


def array_report(files, size, passes=3, batch=16) -> str:
    """CPU ms per image for (a) read-only, (b) the domain reference, (c) fastmae's CPU side, and the last line."""
    torch.set_num_threads(1)
    fd.worker_memory_settings()
    folder = fd.ImageFolder(os.path.dirname(files[0]), verify=False)
    folder.files, folder._arrays = list(files), [True] * len(files)
    sig = folder.signature
    c = sig.channels
    stats = (torch.full((c, 1, 1), 0.1), torch.full((c, 1, 1), 0.05))
    spec = fd.CropSpec(size)

    def fastmae_side():
        dataset = fd.CropDataset(folder, spec, seed=0)
        for b0 in range(0, len(files), batch):
            samples = [dataset[(0, i)] for i in range(b0, min(b0 + batch, len(files)))]
            fd.collate_crops(samples, spec.size, pool_slots=4).release()

    methods = {"read": _per_image(_read_only, files, size),
               "reference": _per_image(_domain_reference(stats), files, size), "fastmae": fastmae_side}
    ms = _take_turns(methods, passes, len(files))
    h, w = fd.open_array(files[0]).shape[:2]
    kind = os.path.splitext(files[0])[1]
    floor = ms["read"]
    rows = [("(a) read only: every pixel read or decoded (the floor)", ms["read"]),
            ("(b) domain reference: read + float32 + per-channel normalise + torch antialiased resize (CPU)",
             ms["reference"]),
            ("(c) fastmae CPU side: open (memory map where possible) + box + flips + slice + ragged collate",
             ms["fastmae"])]
    lines = [f"data throughput: {len(files)} {kind} images of {h}x{w}, {sig}, from {os.path.dirname(files[0])}, "
             f"output {size[0]}x{size[1]}; 1 process, 1 thread, CPU seconds, median of {passes} passes; "
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, numpy {np.__version__}",
             "", "| path | CPU ms / image | images/s per core | floor / path |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {v:.3f} | {1e3 / v:,.0f} | {floor / v:.2f} |" for name, v in rows]
    lines += ["", f"reference/fastmae {ms['reference'] / ms['fastmae']:.2f}",
              f"cpu cost per image: fastmae {ms['fastmae']:.2f} ms, decode-only floor {floor:.2f} ms, "
              f"floor/fastmae {floor / ms['fastmae']:.2f}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a folder of images (searched recursively)")
    parser.add_argument("--size", type=int, default=224, help="output side in pixels")
    parser.add_argument("--images", type=int, default=64, help="images to time (the first N, sorted)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the images (median)")
    parser.add_argument("--make", help="write photo-like JPEGs into this folder and exit")
    parser.add_argument("--count", type=int, default=64, help="with --make: how many")
    parser.add_argument("--multiband", action="store_true",
                        help="with --make: the 13-band uint16 GeoTIFF and .npy folders instead of JPEGs")
    args = parser.parse_args(argv)
    if args.make and args.multiband:
        for folder in make_multiband(args.make, args.count):
            print(f"wrote {args.count} 13-band uint16 images to {folder}")
        return 0
    if args.make:
        fd.write_photo_like_jpegs(args.make, args.count)
        print(f"wrote {args.count} photo-like 500x375 q90 JPEGs to {args.make}")
        return 0
    if not args.data:
        parser.error("--data DIR is required (or --make DIR to create a test set)")
    folder = fd.ImageFolder(args.data, verify=False)
    files = folder.files[:args.images]
    if folder.signature.dtype != np.uint8 or folder.signature.channels not in (1, 3) or any(folder._arrays):
        print(array_report(files, (args.size, args.size), args.passes))
    else:
        print(report(files, (args.size, args.size), args.passes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
