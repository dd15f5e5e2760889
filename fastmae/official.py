"""Official MAE checkpoints: read them safely, find their weights and run arguments.

The official training script saves ``{'model': state_dict, 'optimizer': ..., 'epoch': int,
'scaler': ..., 'args': argparse.Namespace}``; fastmae's command line saves the same entries with
``args`` a plain dict. ``torch.load(weights_only=True)`` refuses the Namespace unless it is
allow-listed; that is the only class allowed here, so reading never runs arbitrary pickled code.

This is the one checkpoint reader: the command line wraps its errors into one-line messages.
"""

from __future__ import annotations

import argparse
import errno
import os
import re

import torch

__all__ = ["checkpoint_args", "load_official_checkpoint", "model_state", "read_checkpoint"]


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


def load_official_checkpoint(checkpoint, model: torch.nn.Module | None = None, strict: bool = True) -> dict:
    """The model weights of an official (or fastmae) checkpoint, loaded into ``model`` if given.

    Args:
        checkpoint: a path (read with :func:`read_checkpoint`), or an already loaded dict; either
            ``{'model': state_dict, ...}`` or a bare state dict.
        model: when given, ``model.load_state_dict(state_dict, strict=strict)``.
    Returns:
        The state dict.
    Raises:
        FileNotFoundError, OSError, ValueError: as :func:`read_checkpoint` and :func:`model_state`.
        RuntimeError: ``model.load_state_dict`` refuses the weights (another model).
    """
    obj = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    state = model_state(obj)
    if model is not None:
        model.load_state_dict(state, strict=strict)
    return state
