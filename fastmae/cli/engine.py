"""One pretraining epoch, as the official ``engine_pretrain.train_one_epoch``: per-iteration lr,
gradient accumulation, autocast and an optional fp16 ``GradScaler``, a stop on a non-finite loss,
and a progress line every few iterations. Batches come from ``fastmae.data`` (ragged uint8 crops)
and become the model's input on the device in one ``resized_crop`` launch, on a side stream on CUDA
(``fastmae.data.Prefetcher``).

No step that prints nothing waits for the device: the loss of each iteration is recorded on the
device and read (all-reduced under DDP) once per progress line, and a non-finite loss drops the
optimizer update on the device (:func:`step_unless`) instead of being tested on the host.
"""

import contextlib
import math
import time
import weakref

import torch

import fastmae.data as fd
from fastmae.cli import distributed
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


def train_one_epoch(model, loader, optimizer, scaler, run, epoch, console, *, report_compile=False,
                    overlap_copy=True):
    """Train ``model`` for ``epoch`` over ``loader`` as the ``RunConfig`` ``run`` says.

    ``loader`` is a ``fastmae.data.CropLoader``; each batch goes to the model as
    ``fastmae.data.Prefetcher`` makes it: on the run's device, in the autocast dtype (float32
    without autocast), through ``resized_crop`` on the run's backend; on CUDA the next batch's copy
    and resize run on a side stream while this step computes (``overlap_copy=False``: on the
    compute stream, when the step asks for it). ``report_compile``: say how long the first
    iteration took (``torch.compile`` compiles the forward and backward there), on its own line.

    The host reads the device once per progress line (every ``run.print_freq`` iterations and at
    the last): the loss of each iteration since the previous read, averaged over all ranks (one
    all-reduce then), and the count of images that failed to decode.

    Returns:
        ``{'lr': mean, 'loss': mean, 'skipped': images that failed to decode and were replaced,
        over all ranks, 'seconds': wall time, 'data_wait': seconds this process waited for batches}``.

    Raises:
        NonFiniteLoss: at the first read after a non-finite loss, naming the epoch and the first
            iteration whose loss (averaged over the ranks) was not finite. From that iteration on,
            every rank drops its optimizer updates on the device (:class:`NonFiniteGuard`): the
            weights and optimizer state are those from before it.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    iters, accum, dist = len(loader), run.accum_iter, run.dist
    progress = Progress(iters, run.batch_size * dist.world_size, run.print_freq, console.say)
    guard = NonFiniteGuard(run.device, run.print_freq, stop_on_grads=scaler is None)
    loss_sum = lr_sum = 0.0
    skipped = 0
    first = 0  # the first iteration the guard's record holds
    batches = fd.Prefetcher(_batches(loader), run.device, run.amp_dtype or torch.float32, run.mean, run.std,
                            backend=run.backend, overlap=overlap_copy)
    for step, (batch, imgs) in enumerate(batches):  # RaggedBatch (host), imgs [B, C, S, S] (device)
        if step == 0:
            t0 = time.perf_counter()  # the first batch is in hand: the loader's start-up not counted
        bad = _skipped_indices(batch)
        for index in bad:
            warn_decode_failure(loader.source, index, console.warn)
        guard.count_skipped(step - first, len(bad))
        if step % accum == 0:
            lr = lr_at(step / iters + epoch, run.lr, run.min_lr, run.warmup_epochs, run.epochs)
            set_lr(optimizer, lr)
        update = (step + 1) % accum == 0
        # Skip DDP's gradient all-reduce on micro-steps that only accumulate.
        sync = contextlib.nullcontext() if update or not dist.enabled else model.no_sync()
        with sync:
            with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                loss, _, _ = model(imgs, mask_ratio=run.mask_ratio, full_pred=False)
            loss = guard.watch(step - first, loss) / accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if update:
            guard.step(step - first, optimizer, scaler)
            optimizer.zero_grad(set_to_none=True)
        lr_sum += lr
        if report_compile and step == 0:
            console.say(f"torch.compile: the first iteration took {time.perf_counter() - t0:.1f}s "
                        "(compiling the forward and backward; not waiting for the device)")
        if not _reads_at(step, iters, run.print_freq):
            continue
        losses, grads_bad, count = guard.read(step - first + 1, dist)  # the one sync
        for i, (value, grad_bad) in enumerate(zip(losses, grads_bad)):
            value /= dist.world_size
            if not math.isfinite(value):
                raise NonFiniteLoss(f"loss is {value} at epoch {epoch}, iteration {first + i}")
            if grad_bad:
                raise NonFiniteLoss(f"the gradients are not finite at epoch {epoch}, iteration "
                                    f"{first + i} (loss {value:.4f})")
            loss_sum += value
        skipped += count
        first = step + 1
        progress.update(epoch, step, value, loss_sum / (step + 1), lr)
    return {"lr": lr_sum / iters, "loss": loss_sum / iters, "skipped": skipped,
            "seconds": progress.elapsed(), "data_wait": loader.wait.seconds}


def _reads_at(step, iters, every):
    """Whether iteration ``step`` ends with a progress line (and so with the host reading the
    device): every ``every`` iterations and at the last."""
    done = step + 1
    return done % every == 0 or done == iters


def _skipped_indices(batch):
    """The dataset indices this batch's replaced samples stand for: host-side bookkeeping of the
    batch, read through numpy (no tensor op, nothing on the device)."""
    skipped = batch.skipped.numpy()
    return skipped[skipped >= 0].tolist()


class NonFiniteGuard:
    """What the host learns about the iterations between two reads, kept on the device, and the
    update drop that stands in for testing each loss on the host.

    Per iteration of the window (at most ``window`` long) it records, in float64 on ``device``, the
    loss, whether the gradients of the update made there were non-finite (only recorded when
    ``stop_on_grads``, i.e. without a ``GradScaler``, whose own overflow skips are normal) and
    the count of replaced images. ``stopped`` becomes true at the first non-finite loss (or, without
    a scaler, non-finite gradients) and stays so: from then on every loss is multiplied by NaN before
    the backward, so under DDP every rank's all-reduced gradients are non-finite too, and every rank
    drops the same updates, until the next read stops the run.
    """

    LOSS, GRADS_BAD, SKIPPED = range(3)  # the record's columns

    def __init__(self, device, window, stop_on_grads=True):
        self.device, self.stop_on_grads = device, stop_on_grads
        self.record = torch.zeros(window, 3, dtype=torch.float64, device=device)  # [window, 3]
        self.stopped = torch.zeros((), dtype=torch.bool, device=device)
        self._one = torch.ones((), dtype=torch.float32, device=device)

    def count_skipped(self, i, n):
        """``n`` images of iteration ``i`` (of the window) were replaced (host-known; no sync)."""
        if n:
            self.record[i, self.SKIPPED].fill_(n)

    def watch(self, i, loss):
        """Record iteration ``i``'s loss; returns the loss to differentiate: ``loss`` itself (times
        1.0, bitwise the same gradients) until a loss was non-finite, times NaN from then on."""
        value = loss.detach()
        self.record[i, self.LOSS].copy_(value)
        self.stopped.logical_or_(~torch.isfinite(value))
        return loss * torch.where(self.stopped, float("nan"), 1.0).to(loss.dtype)

    def step(self, i, optimizer, scaler=None):
        """The optimizer step of iteration ``i``, dropped on the device when any gradient is not
        finite (after unscaling, with a ``scaler``, which is then updated as ``GradScaler.step``
        would)."""
        if scaler is not None:
            scaler.unscale_(optimizer)
        found_inf = self.nonfinite_grads(optimizer)  # float32 [], 1.0 when any is not finite
        if self.stop_on_grads:
            self.record[i, self.GRADS_BAD].copy_(found_inf)
            self.stopped.logical_or_(found_inf != 0)
        step_unless(optimizer, found_inf)
        if scaler is not None:
            scaler.update()

    def nonfinite_grads(self, optimizer):
        """float32 ``[]`` on the device: 1.0 when a gradient holds a NaN or an infinity (the check
        ``GradScaler`` runs, its unscale by 1.0 leaving every gradient bitwise the same)."""
        found_inf = torch.zeros((), dtype=torch.float32, device=self.device)
        groups = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        for grads in groups.values():
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, self._one)
        return found_inf

    def read(self, n, dist):
        """The window's first ``n`` iterations, summed over the ranks (one all-reduce, then the one
        sync): ``(losses, grads_bad, replaced images)``; the record is cleared for the next window.
        The stop flag stays set: a stopped run raises at this read."""
        record = self.record[:n]  # [n, 3]
        if dist.enabled:
            distributed.all_reduce(record)
        losses, grads_bad, skipped = zip(*record.tolist())
        self.record.zero_()
        return losses, grads_bad, int(sum(skipped))


def step_unless(optimizer, found_inf, *, restore=None):
    """``optimizer.step()``, its update dropped where ``found_inf`` (float32 ``[]``) is non-zero:
    weights and optimizer state stay bitwise as they were.

    A fused optimizer (``fused=True``, one kernel per dtype group: the default on CUDA) takes
    ``found_inf`` itself, as under ``GradScaler``: no host sync. On the CPU any other reads
    ``found_inf`` on the host and steps or not: host memory, nothing to wait for. Elsewhere
    (``restore``, or forced with ``restore=True``) it keeps a copy of the weights and state the step
    is about to change and puts it back where ``found_inf`` is set (state a first step creates goes
    back to zeros, what a fresh ``AdamW`` holds); for that to need no sync the state must live on
    ``found_inf``'s device (``capturable=True`` on CUDA).
    """
    if optimizer.param_groups and all(g.get("fused") for g in optimizer.param_groups):
        optimizer.grad_scale, optimizer.found_inf = None, found_inf
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
        return
    if not (found_inf.device.type != "cpu" if restore is None else restore):
        if not found_inf:
            optimizer.step()
        return
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    before = [(p.detach().clone(), {k: v.clone() for k, v in optimizer.state[p].items()
                                    if torch.is_tensor(v)}) for p in params]
    optimizer.step()
    drop = found_inf != 0  # bool []
    with torch.no_grad():
        for p, (weights, state) in zip(params, before):
            p.copy_(torch.where(drop, weights, p))
            for k, v in optimizer.state[p].items():
                if torch.is_tensor(v):
                    old = state[k] if k in state else torch.zeros_like(v)
                    v.copy_(torch.where(drop.to(v.device), old, v))


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
