"""Writing files so that an interruption never leaves a half-written one: the one atomic writer.

Every file the package writes (checkpoints, shipped weights and their cards, evaluation reports,
benchmark tables, exported images, notebooks) goes through :func:`atomic_write`: the bytes go to a
temporary file in the same folder, which is flushed, fsynced and moved over the target with
``os.replace``. A reader sees the old file or the new one, never a mixture.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


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
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """:func:`atomic_write` for UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path, data) -> Path:
    """:func:`atomic_write_text` of ``data`` as indented JSON with a final newline."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")
