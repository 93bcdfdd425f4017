"""The SQL of records, events, cancels, leases and claims: one function per transaction's work.

**Fencing.** A session writes a run's events and end only while the run's
row still names that session and attempt; the write locks the row first
(``UPDATE … WHERE session = … AND attempt = …``), so a claim that takes
the run over (it locks the same row) is ordered before or after it, never
between. A worker that was judged dead but is still running therefore
writes nothing more once another has resumed its run: one terminal event
per run, ``seq`` without gaps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ...events import (
    BaseEvent,
    RunContentEvent,
    WorkflowCancelledEvent,
    WorkflowErrorEvent,
    WorkflowStartedEvent,
)
from ...exceptions import DuplicateRunError
from ...status import CancelCause, RunInfo, RunStatus
from .._text import clean_text
from ._db import Cursor
from ._schema import ACTIVE, NOW, RUN_COLUMNS, TERMINAL

__all__ = [
    "Claim",
    "EVENTS_CHANNEL",
    "answer_cancel",
    "claim_orphans",
    "drop_lease",
    "claim_pending",
    "dump_event",
    "dump_tokens",
    "end_orphans",
    "end_run",
    "end_with_error",
    "info_of",
    "insert_run",
    "is_json",
    "pending_requests",
    "pg_text",
    "renew_lease",
    "request_cancel",
    "write_events",
]

#: NOTIFY channels: events written (payload run id), cancels asked (``session run_id``),
#: cancels answered (run id), runs queued (workflow id).
EVENTS_CHANNEL = "threadflow_events"
CANCEL_CHANNEL = "threadflow_cancel"
ANSWER_CHANNEL = "threadflow_answer"
QUEUE_CHANNEL = "threadflow_queue"


def pg_text(text: str | None) -> str | None:
    """Text PostgreSQL can hold: lone surrogates and NUL characters become ``?``."""
    return None if text is None else clean_text(text).replace("\x00", "?")


def is_json(value: Any) -> bool:
    """Whether ``value`` is plain JSON data (what a queued run's input and resumable outputs must be)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def dump_tokens(events: Sequence[BaseEvent]) -> Iterator[tuple[int, str, bool]]:
    """``(seq, JSON, True)`` of streamed tokens, built around a prefix shared by the tokens of one step.

    Most events of a stream are tokens; pydantic's dump costs more than the rest of writing them.
    What is built here parses (``parse_event``) to an event equal to the one dumped.
    """
    prefix_of: dict[tuple[str, int, str | None], str] = {}
    for event in events:
        assert isinstance(event, RunContentEvent)
        key = (event.step_name, event.step_index, event.agent_name)
        prefix = prefix_of.get(key)
        if prefix is None:
            head = event.model_dump(mode="json", exclude={"seq", "created_at", "content"})
            prefix = prefix_of[key] = _dumps(head)[:-1]
        text = event.content
        content = _dumps(text) if text.isascii() or clean_text(text) is text else None
        if content is None:  # a lone surrogate (no UTF-8 for it): pydantic's dump, which replaces it
            yield event.seq, dump_event(event)[0], True
        else:
            yield event.seq, f'{prefix},"seq":{event.seq},"created_at":{event.created_at!r},"content":{content}}}', True


def dump_event(event: BaseEvent) -> tuple[str, bool]:
    """The event's JSON, and whether its content is exact JSON (False: stored as text)."""
    content = getattr(event, "content", None)
    exact = content is None or type(content) is str or is_json(content)
    try:
        data = event.model_dump_json(fallback=_as_text)
    except Exception:  # noqa: BLE001 — a lone surrogate somewhere, or content that contains itself
        fields = {k: (_as_text(v) if k == "content" else clean_text(v)) for k, v in event if isinstance(v, str)}
        if "content" in type(event).model_fields:
            fields["content"] = _as_text(content)
        data = event.model_copy(update=fields).model_dump_json(fallback=_as_text)
        exact = False
    return data, exact


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _as_text(value: Any) -> str:
    try:
        return clean_text(value if isinstance(value, str) else str(value))
    except Exception:  # noqa: BLE001 — a __str__ that raises still gets a description
        return f"<unprintable {type(value).__name__}>"


def info_of(row: Sequence[Any]) -> RunInfo:
    fields = dict(zip(RUN_COLUMNS.split(", "), row, strict=True))
    return RunInfo.model_validate(fields)


# -- records ------------------------------------------------------------------


def insert_run(
    cursor: Cursor,
    info: RunInfo,
    *,
    session: str | None,
    owner: str | None,
    queued_input: str | None = None,
    run_timeout: float | None = None,
) -> None:
    """Write a new run's record (replacing an ended run's with the same id); ``DuplicateRunError`` if active."""
    cursor.execute("SELECT status FROM threadflow_runs WHERE run_id = %s FOR UPDATE", (pg_text(info.run_id),))
    row = cursor.fetchone()
    if row is not None:
        if row[0] in ACTIVE:
            raise DuplicateRunError(info.run_id)
        cursor.execute("DELETE FROM threadflow_events WHERE run_id = %s", (pg_text(info.run_id),))
        cursor.execute("DELETE FROM threadflow_runs WHERE run_id = %s", (pg_text(info.run_id),))
    cursor.execute(
        "INSERT INTO threadflow_runs (run_id, workflow_id, workflow_name, status, created_at, owner, session,"
        " queued, input, run_timeout, traceparent) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        # FOR UPDATE above locks no row when there is none: two sessions creating one new id
        # both get here, and the second waits for the first's commit, then finds its row.
        " ON CONFLICT (run_id) DO NOTHING",
        (
            pg_text(info.run_id),
            pg_text(info.workflow_id),
            pg_text(info.workflow_name),
            info.status.value,
            info.created_at,
            owner,
            session,
            queued_input is not None,
            queued_input,
            run_timeout,
            None if info.traceparent is None else pg_text(info.traceparent),
        ),
    )
    if cursor.rowcount == 0:
        raise DuplicateRunError(info.run_id)
    if queued_input is not None:
        cursor.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, pg_text(info.workflow_id)))


def write_events(  # noqa: PLR0917 — one fenced write: the run, its fence (session, attempt), what to write
    cursor: Cursor, run_id: str, session: str, attempt: int, rows: list[tuple[int, str, bool]], step: str | None
) -> bool:
    """Append a run's events (fenced, see the module docstring); False if the run is no longer this session's."""
    cursor.execute(
        "UPDATE threadflow_runs SET status = CASE WHEN status = 'pending' THEN 'running' ELSE status END,"
        " step_name = COALESCE(%s, step_name), started_at = COALESCE(started_at, %s)"
        " WHERE run_id = %s AND session = %s AND attempt = %s",
        (pg_text(step), time.time(), run_id, session, attempt),
    )
    if cursor.rowcount != 1:
        return False
    # The row is locked (the fence above): no other session writes this run's events until commit. A batch
    # written again after its commit was lost in flight starts past what is stored.
    cursor.execute("SELECT COALESCE(MAX(seq), 0) FROM threadflow_events WHERE run_id = %s", (run_id,))
    stored = cursor.fetchone()
    last = int(stored[0]) if stored else 0
    with cursor.copy("COPY threadflow_events (run_id, seq, data, exact) FROM STDIN") as copy:
        for seq, data, exact in rows:
            if seq > last:
                copy.write_row((run_id, seq, data, exact))
    cursor.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, run_id))
    return True


def end_run(cursor: Cursor, info: RunInfo, session: str, attempt: int) -> bool:
    """Write the final record (fenced); False if the run is no longer this session's."""
    cursor.execute(
        "UPDATE threadflow_runs SET status = %s, cause = %s, reason = %s, step_name = %s, error = %s,"
        " error_type = %s, started_at = COALESCE(%s, started_at), ended_at = %s, input = NULL"
        " WHERE run_id = %s AND session = %s AND attempt = %s AND status <> ALL(%s)",
        (
            info.status.value,
            info.cause.value if info.cause is not None else None,
            pg_text(info.reason),
            pg_text(info.step_name),
            pg_text(info.error),
            pg_text(info.error_type),
            info.started_at,
            info.ended_at if info.ended_at is not None else time.time(),
            pg_text(info.run_id),
            session,
            attempt,
            TERMINAL,
        ),
    )
    ended = cursor.rowcount == 1
    cursor.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, pg_text(info.run_id)))
    return ended


def _last_seq(cursor: Cursor, run_id: str) -> int:
    cursor.execute("SELECT COALESCE(MAX(seq), 0) FROM threadflow_events WHERE run_id = %s", (run_id,))
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def _append_ended(cursor: Cursor, run_id: str, events: list[BaseEvent], info: dict[str, Any]) -> None:
    """Write a run's last events and terminal record directly (no process runs it)."""
    for event in events:
        cursor.execute(
            "INSERT INTO threadflow_events (run_id, seq, data) VALUES (%s, %s, %s)",
            (run_id, event.seq, dump_event(event)[0]),
        )
    cursor.execute(
        "UPDATE threadflow_runs SET status = %s, cause = %s, reason = %s, error = %s, error_type = %s,"
        " started_at = COALESCE(started_at, %s), ended_at = %s, input = NULL WHERE run_id = %s",
        (
            info["status"],
            info.get("cause"),
            info.get("reason"),
            info.get("error"),
            info.get("error_type"),
            time.time(),
            time.time(),
            run_id,
        ),
    )
    cursor.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, run_id))


def end_with_error(cursor: Cursor, run_id: str, message: str, error_type: str, *, session: str | None) -> None:
    """End an active run ``error`` with a ``workflow_error`` event at the next ``seq`` (no process runs it).

    A run with a cancel request ends ``cancelled`` instead: ``request_cancel``
    answered True for it ("orphaned"), and True means cancelled.
    """
    cursor.execute(
        "SELECT workflow_id, workflow_name, step_name, cancel_requested, cancel_reason FROM threadflow_runs"
        " WHERE run_id = %s AND status = ANY(%s) AND session IS NOT DISTINCT FROM %s FOR UPDATE",
        (run_id, ACTIVE, session),
    )
    row = cursor.fetchone()
    if row is None:
        return
    base = {"run_id": run_id, "workflow_id": row[0], "workflow_name": row[1], "created_at": time.time()}
    seq = _last_seq(cursor, run_id)
    events: list[BaseEvent] = []
    if seq == 0:
        events.append(WorkflowStartedEvent(seq=1, **base))
    seq += len(events) + 1
    if row[3]:
        cause = CancelCause.requested
        events.append(WorkflowCancelledEvent(seq=seq, reason=row[4], cause=cause, step_name=row[2], **base))
        _append_ended(cursor, run_id, events, {"status": "cancelled", "cause": cause.value, "reason": row[4]})
        return
    message = pg_text(message) or ""
    events.append(WorkflowErrorEvent(seq=seq, error=message, error_type=error_type, step_name=row[2], **base))
    _append_ended(cursor, run_id, events, {"status": "error", "error": message, "error_type": error_type})


# -- leases and claims ------------------------------------------------------------


def renew_lease(cursor: Cursor, session: str, owner: str, lease_seconds: float) -> None:
    cursor.execute(
        f"INSERT INTO threadflow_sessions (session, owner, lease_until) VALUES (%s, %s, {NOW} + %s)"
        " ON CONFLICT (session) DO UPDATE SET lease_until = EXCLUDED.lease_until",
        (session, owner, lease_seconds),
    )


def drop_lease(cursor: Cursor, session: str) -> None:
    cursor.execute("DELETE FROM threadflow_sessions WHERE session = %s", (session,))


@dataclass(frozen=True)
class Claim:
    """A queued run a worker has just taken: fresh (``previous_owner`` None) or to resume."""

    run_id: str
    workflow_id: str
    input: str
    attempt: int
    previous_owner: str | None
    resumed: bool
    cancel_requested: bool
    cancel_reason: str | None
    run_timeout: float | None
    created_at: float
    #: The W3C traceparent the run was enqueued under (None without telemetry): its spans continue that trace.
    traceparent: str | None = None


_CLAIM = """
WITH c AS (
    SELECT run_id, owner AS previous_owner, session AS previous_session FROM threadflow_runs r
    WHERE {where}
    ORDER BY created_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)
UPDATE threadflow_runs r SET session = %(session)s, owner = %(owner)s,
    attempt = CASE WHEN c.previous_session IS NULL THEN r.attempt ELSE r.attempt + 1 END,
    status = CASE WHEN r.status = 'pending' THEN 'running' ELSE r.status END,
    cancel_answer = NULL
FROM c WHERE r.run_id = c.run_id
RETURNING r.run_id, r.workflow_id, r.input, r.attempt, c.previous_owner, c.previous_session IS NOT NULL,
    r.cancel_requested, r.cancel_reason, r.run_timeout, r.created_at, r.traceparent
"""

_PENDING = "workflow_id = ANY(%(workflows)s) AND status = 'pending' AND queued AND session IS NULL"
_LAPSED = (
    "session IS NOT NULL AND status = ANY(%(active)s) AND NOT EXISTS (SELECT 1 FROM threadflow_sessions s"
    f" WHERE s.session = r.session AND s.lease_until >= {NOW})"
)


def claim_pending(cursor: Cursor, workflows: list[str], limit: int, session: str, owner: str) -> list[Claim]:
    """Take up to ``limit`` queued runs no worker has started, oldest first (``FOR UPDATE SKIP LOCKED``)."""
    params = {"workflows": workflows, "limit": limit, "session": session, "owner": owner}
    cursor.execute(_CLAIM.format(where=_PENDING), params)
    return [Claim(*row) for row in cursor.fetchall()]


def claim_orphans(cursor: Cursor, workflows: list[str], limit: int, session: str, owner: str) -> list[Claim]:
    """Take up to ``limit`` queued runs whose session's lease has lapsed, to resume them."""
    where = f"workflow_id = ANY(%(workflows)s) AND queued AND {_LAPSED}"
    params = {"workflows": workflows, "limit": limit, "session": session, "owner": owner, "active": ACTIVE}
    cursor.execute(_CLAIM.format(where=where), params)
    return [Claim(*row) for row in cursor.fetchall()]


def end_orphans(cursor: Cursor, limit: int) -> int:
    """End ``error`` the runs not from a queue whose session's lease lapsed (nobody can resume them)."""
    cursor.execute(
        f"SELECT run_id, owner, session FROM threadflow_runs r WHERE NOT queued AND {_LAPSED}"
        " LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
        {"active": ACTIVE, "limit": limit},
    )
    rows = cursor.fetchall()
    cursor.execute(f"DELETE FROM threadflow_sessions WHERE lease_until < {NOW} - 86400")  # long gone, nothing left
    for run_id, owner, session in rows:
        message = f"owner {owner} stopped renewing its lease (the process exited or lost the database)"
        end_with_error(cursor, run_id, message, "OwnerLost", session=session)
    return len(rows)


# -- cancels ------------------------------------------------------------------------


def request_cancel(cursor: Cursor, run_id: str, reason: str | None) -> tuple[str, str | None]:
    """Record a cancel request; what happened and the owning session.

    ``"unknown"`` / ``"ended"``: nothing to cancel. ``"cancelled"``: a queued
    run no worker had started, ended here with ``workflow_started`` and
    ``workflow_cancelled``. ``"orphaned"``: its owner's lease lapsed; whoever
    resumes it finds the request (cancels are level-triggered). ``"asked"``:
    the owner was notified (in this transaction's commit) and answers.
    """
    cursor.execute(
        "SELECT r.status, r.session, r.workflow_id, r.workflow_name, r.cancel_requested,"
        f" EXISTS (SELECT 1 FROM threadflow_sessions s WHERE s.session = r.session AND s.lease_until >= {NOW})"
        " FROM threadflow_runs r WHERE run_id = %s FOR UPDATE",
        (run_id,),
    )
    row = cursor.fetchone()
    if row is None:
        return "unknown", None
    status, session, workflow_id, workflow_name, already, alive = row
    if status in TERMINAL:
        return "ended", session
    if session is None:
        _cancel_unstarted(cursor, run_id, workflow_id, workflow_name, reason)
        return "cancelled", None
    if not already:
        cursor.execute(
            "UPDATE threadflow_runs SET cancel_requested = true, cancel_reason = %s WHERE run_id = %s",
            (pg_text(reason), run_id),
        )
    cursor.execute("SELECT pg_notify(%s, %s)", (CANCEL_CHANNEL, f"{session} {run_id}"))
    return ("asked" if alive else "orphaned"), session


def _cancel_unstarted(cursor: Cursor, run_id: str, workflow_id: str, workflow_name: str, reason: str | None) -> None:
    base = {"run_id": run_id, "workflow_id": workflow_id, "workflow_name": workflow_name, "created_at": time.time()}
    reason = pg_text(reason)
    events: list[BaseEvent] = [
        WorkflowStartedEvent(seq=1, **base),
        WorkflowCancelledEvent(seq=2, reason=reason, cause=CancelCause.requested, **base),
    ]
    fields = {"status": RunStatus.cancelled.value, "cause": CancelCause.requested.value, "reason": reason}
    _append_ended(cursor, run_id, events, fields)


def answer_cancel(cursor: Cursor, run_id: str, session: str, accepted: bool, reason: str | None) -> None:
    """The owner's answer to a request, and the run's new state, in one transaction."""
    cursor.execute(
        "UPDATE threadflow_runs SET cancel_answer = %s,"
        " status = CASE WHEN %s AND status <> ALL(%s) THEN 'cancelling' ELSE status END,"
        " cause = CASE WHEN %s AND cause IS NULL THEN 'requested' ELSE cause END,"
        " reason = CASE WHEN %s AND cause IS NULL THEN %s ELSE reason END"
        " WHERE run_id = %s AND session = %s",
        (accepted, accepted, TERMINAL, accepted, accepted, pg_text(reason), run_id, session),
    )
    cursor.execute("SELECT pg_notify(%s, %s)", (ANSWER_CHANNEL, run_id))


def pending_requests(cursor: Cursor, session: str) -> list[tuple[str, str | None]]:
    """Cancel requests for this session's runs not answered yet (the re-check after a lost NOTIFY)."""
    cursor.execute(
        "SELECT run_id, cancel_reason FROM threadflow_runs WHERE session = %s AND status = ANY(%s)"
        " AND cancel_requested AND cancel_answer IS NULL",
        (session, ACTIVE),
    )
    return [(row[0], row[1]) for row in cursor.fetchall()]
