"""The doorbell: how a process that asks for a cancel tells the owner's *running* threads, at no GIL cost.

A nudge (``_nudges.py``) wakes the owner's watcher thread at once, but a
thread that wakes needs the GIL, and a run streaming flat out holds it: the
watcher then waits a whole switch interval (5 ms) at each step of its
answer. So the requester also rings a doorbell: one byte in a one-page file
in ``/dev/shm`` that the owner maps into memory. A streaming run's thread
reads that byte every few dozen tokens (``SqliteStore._checkpoint``) — a
memory read, no system call — and when it is set, answers the requests
itself before its next event.

The bell is only a hint: the request is in the database, which the owner
reads after clearing the byte (so a ring that comes after the read is seen
at the next look, never lost), and a nudge and the watcher's poll still
answer any request the bell's reader does not (a run blocked in a step that
yields nothing, another store's run). The file's name holds the watcher's
random inbox token, recorded only in the run's owner record, and is created
``0600``; a ring from anyone else could only cause a read of the database.
The watcher removes its bell when it stops; one left by a process that was
killed is removed by the next bell this user opens on the host. Where there
is no ``/dev/shm`` (or no nudges) there is no bell.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path
from typing import Final

from ._liveness import RunOwner, pid_alive
from ._nudges import CAN_NUDGE, reachable

__all__ = ["Bell", "open_bell", "ring"]

_DIRECTORY: Final = Path("/dev/shm")


def _bell_path(pid: int, token: str) -> Path:
    return _DIRECTORY / f"threadflow-cancel-{pid}-{token}"


class Bell:
    """The owner's side: a byte in shared memory that requesters set to 1."""

    __slots__ = ("_map", "path")

    def __init__(self, path: Path, memory: mmap.mmap) -> None:
        self.path = path
        self._map = memory

    def rung(self) -> bool:
        """Whether it rang since the last call: cleared before the caller reads the requests, so none is missed."""
        if not self._map[0]:
            return False
        self._map[0] = 0
        return True

    def remove(self) -> None:
        """Take the file away (the watcher stops); the mapping lives on while a store still reads it."""
        with contextlib.suppress(OSError):
            self.path.unlink()


def open_bell(token: str) -> Bell | None:
    """A new bell named by this process and ``token`` (the inbox's); None where there can be none."""
    if not CAN_NUDGE or not token or not _DIRECTORY.is_dir():
        return None
    _remove_stale()
    path = _bell_path(os.getpid(), token)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
    try:
        # The page itself, now: a page of /dev/shm first touched through the mapping when the tmpfs is
        # full (a container's 64 MB one) kills the process with SIGBUS. No room now means no bell.
        os.posix_fallocate(fd, 0, mmap.PAGESIZE)
        return Bell(path, mmap.mmap(fd, mmap.PAGESIZE))
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    finally:
        os.close(fd)


def _remove_stale() -> None:
    """Remove this user's bells whose process has exited (killed before its watcher could remove them)."""
    with contextlib.suppress(OSError):
        for path in _DIRECTORY.glob("threadflow-cancel-*-*"):
            pid = path.name.split("-")[2]
            if pid.isdigit() and path.lstat().st_uid == os.getuid() and not pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    path.unlink()


def ring(owner: RunOwner) -> None:
    """Set the bell of ``owner`` if it runs on this host and has one; never raises or blocks."""
    if not reachable(owner):
        return
    try:
        fd = os.open(_bell_path(owner.pid, owner.inbox), os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return  # no bell (its runs have ended, another namespace): the nudge and the poll answer
    try:
        os.pwrite(fd, b"\1", 0)
    except OSError:
        pass
    finally:
        os.close(fd)
