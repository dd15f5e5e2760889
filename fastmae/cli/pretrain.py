"""``fastmae pretrain``: MAE pretraining as the official ``main_pretrain.py``.

With no arguments it trains a tiny MAE on the embedded procedural image set: 28 epochs of 2048
images with norm-pix loss, about 2 minutes on 2 idle CPU cores, the loss falling from about 1.2 to
0.26 (long enough for ``fastmae probe`` to find its encoder some 8 points better than random ones). Under
``torchrun`` it runs data-parallel (DDP). Rank 0 writes ``OUT/checkpoint-last.pth`` every epoch,
``OUT/checkpoint-<epoch>.pth`` every ``--save-every`` epochs and at the end (hard links to that
epoch's checkpoint-last where the file system allows: no second copy on disk), one JSON line per
epoch to ``OUT/log.txt`` (with ``data_wait``, the seconds the steps waited for batches) and, at the
end, ``OUT/reconstructions.png``, ``OUT/loss.png`` and the next commands with this run's paths. The
checkpoints, log.txt and the two images are written atomically (a kill mid-save leaves the previous
file). The first line names the plan before the slow set-up; progress lines read
``epoch 3/28 [20/32] loss ... lr ... img/s, ETA 1m50s`` (epochs from 1 there, from 0 in log.txt and the
checkpoint names). Under torchrun each rank reads its share of the data; rank 0 scans --data and
shares the list, and the ranks wait for its writes.

Without ``--output-dir`` a run writes to the first of ``output/pretrain``, ``output/pretrain-2``, ...
that holds no run, or, with ``--resume``, beside the checkpoint, so the default command can be run
again. An ``--output-dir`` that holds a run (``checkpoint-last.pth`` or ``log.txt``) is only
continued, with ``--resume`` of a checkpoint inside it.

``--resume`` of a checkpoint with optimizer state continues that run: the options that shape
training (model, data, optimisation, seed) come from the checkpoint unless passed again, and a
warning names those passed with another value. A checkpoint of weights only starts a new run from
them; an encoder-only one (the official mae_pretrain_vit_*.pth) initialises the encoder, and the
decoder trains from scratch, with a warning; a fine-tuned ViT is refused. Ctrl-C prints the command that resumes. Resuming a
finished run says so and writes nothing. A resume rewrites ``log.txt`` to the epochs before the
one it starts from. A checkpoint from another ``--input-size`` resumes: the fixed sin-cos position
tables are rebuilt for the new grid. With ``--data``, files that fail Pillow's check at the scan
are skipped with one warning; an image that passes it but fails to decode during training is
replaced by the next image that decodes, with one warning per file and a count in the epoch and
summary lines.

Defaults follow --model: the image side is the model's own; the demo models (mae_vit_tiny_patch4,
mae_vit_micro_patch4) take the quick demo's recipe (--blr 5e-3, 3 warmup epochs, 28 epochs,
--norm-pix-loss; --no-norm-pix-loss turns it off), every other model the paper's (--blr 1.5e-4, 40
warmup epochs, 800 epochs, --weight-decay 0.05) with --norm-pix-loss off unless passed, as in the
official main_pretrain.py; the paper's results use it. The paper's ViT-L run (effective batch 4096,
e.g. torchrun on 8 nodes x 8 GPUs): --model mae_vit_large_patch16 --data DIR --norm-pix-loss
--batch-size 64. The official main_pretrain.py option names are accepted (see the last line).

Errors are one line, ``fastmae: error: ...``, exit 2 for bad arguments or inputs and 1 for failures
while running (a NaN or infinite loss stops before anything is saved, naming epoch and iteration; out
of memory says to lower --batch-size); Ctrl-C exits 130 naming the last checkpoint and the command
that resumes from it.
"""

import os
import random
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

import fastmae
import fastmae.data as fd
from fastmae._files import write_file
from fastmae.cli import bands, distributed, pretrain_options
from fastmae.cli.aliases import ignored_warning
from fastmae.cli.run_state import (load_checkpoint, load_model_state, remove_stale_temporaries,
                                   rng_state, set_rng_state)
from fastmae.cli.config import changed_options, resolve, resume_command
from fastmae.cli.console import Console, RunProgress, count, duration
from fastmae.cli.engine import NonFiniteLoss, train_one_epoch
from fastmae.cli.errors import Interrupted, UsageError
from fastmae.cli.images import grid, resize_normalized
from fastmae.cli.losscurve import save_loss_curve
from fastmae.cli.lr_sched import last_step_epoch, lr_at
from fastmae.cli.nextsteps import next_commands
from fastmae.cli.panels import TITLES, panel_rows
from fastmae.cli.rundir import check_output_dir, check_writable, save_epoch, truncate_log
from fastmae.cli.runtime import check_backend, check_keeps_patch, parse_device, small_grid_warnings
from fastmae.cli.tblog import StepLogger, check_tensorboard
from fastmae.data.synthetic import MadeOnce
from fastmae.checkpoint_files import checkpoint_args


def add_arguments(p):
    """``pretrain``'s options (``fastmae.cli.pretrain_options``, torch-free) with those that need
    torch: the multi-band data options and the backends."""
    pretrain_options.add_arguments(p, bands.add_arguments, fastmae.ops.BACKENDS)


def run(args):
    """The ``pretrain`` command; returns the exit code."""
    train(args)
    return 0


def train(args):
    """Pretrain as the parsed ``args`` say (see ``fastmae.cli.parse_args``), in this process's
    place in the (torchrun) group.

    Returns:
        The trained model (unwrapped from DDP and ``torch.compile``).
    """
    dist = distributed.from_env()
    device = parse_device(args.device, dist.local_rank, dist.enabled)
    check_backend(args.backend, device)
    distributed.init(dist, device)
    threads = torch.get_num_threads()  # --threads holds while training only
    try:
        return _train(args, dist, device, Console(dist.is_main))
    finally:
        torch.set_num_threads(threads)
        distributed.cleanup(dist)


def _train(args, dist, device, console):
    ckpt = None
    if args.resume:
        console.say(f"reading {args.resume}...")
        ckpt = load_checkpoint(args.resume)
    stored = checkpoint_args(ckpt) if _continues(ckpt) else {}
    run = resolve(args, dist, device, stored)
    if run.threads is not None:
        torch.set_num_threads(run.threads)
    check_output_dir(run)
    if ignored_warning(args):
        console.warn(ignored_warning(args))
    if _continues(ckpt) and ckpt["epoch"] + 1 >= run.epochs:
        console.say(f"the run is complete: {run.resume} has {count(ckpt['epoch'] + 1, 'epoch')} of "
                    f"--epochs {run.epochs}; nothing was trained or written. Its files are in "
                    f"{os.path.dirname(run.resume) or '.'}; to train longer, resume with a larger "
                    "--epochs")
        model = _build_model(run)
        load_model_state(model, ckpt, run.resume, run.model)
        return model.to(device)

    log_dir = getattr(args, "log_dir", None)
    check_tensorboard(log_dir)
    if dist.is_main:
        check_writable(run.output_dir)
    compiling = "; torch.compile works at the first iteration (minutes)" if run.compile else ""
    scanning = f", scanning {run.data}" if run.data else ""
    threads = f", {count(torch.get_num_threads(), 'thread')}" if device.type == "cpu" else ""
    if args.data and run.data != args.data:
        console.say(f"--data {args.data} holds train/ and val/: pretraining on {run.data}, as the official "
                    "main_pretrain.py does (val/ is left for evaluation)")
    console.say(f"pretraining {run.model} at {run.input_size} px on {device} "
                f"({count(dist.world_size, 'process', 'processes')}{threads}, amp {run.amp}), "
                f"{count(run.epochs, 'epoch')} at blr {run.blr:g} ({run.warmup_epochs:g} warmup)"
                f"{', norm-pix loss' if run.norm_pix_loss else ''}, into "
                f"{run.output_dir}: building the model and the optimizer{scanning}{compiling}...")
    _seed_everything(run.seed + dist.rank)
    images, loader = _build_data(run, console)
    bands.check_resume_channels(images, ckpt, args.resume)
    run = bands.resolve_channels(run, images, console)
    model = _build_model(run).to(device)
    for warning in small_grid_warnings(model, run.mask_ratio, run.model):
        console.warn(warning)
    optimizer = make_optimizer(model, run)
    scaler = torch.amp.GradScaler(device.type) if run.amp == "fp16" else None
    start_epoch = _restore(run, args, ckpt, model, optimizer, scaler, console) if ckpt else 0
    raw_model = model
    if dist.enabled:
        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if run.compile:
        model = torch.compile(model, mode=run.compile_mode)
    step_log = StepLogger(log_dir, model, optimizer, len(loader), start_epoch, dist, device) if log_dir else None

    if dist.is_main:
        os.makedirs(run.output_dir, exist_ok=True)
        remove_stale_temporaries(run.output_dir)
        if run.resume:
            truncate_log(run, start_epoch)
    remaining = run.epochs - start_epoch
    span = f"epoch {start_epoch}" if remaining == 1 else f"epochs {start_epoch}..{run.epochs - 1}"
    console.say(f"{sum(p.numel() for p in raw_model.parameters()) / 1e6:.2f}M parameters; data "
                f"{images.name}; effective batch {run.eff_batch}, lr {run.lr:.3e} (blr "
                f"{run.blr:g}); {count(remaining, 'epoch')} to train ({span}), "
                f"{count(len(loader), 'iteration')} per epoch")
    _warn_unreached_peak(run, len(loader), console)

    # What Ctrl-C names: the last checkpoint of this run on disk, with its stored arguments.
    saved = (run.resume, ckpt["epoch"], stored) if start_epoch else None
    losses, skipped, t0 = [], 0, time.perf_counter()
    progress = RunProgress(console, run.epochs, start_epoch, len(loader))
    try:
        for epoch in range(start_epoch, run.epochs):
            loader.set_epoch(epoch)
            try:
                stats = train_one_epoch(model, loader, optimizer, scaler, run, epoch, progress,
                                        report_compile=run.compile and epoch == start_epoch)
            except NonFiniteLoss as e:
                kept = (f"the last good checkpoint is {saved[0]}" if saved
                        else "no checkpoint had been written")
                raise NonFiniteLoss(f"{e}; stopped without saving, {kept}") from None
            rngs = distributed.gather(rng_state(), dist)  # every rank's, so a resume continues each
            if dist.is_main:
                save_epoch(run, raw_model, optimizer, scaler, epoch, rngs, stats)
            # No rank runs ahead (or exits) while rank 0 writes: torchrun stops every process as
            # soon as one has exited, which could kill rank 0 midway through its last save.
            distributed.barrier(dist)
            saved = (run.last_path, epoch, run.stored_args())
            losses.append(stats["loss"])
            skipped += stats["skipped"]
            note = f", {count(stats['skipped'], 'undecodable image')} replaced" if stats["skipped"] else ""
            console.say(f"epoch {epoch + 1}/{run.epochs} done in {stats['seconds']:.1f}s: train_loss "
                        f"{stats['loss']:.4f} train_lr {stats['lr']:.3e}{note}; {loader.wait.summary()}; "
                        f"ETA {duration(progress.eta(epoch + 1, 0))}")
    except KeyboardInterrupt:
        raise Interrupted(_interrupted(run, args, saved) if dist.is_main else "") from None
    finally:
        if step_log is not None:
            step_log.close()

    elapsed = time.perf_counter() - t0
    if dist.is_main:
        recon = _save_reconstructions(raw_model, images, run)
        curve = save_loss_curve(run.log_path, os.path.join(run.output_dir, "loss.png"),
                                f"{run.model}, {run.output_dir}")
        seen = len(losses) * len(loader) * run.batch_size * dist.world_size
        note = f", {count(skipped, 'undecodable image')} replaced" if skipped else ""
        console.say(f"done: {count(len(losses), 'epoch')} in {elapsed:.1f}s ({seen / elapsed:,.0f} "
                    f"img/s), train_loss {losses[0]:.4f} -> {losses[-1]:.4f}{note}; wrote "
                    f"{run.last_path}, {run.log_path}, {recon}, {curve}")
        for line in next_commands(run, images):
            console.say(line)
    distributed.barrier(dist)  # every rank leaves together, after rank 0's last file
    return raw_model


def _continues(ckpt):
    """Whether ``ckpt`` holds a run to continue (optimizer state and an epoch), not only weights."""
    return ckpt is not None and "optimizer" in ckpt and "epoch" in ckpt


def _interrupted(run, args, saved):
    """The one line Ctrl-C prints: what is on disk, and the command that goes on from it."""
    if saved is None:
        return ("no checkpoint was saved (the first epoch had not finished); run the same command "
                "again to start over")
    path, epoch, stored = saved
    return (f"the last checkpoint is {path} ({epoch + 1} of {run.epochs} epochs done); resume "
            f"with: {resume_command(run, args, path, stored)}")


def _warn_unreached_peak(run, iters, console):
    """Warn when the warmup outlasts the run's last optimizer step: the lr never reaches its peak."""
    last = last_step_epoch(run.epochs, iters, run.accum_iter)
    if run.warmup_epochs <= last:
        return
    highest = lr_at(last, run.lr, run.min_lr, run.warmup_epochs, run.epochs)
    accum = f", --accum-iter {run.accum_iter}" if run.accum_iter > 1 else ""
    console.warn(f"the lr never reaches its peak {run.lr:.3e}: --warmup-epochs {run.warmup_epochs:g} "
                 f"lasts past the last optimizer step (at epoch {last:.2f} of --epochs "
                 f"{run.epochs}, {count(iters, 'iteration')} per epoch{accum}), whose lr is "
                 f"{highest:.3e}; lower --warmup-epochs or raise --epochs")


def _seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _build_data(run, console):
    """The images (procedural, a folder or tar shards) and this rank's ``fastmae.data`` loader."""
    dist = run.dist
    try:
        if run.data is None or fd.is_shard_spec(run.data):
            images = bands.open_images(run.data, run.demo, run.num_images, run.input_size, run.in_chans, run.layout)
            if isinstance(images, fd.ProceduralImages) and _kept_bytes(images) <= MAX_KEPT_BYTES:
                images = MadeOnce(images)  # drawn once, not every epoch: the same images, less CPU
        else:  # scanned once, by rank 0 (warnings included), and the file list sent to the others
            images = distributed.from_main(lambda: _scan(run, console.warn), dist)
        loader = fd.build_loader(images, run.batch_size, run.input_size, run.seed, world_size=dist.world_size,
                                 rank=dist.rank, num_workers=run.num_workers, pin_memory=run.device.type == "cuda",
                                 vflip_p=0.5 if run.vflip else 0.0)
    except fd.DataError as e:
        raise UsageError(str(e)) from None
    except ValueError as e:  # a batch larger than this rank's share of the data
        if not str(e).startswith("batch_size "):
            raise
        raise UsageError(f"--batch-size {run.batch_size} is {str(e).split(' is ', 1)[-1]}".replace(
            "; use ", "; use --batch-size ")) from None
    if run.accum_iter > len(loader):
        raise UsageError(f"--accum-iter {run.accum_iter} is more than the {len(loader)} "
                         "iterations of an epoch: no optimizer step would run")
    return images, loader


# The procedural set's images are kept in memory after their first epoch up to this size (2048
# images of 64 px, the default run's, take 34 MB: Pillow holds RGB as 4 bytes a pixel).
MAX_KEPT_BYTES = 256 * 2**20


def _kept_bytes(images):
    return len(images) * images.size * images.size * 4


def _scan(run, warn):
    """``--data`` as a ``fastmae.data.ImageFolder``, its errors as one-line ``UsageError``s (on rank 0)."""
    try:
        return fd.ImageFolder(run.data, warn=warn, channels=run.in_chans, layout=run.layout)
    except fd.DataError as e:
        raise UsageError(str(e)) from None


def _build_model(run):
    """The model named by ``--model``, or a one-line ``UsageError``."""
    if run.model not in fastmae.MODELS:
        raise UsageError(f"unknown model '{run.model}'; available: {', '.join(fastmae.MODELS)}")
    try:
        model = fastmae.create_model(run.model, img_size=run.input_size, in_chans=run.in_chans or 3,
                                     norm_pix_loss=run.norm_pix_loss, backend=run.backend)
    except ValueError as e:
        raise UsageError(f"cannot build {run.model} at --input-size {run.input_size}: {e}") from None
    check_keeps_patch(model, run.mask_ratio)
    return model


def make_optimizer(model, run, impl=None):
    """AdamW as the official recipe: betas (0.9, 0.95), the groups of :func:`param_groups`;
    ``impl`` (:func:`optimizer_impl`) ``"fused"`` by default on CUDA, ``"foreach"`` on the CPU.
    (Its first construction imports torch's compiler stack: a second or more.)"""
    return torch.optim.AdamW(param_groups(model, run.weight_decay), lr=run.lr, betas=(0.9, 0.95),
                             **optimizer_impl(run.device, impl))


def optimizer_impl(device, impl=None):
    """The AdamW implementation flags: ``"fused"`` (one kernel per dtype group, which drops an update
    on the device given ``found_inf``; the default on CUDA) or ``"foreach"`` (the default on the
    CPU; on CUDA capturable, so its state lives on the device and ``engine.step_unless`` restores
    it without a sync)."""
    impl = impl or ("fused" if device.type == "cuda" else "foreach")
    if impl not in ("fused", "foreach"):
        raise ValueError(f"optimizer impl {impl!r}: expected 'fused' or 'foreach'")
    fused = impl == "fused"
    return {"fused": fused, "foreach": not fused, "capturable": not fused and device.type == "cuda"}


def load_optimizer_state(optimizer, state):
    """``optimizer.load_state_dict(state)`` keeping this run's implementation (fused, foreach,
    capturable): a checkpoint's groups carry the flags of the device that wrote it, and they decide
    where the loaded ``step`` counters live."""
    impl = {k: optimizer.param_groups[0][k] for k in ("fused", "foreach", "capturable")}
    optimizer.load_state_dict({**state, "param_groups": [{**g, **impl} for g in state["param_groups"]]})


def param_groups(model, weight_decay):
    """The official (timm ``add_weight_decay``) groups: no decay on biases and 1-D parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


def _restore(run, args, ckpt, model, optimizer, scaler, console):
    """Restore what ``--resume`` holds; returns the first epoch to train."""
    left = load_model_state(model, ckpt, run.resume, run.model, encoder_only_ok=True)
    if left:  # an encoder-only file: a new run, its decoder trained from scratch
        console.warn(f"{run.resume} holds the encoder only: the decoder and mask_token start from their "
                     f"initialisation ({count(len(left), 'entry', 'entries')} not loaded), so the loss starts "
                     "as an untrained decoder's")
        console.say(f"initialised the encoder of {run.model} from {run.resume}; training from epoch 0")
        return 0
    if not _continues(ckpt):
        console.say(f"initialised {run.model} from the weights in {run.resume}; training from epoch 0")
        return 0
    try:
        load_optimizer_state(optimizer, ckpt["optimizer"])
        # load_state_dict matches parameters by position only: check each moment's shape too.
        fits = all(t.shape == p.shape for p, state in optimizer.state.items()
                   for t in state.values() if t.ndim > 0)
    except (ValueError, KeyError):
        fits = False
    if not fits:
        raise UsageError(f"the optimizer state in {run.resume} does not fit {run.model}")
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    changed = changed_options(run, args, checkpoint_args(ckpt))
    rngs = ckpt.get("rng")
    if rngs is not None and len(rngs) == run.dist.world_size:
        set_rng_state(rngs[run.dist.rank])
        if changed:
            console.warn(f"resuming with different {', '.join(changed)} than {run.resume}: the run "
                         "will not continue its loss curve exactly")
    else:
        console.warn(f"{run.resume} has no random state for "
                     f"{count(run.dist.world_size, 'process', 'processes')}: the resumed run "
                     "continues the schedule but not the exact random draws")
    console.say(f"resumed from {run.resume} (epoch {ckpt['epoch']})")
    return int(ckpt["epoch"]) + 1


def _save_reconstructions(model, images, run, num=8):
    """Rank 0: the demo panels for the first ``num`` images, as ``OUT/reconstructions.png``."""
    size = (run.input_size, run.input_size)
    device = next(model.parameters()).device
    photos = (run.in_chans or 3) == 3 and bands.signature_of(images).dtype == np.uint8

    def prepare(image):  # photographs as before; other images resized whole, normalised with the run's statistics
        if photos and not isinstance(image, np.ndarray):
            return resize_normalized(image, size)
        return bands.whole_image_input(image, size, run.mean, run.std)

    if hasattr(images, "first_images"):  # tar shards: a stream, no random access
        decoded = [prepare(img) for img in images.first_images(num)]
    else:
        decoded = []
        for i in range(len(images)):
            if len(decoded) == num:
                break
            try:
                decoded.append(prepare(images.image(i)))
            except fd.DataError:
                continue  # already warned about during training
    imgs = torch.stack(decoded).to(device)
    path = os.path.join(run.output_dir, "reconstructions.png")
    to_image = None if photos else bands.stretch_display(bands.parse_bands(None, imgs.shape[1]))
    image = grid(panel_rows(model, imgs, run.mask_ratio, run.seed, to_image), TITLES)
    write_file(path, lambda f: image.save(f, format="PNG"))
    return path
