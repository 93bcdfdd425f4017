"""Which process owns a stored run, and whether that process is still alive.

A run records its owner as (host name, pid, start identity, pid namespace,
inbox). The start identity — ``boot-id:start-ticks`` from ``/proc`` on Linux —
tells a live owner from an unrelated process that was given the same pid
later, and from the same pid after a reboot. The pid namespace (the inode of
``/proc/self/ns/pid``) says which processes the pid can be looked up among: a
container that shares the host name (``docker --network host``, a Kubernetes
sidecar) has its own pids, so its owners are never judged from outside it.
Elsewhere both are empty and liveness falls back to ``os.kill(pid, 0)``
(never on Windows, where that call would terminate the process: there an
owner is always presumed alive). An owner on another host is always presumed
alive: only the local kernel can say a process has exited.

The rule throughout: an owner is declared gone only when this process can be
sure — its ``/proc`` entry shows a zombie or another process, or the kernel
answers "no such process". A ``/proc`` this process cannot read (``hidepid``,
another user's process), or one that shows another namespace's processes,
is never taken as proof.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, NamedTuple

__all__ = ["RunOwner", "dead_owner_keys", "owner_alive", "pid_alive", "start_identity", "this_process"]


class RunOwner(NamedTuple):
    """The process that created a run.

    ``host``, ``pid``; ``start`` its start identity and ``ns`` its pid
    namespace ("" where unknown); ``inbox`` the random token of the address its
    cancel watcher listens on ("" if none: see ``_nudges.py``).
    """

    host: str
    pid: int
    start: str
    ns: str = ""
    inbox: str = ""

    def same_process(self, other: RunOwner) -> bool:
        """Whether both name one process (the inbox, which changes while it runs, aside)."""
        return self[:4] == other[:4]


@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


_Stat = tuple[Literal["running", "zombie", "missing", "unknown"], str]


def _stat(pid: int) -> _Stat:
    """What ``/proc/PID/stat`` says: running (with the start identity), zombie, missing or unknown (unreadable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return "missing", ""
    except OSError:
        return "unknown", ""
    fields = stat[stat.rindex(b")") + 2 :].split()  # the command name may hold spaces and parentheses
    if fields[0] in (b"Z", b"X"):
        return "zombie", ""  # exited; its parent has not collected it yet
    return "running", f"{_boot_id()}:{int(fields[19])}"


def start_identity(pid: int) -> str | None:
    """``boot-id:start-ticks`` of a live process; None if ``/proc`` shows it exited (zombies too); "" if unknown."""
    if not sys.platform.startswith("linux"):
        return ""
    state, identity = _stat(pid)
    return None if state in ("missing", "zombie") else identity


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def _proc_shows_us(pid: int) -> bool:
    """Whether ``/proc`` is this pid namespace's (a /proc mounted for another one shows other pids)."""
    try:
        return os.readlink("/proc/self") == str(pid)
    except OSError:
        return False


_this: RunOwner | None = None


def this_process() -> RunOwner:
    """The owner recorded for runs created by this process (recomputed in a forked child); ``inbox`` is ""."""
    global _this
    pid = os.getpid()
    if _this is None or _this.pid != pid:
        linux = sys.platform.startswith("linux")
        start = (start_identity(pid) or "") if linux and _proc_shows_us(pid) else ""
        _this = RunOwner(socket.gethostname(), pid, start, _pid_namespace() if linux else "")
    return _this


def owner_alive(owner: RunOwner) -> bool:
    """False only when sure: the owner ran in this host's pid namespace and has exited (or its pid was reused)."""
    me = this_process()
    if owner.host != me.host or owner.ns != me.ns:
        return True  # another machine or another pid namespace: its pid means nothing here
    if owner.pid == me.pid and (owner.start == me.start or not (owner.start and me.start)):
        return True
    if sys.platform == "win32":
        return True
    if me.start:  # /proc is readable and shows this namespace (this_process() checked)
        state, identity = _stat(owner.pid)
        if state == "zombie":
            return False
        if state == "running" and identity and owner.start:
            return identity == owner.start
    # No /proc entry may only mean that we may not see it (hidepid): ask the kernel.
    return pid_alive(owner.pid)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists, as the kernel answers ``kill(pid, 0)`` (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by another user (PermissionError), or we cannot tell
    return True


def dead_owner_keys(rows: Iterable[tuple[Any, ...]]) -> list[int]:
    """The keys of ``(run_key, *owner fields)`` rows whose owner is surely gone (each owner judged once)."""
    alive: dict[RunOwner, bool] = {}
    dead = []
    for key, *fields in rows:
        owner = RunOwner(*fields)
        if owner not in alive:
            alive[owner] = owner_alive(owner)
        if not alive[owner]:
            dead.append(key)
    return dead
