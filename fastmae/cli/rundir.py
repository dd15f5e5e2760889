"""A pretraining run's directory: what marks one, what may write into it and the files an epoch
leaves there.

A run directory holds ``checkpoint-last.pth`` (every epoch), ``checkpoint-<epoch>.pth`` (every
``--save-every`` epochs and the last: hard links to that epoch's ``checkpoint-last.pth``), one
JSON line per epoch in ``log.txt`` and, at the end, ``reconstructions.png``.
"""

import json
import os
import tempfile

from fastmae.cli.run_state import link_atomically, save_checkpoint, write_text_atomically
from fastmae.cli.errors import UsageError
# what marks a run directory: defined torch-free, for the line printed before torch's import
from fastmae.cli.pretrain_options import holds_run


def enclosing_run(path):
    """The run directory ``path`` is or lies inside, or None.

    ``path`` itself counts as a run when it :func:`holds_run`; an ancestor only when it holds a
    ``checkpoint-last.pth`` or a ``log.txt`` whose first line is an epoch's JSON line, so that an
    unrelated ``log.txt`` higher up (a home directory's) does not count.
    """
    directory = os.path.realpath(path)
    if holds_run(directory):
        return directory
    while (parent := os.path.dirname(directory)) != directory:
        directory = parent
        if os.path.exists(os.path.join(directory, "checkpoint-last.pth")) or _is_run_log(
                os.path.join(directory, "log.txt")):
            return directory
    return None


def _is_run_log(path):
    """Whether ``path`` is a readable file whose first line is a ``log.txt`` epoch line."""
    try:
        with open(path, encoding="utf-8") as f:
            line = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return isinstance(line, dict) and "epoch" in line


def check_output_dir(run):
    """A directory that holds a run is only continued: with ``--resume`` of a checkpoint inside it.
    Anything else would mix two runs' checkpoints and logs."""
    if not holds_run(run.output_dir):
        return
    if not run.resume:
        raise UsageError(f"{run.output_dir} already holds a run; continue it with --resume "
                         f"{run.last_path} or choose another --output-dir")
    if os.path.dirname(os.path.realpath(run.resume)) != os.path.realpath(run.output_dir):
        raise UsageError(f"{run.output_dir} already holds another run than {run.resume}; resume "
                         "a checkpoint inside it or choose another --output-dir")


def check_writable(output_dir):
    """A one-line ``UsageError`` unless a file can be created in ``output_dir`` (or, where it does not
    exist yet, in its nearest existing parent, where it will be made): found before training, not
    at the end of the first epoch."""
    existing = os.path.abspath(output_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"cannot write to --output-dir {output_dir}: {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        where = "" if existing == os.path.abspath(output_dir) else f" (cannot create it in {existing})"
        raise UsageError(f"cannot write to --output-dir {output_dir}{where}: {e.strerror or e}") from None


def truncate_log(run, start_epoch):
    """Rank 0, on resume: keep only the log lines of epochs before ``start_epoch`` (a resume from
    an older checkpoint retrains the later ones), rewritten atomically."""
    if not os.path.exists(run.log_path):
        return
    with open(run.log_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        try:
            epoch = json.loads(line)["epoch"]
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill, or not ours
        if epoch < start_epoch:
            kept.append(line + "\n")
    if len(kept) != len(lines):
        write_text_atomically("".join(kept), run.log_path)


def save_epoch(run, model, optimizer, scaler, epoch, rngs, stats):
    """Rank 0, after ``epoch``: checkpoint-last atomically, the periodic checkpoint as a hard link
    to it (the same bytes, no second copy where the file system allows), then the log line."""
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch,
            "args": run.stored_args(), "rng": rngs}
    save_checkpoint(ckpt, run.last_path)
    if epoch % run.save_every == 0 or epoch + 1 == run.epochs:
        link_atomically(run.last_path, os.path.join(run.output_dir, f"checkpoint-{epoch}.pth"))
    line = {"train_lr": stats["lr"], "train_loss": stats["loss"], "epoch": epoch,
            "data_wait": round(stats["data_wait"], 3)}  # seconds this rank waited for batches
    with open(run.log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
