"""Official MAE checkpoints: read them safely, find their weights and run arguments.

The official training script saves ``{'model': state_dict, 'optimizer': ..., 'epoch': int,
'scaler': ..., 'args': argparse.Namespace}``; fastmae's command line saves the same entries with
``args`` a plain dict. ``torch.load(weights_only=True)`` refuses the Namespace unless it is
allow-listed; that is the only class allowed here, so reading never runs arbitrary pickled code.

This is the one checkpoint reader: the command line wraps its errors into one-line messages.
:func:`load_official_checkpoint` loads full MAEs strictly, and encoder-only files (the official
``mae_pretrain_vit_*.pth``) into the encoder, with a warning naming what was not loaded.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import warnings

import torch

from .state_dicts import OFFICIAL_WITH_DECODER, encoder_of, inspect_state_dict, load_mae_encoder, preview

__all__ = ["checkpoint_args", "load_official_checkpoint", "model_state", "read_checkpoint", "read_hf_directory"]


def read_checkpoint(path: str | os.PathLike):
    """``torch.load(path, map_location='cpu', weights_only=True)`` with ``argparse.Namespace``
    allowed, and errors that say what is wrong in one line naming ``path``.

    Returns:
        The loaded object (a dict for every MAE checkpoint; :func:`model_state` checks it).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        OSError: ``path`` cannot be read (a directory, no permission).
        ValueError: the file needs a class weights-only loading refuses ("unsafe"), or it is
            truncated or corrupt.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "checkpoint not found", path)
    if os.path.isdir(path):
        return read_hf_directory(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # torch.load raises many types for a damaged file; report them alike.
        blocked = re.search(r"GLOBAL (\S+)", str(e))
        if blocked:
            raise ValueError(f"refusing to load {path}: it needs {blocked.group(1)}, which is unsafe "
                             "to unpickle (weights_only loading does not allow it)") from None
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        raise ValueError(f"cannot read checkpoint {path}: the file is truncated or corrupt "
                         f"({type(e).__name__}{': ' + first if first else ''})") from None


HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def read_hf_directory(path: str | os.PathLike) -> dict:
    """A Hugging Face ViTMAE directory (``fastmae export --format hf``, ``save_pretrained`` of a
    ``ViTMAEForPreTraining`` or ``ViTMAEModel``, a hub snapshot) as a checkpoint in official names.

    Returns:
        ``{'model': state_dict, 'args': {'input_size', 'norm_pix_loss', 'mask_ratio'}}``: the weights
        through ``fastmae.convert.from_hf`` (every layout it knows), the run arguments from
        ``config.json``.
    Raises:
        ValueError: no ``config.json`` of a ViTMAE, no weights file, weights in no ViTMAE layout, or
            safetensors missing for a ``.safetensors`` file; one line naming ``path``.
    """
    import json

    from .convert import from_hf  # fastmae.convert imports this module

    path = os.fspath(path)
    config_path = os.path.join(path, "config.json")
    weights = [name for name in HF_WEIGHTS if os.path.exists(os.path.join(path, name))]
    if not os.path.exists(config_path) or not weights:
        raise ValueError(f"{path} is a directory, not a checkpoint file; a Hugging Face directory holds "
                         f"config.json and one of {', '.join(HF_WEIGHTS)}")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("model_type") != "vit_mae":
        raise ValueError(f"{path} holds a Hugging Face {config.get('model_type')!r} model, not a ViTMAE "
                         "(config.json: model_type 'vit_mae')")
    state = _read_hf_weights(path, weights[0])
    try:
        state = from_hf(state)
    except ValueError as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    side = config.get("image_size", 224)
    args = {"input_size": side if isinstance(side, int) else side[0],
            "norm_pix_loss": bool(config.get("norm_pix_loss", False)),
            "mask_ratio": float(config.get("mask_ratio", 0.75))}
    return {"model": state, "args": args}


def _read_hf_weights(path, name):
    """The tensors of the weights file ``name`` in ``path`` (safetensors, sharded or not, or a
    ``pytorch_model.bin`` read with ``weights_only``)."""
    full = os.path.join(path, name)
    if name == "pytorch_model.bin":
        return read_checkpoint(full)
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ValueError(f"reading {full} needs safetensors, in the interop extra: "
                         'pip install -e ".[interop]"') from None
    if name.endswith(".index.json"):
        import json
        with open(full, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(load_file(os.path.join(path, shard)))
        return state
    return load_file(full)


def model_state(checkpoint) -> dict:
    """The ``{name: tensor}`` state dict of a loaded checkpoint: its ``'model'`` entry, or the
    checkpoint itself when it is a bare state dict.

    Raises:
        ValueError: ``checkpoint`` holds no such state dict.
    """
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("checkpoint holds no model state dict (expected {'model': {name: tensor}})")
    return state


def checkpoint_args(checkpoint) -> dict:
    """The run arguments stored in a loaded checkpoint, as a dict (fastmae: a dict; official: an
    ``argparse.Namespace``); ``{}`` when it stores none."""
    args = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return args if isinstance(args, dict) else {}


def load_official_checkpoint(checkpoint, model: torch.nn.Module | None = None, strict: bool = True,
                             encoder_only: bool | None = None) -> dict:
    """The model weights of an official (or fastmae) checkpoint, loaded into ``model`` if given.

    The official release has three kinds of files (``fastmae.state_dicts``): full pretraining
    models with a decoder (``mae_visualize_vit_{base,large}.pth``, every ``checkpoint-N.pth`` of a
    pretraining run, fastmae's included), encoder-only ones (``mae_pretrain_vit_{base,large,huge}.pth``:
    no ``mask_token``, no decoder) and fine-tuned ViTs (``mae_finetuned_vit_*.pth``: a ``head``).

    An encoder-only file loaded into a ``MaskedAutoencoderViT`` fills the encoder (strictly, with
    ``strict``: every encoder entry present with its shape, nothing else in the file) and leaves
    ``mask_token`` and the decoder as they are (their initialisation); a ``UserWarning`` says so,
    with how many entries were not loaded and the first of their names. Such a model encodes as
    the pretrained one; its reconstructions and loss are those of an untrained decoder.

    Args:
        checkpoint: a path (read with :func:`read_checkpoint`), or an already loaded dict; either
            ``{'model': state_dict, ...}`` or a bare state dict.
        model: when given, the weights are loaded into it: a full MAE's with
            ``model.load_state_dict(state_dict, strict=strict)``, an encoder-only one's as above.
        strict: as ``load_state_dict``'s; for the encoder-only load, whether every encoder entry
            must be there (and nothing else).
        encoder_only: ``None`` (the default) tells an encoder-only file by its keys
            (``fastmae.inspect_state_dict``); ``True`` loads only the encoder, also from a full MAE
            (its decoder is left out, and the warning says so); ``False`` requires a full MAE and
            refuses a file without a decoder.
    Returns:
        The checkpoint's state dict, all of it, as read.
    Raises:
        FileNotFoundError, OSError, ValueError: as :func:`read_checkpoint` and :func:`model_state`.
        ValueError: ``encoder_only=False`` and the file has no decoder (encoder-only or a fine-tuned
            ViT); a fine-tuned ViT into a model with a decoder; with ``model`` and ``strict``, a
            dict of no official layout (Hugging Face names, an incomplete block: named, as
            ``fastmae.inspect_state_dict`` names them) or an encoder that does not fit ``model``.
        RuntimeError: ``model.load_state_dict`` refuses a full MAE's weights (another model).
    """
    obj = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    state = model_state(obj)
    name = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "the checkpoint"
    try:
        kind = inspect_state_dict(state).kind
    except ValueError as e:
        if strict and model is not None:  # names what is off, where load_state_dict would list every key
            raise ValueError(f"{name}: {e}") from None
        kind = None  # no official layout: loaded as it is, non-strictly
    if kind == "vit" and (encoder_only is False or hasattr(model, "decoder_blocks")):
        raise ValueError(f"{name} is a fine-tuned ViT (it has a head), not an MAE: it holds no decoder; load it "
                         "into fastmae.VisionTransformer (VisionTransformer.from_checkpoint)")
    if kind == "mae_encoder" and encoder_only is False:
        raise ValueError(f"{name} holds the encoder only (no mask_token, no decoder), and encoder_only=False "
                         f"asks for a full MAE, such as the official {OFFICIAL_WITH_DECODER}")
    if model is None:
        return state
    if not (encoder_only or (encoder_only is None and kind == "mae_encoder")):
        model.load_state_dict(state, strict=strict)
        return state
    encoder = encoder_of(state)
    if strict:
        left = load_mae_encoder(model, encoder)
    else:
        model.load_state_dict(encoder, strict=False)
        left = [k for k in model.state_dict() if k not in encoder]
    if kind == "mae_encoder":
        source, hint = (f"{name} holds the encoder only", ". Reconstructions need a checkpoint with a decoder, "
                        f"such as the official {OFFICIAL_WITH_DECODER}")
    else:
        source, hint = f"encoder_only=True: {len(state) - len(encoder)} decoder entries of {name} were left out", ""
    warnings.warn(f"{source}; loaded its {len(encoder)} encoder entries{' strictly' if strict else ''}, and "
                  f"{len(left)} entries of the model keep their initialisation: {preview(left, 4, quote=False)}"
                  f"{hint}", UserWarning, stacklevel=2)
    return state

