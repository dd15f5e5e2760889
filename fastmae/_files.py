"""Writing files that appear complete or not at all (for exports; the training loop has its own in the CLI).

A file is written under a hidden temporary name beside it (``.<name>.tmp-<pid>``: the naming the
command line's stale-temporary clean-up recognises), flushed, fsync'ed and renamed over the target.
A directory is built beside the target and swapped in.
"""

from __future__ import annotations

import os
import shutil

__all__ = ["write_dir", "write_file"]


def _temporary(path: str) -> str:
    # Hidden, beside ``path`` (a rename cannot cross file systems), with the pid: the naming that the
    # command line's stale-temporary clean-up recognises.
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-{os.getpid()}")


def write_file(path: str, write) -> None:
    """``write(f)`` into a temporary file, then rename it over ``path``."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; name the file to write")
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_dir(path: str, write, allowed: set[str]) -> None:
    """``write(tmp_dir)``, then swap the directory in at ``path``.

    An existing ``path`` is replaced only when it holds nothing but names in ``allowed`` (an earlier
    export): it is moved aside and removed once the new one is in place. Anything else is refused.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{path!r} is a file, not a directory")
    if os.path.isdir(path) and not set(os.listdir(path)) <= allowed:
        raise FileExistsError(f"{path!r} holds files other than an earlier export's {sorted(allowed)}; "
                              f"choose a new or empty directory")
    tmp = _temporary(path)
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
