"""What the CPU pays per image to feed the model, against the floor of reading or decoding alone.

    python -m benchmarks.data_throughput --data DIR [--size 224] [--images 64] [--passes 3]
    python -m benchmarks.data_throughput --make DIR [--count 64]     # photo-like 500x375 q90 JPEGs
    python -m benchmarks.data_throughput --make DIR --multiband      # 13-band uint16 GeoTIFFs and .npy files

The method and the measured figures: ``benchmarks/NOTES.md``, "CPU cost per image" and "Multi-band
images: CPU cost per image". The last line is exactly:

    cpu cost per image: fastmae X ms, decode-only floor Y ms, floor/fastmae Z
"""

import argparse
import os
import platform
import statistics
import time
from functools import partial
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import fastmae.data as fd
from fastmae.data.arrays import ARRAY_EXTENSIONS
from fastmae.data.pillow_path import pillow_pretrain_transform

# --make --multiband: (folder, side, file kind, TIFF compression) of 13-band uint16 procedural scenes
MULTIBAND_SETS = (("tif256", 256, "tif", None), ("tif256_deflate", 256, "tif", "zlib"),
                  ("tif512", 512, "tif", None), ("tif512_deflate", 512, "tif", "zlib"), ("npy512", 512, "npy", None))


def _decode(folder, n, size, held):
    for path in folder.files[:n]:
        with Image.open(path) as im:
            im.load()


def _previous(folder, n, size, held):
    for i, path in enumerate(folder.files[:n]):
        with Image.open(path) as im:
            pillow_pretrain_transform(im, size, fd.sample_rng(0, 0, i))


def _read_array(folder, n, size, held):
    for path in folder.files[:n]:
        np.array(fd.open_array(path))  # every pixel read (a memory map too) or decoded


def _domain_reference(folder, n, size, held):
    """What the domain codebases do on the CPU (RandomResizedCrop's box and flip from fastmae's draws)."""
    for i, path in enumerate(folder.files[:n]):
        arr = np.array(fd.open_array(path))  # [H, W, C]
        full = 65535.0 if arr.dtype == np.uint16 else 255.0 if arr.dtype == np.uint8 else 1.0
        x = (torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1) / full - 0.1) / 0.05  # [C, H, W]
        rng = fd.sample_rng(0, 0, i)
        top, left, h, w = fd.random_resized_crop_box(arr.shape[1], arr.shape[0], rng)
        out = F.interpolate(x[None, :, top:top + h, left:left + w], size=size, mode="bicubic", antialias=True)
        if fd.draw_flip(rng):
            out = out.flip(-1)


def _fastmae(folder, n, size, held, draft=True, pooled=True, batch=16):
    """fastmae's CPU side over the first ``n`` images, ``batch`` at a time. ``pooled``: into reused buffers,
    released as the main process's pinning thread does; else a new shared-memory segment per batch, as a
    worker makes for unpinned batches, kept in ``held`` (freed untimed)."""
    dataset = fd.CropDataset(folder, fd.CropSpec(size, draft=draft), seed=0)
    for b0 in range(0, n, batch):
        samples = [dataset[(0, i)] for i in range(b0, min(b0 + batch, n))]
        if pooled:
            fd.collate_crops(samples, size, pool_slots=4).release()
            continue
        with mock.patch("torch.utils.data.get_worker_info", return_value=object()):
            held.append(fd.collate_crops(samples, size))


# (key, table row, method): a method, ``method(folder, n, size, held)``, runs one path over the first n images; the
# photo rows for 8-bit photographs, the array rows for multi-band, 16-bit or float images (fastmae.data.arrays)
PHOTO_ROWS = (("decode", "(a) decode only: Pillow open + load (the floor)", _decode),
              ("previous", "(b) previous CPU path: Pillow RandomResizedCrop bicubic + flip + float32 normalise",
               _previous),
              ("fastmae", "(c) fastmae CPU side: decode (JPEG draft) + box + flip + slice + ragged collate "
                          "(reused buffer)", _fastmae),
              ("fastmae_no_draft", "(c') fastmae CPU side without JPEG draft", partial(_fastmae, draft=False)),
              ("fastmae_fresh", "(c'') fastmae CPU side, a new shared-memory batch each time (unpinned batches)",
               partial(_fastmae, pooled=False)))
ARRAY_ROWS = (("decode", "(a) read only: every pixel read or decoded (the floor)", _read_array),
              ("reference", "(b) domain reference: read + float32 + per-channel normalise + torch antialiased "
                            "resize (CPU)", _domain_reference),
              ("fastmae", "(c) fastmae CPU side: open (memory map where possible) + box + flips + slice + ragged "
                          "collate", _fastmae))


def cpu_ms(folder, n, size, passes, rows) -> dict:
    """CPU ms per image (``time.process_time``) of each row's method over the first ``n`` images, median over
    ``passes`` taken in turns, the order reversed every other pass: neither the load on the machine nor
    the method before (whose memory traffic cools the caches) favours one."""
    times, held = {key: [] for key, _, _ in rows}, []
    for p in range(passes):
        for key, _, method in (rows if p % 2 == 0 else rows[::-1]):
            held.clear()
            t = time.process_time()
            method(folder, n, size, held)
            times[key].append(1e3 * (time.process_time() - t) / n)
    return {k: statistics.median(v) for k, v in times.items()}


def report(folder, size: tuple[int, int], passes: int = 3, images: int = 64) -> str:
    """The table and the last line, as printed, for the first ``images`` images of ``folder``."""
    torch.set_num_threads(1)
    fd.worker_memory_settings()  # as the loader's workers run (allocator reuse): for every method alike
    files, sig = folder.files[:images], folder.signature
    photos = sig.dtype == np.uint8 and sig.channels in (1, 3) and not any(
        f.lower().endswith(ARRAY_EXTENSIONS) for f in files)
    rows = PHOTO_ROWS if photos else ARRAY_ROWS
    ms = cpu_ms(folder, len(files), size, passes, rows)
    floor, fast = ms["decode"], ms["fastmae"]
    if photos:
        sizes = []
        for f in files:
            with Image.open(f) as im:
                sizes.append(im.size)
        shapes = np.array(sizes)
        what = f"mean {shapes[:, 0].mean():.0f}x{shapes[:, 1].mean():.0f}"
        dataset = fd.CropDataset(folder, fd.CropSpec(size), seed=0)
        crops = fd.collate_crops([dataset[(0, i)] for i in range(len(files))], size)
        notes = [f"shipped per image: previous float32 {3 * size[0] * size[1] * 4 / 1e3:.0f} KB, "
                 f"fastmae uint8 crop {crops.buffer.numel() / len(files) / 1e3:.0f} KB (table included)",
                 f"16 cores at this cost: previous {16e3 / ms['previous']:,.0f} images/s, "
                 f"fastmae {16e3 / fast:,.0f} images/s"]
    else:
        h, w = fd.open_array(files[0]).shape[:2]
        what = f"{os.path.splitext(files[0])[1]} of {h}x{w}, {folder.signature}"
        notes = [f"reference/fastmae {ms['reference'] / fast:.2f}"]
    lines = [f"data throughput: {len(files)} images ({what}) from {os.path.dirname(files[0])}, output "
             f"{size[0]}x{size[1]}; 1 process, 1 thread, CPU seconds, median of {passes} passes, allocator "
             f"settings of the loader's workers (fastmae.data.worker_memory_settings); "
             f"{platform.processor() or platform.machine()}, torch {torch.__version__}, Pillow {Image.__version__}, "
             f"numpy {np.__version__}",
             "", "| path | CPU ms / image | images/s per core | floor / path |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {ms[k]:.3f} | {1e3 / ms[k]:,.0f} | {floor / ms[k]:.2f} |" for k, label, _ in rows]
    lines += ["", *notes, f"cpu cost per image: fastmae {fast:.2f} ms, decode-only floor {floor:.2f} ms, "
                          f"floor/fastmae {floor / fast:.2f}"]
    return "\n".join(lines)


def make_multiband(directory: str, count: int) -> None:
    """Write the folders of ``MULTIBAND_SETS`` under ``directory``, ``count`` images each."""
    import tifffile

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
        print(f"wrote {count} 13-band uint16 images to {folder}")


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
        make_multiband(args.make, args.count)
    elif args.make:
        fd.write_photo_like_jpegs(args.make, args.count)
        print(f"wrote {args.count} photo-like 500x375 q90 JPEGs to {args.make}")
    elif not args.data:
        parser.error("--data DIR is required (or --make DIR to create a test set)")
    else:
        print(report(fd.ImageFolder(args.data, verify=False), (args.size, args.size), args.passes, args.images))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
