"""Writing files that appear complete or not at all: the one atomic writer (exports, checkpoints, logs).

A file is written under a hidden temporary name beside it (``.<name>.tmp-<pid>``), flushed,
fsync'ed and renamed over the target (``os.replace`` is atomic on POSIX and Windows); the directory
is then fsync'ed so the rename itself survives a power loss. A directory is built beside the target
and swapped in. A process killed midway leaves its temporary behind, under a name
:data:`TEMPORARY` matches (the command line removes those of dead processes at its next start).
"""

from __future__ import annotations

import os
import re
import shutil

__all__ = ["TEMPORARY", "fsync_dir", "temporary_name", "write_dir", "write_file"]

TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$")  # the names temporary_name gives: .<name>.tmp-<pid>


def temporary_name(path) -> str:
    """``.<name>.tmp-<pid>`` beside ``path``: hidden, in the same directory (a rename cannot cross
    file systems), with the pid so that a clean-up can tell a live writer's from a dead one's."""
    directory = os.path.dirname(os.path.abspath(path))
    return os.path.join(directory, f".{os.path.basename(os.fspath(path))}.tmp-{os.getpid()}")


def fsync_dir(directory) -> None:
    """Persist a rename in ``directory`` (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path, write) -> None:
    """``write(f)`` into a temporary file beside ``path`` (opened ``"wb"``), then rename it over ``path``.

    A failure or an exception in ``write`` removes the temporary and leaves ``path`` as it was (absent,
    or the old file). The final file gets the usual umask permissions.

    Raises:
        IsADirectoryError: ``path`` is a directory.
    """
    if os.path.isdir(path):
        raise IsADirectoryError(f"{os.fspath(path)!r} is a directory; name the file to write")
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_dir(path, write, allowed: set[str]) -> None:
    """``write(tmp_dir)``, then swap the directory in at ``path``.

    An existing ``path`` is replaced only when it holds nothing but names in ``allowed`` (an earlier
    export): it is moved aside and removed once the new one is in place. Anything else is refused.

    Raises:
        NotADirectoryError: ``path`` is a file.
        FileExistsError: ``path`` holds names outside ``allowed``.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{path!r} is a file, not a directory")
    if os.path.isdir(path) and not set(os.listdir(path)) <= allowed:
        raise FileExistsError(f"{path!r} holds files other than an earlier export's {sorted(allowed)}; "
                              f"choose a new or empty directory")
    tmp = temporary_name(path)
    old = tmp + "-old"
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    os.makedirs(tmp)
    try:
        write(tmp)
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), "rb") as f:
                os.fsync(f.fileno())
        if os.path.isdir(path):
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
