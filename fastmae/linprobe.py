"""Linear probing of a frozen encoder, as the official ``main_linprobe.py`` does it, scaled down.

The official recipe: the fine-tuning ViT with the cls token (no global pooling), its encoder frozen;
the head is ``BatchNorm1d(D, affine=False, eps=1e-6)`` then ``Linear(D, classes)`` with
``trunc_normal_(std=0.01)``; cross-entropy; LARS (momentum 0.9, trust coefficient 0.001, weight
decay 0); ``lr = blr * batch / 256`` with ``blr = 0.1``; 90 epochs, 10 of linear warmup, then a
half-cosine to 0, set per iteration; top-1 on a held-out split.

Scaled down here, in two ways:

* the frozen encoder's features are computed **once** from the images as given (the official run
  re-crops and flips every epoch, RandomResizedCrop + flip, and runs the encoder each time);
* the batch is 256 (official: 16384) but the learning rate stays the official **absolute** one,
  ``0.1 * 16384 / 256 = 6.4``, rather than following the linear scaling rule down to 0.1. A LARS
  step moves each weight matrix by ``lr * trust_coefficient`` of its norm whatever the batch, so
  the scaled rule would leave the head almost untrained in the ~540 steps of a 2,048-image set
  with 20% held out (measured so on the embedded set's 6 labels, chance 16.7%, a random-init
  ``mae_vit_tiny_patch4`` encoder: train top-1 21.2% at lr 0.1, 29.4% at 6.4; an Adam-fitted head
  on the same features reaches 41.6%). Pass
  ``lr=`` or ``reference_batch=batch_size`` for the scaled rule.

Nothing else changes, so on a CPU it takes seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LARS", "OFFICIAL_BATCH", "ProbeResult", "encoder_features", "linear_probe"]

OFFICIAL_BATCH = 16384  # the official linear probe's effective batch: 512 per GPU x 32 GPUs


class LARS(torch.optim.Optimizer):
    """LARS as the official ``util/lars.py``: layer-wise trust ratio, no scaling or decay for 1-D parameters.

    For a parameter ``p`` of 2 or more dimensions, the step ``d = grad + weight_decay * p`` is scaled
    by ``trust_coefficient * |p| / |d|`` (1 when either norm is 0); then heavy-ball momentum
    ``mu = momentum * mu + d`` and ``p -= lr * mu``. Biases and norms take the plain momentum step.
    """

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=group["weight_decay"])
                    p_norm, d_norm = torch.norm(p), torch.norm(d)
                    ratio = torch.where((p_norm > 0) & (d_norm > 0), group["trust_coefficient"] * p_norm / d_norm,
                                        torch.ones_like(p_norm))
                    d = d.mul(ratio)
                mu = self.state[p].setdefault("mu", torch.zeros_like(p))
                mu.mul_(group["momentum"]).add_(d)
                p.add_(mu, alpha=-group["lr"])
        return loss


@dataclass(frozen=True)
class ProbeResult:
    """What :func:`linear_probe` measured (accuracies in percent, as the official logs)."""

    top1: float  # on the held-out split
    train_top1: float
    num_train: int
    num_test: int
    num_classes: int
    epochs: int
    lr: float


def _as_vit(model):
    """The fine-tuning ViT (no head, cls-token features) for a ``MaskedAutoencoderViT``; a ViT as it is."""
    from .model import MaskedAutoencoderViT
    from .vit import VisionTransformer

    if isinstance(model, VisionTransformer):
        return model
    if not isinstance(model, MaskedAutoencoderViT):
        raise TypeError(f"expected a fastmae VisionTransformer or MaskedAutoencoderViT, got {type(model).__name__}")
    # Built on the CPU under a forked RNG: its init draws are overwritten anyway, the caller's RNG stays.
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        vit = VisionTransformer.from_checkpoint(model.state_dict(), num_classes=0, img_size=model.img_size,
                                                num_heads=model.blocks[0].attn.num_heads, global_pool=False)
    return vit.to(model.cls_token.device)


@torch.no_grad()
def encoder_features(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Frozen-encoder features: ``images [N, C, H, W]`` -> ``[N, D]`` float32, on the images' device.

    ``model``: a ``VisionTransformer`` (its ``forward_features``: the cls token after ``norm``, or
    the pooled ``fc_norm`` with global pooling) or a ``MaskedAutoencoderViT`` (its encoder, unmasked,
    cls token after ``norm``: the official linear probe's features). Run in eval mode.
    """
    vit = _as_vit(model)
    was_training = vit.training
    vit.eval()
    try:
        device = vit.cls_token.device
        chunks = [vit.forward_features(images[i:i + batch_size].to(device)).float()
                  for i in range(0, images.shape[0], batch_size)]
    finally:
        vit.train(was_training)
    return torch.cat(chunks).to(images.device)


def _split(n: int, holdout: float, generator: torch.Generator):
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    order = torch.randperm(n, generator=generator, device="cpu")  # the generator's device, whatever the default
    n_test = max(1, int(round(n * holdout)))
    return order[n_test:], order[:n_test]


def _top1(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    head.eval()
    with torch.no_grad():
        return 100.0 * (head(x).argmax(dim=1) == y).float().mean().item()


def linear_probe(model, images: torch.Tensor, labels: torch.Tensor, *, test: tuple | None = None,
                 holdout: float = 0.2, num_classes: int | None = None, epochs: int = 90, warmup_epochs: int = 10,
                 batch_size: int = 256, blr: float = 0.1, lr: float | None = None, min_lr: float = 0.0,
                 weight_decay: float = 0.0, reference_batch: int = OFFICIAL_BATCH, seed: int = 0) -> ProbeResult:
    """Train the official linear probe on a frozen encoder and report held-out top-1.

    Args:
        model: the frozen encoder (see :func:`encoder_features`); it is not modified.
        images: ``[N, C, H, W]`` inputs as the encoder expects them (normalised, its size).
        labels: ``[N]`` integer class indices.
        test: ``(images, labels)`` to evaluate on; without it a ``holdout`` fraction of ``images``
            (a seeded random split) is held out.
        num_classes: defaults to ``labels.max() + 1`` (over both splits).
        epochs, warmup_epochs, batch_size, blr, lr, min_lr, weight_decay: the official recipe's; the
            batch is capped at the train size.
        reference_batch: ``lr = blr * reference_batch / 256`` unless ``lr`` is given: the official
            batch by default (see the module docstring for why not ``batch_size``).
        seed: the split, the head's init and the batch order (a local generator: the global RNG
            is untouched).
    Returns:
        A :class:`ProbeResult`.
    """
    gen = torch.Generator().manual_seed(seed)
    feats = encoder_features(model, images)
    labels = labels.to(feats.device).long()
    if test is None:
        train_idx, test_idx = (i.to(feats.device) for i in _split(feats.shape[0], holdout, gen))
        x_train, y_train, x_test, y_test = feats[train_idx], labels[train_idx], feats[test_idx], labels[test_idx]
    else:
        x_train, y_train = feats, labels
        x_test, y_test = encoder_features(model, test[0]), test[1].to(feats.device).long()
    classes = num_classes or int(max(y_train.max(), y_test.max())) + 1
    batch = min(batch_size, x_train.shape[0])
    if batch < 2:
        raise ValueError("the probe needs at least 2 training images (BatchNorm in training mode)")
    lr = blr * reference_batch / 256 if lr is None else lr

    # Built and initialised on the CPU, where ``gen`` draws (a CUDA default device would put the head
    # there), under a forked RNG: nn.Linear's default init would draw from the global RNG.
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        head = nn.Sequential(nn.BatchNorm1d(feats.shape[1], affine=False, eps=1e-6), nn.Linear(feats.shape[1], classes))
        nn.init.trunc_normal_(head[1].weight, std=0.01, generator=gen)
        nn.init.zeros_(head[1].bias)
    head = head.to(feats.device)
    opt = LARS(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = x_train.shape[0] // batch  # drop_last, as the official loader
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(x_train.shape[0], generator=gen, device="cpu").to(feats.device)
        for i in range(steps):
            t = epoch + i / steps  # per-iteration schedule: warmup, then half-cosine
            cur = lr * t / warmup_epochs if t < warmup_epochs else min_lr + (lr - min_lr) * 0.5 * (
                1.0 + math.cos(math.pi * (t - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)))
            for group in opt.param_groups:
                group["lr"] = cur
            idx = order[i * batch:(i + 1) * batch]
            loss = F.cross_entropy(head(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return ProbeResult(top1=_top1(head, x_test, y_test), train_top1=_top1(head, x_train, y_train),
                       num_train=x_train.shape[0], num_test=x_test.shape[0], num_classes=classes,
                       epochs=epochs, lr=lr)
