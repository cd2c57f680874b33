"""The temporaries downloads write in ksym's caches (debuginfod files, portable index files).

A download writes its file under a name of its own with a prefix (``.tmp-debuginfo-``,
``.tmp-ksym-index-``) and holds an exclusive ``flock`` on it until it is renamed into place or removed:
a temporary nobody holds was left by a ksym that was killed (SIGKILL, a power cut). This module is what
the caches share about them: taking one that nobody holds (:func:`lock_temporary`), sweeping the stale
ones (:func:`remove_stale`) and removing one (:func:`unlink_quietly`).
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from pathlib import Path

from .records import NamedTuple

__all__ = ["LockedTemporary", "lock_temporary", "remove_stale", "unlink_quietly"]


class LockedTemporary(NamedTuple):
    """A temporary this process has opened and locked (``flock``): its descriptor, which the caller
    closes (the lock goes with it), and its status when locked."""

    fd: int
    st: os.stat_result


def lock_temporary(path: Path, writable: bool = False) -> LockedTemporary | None:
    """Open (``writable``: for reading and writing) and lock ``path``: a regular file, not a symlink,
    still under that name once locked. None when it is gone, not a plain file or locked by a running
    download."""
    try:
        fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and os.stat(path, follow_symlinks=False).st_ino == st.st_ino:
            return LockedTemporary(fd, st)
    except OSError:
        pass
    os.close(fd)
    return None


def remove_stale(directory: Path, prefix: str, age: float) -> list[Path]:
    """Remove the temporaries in ``directory`` (the files whose names start with ``prefix``) that no
    running ksym holds and that nothing wrote to for ``age`` seconds; returns what was removed. Never
    raises."""
    removed: list[Path] = []
    now = time.time()
    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith(prefix)]
    except OSError:
        return removed
    for e in entries:
        try:
            if now - e.stat(follow_symlinks=False).st_mtime < age:
                continue
        except OSError:
            continue
        locked = lock_temporary(Path(e.path))
        if locked is None:
            continue  # a running download holds it
        unlink_quietly(Path(e.path))  # before its lock goes with the descriptor
        os.close(locked.fd)
        removed.append(Path(e.path))
    return removed


def unlink_quietly(path: Path) -> None:
    """Remove ``path``; one that is gone already (or cannot be removed) is left to the next sweep."""
    try:
        path.unlink()
    except OSError:
        pass
