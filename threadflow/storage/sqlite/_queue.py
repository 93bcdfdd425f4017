"""The run queue on one host: queued runs, claims, resumes and cancels of runs no process runs.

SQLite has no ``SKIP LOCKED``; its equivalent here is the write lock:
every claim is one ``BEGIN IMMEDIATE`` transaction, so two workers never
take the same run. A queued run no worker has claimed has no owner
(``owner_pid`` 0). A worker that dies is known at once on this host (its pid
is gone, see ``_liveness.py``): the next claim by another worker resumes its
queued runs, which readers therefore never record as abandoned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

from ...events import BaseEvent, WorkflowCancelledEvent, WorkflowStartedEvent
from ...exceptions import DuplicateRunError
from ...status import CancelCause, RunInfo
from .._text import clean_text, maybe_text
from ._liveness import RunOwner, dead_owner_keys, owner_alive, this_process
from ._schema import ACTIVE_SQL, OWNER_COLUMNS

__all__ = ["Claim", "cancel_unowned", "claim", "enqueue_run"]

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
