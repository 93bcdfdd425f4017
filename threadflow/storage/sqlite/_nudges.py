"""Nudges: how a process that asks for a cancel wakes the owner's cancel watcher at once.

A process that writes a cancel request for a run owned by another process on
the same Linux host also sends the request to it as a datagram, to an
abstract-namespace socket (no file; it goes away with the socket). The owner's
watcher, blocked on that socket, acts at once instead of at its next poll,
and without reading the database first: each read would give up the GIL
and, while a stream runs flat out, wait a whole switch interval (5 ms) to
get it back.

An abstract socket has no permissions, so two rules keep other local users
out. Receiving: the address holds a random token, made each time the
watcher binds it and recorded only in the run's owner record, so only
someone who can read the database can address it, and nobody can bind it
first to read requests meant for the owner. Acting: the kernel-checked
credentials of the sender decide, so only nudges from the same user (or
root) — who could write the request into the database anyway — are acted
on. The request is in the database in any case: a lost, untrusted or
malformed nudge only means the watcher's poll finds it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import struct
import sys
from typing import NamedTuple

from ._liveness import RunOwner, this_process

__all__ = ["CAN_NUDGE", "Nudge", "nudge", "open_inbox", "reachable", "wait_for_nudge"]

CAN_NUDGE = sys.platform.startswith("linux") and hasattr(socket, "SO_PASSCRED")
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
    if not CAN_NUDGE:
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


def reachable(owner: RunOwner) -> bool:
    """Whether ``owner``'s watcher can be reached here: it runs on this host and listens (has an inbox)."""
    return CAN_NUDGE and bool(owner.inbox) and owner.host == this_process().host


def nudge(owner: RunOwner, request: Nudge) -> None:
    """Send ``request`` to the watcher of ``owner`` if it runs on this host and listens; never raises or blocks."""
    if not reachable(owner):
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
