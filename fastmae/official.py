"""Official MAE checkpoints: load them safely.

The official training script saves ``{'model': state_dict, 'optimizer': ..., 'epoch': int,
'scaler': ..., 'args': argparse.Namespace}``. ``torch.load(weights_only=True)`` refuses the
Namespace unless it is allow-listed; that is the only class allowed here, so loading never runs
arbitrary pickled code.
"""

from __future__ import annotations

import argparse
import os
import pickle
import zipfile

import torch

__all__ = ["load_official_checkpoint", "read_checkpoint"]


def read_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)`` with ``argparse.Namespace`` allowed, and clear errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {os.fspath(path)!r} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"checkpoint {os.fspath(path)!r} is truncated, corrupt or unsafe to load: {first}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {os.fspath(path)!r} holds a {type(obj).__name__}, expected a dict")
    return obj


def load_official_checkpoint(checkpoint, model: torch.nn.Module | None = None, strict: bool = True) -> dict:
    """The model weights of an official (or fastmae) checkpoint, loaded into ``model`` if given.

    Args:
        checkpoint: a path, or an already loaded dict; either ``{'model': state_dict, ...}`` or a
            bare state dict.
        model: when given, ``model.load_state_dict(state_dict, strict=strict)``.
    Returns:
        The state dict.
    """
    obj = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("checkpoint holds no model state dict (expected {'model': {name: tensor}})")
    if model is not None:
        model.load_state_dict(state, strict=strict)
    return state
