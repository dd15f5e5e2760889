"""Learning-rate schedule of the official MAE recipe: linear warmup, then a half-cycle cosine.

Set per iteration (fractional epoch), as ``util/lr_sched.adjust_learning_rate`` does.
"""

import math


def lr_at(epoch, lr, min_lr, warmup_epochs, epochs):
    """Learning rate at a fractional ``epoch`` (``iteration / iterations_per_epoch + epoch``).

    Args:
        epoch: progress in epochs, ``0 <= epoch < epochs``.
        lr: peak learning rate, reached at the end of the warmup.
        min_lr: learning rate the cosine decays to at ``epochs``.
        warmup_epochs: length of the linear warmup from 0, in epochs (may be fractional or 0).
        epochs: total length of the schedule, in epochs.

    Returns:
        The learning rate (a float).
    """
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    # The official code divides by (epochs - warmup_epochs); when the warmup covers the whole
    # run that is 0/0, and we stay at the peak instead.
    decay_epochs = epochs - warmup_epochs
    if decay_epochs <= 0:
        return lr
    progress = (epoch - warmup_epochs) / decay_epochs
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr):
    """Set ``lr`` on every param group, scaled by the group's ``lr_scale`` when it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def last_step_epoch(epochs, iters, accum_iter):
    """The fractional epoch whose lr the last optimizer step of a run uses.

    The lr is set at every ``accum_iter``-th iteration and applied by the step that closes that
    window; an epoch's last incomplete window takes no step. ``iters >= accum_iter``.
    """
    return epochs - 1 + (iters // accum_iter - 1) * accum_iter / iters
