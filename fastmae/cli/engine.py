"""One pretraining epoch, as the official ``engine_pretrain.train_one_epoch``: per-iteration lr,
gradient accumulation, autocast and an optional fp16 ``GradScaler``, a stop on a non-finite loss,
and a progress line every few iterations. Batches come from ``fastmae.data`` (ragged uint8 crops)
and become the model's input on the device in one ``resized_crop`` launch."""

import contextlib
import math
import time
import weakref

import torch

import fastmae.data as fd
from fastmae.cli.distributed import sum_across
from fastmae.cli.errors import CLIError
from fastmae.cli.lr_sched import lr_at, set_lr


class DataFailure(CLIError):
    """No image of the data could be decoded (a ``fastmae.data.DataError`` while training)."""


class NonFiniteLoss(CLIError):
    """The loss became NaN or infinite; training stops before the next checkpoint is written."""


class Progress:
    """One epoch's progress: prints ``epoch [e] [i/I] loss (running mean) lr img/s`` every
    ``every`` iterations, timed from its creation.

    Epochs count from 0, as in ``log.txt`` and the checkpoint names.
    """

    def __init__(self, iters, images_per_iter, every, out=print):
        self.iters, self.every, self.out = iters, every, out
        self.images_per_iter = images_per_iter
        self._width = len(str(iters))
        self._t0 = self._t = time.perf_counter()
        self._last = 0

    def update(self, epoch, step, loss, mean_loss, lr):
        done = step + 1
        if done % self.every and done != self.iters:
            return
        now = time.perf_counter()
        rate = (done - self._last) * self.images_per_iter / max(now - self._t, 1e-9)
        self._t, self._last = now, done
        self.out(f"epoch [{epoch}] [{done:>{self._width}}/{self.iters}] "
                 f"loss {loss:.4f} ({mean_loss:.4f}) lr {lr:.3e} {rate:,.0f} img/s")

    def elapsed(self):
        return time.perf_counter() - self._t0


def train_one_epoch(model, loader, optimizer, scaler, run, epoch, console):
    """Train ``model`` for ``epoch`` over ``loader`` as the ``RunConfig`` ``run`` says.

    ``loader`` is a ``fastmae.data.CropLoader``; each batch goes to the model as
    ``fastmae.data.to_model_input`` makes it: on the run's device, in the autocast dtype (float32
    without autocast), through ``resized_crop`` on the run's backend.

    Returns:
        ``{'lr': mean, 'loss': mean, 'skipped': images that failed to decode and were replaced,
        over all ranks, 'seconds': wall time, 'data_wait': seconds this process waited for batches}``.

    The loss is averaged over all ranks at every iteration (one scalar all-reduce), so every rank
    sees the same value and a non-finite loss stops all of them together.

    Raises:
        NonFiniteLoss: naming the epoch and iteration, before any further optimizer step.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    iters, accum, dist = len(loader), run.accum_iter, run.dist
    progress = Progress(iters, run.batch_size * dist.world_size, run.print_freq, console.say)
    loss_sum = lr_sum = 0.0
    skipped = 0
    for step, batch in enumerate(_batches(loader)):  # RaggedBatch: uint8 crops on the host
        bad = batch.skipped[batch.skipped >= 0].tolist()  # host-side bookkeeping: no device sync
        for index in bad:
            warn_decode_failure(loader.source, index, console.warn)
        # In the autocast dtype under --amp, as the input pipeline issue asks (half the bytes): the loss
        # target is then the bf16/fp16 image, where the official loader's is float32 (README).
        imgs = fd.to_model_input(batch, run.device, run.amp_dtype or torch.float32, run.mean, run.std,
                                 backend=run.backend)  # [B, C, S, S]
        if step % accum == 0:
            lr = lr_at(step / iters + epoch, run.lr, run.min_lr, run.warmup_epochs, run.epochs)
            set_lr(optimizer, lr)
        update = (step + 1) % accum == 0
        # Skip DDP's gradient all-reduce on micro-steps that only accumulate.
        sync = contextlib.nullcontext() if update or not dist.enabled else model.no_sync()
        with sync:
            with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                loss, _, _ = model(imgs, mask_ratio=run.mask_ratio, full_pred=False)
            loss_value, bad_count = sum_across([loss.item(), len(bad)], run.device, dist)
            loss_value /= dist.world_size
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(f"loss is {loss_value} at epoch {epoch}, iteration {step}")
            loss = loss / accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if update:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss_value
        lr_sum += lr
        skipped += int(bad_count)
        progress.update(epoch, step, loss_value, loss_sum / (step + 1), lr)
    return {"lr": lr_sum / iters, "loss": loss_sum / iters, "skipped": skipped,
            "seconds": progress.elapsed(), "data_wait": loader.wait.seconds}


def _batches(loader):
    """Iterate ``loader``; a ``fastmae.data.DataError`` (from a worker, its traceback in the message)
    becomes a one-line :class:`DataFailure`."""
    try:
        yield from loader
    except fd.DataError as e:
        last = str(e).strip().splitlines()[-1]
        raise DataFailure(last.split("DataError: ", 1)[-1]) from None


_WARNED = weakref.WeakKeyDictionary()  # source -> indices already warned about, in this process


def warn_decode_failure(source, index, warn):
    """Warn once per file (per process) that image ``index`` of ``source`` failed to decode and was
    replaced by the next one that decodes."""
    warned = _WARNED.setdefault(source, set())
    if index not in warned:
        warned.add(index)
        name = getattr(source, "files", None)
        warn(f"cannot decode image {name[index] if name else index}: replaced by the next image "
             "that decodes (warned once per file)")
