"""The SQL of rows: run records, batches of events, abandoned runs, cancel requests and their answers.

Events are inserted only while their run's record is active, so that a run
recorded as ended by someone else keeps exactly one terminal event and no gap
(see ``insert_events``). Text SQLite cannot hold (a lone surrogate) is stored
as ``?`` (``clean_text``).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Final

from ...events import BaseEvent, WorkflowErrorEvent, WorkflowStartedEvent
from ...exceptions import DuplicateRunError
from ...status import CancelCause, RunInfo, RunStatus
from .._text import clean_text, maybe_text
from ._layout import Chunk, RunBuffer, Taken
from ._liveness import RunOwner, owner_alive, this_process
from ._nudges import Nudge
from ._schema import ACTIVE, ACTIVE_SQL, OWNER_COLUMNS, RUN_COLUMNS

__all__ = [
    "OWNER_EXITED",
    "SELECT_NEWEST",
    "SELECT_RUNS",
    "answer_request",
    "end_run",
    "info_of",
    "insert_events",
    "insert_request",
    "insert_run",
    "record_abandoned",
]

logger = logging.getLogger("threadflow")

#: The ``error`` recorded for a run whose owning process died without ending it.
OWNER_EXITED: Final = "owner process exited"
_OWNER_EXITED_TYPE: Final = "OwnerProcessExited"
#: The ``error`` recorded for a run of this process whose end could not be written (found when its id is reused).
_END_NOT_RECORDED: Final = ("the run's end could not be recorded", "RunEndNotRecorded")

#: A record with its owner (``host:pid``, or nobody: a queued run no worker claimed), attempt and traceparent.
SELECT_RUNS: Final = f"SELECT {RUN_COLUMNS}, owner_host, owner_pid, attempt, traceparent FROM runs"
SELECT_NEWEST: Final = SELECT_RUNS + " WHERE run_id = ? ORDER BY run_key DESC LIMIT 1"
_SET_RECORD: Final = (
    "status = ?, cause = ?, reason = ?, step_name = ?, error = ?, error_type = ?,"
    " created_at = ?, started_at = ?, ended_at = ?"
)


def info_of(row: Sequence[Any]) -> RunInfo:
    """The ``RunInfo`` of a row of ``RUN_COLUMNS`` (and, as ``SELECT_RUNS`` reads them, owner, attempt, traceparent)."""
    names = RUN_COLUMNS.split(", ")
    fields = dict(zip(names, row[: len(names)], strict=True))
    if len(row) > len(names):
        host, pid, attempt, traceparent = row[len(names) :]
        fields.update(owner=f"{host}:{pid}" if pid else None, attempt=attempt, traceparent=traceparent)
    return RunInfo(**fields)


def _record(info: RunInfo) -> tuple[Any, ...]:
    """The ``RunInfo`` as the values of ``RUN_COLUMNS`` (text that SQLite cannot hold cleaned)."""
    return (
        clean_text(info.run_id),
        clean_text(info.workflow_id),
        clean_text(info.workflow_name),
        RunStatus(info.status).value,
        None if info.cause is None else CancelCause(info.cause).value,
        maybe_text(info.reason),
        maybe_text(info.step_name),
        maybe_text(info.error),
        maybe_text(info.error_type),
        info.created_at,
        info.started_at,
        info.ended_at,
    )


def record_abandoned(
    conn: sqlite3.Connection, *, key: int, error: tuple[str, str] = (OWNER_EXITED, _OWNER_EXITED_TYPE)
) -> None:
    """End an active record whose owner is gone: ``error`` (message, type) and a ``workflow_error`` event."""
    row = conn.execute(
        "SELECT run_id, workflow_id, workflow_name, status, step_name FROM runs WHERE run_key = ?", (key,)
    ).fetchone()
    if row is None or row[3] not in ACTIVE:
        return  # another reader recorded it first
    (last,) = conn.execute("SELECT COALESCE(MAX(last_seq), 0) FROM events WHERE run_key = ?", (key,)).fetchone()
    now = time.time()
    base = {"run_id": row[0], "workflow_id": row[1], "workflow_name": row[2], "created_at": now}
    events: list[BaseEvent] = []
    if last == 0:  # it never started: the log still begins with workflow_started
        events.append(WorkflowStartedEvent(seq=1, **base))
    events.append(
        WorkflowErrorEvent(seq=last + len(events) + 1, error=error[0], error_type=error[1], step_name=row[4], **base)
    )
    lines = "\n".join(event.model_dump_json() for event in events)
    # No OR IGNORE: this seq is free (the owner writes only while the record is active), and must be ours.
    conn.execute(
        "INSERT INTO events (run_key, first_seq, last_seq, data) VALUES (?, ?, ?, ?)",
        (key, events[0].seq, events[-1].seq, lines),
    )
    conn.execute(
        "UPDATE runs SET status = 'error', error = ?, error_type = ?, ended_at = ?,"
        " started_at = COALESCE(started_at, ?) WHERE run_key = ?",
        (*error, now, now, key),
    )


def insert_request(conn: sqlite3.Connection, *, run_id: str, reason: str | None) -> int | None:
    """Ask for a cancel if the run is active: one statement, so that the write lock is held for an instant."""
    cursor = conn.execute(
        "INSERT INTO cancel_requests"
        " (run_id, reason, owner_host, owner_pid, owner_start, owner_ns, state, requested_at)"
        f" SELECT run_id, ?, owner_host, owner_pid, owner_start, owner_ns, 'pending', ? FROM runs"
        f" WHERE run_id = ? AND status IN ({ACTIVE_SQL})",
        (reason, time.time(), run_id),
    )
    return cursor.lastrowid if cursor.rowcount == 1 else None


def answer_request(conn: sqlite3.Connection, *, request: Nudge, accepted: bool, info: RunInfo | None) -> None:
    """The answer, then (if accepted) the record shown as cancelling: two statements that commit on their own."""
    conn.execute(
        "UPDATE cancel_requests SET state = ?, answered_at = ? WHERE id = ? AND run_id = ? AND state = 'pending'",
        ("accepted" if accepted else "refused", time.time(), request.request_id, request.run_id),
    )
    if info is not None:  # show it as cancelling until its final record is written
        conn.execute(
            "UPDATE runs SET status = 'cancelling', cause = ?, reason = ?"
            " WHERE run_id = ? AND status IN ('pending', 'running', 'waiting')",
            (None if info.cause is None else CancelCause(info.cause).value, maybe_text(info.reason), request.run_id),
        )


def insert_events(conn: sqlite3.Connection, rows: list[Chunk], progress: list[Taken]) -> None:
    """Write buffered rows in as few statements as the variable limit allows, then the runs' progress.

    Rows are written only for runs whose record is still active (see ``_insert_sql``).
    """
    per_statement = min(256, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 6)
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        try:
            conn.execute(_insert_sql(len(chunk)), list(itertools.chain.from_iterable(chunk)))
        except UnicodeEncodeError:  # a lone surrogate in a token: store the tokens with \u escapes
            conn.execute(_insert_sql(len(chunk)), list(itertools.chain.from_iterable(map(_ascii_row, chunk))))
    for part in progress:
        if part.started_at is not None:
            conn.execute(
                "UPDATE runs SET status = 'running', started_at = ? WHERE run_key = ? AND status = 'pending'",
                (part.started_at, part.buffer.key),
            )
        if part.step_name is not None:
            conn.execute(
                f"UPDATE runs SET step_name = ? WHERE run_key = ? AND status IN ({ACTIVE_SQL})",
                (clean_text(part.step_name), part.buffer.key),
            )


@functools.lru_cache(maxsize=32)
def _insert_sql(rows: int) -> str:
    """Insert ``rows`` rows, skipping those of runs no longer active.

    A run recorded as ended by someone else (a reader that judged its owner
    gone) keeps the log it had then, ending with that reader's terminal
    event: the owner's later events are refused, never interleaved. ``OR
    IGNORE`` only skips a row written again after a batch failed part-way
    (the same row: its run, first ``seq`` and content are unchanged).
    """
    values = ",".join(["(?,?,?,?,?,?)"] * rows)
    return (
        "INSERT OR IGNORE INTO events (run_key, first_seq, last_seq, data, header, times)"
        f" SELECT * FROM (VALUES {values})"
        f" WHERE column1 IN (SELECT run_key FROM runs WHERE status IN ({ACTIVE_SQL}))"
    )


def _ascii_row(row: Chunk) -> Chunk:
    key, first, last, data, header, times = row
    if header is not None:
        data = json.dumps(json.loads(data), ensure_ascii=True)
    return key, first, last, data, header, times


def insert_run(conn: sqlite3.Connection, buffer: RunBuffer, *, info: RunInfo, inbox: str) -> None:
    """The run's record, owned by this process (whose watcher listens at ``inbox``).

    An earlier run with this id keeps its record and events. If that run is
    still recorded active, its owner must be gone (else ``DuplicateRunError``):
    it is recorded as ended first.
    """
    owner = this_process()._replace(inbox=inbox)
    record = _record(info)
    active = conn.execute(
        f"SELECT run_key, {OWNER_COLUMNS} FROM runs WHERE run_id = ? AND status IN ({ACTIVE_SQL})", (record[0],)
    ).fetchall()
    for key, *fields in active:
        previous = RunOwner(*fields)
        if previous.same_process(owner):  # not active here (the core said so): its end was never written
            record_abandoned(conn, key=key, error=_END_NOT_RECORDED)
        elif owner_alive(previous):
            raise DuplicateRunError(info.run_id)  # active in another live process
        else:
            record_abandoned(conn, key=key)
    cursor = conn.execute(
        f"INSERT INTO runs ({RUN_COLUMNS}, {OWNER_COLUMNS}, traceparent) VALUES ({', '.join(['?'] * 18)})",
        (*record, *owner, maybe_text(info.traceparent)),
    )
    assert cursor.lastrowid is not None
    buffer.key = cursor.lastrowid


def end_run(conn: sqlite3.Connection, buffer: RunBuffer, *, info: RunInfo) -> None:
    """The final record, unless the record has already ended (then a warning: the stored end stands)."""
    record = _record(info)
    params: tuple[Any, ...]
    if buffer.key >= 0:
        where, params = "run_key = ?", (buffer.key,)
    else:  # no record written by this store object: this process's active run with that id, if any
        me = this_process()
        where = "run_id = ? AND owner_host = ? AND owner_pid = ? AND owner_start = ? AND owner_ns = ?"
        params = (record[0], *me[:4])
    cursor = conn.execute(
        f"UPDATE runs SET {_SET_RECORD} WHERE {where} AND status IN ({ACTIVE_SQL})", (*record[3:], *params)
    )
    if cursor.rowcount == 0:
        stored = conn.execute(f"SELECT status, error FROM runs WHERE {where} ORDER BY run_key DESC", params).fetchone()
        logger.warning(
            "threadflow: run %s ended %s, but its record had already ended (%s): it and its events after that "
            "were not written. Another process judged this one gone.",
            info.run_id,
            RunStatus(info.status).value,
            "no record" if stored is None else f"{stored[0]}: {stored[1]}",
        )
