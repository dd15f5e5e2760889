"""State-dict converters between fastmae (= official MAE) keys, Hugging Face ViTMAE and timm.

fastmae's keys are the official ``models_mae`` ones (``blocks.N.attn.qkv``, ``decoder_blocks.N...``).
Hugging Face's ``ViTMAEForPreTraining`` names the same tensors in three ways, all handled here
(:data:`HF_LAYOUTS`), and splits the fused ``qkv`` into ``query``/``key``/``value``:

``"module"``  the module names of transformers >= 5 (``vit.layers.N.attention.q_proj``,
              ``...mlp.fc1``): what ``model.state_dict()`` holds and ``load_state_dict`` wants;
``"hub"``     the names in hub checkpoints (``facebook/vit-mae-base``) and the module names of
              transformers 4 (``vit.encoder.layer.N.attention.attention.query``,
              ``...intermediate.dense``, decoder blocks under ``decoder.decoder_layers.N``);
``"saved"``   what transformers 5 ``save_pretrained`` writes: the hub names, except that the decoder
              blocks land under ``decoder.decoder_encoder.layer.N`` (its reverse renaming of
              ``encoder.layer.`` -> ``layers.`` also rewrites ``decoder_layers.``).

``from_pretrained`` of transformers 5 loads all three. A ``ViTMAEModel`` (the encoder alone) uses the
same names without the ``vit.`` prefix (``base_model=True``). :func:`hf_layout` tells which one a
dict is in. timm's ``VisionTransformer`` uses the official encoder names (:func:`to_timm`).

Every converter returns a new dict whose tensors are the input's (not copies), except the split
or concatenated attention projections; round trips are bitwise. A dict with a key a converter
cannot place is refused with a ``ValueError`` naming those keys. What kind of model a dict holds
(full MAE, encoder only, fine-tuned ViT) is ``fastmae.state_dicts``; :func:`export` writes files.
"""

from __future__ import annotations

import json
import os
import re

import torch

from .state_dicts import (DECODER_FIXED, OFFICIAL_BLOCK, inspect_state_dict, mae_factory_shapes, official_rank,
                          state_dict_of, unplaced_error)
from .checkpoint_files import checkpoint_args, read_checkpoint

__all__ = ["EXPORT_FORMATS", "HF_FILES", "HF_LAYOUTS", "export", "from_hf", "hf_config", "hf_layout",
           "timm_model_name", "to_hf", "to_timm"]

HF_LAYOUTS = ("module", "hub", "saved")

# "attn.qkv" (one of BLOCK_PARTS) is split into these three for HF.
_QKV = ("query", "key", "value")
# Official block part -> HF block part, per layout; the hub and saved layouts share their names.
_HF_PARTS = {
    "module": {"norm1": "layernorm_before", "attn.proj": "attention.o_proj", "norm2": "layernorm_after",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
               "query": "attention.q_proj", "key": "attention.k_proj", "value": "attention.v_proj"},
    "hub": {"norm1": "layernorm_before", "attn.proj": "attention.output.dense", "norm2": "layernorm_after",
            "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
            "query": "attention.attention.query", "key": "attention.attention.key",
            "value": "attention.attention.value"},
}
_HF_PARTS["saved"] = _HF_PARTS["hub"]
# Where the encoder and decoder blocks live, per layout (ViTMAEForPreTraining names).
_HF_BLOCKS = {
    "module": ("vit.layers.", "decoder.decoder_layers."),
    "hub": ("vit.encoder.layer.", "decoder.decoder_layers."),
    "saved": ("vit.encoder.layer.", "decoder.decoder_encoder.layer."),
}
# Official names outside the blocks -> HF names (the same in every layout).
_HF_FIXED = {
    "cls_token": "vit.embeddings.cls_token",
    "pos_embed": "vit.embeddings.position_embeddings",
    "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "vit.layernorm.weight",
    "norm.bias": "vit.layernorm.bias",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_embed.weight": "decoder.decoder_embed.weight",
    "decoder_embed.bias": "decoder.decoder_embed.bias",
    "decoder_norm.weight": "decoder.decoder_norm.weight",
    "decoder_norm.bias": "decoder.decoder_norm.bias",
    "decoder_pred.weight": "decoder.decoder_pred.weight",
    "decoder_pred.bias": "decoder.decoder_pred.bias",
}


def _hf_name(key: str, layout: str, base_model: bool) -> list[str] | None:
    """The HF name(s) of one official key (three for a fused qkv), or None when it has none."""
    if key in _HF_FIXED:
        names = [_HF_FIXED[key]]
    else:
        m = OFFICIAL_BLOCK.match(key)
        if m is None:
            return None
        which, index, part, kind = m.groups()
        prefix = _HF_BLOCKS[layout][which == "decoder_blocks"] + index + "."
        parts = _QKV if part == "attn.qkv" else (part,)
        names = [f"{prefix}{_HF_PARTS[layout][q]}.{kind}" for q in parts]
    if base_model:
        if not names[0].startswith("vit."):
            return None  # a ViTMAEModel holds no decoder
        names = [n[len("vit."):] for n in names]
    return names


def to_hf(state_dict, layout: str = "module", base_model: bool = False) -> dict[str, torch.Tensor]:
    """Official (fastmae) keys -> Hugging Face ViTMAE keys.

    Args:
        state_dict: a full MAE state dict, or an encoder-only one (then only ``vit.*`` keys come
            out: load it with ``strict=False``, or into a ``ViTMAEModel`` with ``base_model=True``);
            a checkpoint ``{'model': ...}`` is unwrapped.
        layout: one of :data:`HF_LAYOUTS`; ``"module"`` loads strictly into the installed
            transformers (>= 5), ``"hub"`` is what hub files hold (and transformers 4's modules).
        base_model: names for a ``ViTMAEModel`` (no ``vit.`` prefix, no decoder keys allowed).
    Returns:
        A new dict. ``attn.qkv`` ``[3D, D]`` becomes ``query``/``key``/``value`` ``[D, D]`` each
        (rows ``[0, D)``, ``[D, 2D)``, ``[2D, 3D)``; copied, so no two tensors share memory and the
        result can be written with safetensors); every other tensor is the input's.
    Raises:
        ValueError: a key with no HF name (a fine-tuning head, ``fc_norm``), named in the message.
    """
    if layout not in HF_LAYOUTS:
        raise ValueError(f"layout must be one of {HF_LAYOUTS}, got {layout!r}")
    state = state_dict_of(state_dict)
    out, unplaced = {}, []
    for key, value in state.items():
        names = _hf_name(key, layout, base_model)
        if names is None:
            unplaced.append(key)
        elif len(names) == 1:
            out[names[0]] = value
        else:
            if value.shape[0] % 3:
                raise ValueError(f"{key} has {value.shape[0]} rows, not 3 * embed_dim")
            for name, part in zip(names, value.chunk(3, dim=0)):
                out[name] = part.clone()
    if unplaced:
        target = "ViTMAEModel" if base_model else "ViTMAEForPreTraining"
        raise unplaced_error(f"to_hf: no {target} name", unplaced,
                             "A fine-tuned ViT (head, fc_norm) has no ViTMAE counterpart")
    return out


def _parse_hf(state: dict, layout: str, base_model: bool):
    """Official dict from HF keys in one (layout, base_model); returns (official, unplaced keys)."""
    reverse = {}
    for key in _HF_FIXED:
        names = _hf_name(key, layout, base_model)
        if names is not None:
            reverse[names[0]] = key
    enc, dec = _HF_BLOCKS[layout]
    if base_model:
        enc, dec = enc[len("vit."):], None
    parts = {hf: part for part, hf in _HF_PARTS[layout].items()}
    block = re.compile(r"^(" + "|".join(re.escape(p) for p in (enc, dec) if p) + r")(\d+)\.(.+)\.(weight|bias)$")
    out, qkv, unplaced = {}, {}, []
    for key, value in state.items():
        if key in reverse:
            out[reverse[key]] = value
            continue
        m = block.match(key)
        part = parts.get(m.group(3)) if m else None
        if part is None:
            unplaced.append(key)
            continue
        official = f"{'blocks' if m.group(1) == enc else 'decoder_blocks'}.{m.group(2)}"
        if part in _QKV:
            qkv.setdefault((official, m.group(4)), {})[part] = (key, value)
        else:
            out[f"{official}.{part}.{m.group(4)}"] = value
    for (official, kind), got in qkv.items():
        if len(got) < 3:
            unplaced.extend(k for k, _ in got.values())  # a lone query without its key and value
            continue
        out[f"{official}.attn.qkv.{kind}"] = torch.cat([got[q][1] for q in _QKV], dim=0)
    return out, unplaced


def _candidates():
    return [(layout, base) for base in (False, True) for layout in HF_LAYOUTS]


def hf_layout(state_dict) -> tuple[str, bool]:
    """Which Hugging Face layout ``state_dict`` is in: ``(layout, base_model)``.

    ``layout`` is one of :data:`HF_LAYOUTS`; ``base_model`` is True for ``ViTMAEModel`` names (no
    ``vit.`` prefix). A dict whose names fit two layouts equally (no decoder blocks, so ``"hub"``
    and ``"saved"`` coincide) is reported as the first in :data:`HF_LAYOUTS` order.

    Raises:
        ValueError: no layout places every key; the message names the keys the closest one could not.
    """
    state = state_dict_of(state_dict)
    best = None
    for layout, base in _candidates():
        _, unplaced = _parse_hf(state, layout, base)
        if not unplaced:
            return layout, base
        if best is None or len(unplaced) < len(best[2]):
            best = (layout, base, unplaced)
    layout, base, unplaced = best
    looks_official = any(OFFICIAL_BLOCK.match(k) or k in _HF_FIXED for k in unplaced)
    hint = ("These are official (fastmae) names: use to_hf" if looks_official else
            f"Closest: the {layout!r} layout" + (" of a ViTMAEModel" if base else ""))
    raise unplaced_error("not a Hugging Face ViTMAE state dict", unplaced, hint)


def from_hf(state_dict, layout: str | None = None) -> dict[str, torch.Tensor]:
    """Hugging Face ViTMAE keys (any of :data:`HF_LAYOUTS`, with or without ``vit.``) -> official keys.

    Args:
        state_dict: a ``ViTMAEForPreTraining`` or ``ViTMAEModel`` state dict (or ``{'model': ...}``).
        layout: one of :data:`HF_LAYOUTS`, or None to detect it (:func:`hf_layout`).
    Returns:
        A new dict in the official key order (``cls_token, pos_embed, mask_token, ...``); ``query``,
        ``key``, ``value`` concatenated into ``attn.qkv`` ``[3D, D]``. An encoder-only input gives
        an encoder-only dict (what ``fastmae.state_dicts`` calls ``"mae_encoder"``).
    Raises:
        ValueError: keys that do not belong to the layout, named in the message.
    """
    state = state_dict_of(state_dict)
    if layout is None:
        layout, base = hf_layout(state)
    elif layout not in HF_LAYOUTS:
        raise ValueError(f"layout must be one of {HF_LAYOUTS} or None, got {layout!r}")
    else:
        base = not any(k.startswith(("vit.", "decoder.")) for k in state)
    out, unplaced = _parse_hf(state, layout, base)
    if unplaced:
        raise unplaced_error(f"from_hf: not in the {layout!r} layout", unplaced)
    return dict(sorted(out.items(), key=lambda kv: official_rank(kv[0])))


def to_timm(state_dict, global_pool: bool = False) -> dict[str, torch.Tensor]:
    """The encoder for timm's ``VisionTransformer`` (official ``models_vit`` names).

    Args:
        state_dict: an official or fastmae MAE state dict (full or encoder-only), or an official
            fine-tuned ViT (``head``, and ``fc_norm`` if it was fine-tuned with global pooling);
            a checkpoint ``{'model': ...}`` is unwrapped (optimizer, RNG and args dropped).
        global_pool: the official fine-tuning layout with global average pooling: ``fc_norm``
            instead of ``norm``. From a pretraining checkpoint the encoder's ``norm`` is dropped
            and ``fc_norm`` starts at weight 1, bias 0, as official ``main_finetune`` starts it
            (it loads the encoder with ``strict=False`` and leaves ``fc_norm`` fresh).
    Returns:
        ``cls_token, pos_embed, patch_embed.proj.*, blocks.N.*, norm.*`` (or ``fc_norm.*``), and
        ``head.*`` when the input has one. ``mask_token`` and the decoder are dropped. Load with
        ``timm.create_model(timm_model_name(sd), num_classes=0)`` strictly, or with a head and
        ``strict=False`` (only ``head.*`` missing).
    Raises:
        ValueError: a key that is neither encoder, decoder nor fine-tuning head (named), or a
            global-pool fine-tuned checkpoint (``fc_norm``, no ``norm``) with ``global_pool=False``.
    """
    state = state_dict_of(state_dict)
    encoder_fixed = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    out, unplaced = {}, []
    for key, value in state.items():
        m = OFFICIAL_BLOCK.match(key)
        if key in encoder_fixed or (m and m.group(1) == "blocks") or key in ("head.weight", "head.bias"):
            out[key] = value
        elif key in ("norm.weight", "norm.bias", "fc_norm.weight", "fc_norm.bias"):
            out[key] = value
        elif not (key in DECODER_FIXED or (m and m.group(1) == "decoder_blocks")):
            unplaced.append(key)
    if unplaced:
        raise unplaced_error("to_timm: not a MAE or ViT key", unplaced,
                             "Hugging Face names? convert them with from_hf first")
    if "fc_norm.weight" in out:  # fine-tuned with global pooling
        if not global_pool:
            raise ValueError("to_timm: this ViT was fine-tuned with global pooling (it has fc_norm, no norm): "
                             "pass global_pool=True")
    elif global_pool:  # the official fine-tuning start: norm dropped, fc_norm fresh
        norm = out.pop("norm.weight")
        del out["norm.bias"]
        out["fc_norm.weight"], out["fc_norm.bias"] = torch.ones_like(norm), torch.zeros_like(norm)
    return dict(sorted(out.items(), key=lambda kv: official_rank(kv[0])))


# The timm architectures of the official sizes (at 224 px): (embed_dim, depth, patch) -> name.
_TIMM_NAMES = {(768, 12, 16): "vit_base_patch16_224", (1024, 24, 16): "vit_large_patch16_224",
               (1280, 32, 14): "vit_huge_patch14_224"}


def timm_model_name(state_dict) -> str | None:
    """The timm model name for an official size (``vit_base_patch16_224`` ...), else None.

    A position table for another grid still names the 224 px architecture: pass
    ``img_size=`` to ``timm.create_model`` then. The small fastmae sizes have no timm name; build
    ``timm.models.VisionTransformer`` with their shapes (``fastmae.state_dicts.mae_factory_shapes``).
    """
    info = inspect_state_dict(state_dict)
    if info.mlp_hidden != 4 * info.embed_dim or info.in_chans != 3:
        return None
    return _TIMM_NAMES.get((info.embed_dim, info.depth, info.patch_size))


def hf_config(model, mask_ratio: float = 0.75, norm_pix_loss: bool | None = None) -> dict:
    """The ``ViTMAEConfig`` arguments of a fastmae model (or of a full MAE state dict).

    Args:
        model: a ``MaskedAutoencoderViT``, or a full MAE state dict / checkpoint whose shapes fit a
            fastmae factory (a state dict does not hold the number of heads: the factory does).
        mask_ratio: the config's ``mask_ratio`` (fastmae takes it per call; HF reads it from here).
        norm_pix_loss: defaults to the model's, or for a checkpoint to its ``args`` (else False).
    Returns:
        A dict for ``ViTMAEConfig(**hf_config(model))``: sizes, heads, ``layer_norm_eps`` (1e-6 in the
        factories), ``image_size``, ``patch_size``, ``num_channels``, ``hidden_act="gelu"`` (exact,
        as fastmae), ``qkv_bias=True``, no dropout, ``mask_ratio`` and ``norm_pix_loss``.
    """
    from .model import MaskedAutoencoderViT

    if isinstance(model, MaskedAutoencoderViT):
        enc, dec = model.blocks[0], model.decoder_blocks[0]
        c = dict(hidden_size=model.cls_token.shape[-1], num_hidden_layers=len(model.blocks),
                 num_attention_heads=enc.attn.num_heads, intermediate_size=enc.mlp.fc1.out_features,
                 decoder_hidden_size=model.mask_token.shape[-1], decoder_num_hidden_layers=len(model.decoder_blocks),
                 decoder_num_attention_heads=dec.attn.num_heads, decoder_intermediate_size=dec.mlp.fc1.out_features,
                 layer_norm_eps=model.norm.eps, patch_size=model.patch_size, num_channels=model.in_chans)
        img, norm_pix = model.img_size, model.norm_pix_loss if norm_pix_loss is None else norm_pix_loss
    else:
        info = inspect_state_dict(model)
        if info.kind != "mae" or info.factory is None:
            raise ValueError(f"hf_config needs a full MAE of a fastmae factory's shapes (got a {info.kind!r} "
                             f"state dict{'' if info.factory else ' that fits no factory'}); pass the model instead")
        f = mae_factory_shapes()[info.factory]
        c = dict(hidden_size=info.embed_dim, num_hidden_layers=info.depth, num_attention_heads=f["num_heads"],
                 intermediate_size=info.mlp_hidden, decoder_hidden_size=info.decoder_embed_dim,
                 decoder_num_hidden_layers=info.decoder_depth, decoder_num_attention_heads=f["decoder_num_heads"],
                 decoder_intermediate_size=f["mlp_hidden"] * info.decoder_embed_dim // info.embed_dim,
                 layer_norm_eps=f["layer_norm_eps"], patch_size=info.patch_size, num_channels=info.in_chans)
        side = info.img_size
        img = (side, side) if side else f["img_size"]
        norm_pix = checkpoint_args(model).get("norm_pix_loss") if norm_pix_loss is None else norm_pix_loss
    return {**c, "image_size": img[0] if img[0] == img[1] else list(img), "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "qkv_bias": True,
            "mask_ratio": float(mask_ratio), "norm_pix_loss": bool(norm_pix)}


# ---------------------------------------------------------------------------------------------------
# export: the weights only, each file complete or absent
# ---------------------------------------------------------------------------------------------------

EXPORT_FORMATS = ("timm", "hf", "encoder")
HF_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")  # what an hf export directory holds
_RESCALE = {"uint8": 1 / 255, "uint16": 1 / 65535, "float32": 1.0}  # value -> resized_crop's units


def hf_preprocessor_config(args: dict, image_size, num_channels: int) -> dict:
    """``preprocessor_config.json`` for ``AutoImageProcessor.from_pretrained``: a ``ViTImageProcessor``
    that resizes bicubically to ``image_size`` and normalises as the run did (``args``: a checkpoint's
    arguments, whose ``mean``/``std`` and ``source_dtype`` pretraining stored; ImageNet's for 8-bit RGB
    when it stored none)."""
    from .reference import IMAGENET_MEAN, IMAGENET_STD

    mean, std = args.get("mean"), args.get("std")
    if mean is None or std is None or len(mean) != num_channels:
        mean, std = (list(IMAGENET_MEAN), list(IMAGENET_STD)) if num_channels == 3 else ([0.5] * num_channels,
                                                                                          [0.5] * num_channels)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    return {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": h, "width": w},
            "resample": 3, "do_rescale": True, "rescale_factor": _RESCALE.get(args.get("source_dtype") or "uint8"),
            "do_normalize": True, "image_mean": [float(v) for v in mean], "image_std": [float(v) for v in std]}


def export(checkpoint, format: str, out, *, global_pool: bool = False, mask_ratio: float = 0.75) -> str:
    """Write the weights of ``checkpoint`` in another library's layout (``fastmae export``).

    Args:
        checkpoint: a path (read with ``weights_only=True``), a checkpoint ``{'model': ..., 'args':
            ...}``, a state dict, or a ``MaskedAutoencoderViT``. Only the weights are written: no
            optimizer, scaler, RNG state or arguments.
        format: ``"timm"`` — a state dict for timm's ``VisionTransformer`` (:func:`to_timm` with
            ``global_pool``; ``torch.save``); ``"encoder"`` — ``{'model': encoder}`` in the official
            names, the layout of the official ``mae_pretrain_vit_*.pth``; ``"hf"`` — a directory
            with ``config.json``, ``model.safetensors`` (hub names) and ``preprocessor_config.json`` (the
            run's per-channel mean/std, :func:`hf_preprocessor_config`) that
            ``ViTMAEForPreTraining.from_pretrained`` loads with no missing or unexpected key, with
            ``mask_ratio`` in its config (needs ``transformers``: ``pip install -e ".[interop]"``).
        out: the file (``timm``, ``encoder``) or directory (``hf``). A file is renamed into place
            once written and fsync'ed; an existing ``hf`` directory is swapped out only if it holds
            nothing but an earlier export's two files (anything else is refused, never replaced).
    Returns:
        ``out`` as a string.
    Raises:
        ValueError: an unknown format, keys the converter cannot place (named), or ``"encoder"`` /
            ``"hf"`` from a fine-tuned ViT, or ``"hf"`` from an encoder-only file (no decoder).
    """
    from . import _files
    from .model import MaskedAutoencoderViT

    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}")
    obj = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    state = obj.state_dict() if isinstance(obj, MaskedAutoencoderViT) else state_dict_of(obj)
    out = os.fspath(out)
    if format == "timm":
        weights = to_timm(state, global_pool=global_pool)
        _files.write_file(out, lambda f: torch.save(weights, f))
        return out
    kind = inspect_state_dict(state).kind
    if kind == "vit":
        raise ValueError(f"a fine-tuned ViT holds no MAE to export as {format!r}: use the timm format")
    if format == "encoder":
        encoder = to_timm(state)  # cls_token ... blocks.N ... norm: the official encoder names
        _files.write_file(out, lambda f: torch.save({"model": encoder}, f))
        return out
    if kind != "mae":
        raise ValueError("the hf format needs a full MAE (ViTMAEForPreTraining has a decoder); this "
                         "checkpoint holds the encoder only")
    try:
        from safetensors.torch import save_file
        from transformers import ViTMAEConfig
    except ImportError as e:
        raise ImportError(f'the hf format needs transformers (pip install -e ".[interop]"): {e}') from None
    arguments = hf_config(obj, mask_ratio)
    config = ViTMAEConfig(architectures=["ViTMAEForPreTraining"], **arguments)
    stored = checkpoint_args(obj) if isinstance(obj, dict) else {}
    processor = hf_preprocessor_config(stored, arguments["image_size"], arguments["num_channels"])
    tensors = {k: v.contiguous() for k, v in to_hf(state, layout="hub").items()}  # transformers 4 and 5 read these

    def write(directory):
        config_path, weights_path, processor_path = (os.path.join(directory, name) for name in HF_FILES)
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config.to_dict(), f, indent=2, sort_keys=True)
        with open(processor_path, "w", encoding="utf-8") as f:
            json.dump(processor, f, indent=2, sort_keys=True)
        save_file(tensors, weights_path, metadata={"format": "pt"})
        os.chmod(weights_path, os.stat(config_path).st_mode & 0o777)  # save_file makes it 0600: as config.json
    _files.write_dir(out, write, set(HF_FILES))
    return out
