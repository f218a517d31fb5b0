"""Atomic file writes: a file is either the old one or the complete new one, never half written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` to fill a temp file beside ``path``, flush it to disk, then rename it onto ``path``.

    The temp file is removed if ``write`` raises (the exception propagates); ``path`` is untouched then.
    The new file gets mode 0644 (``mkstemp`` would leave it private). Raises OSError if the folder is missing
    or not writable.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
