"""Checkpoints: atomic saves, periodic copies as hard links, safe loads, model matching and RNG
state.

Writes go through the library's one atomic writer, ``fastmae._files.write_file`` (temporary file
beside the target, fsync, ``os.replace``, fsync of the directory), which the exports use too.

A checkpoint written here is ``{'model', 'optimizer', 'scaler', 'epoch', 'args', 'rng'}`` with
``args`` a plain dict, so it loads with ``torch.load(weights_only=True)`` and nothing else. Reading
goes through ``fastmae.checkpoint_files.read_checkpoint`` (official checkpoints, whose ``args`` is an
``argparse.Namespace``, load too); its errors become one-line ``CheckpointError``s here.
"""

import os
import random
import shutil
import warnings

import numpy as np
import torch

import fastmae
from fastmae._files import TEMPORARY, fsync_dir, temporary_name, write_file
from fastmae.state_dicts import OFFICIAL_WITH_DECODER, inspect_state_dict, is_decoder_key
from fastmae.cli.errors import UsageError
from fastmae.checkpoint_files import checkpoint_args, model_state, read_checkpoint


FIXED_TABLES = ("pos_embed", "decoder_pos_embed")


class CheckpointError(UsageError):
    """A checkpoint that is missing, unreadable or does not fit the model (one-line message)."""


def save_checkpoint(obj, path):
    """Write ``obj`` to ``path`` atomically: a crash or kill midway leaves the old file in place."""
    write_file(path, lambda f: torch.save(obj, f))


def copy_atomically(src, dst):
    """Copy the file ``src`` to ``dst`` atomically."""
    def copy(f):
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, 1 << 20)
    write_file(dst, copy)


def link_atomically(src, dst):
    """Make ``dst`` hold the bytes of ``src`` (a periodic checkpoint from checkpoint-last) without
    a second copy on disk: a hard link, made under a temporary name and renamed over ``dst``.

    Where the file system has no hard links (or refuses this one), an atomic copy instead.
    :func:`save_checkpoint` replaces a file by renaming a new one over it, so a later save of
    ``src`` gives ``src`` a new inode and leaves ``dst``'s bytes as they are.
    """
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return  # already linked: renaming a link over its twin would do nothing, leaving tmp behind
    tmp = temporary_name(dst)
    try:
        os.link(src, tmp)
    except OSError:  # EXDEV, EPERM, ENOTSUP... (FAT, some network file systems)
        copy_atomically(src, dst)
        return
    try:
        os.replace(tmp, dst)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(dst)))


def write_text_atomically(text, path):
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    write_file(path, lambda f: f.write(text.encode("utf-8")))


def remove_stale_temporaries(directory):
    """Delete temporary files left in ``directory`` by killed saves: those whose process is gone.

    Returns the names removed. Call on rank 0 before it writes anything.
    """
    removed = []
    for name in os.listdir(directory):
        match = TEMPORARY.match(name)
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


def load_checkpoint(path):
    """Read a checkpoint on the CPU with ``fastmae.checkpoint_files.read_checkpoint`` (weights only; a
    Hugging Face ViTMAE directory is read as ``{'model': official names, 'args': from its config}``).

    Returns:
        The checkpoint dict, with a bare state dict wrapped as ``{'model': state_dict}``.

    Raises:
        CheckpointError: the file is missing, unreadable, truncated or corrupt, needs a class that
            weights-only loading refuses, or holds no model state dict. One line naming ``path``.
    """
    path = os.fspath(path)
    try:
        ckpt = read_checkpoint(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    try:
        state = model_state(ckpt)
    except ValueError:
        raise CheckpointError(f"{path} is not an MAE checkpoint: it has no 'model' state dict") from None
    return ckpt if state is ckpt.get("model") else {"model": state}


def inspect_checkpoint(ckpt):
    """``fastmae.inspect_state_dict`` of a loaded checkpoint's weights (its kind: a full MAE, an
    encoder-only one or a fine-tuned ViT, and the factory its shapes fit), or None when they are in
    no official layout (``load_model_state`` then says what does not fit)."""
    try:
        return inspect_state_dict(ckpt["model"])
    except ValueError:
        return None


def without_decoder(path, kind):
    """How a message names a checkpoint of ``kind`` ``"mae_encoder"`` or ``"vit"``: it has no decoder."""
    if kind == "vit":
        return f"{path} is a fine-tuned ViT (a classifier: no decoder)"
    return f"{path} holds the encoder only (no mask_token, no decoder)"


def load_model_state(model, ckpt, path, model_name, encoder_only_ok=False):
    """Load ``ckpt['model']`` into ``model`` strictly, or raise a one-line ``CheckpointError``.

    Loading goes through ``fastmae.load_official_checkpoint`` (which knows the official format).
    On a mismatch the message names the checkpoint's model (from its args, else from its shapes)
    when it has one, else the first mismatching entry, instead of PyTorch's multi-line
    ``load_state_dict`` report.

    The fixed sin-cos tables ``pos_embed`` and ``decoder_pos_embed`` (not trainable; the model
    builds them for its own grid) are taken from the checkpoint only when their shapes match, so
    a checkpoint trained at another ``--input-size`` loads.

    Args:
        encoder_only_ok: accept an encoder-only checkpoint (the official ``mae_pretrain_vit_*.pth``
            layout): its encoder is loaded strictly and the decoder and ``mask_token`` keep their
            initialisation. Otherwise such a file, like a fine-tuned ViT, is refused by name.
    Returns:
        The names of ``model``'s entries that were not loaded: ``[]`` for a full MAE, the decoder's
        and ``mask_token`` for an encoder-only checkpoint (for the caller's warning).
    """
    info = inspect_checkpoint(ckpt)
    kind = info.kind if info else None
    if kind == "vit":
        raise CheckpointError(f"{without_decoder(path, kind)}: {model_name} starts from an MAE checkpoint, "
                              "with a decoder or encoder-only (as the official mae_pretrain_vit_*.pth)")
    encoder_only = kind == "mae_encoder"
    if encoder_only and not encoder_only_ok:
        raise CheckpointError(f"{without_decoder(path, kind)}: a checkpoint with a decoder is needed, such as "
                              f"the official {OFFICIAL_WITH_DECODER}")
    expected = model.state_dict()
    wanted = [k for k in expected if not (encoder_only and is_decoder_key(k))]
    state = {k: v for k, v in ckpt["model"].items()
             if k not in FIXED_TABLES or k not in expected or v.shape == expected[k].shape}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the encoder-only warning: the command says it in its words
            fastmae.load_official_checkpoint({"model": state}, model=model, strict=False,
                                             encoder_only=encoder_only)
        missing = [k for k in wanted if k not in state and k not in FIXED_TABLES]
        unexpected = [k for k in ckpt["model"] if k not in expected]
        if not missing and not unexpected:
            return [k for k in expected if k not in wanted]
    except (RuntimeError, KeyError, ValueError):
        pass
    saved_name = checkpoint_args(ckpt).get("model") or (info.factory if info else None)
    if saved_name and fastmae.MODELS.get(saved_name) is not fastmae.MODELS.get(model_name):
        holds = f"the encoder of a {saved_name}" if encoder_only else f"a {saved_name} model"
        raise CheckpointError(f"{path} holds {holds}, not {model_name} (pass --model {saved_name})")
    state = ckpt["model"]
    missing = [k for k in wanted if k not in state]
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
