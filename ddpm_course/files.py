"""Writing files so that an interruption never leaves a half-written one: the one atomic writer.

Every file the package writes (checkpoints, shipped weights and their cards, evaluation reports,
benchmark tables, exported images, notebooks) goes through :func:`atomic_write`: the bytes go to a
temporary file in the same folder, which is flushed, fsynced and moved over the target with
``os.replace``. A reader sees the old file or the new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; training works, unguarded
    fcntl = None

LOCK_NAME = ".lock"


def atomic_write(path, write: Callable) -> Path:
    """Write a file atomically: ``write(f)`` fills a temporary binary file in the same folder,
    which is fsynced and moved over ``path`` with ``os.replace``; on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on the device to write {path}; "
                          "the previous version of the file, if any, is unchanged") from error
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """:func:`atomic_write` for UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path, data) -> Path:
    """:func:`atomic_write_text` of ``data`` as indented JSON with a final newline."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def remove_stale_temporaries(folder, name: str) -> list:
    """Remove the temporary files that :func:`atomic_write` left for ``folder/name`` when a process
    was killed mid-write (``name.XXXX.tmp``); return their paths."""
    stale = sorted(Path(folder).glob(f"{name}.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def check_writable_folder(folder, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and check that a file can be written there, before any work;
    a ValueError names the folder and the reason."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{what} {str(folder)!r} is not writable: {error.strerror or error}") from None
    return folder


class FolderBusy(ValueError):
    """Another live process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder):
    """Hold an advisory lock on ``folder`` (the file ``folder/.lock``, with the holder's pid) for
    the duration of the block. The operating system releases it when the process dies, however it
    dies. A second holder is refused at once with :class:`FolderBusy` naming the running process."""
    folder = check_writable_folder(folder)
    if fcntl is None:
        yield folder
        return
    with open(folder / LOCK_NAME, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise FolderBusy(f"{folder} is in use by another training run (pid {holder}); wait for it to "
                             "finish, or train into another folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield folder
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
