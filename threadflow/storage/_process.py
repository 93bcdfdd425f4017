"""Which process owns a stored run, whether that process is still alive, and how to wake it.

A run records its owner as (host name, pid, start identity). The start
identity — ``boot-id:start-ticks`` from ``/proc`` on Linux — tells a live
owner from an unrelated process that was given the same pid later, and from
the same pid after a reboot. Elsewhere it is empty and liveness falls back to
``os.kill(pid, 0)`` (never on Windows, where that call would terminate the
process: there an owner is always presumed alive). An owner on another host is
always presumed alive: only the local kernel can say a process has exited.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import struct
import sys
from pathlib import Path
from typing import NamedTuple

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
    """The process that created a run: host name, pid, and the process's start identity ("" if unknown)."""

    host: str
    pid: int
    start: str


@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_identity(pid: int) -> str | None:
    """``boot-id:start-ticks`` of a live process; None if it has exited (zombies too); "" if unknown here."""
    if not sys.platform.startswith("linux"):
        return ""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return ""
    fields = stat[stat.rindex(b")") + 2 :].split()  # the command name may hold spaces and parentheses
    if fields[0] in (b"Z", b"X"):
        return None  # exited; its parent has not collected it yet
    return f"{_boot_id()}:{int(fields[19])}"


_this: RunOwner | None = None


def this_process() -> RunOwner:
    """The owner recorded for runs created by this process (recomputed in a forked child)."""
    global _this
    pid = os.getpid()
    if _this is None or _this.pid != pid:
        _this = RunOwner(socket.gethostname(), pid, start_identity(pid) or "")
    return _this


def owner_alive(owner: RunOwner) -> bool:
    """False only when sure: the owner ran on this host and has exited (or its pid now belongs to another process)."""
    me = this_process()
    if owner.host != me.host:
        return True
    if owner.pid == me.pid and (owner.start == me.start or not (owner.start and me.start)):
        return True
    if sys.platform == "win32":
        return True
    start = start_identity(owner.pid)
    if start is None:
        return False
    if start and owner.start:
        return start == owner.start
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by another user
    return True


# -- nudges ----------------------------------------------------------------------
#
# A process that writes a cancel request for a run owned by another process on
# the same Linux host also sends the request to it as a datagram, to an
# abstract-namespace socket named after the owner (no file; it goes away with
# the process). The owner's watcher, blocked on that socket, acts at once
# instead of at its next poll, and without reading the database first: each
# read would give up the GIL and, while a stream runs flat out, wait a whole
# switch interval (5 ms) to get it back. An abstract socket has no
# permissions, so the kernel-checked credentials of the sender decide: only
# nudges from the same user (or root) — who could write the request into the
# database anyway — are acted on. The request is in the database in any case:
# a lost, untrusted or unreadable nudge only means the watcher's poll finds it.

_CAN_NUDGE = sys.platform.startswith("linux") and hasattr(socket, "SO_PASSCRED")
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_MAX_NUDGE = 60_000


class Nudge(NamedTuple):
    """A cancel request as sent to the owner: its id in the database, the run, the reason."""

    request_id: int
    run_id: str
    reason: str | None


def _inbox_address(owner: RunOwner) -> str:
    return f"\0threadflow-cancel-{owner.pid}-{owner.start}"


def open_inbox() -> socket.socket | None:
    """A socket that receives nudges for this process; None where nudges are not available."""
    if not _CAN_NUDGE:
        return None
    inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        inbox.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        inbox.bind(_inbox_address(this_process()))
    except OSError:
        inbox.close()
        return None
    return inbox


def wait_for_nudge(inbox: socket.socket, timeout: float) -> Nudge | None:
    """The next trusted nudge, or None after ``timeout`` seconds (or for a nudge that is not to be trusted)."""
    if inbox.gettimeout() != timeout:
        inbox.settimeout(timeout)
    try:
        data, ancillary, _, _ = inbox.recvmsg(_MAX_NUDGE, socket.CMSG_SPACE(_CREDENTIALS.size))
    except OSError:  # TimeoutError: nothing arrived
        return None
    if not any(_trusted(*item) for item in ancillary):
        return None
    try:
        request_id, run_id, reason = json.loads(data)
    except ValueError:
        return None
    if not isinstance(request_id, int) or not isinstance(run_id, str) or not isinstance(reason, (str, type(None))):
        return None
    return Nudge(request_id, run_id, reason)


def _trusted(level: int, kind: int, data: bytes) -> bool:
    if level != socket.SOL_SOCKET or kind != socket.SCM_CREDENTIALS or len(data) < _CREDENTIALS.size:
        return False
    _, uid, _ = _CREDENTIALS.unpack(data[: _CREDENTIALS.size])
    return uid in (os.getuid(), 0)


def nudge(owner: RunOwner, request: Nudge) -> None:
    """Send ``request`` to the watcher of ``owner`` if it runs on this host and listens; never raises or blocks."""
    if not _CAN_NUDGE or owner.host != this_process().host:
        return
    data = json.dumps(list(request)).encode()
    if len(data) > _MAX_NUDGE:
        return  # a very long reason: the poll will find it
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.setblocking(False)
            sender.sendto(data, _inbox_address(owner))
    except OSError:
        pass  # not listening (no active runs, or not Linux), or its queue is full: it polls anyway
