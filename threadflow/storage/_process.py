"""Which process owns a stored run, whether that process is still alive, and how to wake it.

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
import json
import os
import secrets
import socket
import struct
import sys
from pathlib import Path
from typing import Literal, NamedTuple

__all__ = [
    "Nudge",
    "RunOwner",
    "nudge",
    "open_inbox",
    "owner_alive",
    "start_identity",
    "this_process",
    "wait_for_nudge",
]


class RunOwner(NamedTuple):
    """The process that created a run.

    ``host``, ``pid``; ``start`` its start identity and ``ns`` its pid
    namespace ("" where unknown); ``inbox`` the random token of the address its
    cancel watcher listens on ("" if none: see "nudges" below).
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
    return _signal_alive(owner.pid)


def _signal_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by another user (PermissionError), or we cannot tell
    return True


# -- nudges ----------------------------------------------------------------------
#
# A process that writes a cancel request for a run owned by another process on
# the same Linux host also sends the request to it as a datagram, to an
# abstract-namespace socket (no file; it goes away with the socket). The owner's
# watcher, blocked on that socket, acts at once instead of at its next poll,
# and without reading the database first: each read would give up the GIL
# and, while a stream runs flat out, wait a whole switch interval (5 ms) to
# get it back.
#
# An abstract socket has no permissions, so two rules keep other local users
# out. Receiving: the address holds a random token, made each time the
# watcher binds it and recorded only in the run's owner record, so only
# someone who can read the database can address it, and nobody can bind it
# first to read requests meant for the owner. Acting: the kernel-checked
# credentials of the sender decide, so only nudges from the same user (or
# root) — who could write the request into the database anyway — are acted
# on. The request is in the database in any case: a lost, untrusted or
# malformed nudge only means the watcher's poll finds it.

_CAN_NUDGE = sys.platform.startswith("linux") and hasattr(socket, "SO_PASSCRED")
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_MAX_NUDGE = 60_000


class Nudge(NamedTuple):
    """A cancel request as sent to the owner: its id in the database, the run, the reason."""

    request_id: int
    run_id: str
    reason: str | None


def _inbox_address(pid: int, token: str) -> str:
    return f"\0threadflow-cancel-{pid}-{token}"


def open_inbox() -> tuple[socket.socket, str] | None:
    """A socket that receives nudges for this process, and the token to record; None where nudges are unavailable."""
    if not _CAN_NUDGE:
        return None
    token = secrets.token_hex(16)
    inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        inbox.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        inbox.bind(_inbox_address(os.getpid(), token))
    except OSError:
        inbox.close()
        return None
    return inbox, token


def wait_for_nudge(inbox: socket.socket, timeout: float) -> Nudge | None:
    """The next trusted, well-formed nudge, or None after ``timeout`` seconds (or for any other datagram)."""
    if inbox.gettimeout() != timeout:
        inbox.settimeout(timeout)
    try:
        data, ancillary, _, _ = inbox.recvmsg(_MAX_NUDGE, socket.CMSG_SPACE(_CREDENTIALS.size))
    except OSError:  # TimeoutError: nothing arrived
        return None
    if not any(_trusted(*item) for item in ancillary):
        return None
    return _parse_nudge(data)


def _parse_nudge(data: bytes) -> Nudge | None:
    """``[request_id, run_id, reason]`` as JSON, or None for anything else."""
    try:
        fields = json.loads(data)
    except (ValueError, RecursionError):  # not UTF-8 or not JSON; or absurdly nested
        return None
    if not isinstance(fields, list) or len(fields) != 3:
        return None
    request_id, run_id, reason = fields
    if type(request_id) is not int or not isinstance(run_id, str) or not isinstance(reason, (str, type(None))):
        return None
    return Nudge(request_id, run_id, reason)


def _trusted(level: int, kind: int, data: bytes) -> bool:
    if level != socket.SOL_SOCKET or kind != socket.SCM_CREDENTIALS or len(data) < _CREDENTIALS.size:
        return False
    _, uid, _ = _CREDENTIALS.unpack(data[: _CREDENTIALS.size])
    return uid in (os.getuid(), 0)


def nudge(owner: RunOwner, request: Nudge) -> None:
    """Send ``request`` to the watcher of ``owner`` if it runs on this host and listens; never raises or blocks."""
    if not _CAN_NUDGE or not owner.inbox or owner.host != this_process().host:
        return
    data = json.dumps(list(request)).encode()
    if len(data) > _MAX_NUDGE:
        return  # a very long reason: the poll will find it
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.setblocking(False)
            sender.sendto(data, _inbox_address(owner.pid, owner.inbox))
    except OSError:
        pass  # not listening (its runs have ended, or not Linux), or its queue is full: it polls anyway
