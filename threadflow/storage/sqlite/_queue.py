"""The run queue on one host: queued runs, claims, resumes and cancels of runs no process runs.

SQLite has no ``SKIP LOCKED``; its equivalent here is the write lock:
every claim is one ``BEGIN IMMEDIATE`` transaction, so two workers never
take the same run. A queued run no worker has claimed has no owner
(``owner_pid`` 0). A worker that dies is known at once on this host (its pid
is gone, see ``_liveness.py``): the next claim by another worker resumes its
queued runs, which readers therefore never record as abandoned.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from ...events import BaseEvent, Event, StepCompletedEvent, WorkflowCancelledEvent, WorkflowStartedEvent
from ...exceptions import DuplicateRunError
from ...status import CancelCause, RunInfo
from .._follow import follow_log
from .._text import clean_text, maybe_text
from ..errors import StoreError
from ._layout import RunBuffer
from ._liveness import RunOwner, dead_owner_keys, owner_alive, this_process
from ._remote_cancel import WATCHER
from ._rows import record_abandoned
from ._schema import ACTIVE_SQL, OWNER_COLUMNS

if TYPE_CHECKING:
    from pathlib import Path

    from ._connection import SharedConnection
    from ._remote_cancel import Answers
    from ._writer import WriteQueue
    from .store import SqliteStore

__all__ = ["Claim", "QueueSide", "cancel_unowned", "claim", "enqueue_run"]

_NOBODY: Final = ("", 0, "", "", "")


@dataclass(frozen=True)
class Claim:
    """A queued run a worker has just taken: fresh, or to resume (``resumed``)."""

    run_id: str
    workflow_id: str
    input: str | None
    attempt: int
    previous_owner: str | None
    resumed: bool
    run_timeout: float | None
    key: int
    #: The W3C traceparent the run was enqueued under (None without telemetry): its spans continue that trace.
    traceparent: str | None = None


def enqueue_run(conn: Any, *, info: RunInfo, input_json: str, run_timeout: float | None) -> None:
    """A queued run's record: pending, owned by nobody. ``DuplicateRunError`` if the id is active."""
    run_id = clean_text(info.run_id)
    if conn.execute(f"SELECT 1 FROM runs WHERE run_id = ? AND status IN ({ACTIVE_SQL})", (run_id,)).fetchone():
        raise DuplicateRunError(info.run_id)
    conn.execute(
        "INSERT INTO runs (run_id, workflow_id, workflow_name, status, created_at,"
        f" {OWNER_COLUMNS}, queued, input, run_timeout, traceparent)"
        " VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
        (
            run_id,
            clean_text(info.workflow_id),
            clean_text(info.workflow_name),
            info.created_at,
            *_NOBODY,
            input_json,
            run_timeout,
            maybe_text(info.traceparent),
        ),
    )


def claim(conn: Any, *, workflows: list[str], limit: int, inbox: str, orphans: bool) -> list[Claim]:
    """Take up to ``limit`` queued runs: pending ones, or (``orphans``) those whose owner died."""
    marks = ", ".join("?" * len(workflows))
    if orphans:
        rows = conn.execute(
            f"SELECT run_key, {OWNER_COLUMNS} FROM runs WHERE queued AND owner_pid <> 0"
            f" AND status IN ({ACTIVE_SQL}) AND workflow_id IN ({marks})",
            workflows,
        ).fetchall()
        keys = dead_owner_keys(rows)[:limit]
    else:
        keys = [
            row[0]
            for row in conn.execute(
                f"SELECT run_key FROM runs WHERE status = 'pending' AND queued AND owner_pid = 0"
                f" AND workflow_id IN ({marks}) ORDER BY created_at LIMIT ?",
                (*workflows, limit),
            )
        ]
    me = this_process()._replace(inbox=inbox)
    return [_take(conn, key, me) for key in keys]


def _take(conn: Any, key: int, me: RunOwner) -> Claim:
    run_id, workflow_id, input_json, attempt, run_timeout, host, pid, traceparent = conn.execute(
        "SELECT run_id, workflow_id, input, attempt, run_timeout, owner_host, owner_pid, traceparent"
        " FROM runs WHERE run_key = ?",
        (key,),
    ).fetchone()
    resumed = pid != 0
    attempt += 1 if resumed else 0
    conn.execute(
        "UPDATE runs SET owner_host = ?, owner_pid = ?, owner_start = ?, owner_ns = ?, owner_inbox = ?,"
        " attempt = ?, status = CASE WHEN status = 'pending' THEN 'running' ELSE status END,"
        " started_at = COALESCE(started_at, ?) WHERE run_key = ?",
        (*me, attempt, time.time(), key),
    )
    previous = f"{host}:{pid}" if resumed else None
    return Claim(run_id, workflow_id, input_json, attempt, previous, resumed, run_timeout, key, traceparent)


def cancel_unowned(conn: Any, *, run_id: str, reason: str | None) -> bool:
    """End ``cancelled`` a queued run nobody runs (unclaimed, or its worker died); False if there is none."""
    row = conn.execute(
        f"SELECT run_key, workflow_id, workflow_name, step_name, {OWNER_COLUMNS} FROM runs"
        f" WHERE run_id = ? AND queued AND status IN ({ACTIVE_SQL}) ORDER BY run_key DESC LIMIT 1",
        (run_id,),
    ).fetchone()
    if row is None:
        return False
    key, workflow_id, workflow_name, step_name, *owner = row
    if owner[1] != 0 and owner_alive(RunOwner(*owner)):
        return False  # a live worker runs it: it answers the request itself
    (last,) = conn.execute("SELECT COALESCE(MAX(last_seq), 0) FROM events WHERE run_key = ?", (key,)).fetchone()
    now, reason = time.time(), maybe_text(reason)
    base = {"run_id": run_id, "workflow_id": workflow_id, "workflow_name": workflow_name, "created_at": now}
    events: list[BaseEvent] = [] if last else [WorkflowStartedEvent(seq=1, **base)]
    cause = CancelCause.requested
    events.append(
        WorkflowCancelledEvent(seq=last + len(events) + 1, reason=reason, cause=cause, step_name=step_name, **base)
    )
    conn.execute(
        "INSERT INTO events (run_key, first_seq, last_seq, data) VALUES (?, ?, ?, ?)",
        (key, events[0].seq, events[-1].seq, "\n".join(event.model_dump_json() for event in events)),
    )
    conn.execute(
        "UPDATE runs SET status = 'cancelled', cause = ?, reason = ?, ended_at = ?,"
        " started_at = COALESCE(started_at, ?), input = NULL WHERE run_key = ?",
        (cause.value, reason, now, now, key),
    )
    return True


class QueueSide:
    """``SqliteStore``'s side of the queue (``threadflow.Worker``, ``Workflow.enqueue``): processes on one host."""

    if TYPE_CHECKING:  # what the store provides
        path: Path
        _shared: SharedConnection
        _writes: WriteQueue
        _buffers: dict[str, RunBuffer]
        _queued: set[str]
        _answers: Answers

        @property
        def readonly(self) -> bool: ...

        def events(self, run_id: str, after_seq: int = 0) -> Sequence[Event]: ...

        def get_run(self, run_id: str) -> RunInfo | None: ...

    def _store(self) -> SqliteStore:
        return cast("SqliteStore", self)  # the only class this is mixed into

    #: How often an idle worker looks at the queue (SQLite has no NOTIFY to wake it).
    queue_poll_interval: float = 0.05
    #: Not used on one host: a dead worker is known at once by its pid (``Worker`` sets it all the same).
    lease_seconds: float = 15.0

    def enqueue(self, info: RunInfo, input_json: str, run_timeout: float | None) -> None:
        """Record a queued run (``pending``, owned by nobody); ``DuplicateRunError`` if the id is active."""
        if self.readonly:
            raise StoreError(f"{self.path}: the run history is opened read-only")
        self._shared.transact(functools.partial(enqueue_run, info=info, input_json=input_json, run_timeout=run_timeout))

    def claim(self, workflow_ids: list[str], limit: int, *, orphans: bool = False) -> list[Claim]:
        """Take up to ``limit`` queued runs of these workflows (whose worker died, with ``orphans``)."""
        if limit <= 0 or self.readonly:
            return []
        inbox = WATCHER.watch(self._store())  # the claims name this process's cancel inbox
        take = functools.partial(claim, workflows=workflow_ids, limit=limit, inbox=inbox, orphans=orphans)
        claims: list[Claim] = self._shared.transact(take)
        return claims

    def adopt(self, claim: Claim) -> None:
        """A claimed run is registered in this process: write its events, answer its cancels."""
        buffer = RunBuffer(claim.run_id)
        buffer.key = claim.key
        with self._writes.lock:
            self._buffers[claim.run_id] = buffer
        self._queued.add(claim.run_id)
        self._writes.ensure_writer()  # it commits buffered events every flush_interval while runs are active
        self._writes.wake.set()
        WATCHER.watch(self._store())
        self._answers.answer_pending(self._store())

    def release(self, run_id: str) -> None:
        """A claimed run this process no longer runs."""
        self._queued.discard(run_id)
        buffer = self._buffers.get(run_id)
        if buffer is not None:
            self._writes.forget(run_id, buffer)

    def fail_claim(self, claim: Claim, message: str, error_type: str) -> None:
        """End a claimed run ``error`` without running it (``message`` says why it cannot be resumed)."""
        self._shared.transact(functools.partial(record_abandoned, key=claim.key, error=(message, error_type)))

    def end_orphans(self, limit: int = 100) -> int:
        """Nothing to do: readers record the runs of dead processes not from the queue as they see them."""
        return 0

    def resume_log(self, run_id: str) -> list[tuple[Event, bool]]:
        """The run's stored events, each with whether its content can be resumed from (is JSON data)."""
        rows = self._shared.read(
            "SELECT unresumable FROM runs WHERE run_id = ? ORDER BY run_key DESC LIMIT 1", (clean_text(run_id),)
        )
        inexact = set((rows[0][0] or "").split("\n")) if rows else set()
        return [
            (event, not (isinstance(event, StepCompletedEvent) and event.step_name in inexact))
            for event in self.events(run_id)
        ]

    def _mark_unresumable(self, buffer: RunBuffer, step_name: str) -> None:
        """Before its event is written: this step's output is not JSON, so a resume must not use the log's text."""
        self._shared.autocommit(
            lambda conn: conn.execute(
                "UPDATE runs SET unresumable = COALESCE(unresumable || char(10), '') || ? WHERE run_key = ?",
                (clean_text(step_name), buffer.key),
            )
        )

    def hold(self, on_queued: Any) -> None:
        """A worker starts using this store (no NOTIFY here: it polls every ``queue_poll_interval``)."""

    def unhold(self, on_queued: Any) -> None:
        """The worker stopped."""

    def follow(self, run_id: str, after_seq: int = 0, *, poll: float = 0.02) -> Iterator[Event]:
        """The run's events after ``after_seq`` as they are committed by any process, through its terminal event."""
        return follow_log(self, run_id, after_seq, poll)

    def wait_ended(self, run_id: str, timeout: float | None = None) -> bool:
        """Block until the run's record is terminal (True) or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = threading.Event()
        while True:
            info = self.get_run(run_id)
            if info is None or info.status.is_terminal:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            pause.wait(0.02)
