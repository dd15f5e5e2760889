"""``VisionTransformer``: the fine-tuning ViT of the official MAE (``models_vit.py``), and layer-wise lr decay.

Same state-dict keys as the official model (timm's ``VisionTransformer``): ``cls_token, pos_embed,
patch_embed.proj.*, blocks.N.*, norm.*`` (or ``fc_norm.*`` with ``global_pool``), ``head.*``. So
official fine-tuned checkpoints load strictly, and MAE pretraining checkpoints (full or
encoder-only, official or fastmae) load as ``main_finetune`` loads them (:meth:`load_pretrained`).

Semantics (official): patch embed, prepend cls, ``+ pos_embed`` (a trained parameter here), blocks
with stochastic depth (rates ``linspace(0, drop_path_rate, depth)``), then either ``norm`` and the cls
token or, with ``global_pool``, the mean of the patch tokens and ``fc_norm``; then ``head``. The head
starts as ``main_finetune`` leaves it: ``trunc_normal_(std=2e-5)``, bias 0 (``head_init_std``).
"""

from __future__ import annotations

import os
from functools import partial

import torch
import torch.nn as nn

from . import _validate as check
from .state_dicts import FC_NORM, HEAD, inspect_state_dict, mae_factory_shapes, state_dict_of
from .layers import Block, PatchEmbed
from .pos_embed import interpolate_pos_embed

__all__ = ["VisionTransformer", "VIT_MODELS", "create_vit", "param_groups_lrd", "vit_base_patch16",
           "vit_huge_patch14", "vit_large_patch16", "vit_micro_patch4", "vit_tiny_patch4"]


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a sample's residual branch with probability ``p``, scale the rest by ``1/(1-p)``.

    ``x [N, ...]``: one draw per sample (``torch.rand(N)``), as timm's ``drop_path``.
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)).floor_()
    return x / keep * mask


class FinetuneBlock(Block):
    """The pre-norm ``Block`` with stochastic depth on both residual branches (same parameter names)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_layer=nn.LayerNorm, drop_path: float = 0.0):
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, norm_layer)
        self.drop_path_rate = float(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class VisionTransformer(nn.Module):
    """The official MAE fine-tuning ViT (``models_vit.VisionTransformer`` on timm 0.3.2).

    Args:
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the
            encoder (``img_size`` may be ``(H, W)``).
        num_classes: the head's outputs; 0 gives no head (``forward`` returns the features).
        drop_path_rate: stochastic depth of the last block (the official fine-tuning uses 0.1 for
            ViT-B, 0.2 for L and H); the rates grow linearly from 0 over the blocks.
        norm_layer: LayerNorm with eps 1e-6 by default (timm 0.3.2's and the official factories').
        global_pool: average the patch tokens and apply ``fc_norm`` (the official fine-tuning
            default) instead of taking the cls token after ``norm`` (the linear probe's).
        head_init_std: the head's weight is ``trunc_normal_(std=head_init_std)``; 2e-5 as
            ``main_finetune``, 0.01 as ``main_linprobe``.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.0, norm_layer=None,
                 global_pool=False, head_init_std=2e-5):
        super().__init__()
        check.patch_size(patch_size)
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.in_chans, self.num_classes, self.global_pool = in_chans, num_classes, bool(global_pool)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # timm 0.3.2 decay rule
        self.blocks = nn.ModuleList([FinetuneBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_layer, r)
                                     for r in rates])
        if self.global_pool:
            self.fc_norm = norm_layer(embed_dim)
        else:
            self.norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head_init_std = head_init_std
        self._init_weights(head_init_std)

    def _init_weights(self, head_init_std):
        # timm 0.3.2's VisionTransformer init; the conv keeps PyTorch's default, as there.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=head_init_std)

    @staticmethod
    def no_weight_decay() -> set[str]:
        """Parameters the official optimiser never decays (besides every 1-D one)."""
        return {"pos_embed", "cls_token"}

    @property
    def embed_dim(self) -> int:
        return self.cls_token.shape[-1]

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """``imgs [N, C, H, W]`` (the size the model was built for) -> ``features [N, D]``."""
        check.images("imgs", imgs, self.patch_embed.patch_size, self.in_chans)
        if tuple(imgs.shape[-2:]) != self.patch_embed.img_size:
            raise ValueError(f"imgs are {imgs.shape[-2]}x{imgs.shape[-1]}, the model is built for "
                             f"{self.patch_embed.img_size[0]}x{self.patch_embed.img_size[1]}")
        x = self.patch_embed(imgs)  # [N, L, D]
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed  # [N, L+1, D]
        for blk in self.blocks:
            x = blk(x)
        if self.global_pool:
            return self.fc_norm(x[:, 1:, :].mean(dim=1))  # patch tokens only
        return self.norm(x)[:, 0]

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """``imgs [N, C, H, W]`` -> ``logits [N, num_classes]`` (``[N, D]`` with no head)."""
        return self.head(self.forward_features(imgs))

    # ---------------------------------------------------------------------------------------------
    # pretrained weights
    # ---------------------------------------------------------------------------------------------

    def load_pretrained(self, checkpoint) -> dict[str, list[str]]:
        """Load a MAE pretraining checkpoint (full or encoder-only) or a fine-tuned ViT, as ``main_finetune`` does.

        A head of another shape is dropped; a position table for another grid is resized
        bicubically (``interpolate_pos_embed``, the official ``util/pos_embed``); the decoder and
        ``mask_token`` are left out; with ``global_pool`` a pretraining ``norm`` is left out and
        ``fc_norm`` keeps its fresh init (1, 0). The head, when not loaded, is re-initialised
        (``head_init_std``).

        Args:
            checkpoint: a path (read with ``weights_only=True``), a checkpoint ``{'model': ...}`` or
                a state dict, with official (fastmae) keys.
        Returns:
            ``{'missing': [...], 'ignored': [...]}``: this model's keys not loaded (the head, and
            ``fc_norm`` with global pooling) and the checkpoint's keys not used.
        Raises:
            ValueError: anything else missing or of another shape (names the keys).
        """
        from .checkpoint_files import read_checkpoint

        obj = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
        state = state_dict_of(obj)
        info = inspect_state_dict(state)
        own = self.state_dict()
        keep = [k for k in state if k in own and not (k in HEAD and state[k].shape != own[k].shape)]
        load = {k: state[k] for k in keep}
        grid = self.patch_embed.grid_size
        if load["pos_embed"].shape != own["pos_embed"].shape:
            load["pos_embed"] = interpolate_pos_embed(load["pos_embed"], grid)
        wrong = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in load.items() if v.shape != own[k].shape]
        allowed = set(HEAD) | (set(FC_NORM) if self.global_pool else set())
        missing = [k for k in own if k not in load]
        if wrong or set(missing) - allowed:
            bad = wrong + [k for k in missing if k not in allowed]
            raise ValueError(f"the {info.kind!r} checkpoint does not fit this model: {', '.join(bad[:8])}"
                             + (f" ... ({len(bad)})" if len(bad) > 8 else ""))
        self.load_state_dict(load, strict=False)
        if isinstance(self.head, nn.Linear) and "head.weight" not in load:
            nn.init.trunc_normal_(self.head.weight, std=self.head_init_std)
            nn.init.zeros_(self.head.bias)
        return {"missing": missing, "ignored": [k for k in state if k not in load]}

    @classmethod
    def from_checkpoint(cls, checkpoint, num_classes: int = 1000, **overrides) -> "VisionTransformer":
        """Build the ViT whose encoder fits ``checkpoint`` (by shapes) and :meth:`load_pretrained` it.

        ``overrides`` (``global_pool``, ``drop_path_rate``, ``img_size``, ``num_heads`` when no
        factory fits ...) go to the constructor. The image size defaults to the checkpoint's grid.
        """
        from .checkpoint_files import read_checkpoint

        obj = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
        info = inspect_state_dict(obj)
        config = dict(patch_size=info.patch_size, in_chans=info.in_chans, embed_dim=info.embed_dim,
                      depth=info.depth, mlp_ratio=info.mlp_hidden / info.embed_dim)
        if info.factory is not None:
            config["num_heads"] = mae_factory_shapes()[info.factory]["num_heads"]
        if info.img_size is not None:
            config["img_size"] = info.img_size
        if info.kind == "vit" and "global_pool" not in overrides:
            config["global_pool"] = info.global_pool
        config.update(num_classes=num_classes, **overrides)
        if "num_heads" not in config:
            raise ValueError("no fastmae factory has this encoder's shapes: pass num_heads=")
        model = cls(**config)
        model.load_pretrained(obj)
        return model


# -------------------------------------------------------------------------------------------------
# factories (the official models_vit ones, and the encoders of fastmae's small MAE factories)
# -------------------------------------------------------------------------------------------------


def _factory(**config):
    def make(**kwargs):
        return VisionTransformer(**{**config, "mlp_ratio": 4, "qkv_bias": True, **kwargs})
    return make


vit_base_patch16 = _factory(patch_size=16, embed_dim=768, depth=12, num_heads=12)
vit_large_patch16 = _factory(patch_size=16, embed_dim=1024, depth=24, num_heads=16)
vit_huge_patch14 = _factory(patch_size=14, embed_dim=1280, depth=32, num_heads=16)
vit_tiny_patch4 = _factory(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4)
vit_micro_patch4 = _factory(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2)

VIT_MODELS = {"vit_base_patch16": vit_base_patch16, "vit_large_patch16": vit_large_patch16,
              "vit_huge_patch14": vit_huge_patch14, "vit_tiny_patch4": vit_tiny_patch4,
              "vit_micro_patch4": vit_micro_patch4}


def create_vit(name: str, **kwargs) -> VisionTransformer:
    """Build a fine-tuning ViT by factory name (see ``VIT_MODELS``); keyword arguments override."""
    if name not in VIT_MODELS:
        raise ValueError(f"unknown ViT {name!r}; choose one of: {', '.join(VIT_MODELS)}")
    return VIT_MODELS[name](**kwargs)


# -------------------------------------------------------------------------------------------------
# layer-wise learning-rate decay (official util/lr_decay.py, after BEiT)
# -------------------------------------------------------------------------------------------------


def _layer_id(name: str, num_layers: int) -> int:
    """0 for the embedding (cls, positions, patch embed), ``i + 1`` for block ``i``, ``num_layers`` after."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups_lrd(model: nn.Module, weight_decay: float = 0.05, no_weight_decay_list=None,
                     layer_decay: float = 0.75) -> list[dict]:
    """Optimizer parameter groups with layer-wise learning-rate decay, as the official fine-tuning builds them.

    Args:
        model: a :class:`VisionTransformer` (anything with ``blocks`` and official names).
        weight_decay: for parameters of 2 or more dimensions not in ``no_weight_decay_list``.
        no_weight_decay_list: names never decayed; None takes ``model.no_weight_decay()`` (as
            ``main_finetune`` passes), or nothing when the model has no such method.
        layer_decay: layer ``l`` of ``depth + 1`` gets ``lr_scale = layer_decay ** (depth + 1 - l)``.
    Returns:
        One dict per (layer, decay) pair, in first-seen order: ``{'lr_scale', 'weight_decay',
        'params'}``; frozen parameters are left out. Pass to ``torch.optim.AdamW``; the schedule
        multiplies each group's lr by its ``lr_scale``.
    """
    if no_weight_decay_list is None:
        no_weight_decay_list = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    num_layers = len(model.blocks) + 1
    scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim == 1 or name in no_weight_decay_list
        layer = _layer_id(name, num_layers)
        group = groups.setdefault(f"layer_{layer}_{'no_decay' if no_decay else 'decay'}", {
            "lr_scale": scales[layer], "weight_decay": 0.0 if no_decay else weight_decay, "params": []})
        group["params"].append(p)
    return list(groups.values())
