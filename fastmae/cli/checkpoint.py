"""Checkpoints: atomic saves, safe loads, model matching and RNG state.

A checkpoint written here is ``{'model', 'optimizer', 'scaler', 'epoch', 'args', 'rng'}`` with
``args`` a plain dict, so it loads with ``torch.load(weights_only=True)`` and nothing else. Official
MAE checkpoints (``{'model': sd, 'args': argparse.Namespace, 'optimizer', 'epoch', ...}``) load too:
``argparse.Namespace`` is the one class allow-listed.
"""

import argparse
import os
import random
import re
import shutil

import numpy as np
import torch

import fastmae
from fastmae.cli.errors import UsageError


FIXED_TABLES = ("pos_embed", "decoder_pos_embed")


class CheckpointError(UsageError):
    """A checkpoint that is missing, unreadable or does not fit the model (one-line message)."""


def save_checkpoint(obj, path):
    """Write ``obj`` to ``path`` atomically: a crash or kill midway leaves the old file in place."""
    _write_atomically(path, lambda f: torch.save(obj, f))


def copy_atomically(src, dst):
    """Copy the file ``src`` to ``dst`` atomically (a periodic checkpoint from checkpoint-last)."""
    def copy(f):
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, 1 << 20)
    _write_atomically(dst, copy)


def write_text_atomically(text, path):
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    _write_atomically(path, lambda f: f.write(text.encode("utf-8")))


_TMP = re.compile(r"^\..+\.tmp-(\d+)$")  # the temporary names below: .<name>.tmp-<pid>


def _write_atomically(path, write):
    """``write(f)`` into a temporary file in ``path``'s directory, then rename it over ``path``.

    The temporary file is flushed and fsync'ed before the rename (``os.replace`` is atomic on
    POSIX and Windows), and the directory is fsync'ed so the rename itself survives a power loss.
    """
    directory = os.path.dirname(os.path.abspath(path))
    # Hidden name in the same directory (os.replace cannot cross file systems); opened normally so
    # the final file gets the usual umask permissions. A SIGKILL midway leaves this file behind:
    # remove_stale_temporaries cleans it up at the next start.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def remove_stale_temporaries(directory):
    """Delete temporary files left in ``directory`` by killed saves: those whose process is gone.

    Returns the names removed. Call on rank 0 before it writes anything.
    """
    removed = []
    for name in os.listdir(directory):
        match = _TMP.match(name)
        if match and not _alive(int(match.group(1))):
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: an existence check, nothing is sent
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def _fsync_dir(directory):
    """Persist a rename in ``directory`` (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path):
    """Load a checkpoint dict on the CPU with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, needs a class that weights-only
            loading refuses, or has no ``'model'`` entry. The message is one line naming ``path``.
    """
    path = os.fspath(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except Exception as e:  # torch.load raises many types for a damaged file; report them alike.
        blocked = re.search(r"GLOBAL (\S+)", str(e))
        if blocked:
            raise CheckpointError(
                f"refusing to load {path}: it needs {blocked.group(1)}, which weights_only "
                "loading does not allow") from None
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated or corrupt "
            f"({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path} is not an MAE checkpoint: it has no 'model' state dict")
    return ckpt


def checkpoint_args(ckpt):
    """The run arguments stored in ``ckpt`` as a dict (ours: a dict; official: a Namespace)."""
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return args if isinstance(args, dict) else {}


def load_model_state(model, ckpt, path, model_name):
    """Load ``ckpt['model']`` into ``model`` strictly, or raise a one-line ``CheckpointError``.

    Loading goes through ``fastmae.load_official_checkpoint`` (which knows the official format).
    On a mismatch the message names the checkpoint's model (from its args) when it has one, else
    the first mismatching entry, instead of PyTorch's multi-line ``load_state_dict`` report.

    The fixed sin-cos tables ``pos_embed`` and ``decoder_pos_embed`` (not trainable; the model
    builds them for its own grid) are taken from the checkpoint only when their shapes match, so
    a checkpoint trained at another ``--input-size`` loads.
    """
    expected = model.state_dict()
    state = {k: v for k, v in ckpt["model"].items()
             if k not in FIXED_TABLES or k not in expected or v.shape == expected[k].shape}
    try:
        fastmae.load_official_checkpoint({"model": state}, model=model, strict=False)
        missing = [k for k in expected if k not in state and k not in FIXED_TABLES]
        unexpected = [k for k in ckpt["model"] if k not in expected]
        if not missing and not unexpected:
            return
    except (RuntimeError, KeyError, ValueError):
        pass
    saved_name = checkpoint_args(ckpt).get("model")
    if saved_name and saved_name != model_name:
        raise CheckpointError(
            f"{path} holds a {saved_name} model, not {model_name} (pass --model {saved_name})")
    state = ckpt["model"]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape
                and k not in FIXED_TABLES]
    if reshaped:
        k = reshaped[0]
        detail = f"'{k}' is {list(state[k].shape)}, expected {list(expected[k].shape)}"
    elif missing or unexpected:
        detail = f"'{(missing or unexpected)[0]}' is {'missing' if missing else 'unexpected'}"
    else:
        detail = "its entries cannot be loaded"
    raise CheckpointError(f"{path} does not fit {model_name}: {detail} ({len(missing)} missing, "
                          f"{len(unexpected)} unexpected, {len(reshaped)} reshaped entries)")


def rng_state():
    """Every RNG state a training run draws from, in types ``weights_only`` loading accepts."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached_gaussian": cached_gaussian},
        "python": random.getstate(),
    }


def set_rng_state(state):
    """Restore what :func:`rng_state` captured (CUDA only when saved and present)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    random.setstate(state["python"])
