"""Private files: secrets, env files and logs are created 0600 from the first byte.

Writing a file and then chmod-ing it leaves a window in which another local user can open it (and
keep the descriptor); here the mode is given to ``open(2)`` itself. Whole files are replaced
atomically (a unique temporary file in the same directory, then ``rename``), so a reader never sees
half a file and a stale temporary file never blocks the next write.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

PRIVATE = 0o600


class UnsafeDirectory(RuntimeError):
    """The emulator's data directory could be (or have been) changed by another local user."""


def private_directory(path: Path) -> Path:
    """Make ``path`` (and missing parents) if needed and return it, after checking that no other local
    user controls it: not a symbolic link, owned by us, writable by nobody else.

    The emulator keeps its keys, PAT, client secret and Postgres's data here, and as root it hands
    parts of it to Postgres's OS user: a directory another user made in advance (a predictable path
    under /tmp) or can write to would let them plant state or redirect those operations."""
    me = os.geteuid()
    for parent in reversed(path.parents):  # a link on the way that someone else made could lead anywhere
        with contextlib.suppress(FileNotFoundError):
            pst = os.lstat(parent)
            if stat.S_ISLNK(pst.st_mode) and pst.st_uid not in (0, me):
                raise UnsafeDirectory(f"the emulator's data directory {path} is reached through {parent}, a "
                                      f"symbolic link of uid {pst.st_uid}: another local user decides where it "
                                      "leads. Fix: use a directory of your own that only you can write to")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory"
    elif st.st_uid != me:
        problem = f"belongs to uid {st.st_uid}, not to us (uid {me})"
    elif st.st_mode & 0o022:
        problem = f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    if problem is not None:
        raise UnsafeDirectory(f"the emulator's data directory {path} {problem}: another local user could "
                              "read or plant its secrets and state. Fix: use a directory of your own that "
                              "only you can write to (e.g. one made by tempfile.mkdtemp()), or remove this one")
    return path  # a new one is 0700; an existing one keeps its mode (what is inside is private anyway)


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
