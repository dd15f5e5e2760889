"""``fastmae pretrain``: MAE pretraining as the official ``main_pretrain.py``.

With no arguments it trains a tiny MAE on the embedded procedural image set: 12 epochs of 2048
images, about a minute on 2 CPU cores, the loss falling from about 1.1 to 0.34. Under ``torchrun`` it runs data-parallel (DDP).
Rank 0 writes ``OUT/checkpoint-last.pth`` every epoch, ``OUT/checkpoint-<epoch>.pth`` every
``--save-every`` epochs and at the end, one JSON line per epoch to ``OUT/log.txt`` and, at the end,
``OUT/reconstructions.png``.

Without ``--output-dir`` a run writes to the first of ``output/pretrain``, ``output/pretrain-2``, ...
that holds no run (or, with ``--resume``, to the resumed run's directory), so the default command
can be run again. An ``--output-dir`` that holds a run (``checkpoint-last.pth`` or ``log.txt``) is only continued,
with ``--resume`` of a checkpoint inside it; a resume rewrites ``log.txt`` to the epochs before the
one it starts from. A checkpoint from another ``--input-size`` resumes: the fixed sin-cos position
tables are rebuilt for the new grid. With ``--data``, files that fail Pillow's check at the scan
are skipped with one warning; an image that passes it but fails to decode during training is
replaced by the next image that decodes, with one warning per file and a count in the epoch and
summary lines.

The defaults are that quick demo. The paper's recipe (ViT-L, 800 epochs, effective batch 4096,
e.g. torchrun on 8 nodes x 8 GPUs): --model mae_vit_large_patch16 --input-size 224 --data DIR
--norm-pix-loss --batch-size 64 --epochs 800 --warmup-epochs 40 --blr 1.5e-4 --weight-decay 0.05
"""

import argparse
import json
import os
import random
import sys
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

import fastmae
from fastmae.cli import distributed
from fastmae.cli.argtypes import (nonnegative_float, nonnegative_int, positive_float, positive_int,
                                  ratio, seed)
from fastmae.cli.checkpoint import (checkpoint_args, copy_atomically, load_checkpoint,
                                    load_model_state, remove_stale_temporaries, rng_state,
                                    save_checkpoint, set_rng_state, write_text_atomically)
from fastmae.cli.data import (Augmented, DataError, ImageFolder, ProceduralImages, build_loader,
                              resize_normalized)
from fastmae.cli.engine import NonFiniteLoss, Progress, train_one_epoch
from fastmae.cli.errors import UsageError
from fastmae.cli.images import grid
from fastmae.cli.runtime import check_backend, check_keeps_patch, parse_device
from fastmae.cli.visualize import TITLES, panel_rows

DEFAULT_OUTPUT_DIR = os.path.join("output", "pretrain")

# Arguments that shape the training trajectory: a resume that changes them cannot continue it exactly.
TRAJECTORY_ARGS = ("model", "input_size", "mask_ratio", "norm_pix_loss", "batch_size", "accum_iter",
                   "epochs", "warmup_epochs", "lr", "min_lr", "weight_decay", "seed", "data",
                   "num_images", "amp")


def add_arguments(p):
    p.add_argument("--model", default="mae_vit_tiny_patch4", help="a name in fastmae.MODELS")
    p.add_argument("--input-size", type=positive_int, default=32, help="image side in pixels")
    p.add_argument("--mask-ratio", type=ratio, default=0.75, help="fraction of patches removed")
    p.add_argument("--norm-pix-loss", action="store_true",
                   help="per-patch normalised pixels as targets")
    p.add_argument("--backend", default="auto", choices=("auto", "triton", "torch", "reference"),
                   help="op implementation passed to the model")
    p.add_argument("--data", help="directory of .jpg/.jpeg/.png images, searched recursively "
                   "(ImageFolder layout or flat); default: the embedded procedural set")
    p.add_argument("--num-images", type=positive_int, default=2048,
                   help="size of the procedural set (ignored with --data)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per process per iteration")
    p.add_argument("--accum-iter", type=positive_int, default=1, help="iterations per optimizer step")
    p.add_argument("--epochs", type=positive_int, default=12, help="epochs to train in all")
    p.add_argument("--warmup-epochs", type=nonnegative_float, default=1,
                   help="epochs of linear lr warmup before the cosine decay")
    p.add_argument("--blr", type=positive_float, default=1e-2,
                   help="base lr: lr = blr * batch-size * accum-iter * processes / 256")
    p.add_argument("--lr", type=positive_float, help="absolute lr (overrides --blr)")
    p.add_argument("--min-lr", type=nonnegative_float, default=0.0, help="lr at the end of the cosine")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.05,
                   help="AdamW weight decay (not on biases and 1-D parameters)")
    p.add_argument("--amp", choices=("bf16", "fp16", "off"),
                   help="autocast dtype; default bf16 on CUDA, off on CPU (fp16 adds a GradScaler)")
    p.add_argument("--resume", help="checkpoint to continue from (fastmae or official)")
    p.add_argument("--seed", type=seed, default=0,
                   help="seed of the data order, augmentation and masking (process r adds r)")
    p.add_argument("--num-workers", type=nonnegative_int,
                   help="data loader processes; default 0 on CPU, min(8, cores) on CUDA")
    p.add_argument("--output-dir",
                   help="where checkpoints, log.txt and reconstructions.png go; a directory that "
                   "holds a run is only continued, with --resume of a checkpoint inside it. Default: "
                   "the --resume file's directory when it holds that run, else the first of "
                   f"{DEFAULT_OUTPUT_DIR}, {DEFAULT_OUTPUT_DIR}-2, ... that holds no run")
    p.add_argument("--save-every", type=positive_int, default=20,
                   help="also keep checkpoint-<epoch>.pth every N epochs")
    p.add_argument("--print-freq", type=positive_int, default=20, help="progress line every N iterations")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", help="cuda, cuda:N or cpu; default cuda when available")


def run(args):
    """The ``pretrain`` command; returns the exit code."""
    train(args)
    return 0


def train(args):
    """Pretrain as ``args`` say, in this process's place in the (torchrun) group.

    Returns:
        The trained model (unwrapped from DDP and ``torch.compile``).
    """
    args = argparse.Namespace(**vars(args))  # the lr and defaults filled in below stay local
    info = distributed.from_env()
    device = parse_device(args.device, info.local_rank, info.enabled)
    check_backend(args.backend, device)
    distributed.init(info, device)
    try:
        return _train(args, info, device)
    finally:
        distributed.cleanup(info)


def _train(args, info, device):
    say = print if info.is_main else _quiet
    warn = (lambda msg: print(f"fastmae: warning: {msg}", file=sys.stderr)) if info.is_main else _quiet
    if args.output_dir is None:
        args.output_dir = _default_output_dir(args.resume, info)
    last_path = os.path.join(args.output_dir, "checkpoint-last.pth")
    log_path = os.path.join(args.output_dir, "log.txt")
    _check_output_dir(args, last_path)
    _seed_everything(args.seed + info.rank)

    images, dataset, loader = _build_data(args, info, device, warn)
    model = _build_model(args).to(device)
    eff_batch = args.batch_size * args.accum_iter * info.world_size
    if args.lr is None:
        args.lr = args.blr * eff_batch / 256
    args.amp = args.amp or _default_amp(device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[args.amp]
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr,
                                  betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    start_epoch = 0
    if args.resume:
        start_epoch = _resume(args, model, optimizer, scaler, info, say, warn)

    raw_model = model
    if info.enabled:
        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)

    if info.is_main:
        os.makedirs(args.output_dir, exist_ok=True)
        remove_stale_temporaries(args.output_dir)
        if args.resume:
            _truncate_log(log_path, start_epoch)
    say(f"pretraining {args.model} ({sum(p.numel() for p in raw_model.parameters()) / 1e6:.2f}M "
        f"parameters) at {args.input_size} px on {images.name}; device {device}, "
        f"{info.world_size} process(es), amp {args.amp}")
    say(f"effective batch {eff_batch}, lr {args.lr:.3e} (blr {args.blr:g}), epochs "
        f"{start_epoch}..{args.epochs - 1}, {len(loader)} iterations per epoch")
    progress = Progress(len(loader), args.batch_size * info.world_size, args.print_freq, say)
    losses, skipped, t0 = [], 0, time.perf_counter()
    for epoch in range(start_epoch, args.epochs):
        loader.sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        try:
            stats = train_one_epoch(model, loader, optimizer, scaler, amp_dtype, epoch, args, info,
                                    device, progress, warn)
        except NonFiniteLoss as e:
            kept = (f"the last good checkpoint is {last_path}" if os.path.exists(last_path)
                    else "no checkpoint had been written")
            raise NonFiniteLoss(f"{e}; stopped without saving, {kept}") from None
        rngs = distributed.gather(rng_state(), info)  # every rank's, so a resume continues each
        if info.is_main:
            _save(args, raw_model, optimizer, scaler, epoch, rngs, stats)
        # No rank runs ahead (or exits) while rank 0 writes: torchrun stops every process as soon
        # as one has exited, which could kill rank 0 midway through its last save.
        distributed.barrier(info)
        losses.append(stats["loss"])
        skipped += stats["skipped"]
        note = f", {stats['skipped']} undecodable image(s) replaced" if stats["skipped"] else ""
        say(f"epoch [{epoch}] done in {progress.elapsed():.1f}s: train_loss {stats['loss']:.4f} "
            f"train_lr {stats['lr']:.3e}{note}")

    elapsed = time.perf_counter() - t0
    if info.is_main:
        recon = _save_reconstructions(raw_model, images, args)
        if losses:
            seen = len(losses) * len(loader) * args.batch_size * info.world_size
            note = f", {skipped} undecodable image(s) replaced" if skipped else ""
            say(f"done: {len(losses)} epochs in {elapsed:.1f}s ({seen / elapsed:,.0f} img/s), "
                f"train_loss {losses[0]:.4f} -> {losses[-1]:.4f}{note}; wrote {last_path}, "
                f"{log_path}, {recon}")
        else:
            say(f"nothing to train: the checkpoint is already at --epochs {args.epochs}; "
                f"wrote {recon}")
    distributed.barrier(info)  # every rank leaves together, after rank 0's last file
    return raw_model


def _holds_run(directory):
    return any(os.path.exists(os.path.join(directory, name)) for name in ("checkpoint-last.pth", "log.txt"))


def _default_output_dir(resume, info):
    """Where a run without ``--output-dir`` writes: the resumed run's own directory, else a directory
    that holds no run yet, so running the default command twice never refuses nor overwrites.
    Rank 0 decides, for every rank (the others would race its first write)."""
    choice = [None]
    if info.is_main:
        if resume and _holds_run(os.path.dirname(os.path.abspath(resume))):
            choice = [os.path.dirname(resume) or "."]
        else:
            path, i = DEFAULT_OUTPUT_DIR, 1
            while _holds_run(path):
                i += 1
                path = f"{DEFAULT_OUTPUT_DIR}-{i}"
            choice = [path]
    if info.enabled:
        torch.distributed.broadcast_object_list(choice, src=0)
    return choice[0]


def _check_output_dir(args, last_path):
    """A directory that holds a run (a checkpoint-last.pth or a log.txt) is only continued: with
    ``--resume`` of a checkpoint inside it. Anything else would mix two runs' checkpoints and logs.
    """
    if not _holds_run(args.output_dir):
        return
    if not args.resume:
        raise UsageError(f"{args.output_dir} already holds a run; continue it with --resume "
                         f"{last_path} or choose another --output-dir")
    resume_dir = os.path.dirname(os.path.realpath(args.resume))
    if resume_dir != os.path.realpath(args.output_dir):
        raise UsageError(f"{args.output_dir} already holds another run than {args.resume}; resume "
                         "a checkpoint inside it or choose another --output-dir")


def _truncate_log(log_path, start_epoch):
    """Rank 0, on resume: keep only the log lines of epochs before ``start_epoch`` (a resume from
    an older checkpoint retrains the later ones), rewritten atomically."""
    if not os.path.exists(log_path):
        return
    with open(log_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        try:
            epoch = json.loads(line)["epoch"]
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill, or not ours
        if epoch < start_epoch:
            kept.append(line + "\n")
    if len(kept) != len(lines):
        write_text_atomically("".join(kept), log_path)


def _quiet(*args, **kwargs):
    """Output of ranks other than 0."""


def _seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _default_amp(device):
    if device.type != "cuda":
        return "off"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _build_data(args, info, device, warn):
    """The images (procedural or ``--data``), their augmented dataset and this rank's loader."""
    # --data is scanned once, by rank 0 (warnings included), and the file list sent to the others.
    images = (distributed.from_main(lambda: ImageFolder(args.data, warn), info) if args.data
              else ProceduralImages(args.num_images, size=2 * args.input_size))
    dataset = Augmented(images, (args.input_size, args.input_size), args.seed)
    if args.num_workers is None:
        args.num_workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
    loader = build_loader(dataset, args.batch_size, args.seed, args.num_workers,
                          info.world_size, info.rank, pin_memory=device.type == "cuda")
    if args.accum_iter > len(loader):
        raise UsageError(f"--accum-iter {args.accum_iter} is more than the {len(loader)} "
                         "iterations of an epoch: no optimizer step would run")
    return images, dataset, loader


def _build_model(args):
    """The model named by ``--model``, or a one-line ``UsageError``."""
    if args.model not in fastmae.MODELS:
        raise UsageError(f"unknown model '{args.model}'; available: {', '.join(fastmae.MODELS)}")
    try:
        model = fastmae.create_model(args.model, img_size=args.input_size,
                                     norm_pix_loss=args.norm_pix_loss, backend=args.backend)
    except ValueError as e:
        raise UsageError(f"cannot build {args.model} at --input-size {args.input_size}: {e}") from None
    check_keeps_patch(model, args.mask_ratio)
    return model


def param_groups(model, weight_decay):
    """The official (timm ``add_weight_decay``) groups: no decay on biases and 1-D parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


def _resume(args, model, optimizer, scaler, info, say, warn):
    """Restore what ``--resume`` holds; returns the first epoch to train."""
    ckpt = load_checkpoint(args.resume)
    load_model_state(model, ckpt, args.resume, args.model)
    if "optimizer" not in ckpt or "epoch" not in ckpt:
        say(f"initialised {args.model} from the weights in {args.resume}; training from epoch 0")
        return 0
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        # load_state_dict matches parameters by position only: check each moment's shape too.
        fits = all(t.shape == p.shape for p, state in optimizer.state.items()
                   for t in state.values() if t.ndim > 0)
    except (ValueError, KeyError):
        fits = False
    if not fits:
        raise UsageError(f"the optimizer state in {args.resume} does not fit {args.model}")
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    saved = checkpoint_args(ckpt)
    changed = [k for k in TRAJECTORY_ARGS if k in saved and saved[k] != getattr(args, k)]
    rngs = ckpt.get("rng")
    if rngs is not None and len(rngs) == info.world_size:
        set_rng_state(rngs[info.rank])
        if changed:
            warn(f"resuming with different {', '.join('--' + k.replace('_', '-') for k in changed)}"
                 f" than {args.resume}: the run will not continue its loss curve exactly")
    else:
        warn(f"{args.resume} has no random state for {info.world_size} process(es): the resumed "
             "run continues the schedule but not the exact random draws")
    say(f"resumed from {args.resume} (epoch {ckpt['epoch']})")
    return int(ckpt["epoch"]) + 1


def _save(args, model, optimizer, scaler, epoch, rngs, stats):
    """Rank 0: write checkpoint-last (and the periodic one) atomically, then the log line."""
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch,
            "args": plain_args(args), "rng": rngs}
    last = os.path.join(args.output_dir, "checkpoint-last.pth")
    save_checkpoint(ckpt, last)
    if epoch % args.save_every == 0 or epoch + 1 == args.epochs:  # the same bytes, not re-serialised
        copy_atomically(last, os.path.join(args.output_dir, f"checkpoint-{epoch}.pth"))
    line = {"train_lr": stats["lr"], "train_loss": stats["loss"], "epoch": epoch}
    with open(os.path.join(args.output_dir, "log.txt"), "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def plain_args(args):
    """``args`` as a dict of plain values, which ``weights_only`` loading accepts."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}


def _save_reconstructions(model, images, args, count=8):
    """Rank 0: the demo panels for the first ``count`` images, as ``OUT/reconstructions.png``."""
    size = (args.input_size, args.input_size)
    device = next(model.parameters()).device
    decoded = []
    for i in range(len(images)):
        if len(decoded) == count:
            break
        try:
            decoded.append(resize_normalized(images.image(i), size))
        except DataError:
            continue  # already warned about during training
    imgs = torch.stack(decoded).to(device)
    path = os.path.join(args.output_dir, "reconstructions.png")
    grid(panel_rows(model, imgs, args.mask_ratio, args.seed), TITLES).save(path)
    return path
