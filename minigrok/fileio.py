"""Atomic file writes: a file is either the old one or the complete new one, never half written."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` to fill a temp file beside ``path``, flush it to disk, then rename it onto ``path``.

    If ``path`` is a symlink, the file it points to is the one replaced (the temp file goes beside that
    target), so the link keeps working and shows the new contents, as editors do. A file that exists keeps its
    permission bits; a new file gets mode 0644 (``mkstemp`` would leave it private).
    The temp file is removed if ``write`` raises (the exception propagates); ``path`` is untouched then.
    Raises OSError if the folder is missing or not writable.
    """
    path = Path(os.path.realpath(path))  # through every symlink (also a dangling one: its target is created)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
