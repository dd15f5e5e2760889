"""What a state dict holds: a full MAE, an encoder-only MAE or a fine-tuned ViT, and which factory fits.

The official release has three kinds of files, all with official key names:

* ``"mae"`` — a full pretraining model: encoder, ``mask_token`` and decoder (what ``main_pretrain``
  saves as ``checkpoint-N.pth``, what ``fastmae pretrain`` writes, and the official visualisation
  files ``mae_visualize_vit_{base,large}.pth``, the official downloads that reconstruct images);
* ``"mae_encoder"`` — the encoder alone: ``cls_token, pos_embed, patch_embed.proj.*, blocks.N.*`` and
  the final ``norm.*``; no ``mask_token``, no decoder, no ``fc_norm``, no head (the official
  ``mae_pretrain_vit_{base,large,huge}.pth`` downloads: for ViT-B, the 104 decoder keys are absent);
* ``"vit"`` — a fine-tuned classifier (``models_vit``): the encoder plus ``head.*``, with
  ``fc_norm.*`` instead of ``norm.*`` when it was fine-tuned with global pooling (the official
  ``mae_finetuned_vit_*.pth``).

:func:`inspect_state_dict` tells them apart and matches the shapes against the fastmae factories
(the state dict does not hold the number of heads; the factory does). :func:`load_mae_encoder`
loads an encoder-only dict into a ``MaskedAutoencoderViT`` strictly and says what it left alone.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .pos_embed import square_side

__all__ = ["KINDS", "StateInfo", "encoder_of", "inspect_state_dict", "load_mae_encoder", "mae_factory_shapes",
           "is_decoder_key", "official_rank", "preview", "state_dict_of", "unplaced_error"]

KINDS = ("mae", "mae_encoder", "vit")
BLOCK_PARTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")  # official order
OFFICIAL_BLOCK = re.compile(r"^(blocks|decoder_blocks)\.(\d+)\.(" + "|".join(re.escape(p) for p in BLOCK_PARTS)
                            + r")\.(weight|bias)$")
ENCODER_FIXED = ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias")
DECODER_FIXED = ("mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias",
                 "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias")
NORM = ("norm.weight", "norm.bias")
FC_NORM = ("fc_norm.weight", "fc_norm.bias")
HEAD = ("head.weight", "head.bias")
# The fine-tuning model built from each MAE factory's encoder (fastmae.vit names them the same way).
VIT_OF_MAE = {"mae_vit_base_patch16": "vit_base_patch16", "mae_vit_large_patch16": "vit_large_patch16",
              "mae_vit_huge_patch14": "vit_huge_patch14", "mae_vit_tiny_patch4": "vit_tiny_patch4",
              "mae_vit_micro_patch4": "vit_micro_patch4"}
# The official files with a decoder (pixel targets), for messages about encoder-only files.
OFFICIAL_WITH_DECODER = ("mae_visualize_vit_base.pth or mae_visualize_vit_large.pth "
                         "(dl.fbaipublicfiles.com/mae/visualize/)")


def preview(keys, most: int = 12, quote: bool = True) -> str:
    """The first ``most`` of ``keys``, comma-separated, then ``... (N more)`` for the rest."""
    keys = list(keys)
    shown = ", ".join(repr(k) if quote else k for k in keys[:most])
    return shown + (f", ... ({len(keys) - most} more)" if len(keys) > most else "")


def unplaced_error(what: str, keys, hint: str = "") -> ValueError:
    """A ``ValueError`` that names (up to 12 of) the ``keys`` that could not be placed."""
    keys = list(keys)
    return ValueError(f"{what}: {len(keys)} key(s) could not be placed: {preview(keys)}"
                      + (f". {hint}" if hint else ""))


def is_decoder_key(key: str) -> bool:
    """Whether ``key`` belongs to the MAE decoder side (``mask_token``, ``decoder_*``)."""
    return key in DECODER_FIXED or key.startswith("decoder_blocks.")


def encoder_of(state_dict) -> dict[str, torch.Tensor]:
    """The entries of a MAE state dict that are not the decoder's (``mask_token``, ``decoder_*``
    dropped): a full MAE's encoder in the layout of the official encoder-only files."""
    return {k: v for k, v in state_dict_of(state_dict).items() if not is_decoder_key(k)}


def state_dict_of(obj) -> dict[str, torch.Tensor]:
    """The state dict in ``obj``: a checkpoint ``{'model': state_dict, ...}`` or a bare state dict.

    Training state beside ``'model'`` (optimizer, scaler, RNG, args) is left out.
    """
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("expected a state dict {name: tensor} or a checkpoint {'model': state_dict, ...}")
    return dict(obj)


def official_rank(key: str) -> tuple:
    """Sort key that puts official names in ``models_mae``'s ``state_dict()`` order."""
    head = ("cls_token", "pos_embed", "mask_token", "decoder_pos_embed", "patch_embed.proj.weight",
            "patch_embed.proj.bias")
    if key in head:
        return (head.index(key),)
    m = OFFICIAL_BLOCK.match(key)
    if m:
        which, index, part, kind = m.groups()
        group = 10 if which == "blocks" else 30
        return (group, int(index), BLOCK_PARTS.index(part), kind != "weight")
    tail = {"norm": 20, "fc_norm": 21, "head": 22, "decoder_embed": 25, "decoder_norm": 40, "decoder_pred": 41}
    module, _, kind = key.rpartition(".")
    return (tail.get(module, 50), 0, 0, kind != "weight", key)


@dataclass(frozen=True)
class StateInfo:
    """What :func:`inspect_state_dict` found. Shapes come from the tensors; ``factory`` from matching them."""

    kind: str  # one of KINDS
    embed_dim: int
    depth: int
    patch_size: int
    in_chans: int
    num_patches: int  # L, the position table's rows minus the cls row
    mlp_hidden: int
    decoder_embed_dim: int | None = None  # "mae" only
    decoder_depth: int | None = None  # "mae" only
    num_classes: int | None = None  # "vit" only
    global_pool: bool | None = None  # "vit" only: fine-tuned with fc_norm
    factory: str | None = None  # the fastmae.MODELS name whose shapes fit (None: none does)

    @property
    def img_size(self) -> int | None:
        """The image side the position table was built for (None unless the grid is square)."""
        side = square_side(self.num_patches)
        return None if side is None else side * self.patch_size

    @property
    def vit_factory(self) -> str | None:
        """The ``fastmae.vit`` factory with this encoder (``vit_base_patch16`` ...)."""
        return VIT_OF_MAE.get(self.factory)


def _blocks(state, which: str) -> int:
    """Depth of the ``which`` stack; every block 0..depth-1 must be complete."""
    found = {}
    for key in state:
        m = OFFICIAL_BLOCK.match(key)
        if m and m.group(1) == which:
            found.setdefault(int(m.group(2)), set()).add(f"{m.group(3)}.{m.group(4)}")
    depth = max(found) + 1 if found else 0
    want = {f"{p}.{k}" for p in BLOCK_PARTS for k in ("weight", "bias")}
    missing = [f"{which}.{i}.{name}" for i in range(depth) for name in sorted(want - found.get(i, set()))]
    if missing:
        raise ValueError(f"incomplete {which}: missing {', '.join(missing[:12])}"
                         + (f" ... ({len(missing)} in all)" if len(missing) > 12 else ""))
    return depth


def inspect_state_dict(state_dict) -> StateInfo:
    """The kind of an official-layout state dict (see the module docstring) and the factory it fits.

    Args:
        state_dict: a state dict or checkpoint ``{'model': ...}`` with official (fastmae) keys.
    Returns:
        A :class:`StateInfo`.
    Raises:
        ValueError: a key of no kind (Hugging Face names, say: see ``fastmae.convert.from_hf``), an
            incomplete encoder or decoder, or a mix of decoder and fine-tuning head; the message
            names the keys.
    """
    state = state_dict_of(state_dict)
    known = set(ENCODER_FIXED + DECODER_FIXED + NORM + FC_NORM + HEAD)
    unplaced = [k for k in state if k not in known and not OFFICIAL_BLOCK.match(k)]
    if unplaced:
        hf = any(k.startswith(("vit.", "decoder.", "embeddings.")) for k in unplaced)
        raise unplaced_error("not an official MAE or ViT state dict", unplaced,
                             "These look like Hugging Face names: fastmae.convert.from_hf converts them" if hf else "")
    missing = [k for k in ENCODER_FIXED if k not in state]
    if missing:
        raise ValueError(f"no encoder: missing {', '.join(missing)}")
    depth = _blocks(state, "blocks")
    decoder = [k for k in DECODER_FIXED if k in state] + [k for k in state if k.startswith("decoder_blocks.")]
    finetune = [k for k in FC_NORM + HEAD if k in state]
    if decoder and finetune:
        raise ValueError(f"both a decoder ({decoder[0]}) and a fine-tuning head ({finetune[0]}): not one model")
    w = state["patch_embed.proj.weight"]  # [D, C, p, p]
    shapes = dict(embed_dim=w.shape[0], depth=depth, patch_size=w.shape[-1], in_chans=w.shape[1],
                  num_patches=state["pos_embed"].shape[1] - 1,
                  mlp_hidden=state["blocks.0.mlp.fc1.weight"].shape[0] if depth else 0)
    if decoder:
        absent = [k for k in DECODER_FIXED if k not in state]
        if absent:
            raise ValueError(f"incomplete decoder: missing {', '.join(absent)}")
        if not all(k in state for k in NORM):
            raise ValueError("a MAE without the encoder's final norm (norm.weight, norm.bias)")
        shapes.update(decoder_embed_dim=state["mask_token"].shape[-1], decoder_depth=_blocks(state, "decoder_blocks"))
        return StateInfo("mae", **shapes, factory=_match(shapes))
    norms = [k for k in NORM + FC_NORM if k in state]
    if norms not in (list(NORM), list(FC_NORM)):
        raise ValueError(f"expected the final norm.* or fc_norm.* (one pair), found {norms or 'neither'}")
    if finetune:
        head = state.get("head.weight")
        return StateInfo("vit", **shapes, num_classes=None if head is None else head.shape[0],
                         global_pool=norms == list(FC_NORM), factory=_match(shapes))
    return StateInfo("mae_encoder", **shapes, factory=_match(shapes))


@functools.lru_cache(maxsize=None)
def mae_factory_shapes() -> dict[str, dict]:
    """Each fastmae MAE factory's shapes and heads (built on the meta device: no memory, no init)."""
    from .model import MODELS

    seen, out = set(), {}
    for name, make in MODELS.items():
        if make in seen:  # the *_dec512d8b aliases: keep the recommended name
            continue
        seen.add(make)
        with torch.device("meta"):
            m = make()
        out[name] = dict(embed_dim=m.cls_token.shape[-1], depth=len(m.blocks), patch_size=m.patch_size,
                         in_chans=m.in_chans, num_patches=m.patch_embed.num_patches,
                         mlp_hidden=m.blocks[0].mlp.fc1.out_features, num_heads=m.blocks[0].attn.num_heads,
                         decoder_embed_dim=m.mask_token.shape[-1], decoder_depth=len(m.decoder_blocks),
                         decoder_num_heads=m.decoder_blocks[0].attn.num_heads, img_size=m.img_size,
                         layer_norm_eps=m.norm.eps)
    return out


def _match(shapes: dict) -> str | None:
    # in_chans is not a factory's: every factory takes any (multi-band data), so it does not decide the match
    keys = ("embed_dim", "depth", "patch_size", "mlp_hidden", "decoder_embed_dim", "decoder_depth")
    for name, f in mae_factory_shapes().items():
        if all(shapes.get(k) is None or shapes[k] == f[k] for k in keys):
            return name
    return None


def load_mae_encoder(model: torch.nn.Module, state_dict) -> list[str]:
    """Load an encoder-only (``"mae_encoder"``) state dict into a ``MaskedAutoencoderViT``, strictly.

    Every encoder parameter of ``model`` must be in the dict with its shape, and nothing else may
    be; the decoder and ``mask_token`` keep what they hold (their initialisation).

    Returns:
        The names of ``model``'s state that were not loaded (``mask_token``, ``decoder_*``), for
        the caller's warning.
    Raises:
        ValueError: the dict is not encoder-only, or does not fit ``model`` (names the keys).
    """
    state = state_dict_of(state_dict)
    info = inspect_state_dict(state)
    if info.kind != "mae_encoder":
        raise ValueError(f"expected an encoder-only MAE state dict, got a {info.kind!r} one")
    own = model.state_dict()
    encoder = [k for k in own if k in ENCODER_FIXED + NORM or k.startswith("blocks.")]
    missing = [k for k in encoder if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in state
             if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{what}: {preview(keys, 8, quote=False)}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if keys]
        raise ValueError("the encoder does not fit this model (" + "; ".join(parts) + ")")
    model.load_state_dict(state, strict=False)
    return [k for k in own if k not in state]
