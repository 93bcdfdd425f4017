"""Cancels across processes: asking the owner of a run, and the owner's watcher that answers.

``request_cancel`` writes a request naming the run's owner, sends it to the
owner too (a datagram, on Linux: see ``_nudges.py``), and waits for the
answer. The owning process has one watcher thread, only while it has active
runs in a ``SqliteStore``. It acts on a datagram at once, and polls the table
as well (every ``watch_interval`` seconds, or ``nudged_watch_interval`` where
datagrams arrive) with one indexed query; either way it cancels the run
exactly as ``threadflow.cancel_run`` does (through the ``LocalRuns`` the core
lent the store) and writes back its ``True`` / ``False``. An accepted answer
is written before the run's end is recorded (``run_ended`` waits for it), and
the watcher answers everything still pending before it exits, so a request
that reaches a live owner is always answered. A store that has been closed
is never looked at again: nothing touches its file after ``close()``.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Final

from .._text import check_reason, clean_text
from ..base import LocalRuns
from ._bell import Bell, open_bell, ring
from ._liveness import owner_alive, this_process
from ._nudges import Nudge, nudge, open_inbox, wait_for_nudge
from ._rows import answer_request, insert_request

if TYPE_CHECKING:
    from .store import SqliteStore

__all__ = ["WATCHER", "Answers", "request_cancel"]

logger = logging.getLogger("threadflow")


def request_cancel(store: SqliteStore, run_id: str, reason: str | None, timeout: float) -> bool | None:
    """``SqliteStore.request_cancel`` (which documents it)."""
    check_reason(reason)
    if not isinstance(run_id, str):
        return False
    run_id, reason = clean_text(run_id), None if reason is None else clean_text(reason)
    info = store.get_run(run_id)
    if info is None or info.status.is_terminal:
        return False
    owner = store.owner(run_id)
    if owner is not None and owner.same_process(this_process()):
        local = store._local_runs
        return local is not None and local.cancel(run_id, reason)
    request_id = store._shared.autocommit(functools.partial(insert_request, run_id=run_id, reason=reason))
    if request_id is None:
        return False  # it ended meanwhile
    if owner is not None:
        ring(owner)  # first: a run streaming flat out answers from its own thread (see _bell.py)
        nudge(owner, Nudge(request_id, run_id, reason))
    return _await_answer(store, request_id, run_id, time.monotonic() + timeout)


def _await_answer(store: SqliteStore, request_id: int, run_id: str, deadline: float) -> bool | None:
    pause, next_owner_check = 0.0005, time.monotonic() + 0.05
    while True:
        state: str = store._shared.read("SELECT state FROM cancel_requests WHERE id = ?", (request_id,))[0][0]
        if state in ("accepted", "refused"):
            return state == "accepted"
        now = time.monotonic()
        if now >= next_owner_check:
            next_owner_check = now + 0.05
            if _owner_is_done(store, run_id):
                return _withdraw(store, request_id) or False
        if now >= deadline:
            return _withdraw(store, request_id)
        time.sleep(pause)
        pause = min(pause * 2, 0.005)


def _owner_is_done(store: SqliteStore, run_id: str) -> bool:
    """True when no answer can come: the run has ended and its owner has exited, or the owner died mid-run.

    An owner writes an ``accepted`` answer before the run's end is recorded
    (see ``Answers.wait``), so such a request was not accepted.
    """
    info = store.get_run(run_id)  # records the run as ended if its owner died
    owner = store.owner(run_id)
    return info is None or owner is None or (info.status.is_terminal and not owner_alive(owner))


def _withdraw(store: SqliteStore, request_id: int) -> bool | None:
    """Expire an unanswered request; the owner's answer if it came first."""

    def expire(conn: sqlite3.Connection) -> bool | None:
        conn.execute(
            "UPDATE cancel_requests SET state = 'expired', answered_at = ? WHERE id = ? AND state = 'pending'",
            (time.time(), request_id),
        )
        (state,) = conn.execute("SELECT state FROM cancel_requests WHERE id = ?", (request_id,)).fetchone()
        return None if state == "expired" else state == "accepted"

    result: bool | None = store._shared.transact(expire)
    return result


class Answers:
    """One store's side of the watcher: answering requests once each, and waiting for answers in progress."""

    def __init__(self) -> None:
        self._cond = threading.Condition()  # the answers in progress, by run id
        self._unanswered: dict[str, int] = {}
        self._answered: dict[tuple[int, str], None] = {}  # recent requests answered (insertion-ordered)

    def answer_pending(self, store: SqliteStore) -> None:
        """The watcher's look: cancel this process's runs that other processes asked to cancel."""
        me = this_process()
        rows = store._shared.read(
            "SELECT id, run_id, reason FROM cancel_requests"
            " WHERE state = 'pending' AND owner_pid = ? AND owner_host = ? AND owner_start = ? AND owner_ns = ?",
            (me.pid, me.host, me.start, me.ns),
            reopen=False,  # closed: its file is not touched again
        )
        for request_id, run_id, reason in rows:
            self.answer(store, Nudge(request_id, run_id, None if reason is None else str(reason)))

    def answer(self, store: SqliteStore, request: Nudge) -> None:
        """Cancel as asked, exactly as ``cancel_run`` does, and write the answer — once per request."""
        run_id = request.run_id
        if not self._start(request):
            return  # the nudge and the poll both brought it
        try:
            local: LocalRuns | None = store._local_runs
            # This thread answers every run's requests: a slow on_cancel callback must not stall them.
            accepted = local is not None and local.cancel(run_id, request.reason, callbacks_elsewhere=True)
            info = local.info(run_id) if accepted and local is not None else None
            write = functools.partial(answer_request, request=request, accepted=accepted, info=info)
            store._shared.autocommit(write, reopen=False)
        finally:
            self._end(run_id)

    def _start(self, request: Nudge) -> bool:
        with self._cond:
            if (request.request_id, request.run_id) in self._answered:
                return False
            self._answered[request.request_id, request.run_id] = None
            if len(self._answered) > 1024:
                del self._answered[next(iter(self._answered))]
            self._unanswered[request.run_id] = self._unanswered.get(request.run_id, 0) + 1
            return True

    def _end(self, run_id: str) -> None:
        with self._cond:
            self._unanswered[run_id] -= 1
            if not self._unanswered[run_id]:
                del self._unanswered[run_id]
            self._cond.notify_all()

    def wait(self, run_id: str, timeout: float) -> None:
        """Wait until the watcher has written its answers about ``run_id``.

        ``run_ended`` calls this, so that a process that exits as soon as its
        run has ended never leaves a request it accepted looking unanswered.
        """
        if WATCHER.is_current():
            return  # the watcher ending the run itself (an on_cancel callback): it answers right after
        with self._cond:
            self._cond.wait_for(lambda: run_id not in self._unanswered, timeout=timeout)


# -- the watcher ---------------------------------------------------------------------

#: Seconds the watcher pauses after an unexpected failure, so that a lasting one does not spin.
_WATCHER_PAUSE: Final = 0.05


class _CancelWatcher:
    """One thread per process, running only while some ``SqliteStore`` has active runs of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: set[SqliteStore] = set()
        self._thread: threading.Thread | None = None
        self._inbox: tuple[socket.socket, str] | None = None
        #: The doorbell named by the inbox's token, read by streaming runs' threads; None without an inbox.
        self.bell: Bell | None = None

    def watch(self, store: SqliteStore) -> str:
        """Look for cancel requests in ``store`` until it has no active runs left; the inbox token to record.

        The token ("" where there is no inbox) is new each time the watcher
        starts, and valid while it runs: until every run of this process has
        ended, so every run recorded with it.
        """
        with self._lock:
            self._stores.add(store)
            if self._thread is None:
                self._inbox = open_inbox()
                self.bell = None if self._inbox is None else open_bell(self._inbox[1])
                self._thread = threading.Thread(
                    target=self._loop, args=(self._inbox, self.bell), name="threadflow-cancel-watcher", daemon=True
                )
                self._thread.start()
            return "" if self._inbox is None else self._inbox[1]

    def forget(self, store: SqliteStore) -> None:
        """Never look at ``store`` again (it was closed)."""
        with self._lock:
            self._stores.discard(store)

    def stores(self) -> list[SqliteStore]:
        """The stores watched now: a run's thread that hears the process's one doorbell looks in each."""
        with self._lock:
            return list(self._stores)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def wait_stopped(self, timeout: float) -> bool:
        """Wait for the watcher thread (if any) to exit; whether none runs now. For tests."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def _loop(self, inbox: tuple[socket.socket, str] | None, bell: Bell | None) -> None:
        """Until no store has active runs: act on nudges at once, poll every store's table too."""
        try:
            while True:
                try:
                    interval = self._round()
                    if interval is None:
                        return
                    if inbox is None:
                        time.sleep(interval)
                    elif (request := wait_for_nudge(inbox[0], interval)) is not None:
                        self._act_on(request)
                except Exception:  # whatever one datagram or one look did: the poll still answers; carry on
                    logger.exception("threadflow: the cancel watcher failed; it carries on")
                    time.sleep(_WATCHER_PAUSE)
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = self._inbox = self.bell = None  # a later watch() starts another
                if inbox is not None:
                    inbox[0].close()  # its token dies with it: nobody can bind it later and read requests
                if bell is not None:
                    bell.remove()

    def _round(self) -> float | None:
        """One look at every store; the interval until the next, or None to stop (no store has active runs)."""
        with self._lock:
            stores = list(self._stores)
            finished = [store for store in stores if not store._has_active()]
        for store in stores:  # a store whose runs have all ended gets one last look, then is dropped
            self.look(store)
        with self._lock:
            self._stores.difference_update(s for s in finished if not s._has_active())
            if not self._stores:
                # under the lock watch() takes: a new run starts a new watcher
                self._thread = self._inbox = self.bell = None
                return None
            if self._inbox is None:
                return min(store.watch_interval for store in self._stores)
            return min(store.nudged_watch_interval for store in self._stores)

    def _act_on(self, request: Nudge) -> None:
        with self._lock:
            stores = [store for store in self._stores if store._takes(request)]
        for store in stores[:1]:
            try:
                store._answer(request)
            except Exception:
                logger.exception("threadflow: answering a cancel request in %s failed", store.path)

    def forget_parent(self) -> None:
        """In a forked child: the parent's watcher thread did not come along, and its inbox and bell are the parent's.

        Left as they were, the child would never start a watcher of its own
        (nobody would answer cancel requests for its runs) and its runs'
        threads would clear the parent's doorbell. The parent's bell file is
        not removed; the child's copy of its inbox is closed.
        """
        inbox = self._inbox
        self._lock = threading.Lock()
        self._stores = set()
        self._thread = self._inbox = self.bell = None
        if inbox is not None:
            inbox[0].close()

    @staticmethod
    def look(store: SqliteStore) -> None:
        """Answer ``store``'s pending requests for this process's runs; a failure is logged, never raised."""
        try:
            store._answer_pending()
        except Exception:
            logger.exception("threadflow: looking for cancel requests in %s failed", store.path)


WATCHER = _CancelWatcher()

if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=WATCHER.forget_parent)
