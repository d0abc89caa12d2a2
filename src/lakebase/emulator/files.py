"""Private files: secrets, env files and logs are created 0600 from the first byte.

Writing a file and then chmod-ing it leaves a window in which another local user can open it (and
keep the descriptor); here the mode is given to ``open(2)`` itself. Whole files are replaced
atomically (a unique temporary file in the same directory, then ``rename``), so a reader never sees
half a file and a stale temporary file never blocks the next write.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

PRIVATE = 0o600


def write_private(path: Path, data: bytes | str, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``data``, mode 0600 (owned by ``owner`` (uid, gid) when given)."""
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "wb") as fh:
            if owner is not None:
                os.fchown(fh.fileno(), *owner)
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_private_log(path: Path) -> BinaryIO:
    """``path`` opened for appending, 0600 (a log written by an older version is made 0600 too)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, PRIVATE)
    try:
        os.fchmod(fd, PRIVATE)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab")
