"""``pretrain --log-dir``: TensorBoard scalars as the official ``engine_pretrain`` writes them.

At every optimizer step, ``train_loss`` (the step's last micro-batch loss, averaged over the
processes) and ``lr`` (the first parameter group's), at x = ``int((iteration / iterations + epoch) *
1000)``, the official ``epoch_1000x``; rank 0 writes. The values are read by two hooks, so the
training loop is not touched: a forward hook on the (wrapped) model keeps the last loss, an
optimizer step post-hook logs it. Reading the loss costs a host sync per optimizer step, only with
``--log-dir``.
"""

import importlib.util

import torch

from fastmae.cli.distributed import all_reduce
from fastmae.cli.errors import UsageError

NEEDS_TENSORBOARD = '--log-dir needs tensorboard, the tensorboard extra: pip install -e ".[tensorboard]"'


def check_tensorboard(log_dir):
    """A one-line ``UsageError`` when ``--log-dir`` is given and tensorboard is not installed."""
    if log_dir and importlib.util.find_spec("tensorboard") is None:
        raise UsageError(NEEDS_TENSORBOARD)


class StepLogger:
    """Logs ``train_loss`` and ``lr`` per optimizer step of ``model`` / ``optimizer`` to ``log_dir``.

    Args:
        model: the module the training loop calls (DDP- or compile-wrapped: its hooks run outside
            the compiled region); one call per iteration.
        iters: iterations per epoch; start_epoch: the first epoch trained.
    """

    def __init__(self, log_dir, model, optimizer, iters, start_epoch, dist, device):
        self.writer = None
        if dist.is_main:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=log_dir)
        self.optimizer, self.iters, self.start_epoch = optimizer, iters, start_epoch
        self.dist, self.device = dist, device
        self.calls, self.loss = 0, None
        self._hooks = [model.register_forward_hook(self._forward),
                       optimizer.register_step_post_hook(self._step)]

    def _forward(self, module, inputs, output):
        if module.training:
            self.loss = output[0].detach()
            self.calls += 1

    def _step(self, optimizer, args, kwargs):
        index = self.calls - 1  # the iteration of this step, counted from start_epoch's first
        epoch, iteration = self.start_epoch + index // self.iters, index % self.iters
        x = int((iteration / self.iters + epoch) * 1000)
        loss = self.loss.to(torch.float64)
        if self.dist.enabled:
            loss = all_reduce(loss.clone())
        loss = loss.item() / self.dist.world_size
        if self.writer is not None:
            self.writer.add_scalar("train_loss", loss, x)
            self.writer.add_scalar("lr", optimizer.param_groups[0]["lr"], x)

    def close(self):
        for hook in self._hooks:
            hook.remove()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
