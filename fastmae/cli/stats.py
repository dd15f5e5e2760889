"""``fastmae stats``: each channel's mean and std over a seeded sample of a data set.

    fastmae stats --data DIR [--num-images N] [--seed S] [--output FILE]

Prints the values and writes them as JSON (default ``DIR/fastmae_stats.json``), where ``fastmae
pretrain --data DIR`` finds them. Units: those of ``fastmae.ops.resized_crop`` (uint8 and uint16
values mapped to [0, 1], float32 values as stored). Progress goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time

import fastmae.data as fd
from fastmae.cli import bands
from fastmae.cli.argtypes import positive_int, seed
from fastmae.cli.errors import UsageError


def add_arguments(p):
    p.add_argument("--data", required=True, help="a folder of images or arrays (.npy, .tif, .png, .jpg), or "
                   "tar shards, as pretrain's --data")
    p.add_argument("--num-images", type=positive_int, default=1000, help="images in the sample")
    p.add_argument("--seed", type=seed, default=0, help="seed of the sample")
    p.add_argument("--in-chans", type=positive_int, help="1: photographs as grey (as pretrain --in-chans 1)")
    p.add_argument("--layout", choices=fd.arrays.LAYOUTS, default="auto", help="of .npy files (see pretrain)")
    p.add_argument("--output", help=f"the JSON file; default {bands.STATS_FILE} in --data (beside shards)")


def run(args):
    """The ``stats`` command; returns the exit code."""
    try:
        images = fd.open_source(args.data, warn=lambda m: print(f"fastmae: warning: {m}", file=sys.stderr),
                                channels=args.in_chans, layout=args.layout)
    except fd.DataError as e:
        raise UsageError(str(e)) from None
    t = time.perf_counter()
    stats = bands.compute_stats(images, args.num_images, args.seed, bands.progress_printer("stats"))
    stats["data"] = args.data
    out = args.output or bands.stats_path(args.data)
    try:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            json.dump(stats, f, indent=1)
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e}") from None
    fmt = lambda vals: ",".join(f"{v:.6g}" for v in vals)  # noqa: E731
    print(f"{images.name}: {stats['channels']} channel(s) of {stats['dtype']}, {stats['num_images']} images "
          f"in {time.perf_counter() - t:.1f}s")
    print(f"mean {fmt(stats['mean'])}")
    print(f"std {fmt(stats['std'])}")
    print(f"wrote {out}")
    return 0
