"""``PostgresStore``: the store's API; its machinery is in the modules beside it."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from ...events import BaseEvent, Event, parse_event
from ...status import RunInfo, RunStatus
from .._follow import follow_log
from .._text import check_reason
from ..base import LocalRuns
from ..errors import StoreError
from . import _rows as rows
from ._db import Database, Dedicated
from ._listener import Listener
from ._schema import RUN_COLUMNS, TERMINAL, migrate
from ._writer import LocalRun, Writer

__all__ = ["HOSTNAME_ENV", "PostgresStore", "RunOwner", "host_name"]

logger = logging.getLogger("threadflow")

#: Overrides the host name a process records as its runs' ``owner`` (several "hosts" on one machine in tests).
HOSTNAME_ENV = "THREADFLOW_HOSTNAME"


class RunOwner(NamedTuple):
    """Where a run runs (what ``threadflow runs status`` prints)."""

    host: str
    pid: int


def host_name() -> str:
    return os.environ.get(HOSTNAME_ENV) or socket.gethostname()


class PostgresStore:
    """Run records, full event logs, cancels and a run queue in one PostgreSQL database, shared by every host.

    ``dsn`` is a ``postgresql://`` URL or a libpq conninfo string; the
    database is reached (and its tables created or migrated) at once, so a bad
    DSN fails here with ``StoreError``. Each store is one *session*: it owns
    the runs it executes, holds a lease on them that its thread renews every
    third of ``lease_seconds``, and listens (``LISTEN/NOTIFY``) for cancels of
    them asked anywhere. Safe to share between threads. ``close()`` (or
    ``with``) writes what is buffered and releases the connections.
    """

    records_events = True
    #: Seconds between batched writes of appended events while runs stream.
    flush_interval: float = 0.01
    #: Seconds between the listener's looks for cancels whose NOTIFY was lost (a reconnect, say).
    recheck_interval: float = 1.0

    def __init__(self, dsn: str, *, lease_seconds: float = 15.0, connect_timeout: float = 10.0) -> None:
        if not isinstance(dsn, str) or not dsn:
            raise ValueError(f"dsn must be a non-empty str, not {dsn!r}")
        if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, int | float) or not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be a positive number, not {lease_seconds!r}")
        if not math.isfinite(lease_seconds):
            raise ValueError(f"lease_seconds must be finite, not {lease_seconds!r}")
        self.dsn = dsn
        self._lease_seconds = float(lease_seconds)
        self.session = uuid.uuid4().hex
        self.identity = f"{host_name()}:{os.getpid()}"  # what RunInfo.owner says of its runs
        self._db = Database(dsn)
        self._db.open(connect_timeout)
        self._db.transact(migrate)
        self._claims = Dedicated(self._db)  # a worker claims often, from one thread
        self._writer = Writer(self._db, self.session, self.identity, self._lease_seconds, self.flush_interval)
        self._runs = self._writer.runs
        self._queue = self._writer.queue  # read by append() on the hot path
        self._listener = Listener(
            dsn, self.session, on_cancel=self._on_cancel, on_recheck=self._recheck, recheck_interval=1.0
        )
        self._local_runs: LocalRuns | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresStore(session={self.session[:8]}, identity={self.identity!r})"

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def lease_seconds(self) -> float:
        """How long this session's runs stay its own after its last renewal (a ``Worker`` sets its own)."""
        return self._lease_seconds

    @lease_seconds.setter
    def lease_seconds(self, seconds: float) -> None:
        self._lease_seconds = self._writer.lease_seconds = float(seconds)

    def bind_local_runs(self, runs: LocalRuns) -> None:
        """Lend the store this process's runs, to cancel them as other processes ask (the core calls it)."""
        self._local_runs = runs

    # -- the runner's side ----------------------------------------------------

    def run_created(self, info: RunInfo) -> None:
        """Write the new run's record, owned by this session. ``DuplicateRunError`` if the id is active anywhere."""
        self._start_owning()
        self._db.transact(lambda c: rows.insert_run(c, info, session=self.session, owner=self.identity))
        self._runs[info.run_id] = LocalRun(attempt=1)
        self._writer.wake()  # it may have gone idle before this run was registered

    def append(self, event: BaseEvent) -> None:
        """Queue one event of a run of this session for the writer thread; never touches the network."""
        if event.run_id in self._runs:
            self._queue.append(event)

    def run_ended(self, info: RunInfo) -> None:
        """Write the run's events and its final record; committed on return.

        A run another session has taken over (its lease lapsed while this one
        still ran it) is not written: the other's record stands; a warning is logged.
        """
        run = self._runs.get(info.run_id)
        if run is None:
            return
        try:  # the last events and the end in one transaction: a crash leaves both or neither
            ended = self._writer.flush(lambda c: not run.lost and rows.end_run(c, info, self.session, run.attempt))
            if not ended:
                logger.warning("threadflow: run %s ended here after another worker took it over", info.run_id)
        finally:
            self._runs.pop(info.run_id, None)

    def flush(self) -> None:
        """Return once every event appended so far is committed."""
        self._writer.flush()

    def close(self) -> None:
        """Write what is buffered, stop the threads, release the connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.flush()
            if not self._runs:
                self._db.transact(lambda c: rows.drop_lease(c, self.session), retry=False)
        except StoreError as error:
            logger.error("threadflow: closing %r: %s", self, error)
        finally:
            self._listener.stop(self._notify)
            self._writer.stop()
            self._claims.close()
            self._db.close()

    def _notify(self, channel: str) -> None:
        self._db.transact(lambda c: c.execute("SELECT pg_notify(%s, '')", (channel,)), retry=False)

    def _start_owning(self) -> None:
        """This session is about to run something: its lease, writer and listener must be alive."""
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        self._writer.ensure_lease()
        if not self._listener.connected.is_set():
            self._listener.start()

    # -- reading --------------------------------------------------------------

    def get_run(self, run_id: str) -> RunInfo | None:
        """The run's latest record, or None."""
        if not isinstance(run_id, str):
            return None
        found = self._db.read(f"SELECT {RUN_COLUMNS} FROM threadflow_runs WHERE run_id = %s", (rows.pg_text(run_id),))
        return rows.info_of(found[0]) if found else None

    def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow_id: str | None = None,
        limit: int | None = None,
        workflow: str | None = None,
    ) -> Sequence[RunInfo]:
        """Records, newest first, filtered by status and workflow; ``workflow`` matches an id or a name."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative int or None, not {limit!r}")
        where: list[str] = ["true"]
        params: list[str | None] = []
        if status is not None:
            where.append("status = %s")
            params.append(RunStatus(status).value)
        if workflow_id is not None:
            where.append("workflow_id = %s")
            params.append(rows.pg_text(workflow_id))
        if workflow is not None:
            where.append("(workflow_id = %s OR workflow_name = %s)")
            params += [rows.pg_text(workflow)] * 2
        sql = f"SELECT {RUN_COLUMNS} FROM threadflow_runs WHERE {' AND '.join(where)}"
        sql += " ORDER BY created_at DESC, run_id DESC LIMIT %s"
        return [rows.info_of(row) for row in self._db.read(sql, [*params, limit])]

    def run_ids_with_prefix(self, prefix: str, *, limit: int = 2) -> list[str]:
        """Up to ``limit`` run ids that start with ``prefix``, newest first (as git takes a short hash)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative int, not {limit!r}")
        found = self._db.read(
            "SELECT run_id FROM threadflow_runs WHERE starts_with(run_id, %s) ORDER BY created_at DESC LIMIT %s",
            (rows.pg_text(prefix), limit),
        )
        return [row[0] for row in found]

    def owner(self, run_id: str) -> RunOwner | None:
        """The process running (or that ran) the run: its host and pid; None while pending or unknown."""
        info = self.get_run(run_id)
        if info is None or info.owner is None:
            return None
        host, _, pid = info.owner.rpartition(":")
        return RunOwner(host, int(pid) if pid.isdigit() else 0)

    def events(self, run_id: str, after_seq: int = 0) -> Sequence[Event]:
        """The committed events with ``seq > after_seq``, in order (``flush()`` first for this session's newest)."""
        found = self._db.read(
            "SELECT data FROM threadflow_events WHERE run_id = %s AND seq > %s ORDER BY seq",
            (rows.pg_text(run_id), after_seq),
        )
        return [parse_event(row[0]) for row in found]

    def follow(self, run_id: str, after_seq: int = 0, *, poll: float = 0.5) -> Iterator[Event]:
        """The run's events after ``after_seq`` as they are committed, on any host, through its terminal event.

        Woken by the writer's NOTIFY; looks every ``poll`` seconds anyway. Ends
        at once for an unknown run, and after the last event of an ended one.
        """
        self._listener.start()
        return follow_log(self, run_id, after_seq, poll, functools.partial(self._woken_for, run_id))

    @contextlib.contextmanager
    def _woken_for(self, run_id: str) -> Iterator[threading.Event]:
        """An event the listener sets when the writer NOTIFYs about ``run_id``, while the block runs."""
        wake = self._listener.events.register(run_id)
        try:
            yield wake
        finally:
            self._listener.events.unregister(run_id, wake)

    def wait_ended(self, run_id: str, timeout: float | None = None) -> bool:
        """Block until the run's record is terminal (True) or ``timeout`` seconds pass (False); woken by NOTIFY."""
        self._listener.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wake = self._listener.events.register(run_id)
            try:
                info = self.get_run(run_id)
                if info is None or info.status.is_terminal:
                    return True
                left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if left <= 0:
                    return False
                wake.wait(left)
            finally:
                self._listener.events.unregister(run_id, wake)

    # -- cancel from any host ---------------------------------------------------

    def request_cancel(self, run_id: str, reason: str | None = None, *, timeout: float = 5.0) -> bool | None:
        """Ask whichever process runs ``run_id`` to cancel it; True iff it will end ``cancelled``.

        A queued run no worker has started is ended ``cancelled`` here, in the
        same transaction. A run whose owner's lease lapsed keeps the request for
        whoever resumes it (True). Otherwise the owner is told through NOTIFY
        (or its periodic re-check) and answers as ``threadflow.cancel_run`` would;
        ``None`` when no answer came within ``timeout`` seconds (the request stays:
        the owner acts on it when it sees it). False for an unknown or ended run.
        """
        check_reason(reason)
        if not isinstance(run_id, str):
            return False
        run_id = rows.pg_text(run_id) or ""
        self._listener.start()
        answered = self._listener.answers.register(run_id)
        try:
            outcome, _ = self._db.transact(lambda c: rows.request_cancel(c, run_id, reason))
            if outcome in ("unknown", "ended"):
                return False
            if outcome in ("cancelled", "orphaned"):
                return True
            return self._await_answer(run_id, answered, time.monotonic() + timeout)
        finally:
            self._listener.answers.unregister(run_id, answered)

    def _await_answer(self, run_id: str, answered: threading.Event, deadline: float) -> bool | None:
        while True:
            found = self._db.read("SELECT cancel_answer, status FROM threadflow_runs WHERE run_id = %s", (run_id,))
            if not found:
                return False
            answer, status = found[0]
            if answer is not None:
                return bool(answer)
            if status in TERMINAL:
                return bool(status == RunStatus.cancelled)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            answered.wait(min(left, 0.1))
            answered.clear()

    def _on_cancel(self, run_id: str) -> None:
        """A NOTIFY asked this session to cancel ``run_id`` (the listener's thread)."""
        if run_id not in self._runs:
            return  # not ours any more, or not adopted yet: ``adopt`` looks at the request itself
        found = self._db.read(
            "SELECT cancel_reason FROM threadflow_runs WHERE run_id = %s AND session = %s AND cancel_requested",
            (run_id, self.session),
        )
        if found:
            self._answer(run_id, found[0][0])

    def _answer(self, run_id: str, reason: str | None) -> None:
        local = self._local_runs
        accepted = local is not None and local.info(run_id) is not None and local.cancel(run_id, reason)
        self._db.transact(lambda c: rows.answer_cancel(c, run_id, self.session, accepted, reason))

    def _recheck(self) -> None:
        """Answer the requests for this session's runs whose NOTIFY was missed."""
        if not self._runs:
            return
        for run_id, reason in self._db.transact(lambda c: rows.pending_requests(c, self.session)):
            if run_id in self._runs:
                self._answer(run_id, reason)

    # -- the queue (``threadflow.Worker`` and ``Workflow.enqueue``) -------------------

    def enqueue(self, info: RunInfo, input_json: str, run_timeout: float | None) -> None:
        """Record a queued run (``pending``, no owner) for any worker; ``DuplicateRunError`` if the id is active."""
        self._db.transact(
            lambda c: rows.insert_run(
                c, info, session=None, owner=None, queued_input=input_json, run_timeout=run_timeout
            )
        )

    def claim(self, workflow_ids: list[str], limit: int, *, orphans: bool = False) -> list[rows.Claim]:
        """Take up to ``limit`` queued runs of these workflows for this session (lapsed owners' with ``orphans``)."""
        if limit <= 0 or self._closed:
            return []
        self._start_owning()
        take = rows.claim_orphans if orphans else rows.claim_pending
        return self._claims.transact(lambda c: take(c, workflow_ids, limit, self.session, self.identity))

    def adopt(self, claim: rows.Claim) -> None:
        """A claimed run is registered in this process: write its events from now on, answer its cancels."""
        self._runs[claim.run_id] = LocalRun(attempt=claim.attempt)
        self._writer.wake()
        for run_id, reason in self._db.transact(lambda c: rows.pending_requests(c, self.session)):
            if run_id == claim.run_id:
                self._answer(run_id, reason)

    def release(self, run_id: str) -> None:
        """A claimed run this session will not run after all (it ended, or cannot start)."""
        self._runs.pop(run_id, None)

    def fail_claim(self, claim: rows.Claim, message: str, error_type: str) -> None:
        """End a claimed run ``error`` without running it (it cannot be resumed: ``message`` says why)."""
        self._db.transact(lambda c: rows.end_with_error(c, claim.run_id, message, error_type, session=self.session))

    def end_orphans(self, limit: int = 100) -> int:
        """End ``error`` the runs not from the queue whose owner's lease lapsed; how many."""
        return self._db.transact(lambda c: rows.end_orphans(c, limit))

    def resume_log(self, run_id: str) -> list[tuple[Event, bool]]:
        """The run's stored events with whether each one's content is exact JSON (to resume from)."""
        found = self._db.read(
            "SELECT data, exact FROM threadflow_events WHERE run_id = %s ORDER BY seq", (rows.pg_text(run_id),)
        )
        return [(parse_event(data), bool(exact)) for data, exact in found]

    def hold(self, on_queued: Callable[[str], None]) -> None:
        """A worker starts using this store: keep the lease even while idle; call ``on_queued(workflow_id)``."""
        self._writer.holders += 1
        self._listener.queue_listeners.append(on_queued)
        self._start_owning()

    def unhold(self, on_queued: Callable[[str], None]) -> None:
        self._writer.holders -= 1
        if on_queued in self._listener.queue_listeners:
            self._listener.queue_listeners.remove(on_queued)

    def _stats(self) -> dict[str, Any]:
        return {"listener_reconnects": self._listener.reconnects, "local_runs": len(self._runs)}
