"""``SqliteStore``: durable run history in one SQLite file, shared by every process that opens it.

What it keeps (schema version 2; ``meta.schema_version`` says which):

- ``runs``: one record per run — the ``RunInfo`` fields plus its owner (host,
  pid, process start identity, pid namespace, and the token of its cancel
  inbox: see ``_process.py``). A run id may be used again once its run has
  ended: every run keeps its record and log, and a lookup by id (``get_run``,
  ``events``, ``request_cancel``, the CLI) answers for the newest;
- ``events``: every event of every run, a stretch of a run's events per row
  (``_eventlog.py`` describes the layout); they read back, through
  ``parse_event``, equal to the events the run emitted;
- ``cancel_requests``: cancels asked for by other processes, and their answers.

**Writing.** ``append`` is on the runner's hot path, so it only adds the event
to the run's in-memory buffer. One writer thread per store empties the
buffers every ``flush_interval`` seconds (sooner when one is long) and writes
each run's stretch of events as one row, with as few statements as possible:
the sqlite3 module releases the GIL for every statement, and a thread that
gives up the GIL while another thread streams tokens flat out waits up to the
interpreter's switch interval (5 ms) to get it back. For the same reason a
batch of events commits statement by statement instead of in one
transaction: the write lock is then held only while a statement runs, never
while this process waits for the GIL, so writers in other processes are not
held up. ``run_created`` and ``run_ended`` go through the same writer (in one
transaction with the events before them) and wait until their batch has
committed, so a run's record exists before its first event, and its terminal
event and final status are on disk before ``run()`` returns or its stream
ends. A run buffers at most ``max_buffered_events`` tokens; a run that outruns
the disk waits for the writer. The writer holds only a weak reference to its
store and exits after ``writer_idle_timeout`` seconds without work (or as
soon as its store is collected), so a dropped store leaves no thread or
connection behind; the next write starts a new one.

**When a write fails** (the file locked by another process for longer than
``timeout``, the disk full), nothing is dropped: the events go back into their
run's buffer and the writer tries again, backing off. ``run_created`` and
``run_ended`` try their batch ``write_attempts`` times, then raise
``StoreError``; a run is never recorded ``completed`` without every event
before its end. A file that cannot even be opened fails every waiting call
with ``StoreError`` at once.

**Durability.** WAL with ``synchronous=NORMAL``: a committed run survives the
crash or ``kill -9`` of any process; a power loss can lose the last commits.

**Content that is not JSON.** ``content`` fields of step and workflow results
accept any value. What pydantic can serialise is stored as pydantic dumps it;
anything else is stored as ``str(value)``. A lone surrogate (which UTF-8, so
SQLite, cannot hold) in any stored text — a reason, an error message, a name,
such content — is stored as ``?`` (``_eventlog.clean_text``). The run itself
is never affected: only the stored copy differs from the live one. Streamed
tokens are always stored exactly.

**Cancel from another process.** ``request_cancel`` writes a request naming
the run's owner, sends it to the owner too (a datagram, on Linux: see
``_process.py``), and waits for the answer. The owning process has one
watcher thread, only while it has active runs in a ``SqliteStore``. It acts on
a datagram at once, and polls the table as well (every ``watch_interval``
seconds, or ``nudged_watch_interval`` where datagrams arrive) with one
indexed query; either way it cancels the run exactly as
``threadflow.cancel_run`` does and writes back its ``True`` / ``False``. An
accepted answer is written before the run's end is recorded (``run_ended``
waits for it), and the watcher answers everything still pending before it
exits, so a request that reaches a live owner is always answered.

**Abandoned runs.** A run whose owner died (``kill -9``, power cut of a
container) would stay ``running`` forever. Every read (``get_run``,
``list_runs``, ``request_cancel``) checks the owners of unfinished runs in
this host's pid namespace — a pid that no longer exists, a zombie, or a pid
reused by another process (its start time differs) — and records such runs as
ended: status ``error``, error ``"owner process exited"``, and a
``workflow_error`` event with the next ``seq``, in one transaction, so two
readers never both do it. Owners on other hosts or in other pid namespaces
are never judged, nor any owner this process cannot be sure about.

Should an owner that was judged dead in error still be running (a reader with
an older threadflow, say), the recorded end stands: its later events are not
written (events are inserted only while their run's record is active, so the
log keeps exactly one terminal event and no gap), its own end does not
overwrite the record, and ``run_ended`` logs a warning saying so.

**Bad files.** A missing file (with ``create=False``), a file that is not a
threadflow database (another program's, even one holding only a view), one
with a schema version this threadflow does not know (0, or newer) raises
``StoreError`` before anything is written to it. The schema is created only
in a new file, or one with nothing in it at all.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

from .._registry import REGISTRY
from .._validate import check_reason
from ..events import (
    BaseEvent,
    CancelCause,
    Event,
    RunContentEvent,
    WorkflowErrorEvent,
    WorkflowStartedEvent,
)
from ..exceptions import DuplicateRunError
from ..status import RunInfo, RunStatus
from ._eventlog import Chunk, RunBuffer, Tokens, clean_text, decode_chunk
from ._process import Nudge, RunOwner, nudge, open_inbox, owner_alive, this_process, wait_for_nudge

__all__ = ["OWNER_EXITED", "SCHEMA_VERSION", "RunOwner", "SqliteStore", "StoreError"]

logger = logging.getLogger("threadflow")

#: The version of the layout this threadflow writes; older files are migrated, newer ones refused.
SCHEMA_VERSION: Final = 2

#: The ``error`` recorded for a run whose owning process died without ending it.
OWNER_EXITED: Final = "owner process exited"
_OWNER_EXITED_TYPE: Final = "OwnerProcessExited"
#: The ``error`` recorded for a run of this process whose end could not be written (found when its id is reused).
_END_NOT_RECORDED: Final = ("the run's end could not be recorded", "RunEndNotRecorded")

_ACTIVE = tuple(s.value for s in RunStatus if not s.is_terminal)
_ACTIVE_SQL = ", ".join(f"'{s}'" for s in _ACTIVE)


class StoreError(Exception):
    """The run history cannot be used: missing, not a threadflow database, newer than this threadflow, or unwritable."""


# -- the schema ---------------------------------------------------------------

_RUNS_TABLE: Final = """CREATE TABLE runs (
        run_key INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL,
        workflow_id TEXT NOT NULL,
        workflow_name TEXT NOT NULL,
        status TEXT NOT NULL,
        cause TEXT,
        reason TEXT,
        step_name TEXT,
        error TEXT,
        error_type TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        owner_host TEXT NOT NULL,
        owner_pid INTEGER NOT NULL,
        owner_start TEXT NOT NULL,
        owner_ns TEXT NOT NULL DEFAULT '',
        owner_inbox TEXT NOT NULL DEFAULT ''
    )"""
_RUNS_INDEXES: Final = (
    "CREATE INDEX runs_by_id ON runs (run_id)",
    # a run id is used by at most one active run (a finished run's id may be used again)
    f"CREATE UNIQUE INDEX runs_active_id ON runs (run_id) WHERE status IN ({_ACTIVE_SQL})",
    "CREATE INDEX runs_by_created ON runs (created_at)",
    "CREATE INDEX runs_by_status ON runs (status, created_at)",
    "CREATE INDEX runs_by_workflow ON runs (workflow_id, created_at)",
)
_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    _RUNS_TABLE,
    *_RUNS_INDEXES,
    """CREATE TABLE events (
        run_key INTEGER NOT NULL,
        first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        data TEXT NOT NULL,  -- the events first_seq..last_seq: see _eventlog.py
        header TEXT,
        times BLOB,
        PRIMARY KEY (run_key, first_seq)
    )""",
    """CREATE TABLE cancel_requests (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL,
        reason TEXT,
        owner_host TEXT NOT NULL,
        owner_pid INTEGER NOT NULL,
        owner_start TEXT NOT NULL,
        owner_ns TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,  -- pending | accepted | refused | expired
        requested_at REAL NOT NULL,
        answered_at REAL
    )""",
    "CREATE INDEX cancel_requests_pending ON cancel_requests (owner_pid) WHERE state = 'pending'",
)


def _to_version_2(conn: sqlite3.Connection) -> None:
    """Owners gain their pid namespace and inbox; a finished run's id may be reused (``run_id`` not unique)."""
    conn.execute("ALTER TABLE runs RENAME TO runs_v1")
    conn.execute(_RUNS_TABLE)
    columns = f"run_key, {_RUN_COLUMNS}, owner_host, owner_pid, owner_start"
    conn.execute(f"INSERT INTO runs ({columns}) SELECT {columns} FROM runs_v1")
    conn.execute("DROP TABLE runs_v1")  # its indexes go with it
    for statement in _RUNS_INDEXES:
        conn.execute(statement)
    conn.execute("ALTER TABLE cancel_requests ADD COLUMN owner_ns TEXT NOT NULL DEFAULT ''")


#: Upgrades from version ``n - 1`` to ``n``, applied in order inside one transaction.
_MIGRATIONS: Final[dict[int, Callable[[sqlite3.Connection], None]]] = {2: _to_version_2}

_RUN_COLUMNS: Final = (
    "run_id, workflow_id, workflow_name, status, cause, reason, step_name, "
    "error, error_type, created_at, started_at, ended_at"
)


def _info(row: Sequence[Any]) -> RunInfo:
    names = _RUN_COLUMNS.split(", ")
    return RunInfo(**dict(zip(names, row, strict=True)))


# -- the store ----------------------------------------------------------------


class SqliteStore:
    """Run records, full event logs and cross-process cancels in the SQLite file ``path``.

    ``create=False`` opens an existing history only (``StoreError`` if there is
    none) — what read-only tools want. The file is opened and checked at once,
    so a bad path fails here. Safe to share between threads; any number of
    processes may open the same file. ``close()`` (or ``with``) flushes and
    releases it; using the store afterwards opens it again. A store that is
    dropped without ``close()`` releases its thread and connections by itself.
    """

    records_events = True
    #: Seconds between commits of buffered events while runs stream.
    flush_interval: float = 0.02
    #: Seconds without anything to write after which the writer thread exits (the next write starts another).
    writer_idle_timeout: float = 1.0
    #: Tries at writing a run's start or end when the file is busy or locked, before ``StoreError``.
    write_attempts: int = 3
    #: Seconds between the cancel watcher's looks for requests from other processes...
    watch_interval: float = 0.002
    #: ...and where requesters wake it at once (Linux: see ``_process.py``), the fallback poll.
    nudged_watch_interval: float = 0.05
    #: Tokens a run may buffer before ``append`` waits for the writer.
    max_buffered_events: int = 100_000
    _WAKE_AT = 8192

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True, timeout: float = 10.0) -> None:
        self.path = Path(os.fspath(path))
        self._create = create
        self._timeout = timeout
        self._lock = threading.Lock()  # guards the reader connection, used by every thread but the writer
        self._reader = _Connection()
        self._buffers: dict[str, RunBuffer] = {}  # this process's runs in this store that have not ended
        self._ops: deque[_Op] = deque()
        self._wake = threading.Event()
        self._drained = threading.Condition()
        self._writer: _Writer | None = None
        # re-entrant: a RunStream collected by the GC ends its run (run_ended) in whatever thread, at any point
        self._writer_lock = threading.RLock()
        self._answering = threading.Condition()  # the watcher's answers in progress, by run id
        self._unanswered: dict[str, int] = {}
        self._answered: dict[tuple[int, str], None] = {}  # recent requests answered (insertion-ordered)
        # Dropped without close(): wake the writer (it sees the store gone and exits), close the reader.
        finalizer = weakref.finalize(self, _release, self._wake, self._reader)
        finalizer.atexit = False  # at exit, daemon threads may still be using them
        with self._lock:
            self._connection()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- connections ----------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """The shared connection (open it if needed); call with ``self._lock`` held."""
        if self._reader.conn is None:
            self._reader.conn = _open(self.path, create=self._create, timeout=self._timeout)
            self._create = True  # the file exists now; reopening after close() may recreate it
        return self._reader.conn

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._connection().execute(sql, params).fetchall()
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: cannot read the run history ({error})") from error

    def _transact(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``work`` in one write transaction on the shared connection."""
        with self._lock:
            conn = self._connection()
            try:
                with _transaction(conn):
                    return work(conn)
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: cannot write the run history ({error})") from error

    def _autocommit(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``work``, each statement its own transaction (for writes that need no atomicity)."""
        with self._lock:
            try:
                return work(self._connection())
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: cannot write the run history ({error})") from error

    # -- the runner's side ----------------------------------------------------

    def run_created(self, info: RunInfo) -> None:
        """Write the new run's record (this process as its owner) before it can emit anything.

        ``DuplicateRunError`` if the id belongs to a run still active in
        another live process; ``StoreError`` if it cannot be written.
        """
        buffer = RunBuffer()
        with self._writer_lock:  # registered first: the writer flushes on a timer while runs are active
            self._buffers[info.run_id] = buffer
        try:
            inbox = _WATCHER.watch(self)  # before the record, which names the watcher's inbox
            insert = functools.partial(_insert_run, info=info, inbox=inbox)
            self._submit(_Op(insert, buffer, drain=False, creates=True), attempts=self.write_attempts)
        except BaseException:
            self._forget(info.run_id, buffer)
            raise

    def append(self, event: BaseEvent) -> None:
        """Buffer one event of an active run for the writer thread; never touches the disk."""
        buffer = self._buffers.get(event.run_id)
        if buffer is None:
            return
        if type(event) is RunContentEvent:  # inlined: this is most of the events of a stream
            tokens = buffer.tokens or buffer.open_tokens(event)
            tokens.times.append(event.created_at)
            contents = tokens.contents
            contents.append(event.content)
            if len(contents) >= self._WAKE_AT:
                self._backpressure(tokens)
        else:
            buffer.add_line(event)

    def run_ended(self, info: RunInfo) -> None:
        """Write the final record; on return it and every event before it are committed.

        ``StoreError`` if that could not be done in ``write_attempts`` tries;
        the record then stays unfinished, never ``completed`` with events missing.
        """
        buffer = self._buffers.get(info.run_id) or RunBuffer()
        try:
            self._submit(_Op(functools.partial(_end_run, info=info), buffer, drain=True), attempts=self.write_attempts)
        finally:
            self._forget(info.run_id, buffer)
            self._await_answers(info.run_id)

    def flush(self) -> None:
        """Return once every event appended so far is committed (``StoreError`` if that failed)."""
        if self._buffers or self._ops:
            self._submit(_Op(None, None, drain=False))

    def close(self) -> None:
        """Flush, stop the writer thread and close the connections. Idempotent."""
        self.flush()
        with self._writer_lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.stop()
        with self._lock:
            self._reader.close()

    def _forget(self, run_id: str, buffer: RunBuffer) -> None:
        with self._writer_lock:
            if self._buffers.get(run_id) is buffer:
                del self._buffers[run_id]

    def _has_active(self) -> bool:
        return bool(self._buffers)

    # -- the writer -----------------------------------------------------------

    def _submit(self, op: _Op, *, attempts: int = 1) -> None:
        """Queue ``op`` and wait until its batch has committed; re-raise what it raised.

        A batch that failed on the file (``sqlite3.OperationalError``: locked
        for longer than ``timeout``, disk full) is tried again, up to
        ``attempts`` times in all, pausing longer each time.
        """
        for attempt in range(1, max(1, attempts) + 1):
            self._ops.append(op)
            writer = self._ensure_writer()
            self._wake.set()
            if writer.is_current():
                return  # a finaliser run by the writer itself: written with the next batch
            while not op.done.wait(0.5):
                self._ensure_writer()  # the writer thread died (it logs why): start another
            if op.error is None:
                return
            if attempt >= attempts or not isinstance(op.error, sqlite3.OperationalError):
                break
            time.sleep(0.05 * 4 ** (attempt - 1))
            op = op.again()
        if isinstance(op.error, DuplicateRunError):
            raise op.error
        if isinstance(op.error, StoreError):  # one error may fail several callers: each raises its own
            raise StoreError(str(op.error)) from op.error
        raise StoreError(f"{self.path}: cannot write the run history ({op.error})") from op.error

    def _ensure_writer(self) -> _Writer:
        with self._writer_lock:
            if self._writer is None or not self._writer.alive:
                self._writer = _Writer(self)
            return self._writer

    def _backpressure(self, tokens: Tokens) -> None:
        if not self._wake.is_set():
            self._wake.set()
        writer = self._writer
        if writer is None or writer.is_current():
            return
        with self._drained:
            while len(tokens.contents) >= self.max_buffered_events and writer.alive:
                self._drained.wait(0.1)

    # -- reading --------------------------------------------------------------

    def get_run(self, run_id: str) -> RunInfo | None:
        """The run's latest record (the newest run with this id), or None; an owner that died is recorded first."""
        if not isinstance(run_id, str):
            return None
        run_id = clean_text(run_id)
        rows = self._read(_SELECT_NEWEST, (run_id,))
        if not rows:
            return None
        if rows[0][3] in _ACTIVE and self._reap([run_id]):
            rows = self._read(_SELECT_NEWEST, (run_id,))
        return _info(rows[0])

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
        self._reap(None)
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(RunStatus(status).value)
        if workflow_id is not None:
            where.append("workflow_id = ?")
            params.append(clean_text(workflow_id))
        if workflow is not None:
            where.append("(workflow_id = ? OR workflow_name = ?)")
            params += [clean_text(workflow)] * 2
        sql = _SELECT_RUNS + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, run_key DESC LIMIT ?"
        return [_info(row) for row in self._read(sql, [*params, -1 if limit is None else limit])]

    def events(self, run_id: str, after_seq: int = 0) -> Sequence[Event]:
        """The committed events with ``seq > after_seq`` of the newest run with this id, in order.

        Events still buffered by this process's writer are not included: ``flush()`` first for those.
        """
        rows = self._read(
            "SELECT first_seq, data, header, times FROM events"
            " WHERE run_key = (SELECT MAX(run_key) FROM runs WHERE run_id = ?) AND last_seq > ? ORDER BY first_seq",
            (clean_text(run_id), after_seq),
        )
        return [event for row in rows for event in decode_chunk(*row) if event.seq > after_seq]

    def owner(self, run_id: str) -> RunOwner | None:
        """The process that created the newest run with this id, or None for an unknown run."""
        rows = self._read(
            f"SELECT {_OWNER_COLUMNS} FROM runs WHERE run_id = ? ORDER BY run_key DESC LIMIT 1", (clean_text(run_id),)
        )
        return RunOwner(*rows[0]) if rows else None

    # -- abandoned runs -------------------------------------------------------

    def _reap(self, run_ids: list[str] | None) -> bool:
        """Record as ended the unfinished runs (of ``run_ids``, or all) whose owner is gone; True if any."""
        sql = f"SELECT run_key, {_OWNER_COLUMNS} FROM runs WHERE status IN ({_ACTIVE_SQL})"
        rows = self._read(sql) if run_ids is None else self._read(sql + " AND run_id = ?", run_ids)
        alive: dict[RunOwner, bool] = {}
        dead = []
        for key, *owner_fields in rows:
            owner = RunOwner(*owner_fields)
            if owner not in alive:
                alive[owner] = owner_alive(owner)
            if not alive[owner]:
                dead.append(key)
        for key in dead:
            self._transact(functools.partial(_record_abandoned, key=key))
        return bool(dead)

    # -- cancel from another process -------------------------------------------

    def request_cancel(self, run_id: str, reason: str | None = None, *, timeout: float = 5.0) -> bool | None:
        """Ask the process that owns ``run_id`` to cancel it, and wait up to ``timeout`` seconds for its answer.

        ``True``: the owner accepted (the run will end ``cancelled``); ``False``:
        unknown id, a run that has ended, or an owner that has died (the run
        is then recorded as abandoned); ``None``: no answer within ``timeout``
        (an owner on another host that is not watching, or a hung process) —
        the request is withdrawn, though an owner may have acted on it just
        before. ``TypeError`` for a non-str reason. A lone surrogate in the
        reason is sent (and recorded) as ``?``.
        """
        check_reason(reason)
        if not isinstance(run_id, str):
            return False
        run_id, reason = clean_text(run_id), None if reason is None else clean_text(reason)
        info = self.get_run(run_id)
        if info is None or info.status.is_terminal:
            return False
        owner = self.owner(run_id)
        if owner is not None and owner.same_process(this_process()):
            return REGISTRY.request_cancel(run_id, reason, CancelCause.requested)
        request_id = self._autocommit(functools.partial(_insert_request, run_id=run_id, reason=reason))
        if request_id is None:
            return False  # it ended meanwhile
        if owner is not None:
            nudge(owner, Nudge(request_id, run_id, reason))
        return self._await_answer(request_id, run_id, time.monotonic() + timeout)

    def _await_answer(self, request_id: int, run_id: str, deadline: float) -> bool | None:
        pause, next_owner_check = 0.0005, time.monotonic() + 0.05
        while True:
            state: str = self._read("SELECT state FROM cancel_requests WHERE id = ?", (request_id,))[0][0]
            if state in ("accepted", "refused"):
                return state == "accepted"
            now = time.monotonic()
            if now >= next_owner_check:
                next_owner_check = now + 0.05
                if self._owner_is_done(run_id):
                    return self._withdraw(request_id) or False
            if now >= deadline:
                return self._withdraw(request_id)
            time.sleep(pause)
            pause = min(pause * 2, 0.005)

    def _owner_is_done(self, run_id: str) -> bool:
        """True when no answer can come: the run has ended and its owner has exited, or the owner died mid-run.

        An owner writes an ``accepted`` answer before the run's end is
        recorded (see ``_await_answers``), so such a request was not accepted.
        """
        info = self.get_run(run_id)  # records the run as ended if its owner died
        owner = self.owner(run_id)
        return info is None or owner is None or (info.status.is_terminal and not owner_alive(owner))

    def _withdraw(self, request_id: int) -> bool | None:
        """Expire an unanswered request; the owner's answer if it came first."""

        def expire(conn: sqlite3.Connection) -> bool | None:
            conn.execute(
                "UPDATE cancel_requests SET state = 'expired', answered_at = ? WHERE id = ? AND state = 'pending'",
                (time.time(), request_id),
            )
            (state,) = conn.execute("SELECT state FROM cancel_requests WHERE id = ?", (request_id,)).fetchone()
            return None if state == "expired" else state == "accepted"

        result: bool | None = self._transact(expire)
        return result

    def _answer_cancel_requests(self) -> None:
        """The watcher's look: cancel this process's runs that other processes asked to cancel."""
        me = this_process()
        rows = self._read(
            "SELECT id, run_id, reason FROM cancel_requests"
            " WHERE state = 'pending' AND owner_pid = ? AND owner_host = ? AND owner_start = ? AND owner_ns = ?",
            (me.pid, me.host, me.start, me.ns),
        )
        for request_id, run_id, reason in rows:
            self._answer(Nudge(request_id, run_id, None if reason is None else str(reason)))

    def _takes(self, request: Nudge) -> bool:
        """Whether a nudged request is about an active run of this process in this store."""
        return request.run_id in self._buffers

    def _answer(self, request: Nudge) -> None:
        """Cancel as asked, exactly as ``cancel_run`` does, and write the answer — once per request."""
        run_id = request.run_id
        with self._answering:
            if (request.request_id, run_id) in self._answered:
                return  # the nudge and the poll both brought it
            self._answered[request.request_id, run_id] = None
            if len(self._answered) > 1024:
                del self._answered[next(iter(self._answered))]
            self._unanswered[run_id] = self._unanswered.get(run_id, 0) + 1
        try:
            accepted = REGISTRY.request_cancel(run_id, request.reason, CancelCause.requested)
            state = REGISTRY.get(run_id)
            info = state.info() if accepted and state is not None else None
            self._autocommit(functools.partial(_answer_request, request=request, accepted=accepted, info=info))
        finally:
            with self._answering:
                self._unanswered[run_id] -= 1
                if not self._unanswered[run_id]:
                    del self._unanswered[run_id]
                self._answering.notify_all()

    def _await_answers(self, run_id: str) -> None:
        """Wait until the watcher has written its answers about ``run_id``.

        ``run_ended`` calls this, so that a process that exits as soon as its
        run has ended never leaves a request it accepted looking unanswered.
        """
        if _WATCHER.is_current():
            return  # the watcher ending the run itself (an on_cancel callback): it answers right after
        with self._answering:
            self._answering.wait_for(lambda: run_id not in self._unanswered, timeout=self._timeout)


# -- writes shared by readers, requesters and the watcher ---------------------

_SELECT_RUNS: Final = f"SELECT {_RUN_COLUMNS} FROM runs"
_SELECT_NEWEST: Final = _SELECT_RUNS + " WHERE run_id = ? ORDER BY run_key DESC LIMIT 1"
_OWNER_COLUMNS: Final = "owner_host, owner_pid, owner_start, owner_ns, owner_inbox"
_SET_RECORD: Final = (
    "status = ?, cause = ?, reason = ?, step_name = ?, error = ?, error_type = ?,"
    " created_at = ?, started_at = ?, ended_at = ?"
)


def _record(info: RunInfo) -> tuple[Any, ...]:
    """The ``RunInfo`` as the values of ``_RUN_COLUMNS`` (text that SQLite cannot hold cleaned)."""
    return (
        clean_text(info.run_id),
        clean_text(info.workflow_id),
        clean_text(info.workflow_name),
        RunStatus(info.status).value,
        None if info.cause is None else CancelCause(info.cause).value,
        _maybe_text(info.reason),
        _maybe_text(info.step_name),
        _maybe_text(info.error),
        _maybe_text(info.error_type),
        info.created_at,
        info.started_at,
        info.ended_at,
    )


def _maybe_text(text: str | None) -> str | None:
    return None if text is None else clean_text(text)


def _record_abandoned(
    conn: sqlite3.Connection, *, key: int, error: tuple[str, str] = (OWNER_EXITED, _OWNER_EXITED_TYPE)
) -> None:
    """End an active record whose owner is gone: ``error`` (message, type) and a ``workflow_error`` event."""
    row = conn.execute(
        "SELECT run_id, workflow_id, workflow_name, status, step_name FROM runs WHERE run_key = ?", (key,)
    ).fetchone()
    if row is None or row[3] not in _ACTIVE:
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


def _insert_request(conn: sqlite3.Connection, *, run_id: str, reason: str | None) -> int | None:
    """Ask for a cancel if the run is active: one statement, so that the write lock is held for an instant."""
    cursor = conn.execute(
        "INSERT INTO cancel_requests"
        " (run_id, reason, owner_host, owner_pid, owner_start, owner_ns, state, requested_at)"
        f" SELECT run_id, ?, owner_host, owner_pid, owner_start, owner_ns, 'pending', ? FROM runs"
        f" WHERE run_id = ? AND status IN ({_ACTIVE_SQL})",
        (reason, time.time(), run_id),
    )
    return cursor.lastrowid if cursor.rowcount == 1 else None


def _answer_request(conn: sqlite3.Connection, *, request: Nudge, accepted: bool, info: RunInfo | None) -> None:
    """The answer, then (if accepted) the record shown as cancelling: two statements that commit on their own."""
    conn.execute(
        "UPDATE cancel_requests SET state = ?, answered_at = ? WHERE id = ? AND run_id = ? AND state = 'pending'",
        ("accepted" if accepted else "refused", time.time(), request.request_id, request.run_id),
    )
    if info is not None:  # show it as cancelling until its final record is written
        conn.execute(
            "UPDATE runs SET status = 'cancelling', cause = ?, reason = ?"
            " WHERE run_id = ? AND status IN ('pending', 'running', 'waiting')",
            (None if info.cause is None else CancelCause(info.cause).value, _maybe_text(info.reason), request.run_id),
        )


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            if exc_type is None:
                self.conn.execute("COMMIT")
        finally:
            if self.conn.in_transaction:  # an exception, or a COMMIT that failed
                self.conn.execute("ROLLBACK")


# -- opening a file -------------------------------------------------------------


def _open(path: Path, *, create: bool, timeout: float) -> sqlite3.Connection:
    """Connect to ``path`` and check (or create) the schema; nothing is written to a file that fails the checks."""
    if not create and not path.exists():
        raise StoreError(f"{path}: no such run history (the file does not exist)")
    if path.is_dir():
        raise StoreError(f"{path}: is a directory, not a run history")
    uri = f"{path.absolute().as_uri()}?mode={'rwc' if create else 'rw'}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise StoreError(f"{path}: cannot open ({error})") from error
    try:
        _check_schema(conn, path, create=create)
        _use_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


def _check_schema(conn: sqlite3.Connection, path: Path, *, create: bool) -> None:
    try:
        if create and _is_empty(conn):  # a new file, or one with nothing in it at all: never another program's
            _changing_schema(path, "create the run history in", functools.partial(_create_schema, conn))
        tables = _tables(conn)
        if "meta" not in tables or "runs" not in tables:
            what = "it is empty" if _is_empty(conn) else "it has no threadflow tables"
            raise StoreError(f"{path}: not a threadflow run history ({what})")
        version = _schema_version(conn, path)
        if version < SCHEMA_VERSION:
            what = f"upgrade the run history (schema version {version} to {SCHEMA_VERSION}) in"
            _changing_schema(path, what, functools.partial(_migrate, conn, path))
    except sqlite3.DatabaseError as error:
        raise StoreError(f"{path}: not a threadflow run history ({error})") from error


def _changing_schema(path: Path, what: str, change: Callable[[], None]) -> None:
    """``change()``; a failure to write (a locked or read-only file) is a ``StoreError`` saying so."""
    try:
        change()
    except sqlite3.Error as error:
        raise StoreError(f"{path}: cannot {what} it ({error})") from error


def _is_empty(conn: sqlite3.Connection) -> bool:
    """Nothing at all in the file: no table, view, index or trigger."""
    return conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version; ``StoreError`` unless this threadflow can read it (or migrate from it)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        version = int(row[0])
    except (TypeError, ValueError):
        raise StoreError(f"{path}: not a threadflow run history (no schema version)") from None
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: written by a newer threadflow (schema version {version}; this threadflow reads up to "
            f"{SCHEMA_VERSION}); upgrade threadflow to use it"
        )
    if version < 1 or any(target not in _MIGRATIONS for target in range(version + 1, SCHEMA_VERSION + 1)):
        raise StoreError(f"{path}: not a threadflow run history (unknown schema version {version})")
    return version


def _create_schema(conn: sqlite3.Connection) -> None:
    _use_wal(conn)
    with _transaction(conn):
        if not _is_empty(conn):
            return  # another process created it first
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Upgrade to ``SCHEMA_VERSION`` in one transaction (another process may have done it first)."""
    with _transaction(conn):
        version = _schema_version(conn, path)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            _MIGRATIONS[target](conn)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL (a no-op when it already is); retried while another process holds it."""
    for attempt in range(100):
        try:
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            if mode == "wal":
                return
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError:
            if attempt == 99:
                raise
            time.sleep(0.01)


# -- the writer thread ----------------------------------------------------------


class _Connection:
    """The store's reader connection, held apart from the store so that its finaliser can close it."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()


def _release(wake: threading.Event, reader: _Connection) -> None:
    """A store was collected without ``close()``: its writer exits when woken; close its reader connection."""
    wake.set()
    reader.close()


class _Op:
    """Work a caller waits for: ``apply(conn, buffer)`` in the next batch, after the buffer's events if ``drain``.

    ``creates``: ``apply`` writes the run's record and sets ``buffer.key``, which a failed batch resets.
    """

    __slots__ = ("apply", "buffer", "creates", "done", "drain", "error")

    def __init__(
        self,
        apply: Callable[[sqlite3.Connection, RunBuffer], None] | None,
        buffer: RunBuffer | None,
        *,
        drain: bool,
        creates: bool = False,
    ) -> None:
        self.apply = apply
        self.buffer = buffer
        self.drain = drain
        self.creates = creates
        self.done = threading.Event()
        self.error: BaseException | None = None

    def again(self) -> _Op:
        """A fresh op doing the same, to try again."""
        return _Op(self.apply, self.buffer, drain=self.drain, creates=self.creates)

    def fail(self, error: BaseException) -> None:
        """Record that its batch did not commit (unless it failed on its own first)."""
        self.error = self.error or error
        if self.creates and self.buffer is not None:
            self.buffer.key = -1  # that rowid was rolled back: events must not be written under it


class _Taken(NamedTuple):
    """What one run's buffer held: its rows and progress, owned by the batch until it commits."""

    buffer: RunBuffer
    rows: list[Chunk]
    started_at: float | None
    step_name: str | None

    @property
    def quiet(self) -> bool:
        return not self.rows and self.started_at is None and self.step_name is None


#: One batch, in order: the ops, and before each op (and at the end) the buffered events to write.
_Plan = list[_Taken | _Op]


class _Writer:
    """The thread that turns a store's buffers and ops into batched transactions.

    It keeps the store's queues but only a weak reference to the store
    itself, and exits after ``writer_idle_timeout`` seconds with nothing to
    do, or once the store is collected; the store starts another when needed.
    """

    def __init__(self, store: SqliteStore) -> None:
        self._store = weakref.ref(store)
        self._path, self._timeout = store.path, store._timeout
        self._ops, self._buffers = store._ops, store._buffers
        self._wake, self._drained, self._lock = store._wake, store._drained, store._writer_lock
        self._stopping = threading.Event()
        self._pause = 0.0  # backing off after failed writes: seconds to the next try, and when that is
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._loop, name="threadflow-store-writer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping.is_set()

    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join()

    def _loop(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while self._wait():
                conn = conn or self._connect()
                if conn is not None:
                    self._batch(conn)
        except BaseException:
            logger.exception("threadflow: the run-history writer for %s stopped", self._path)
            raise
        finally:
            self._stopping.set()
            if conn is not None:
                conn.close()

    def _wait(self) -> bool:
        """Wait until a batch is due: True; False when the writer is to exit (stopped, idle, or its store gone)."""
        while True:
            store = self._store()
            if store is None:
                return False  # collected: nobody can be waiting for it (a waiter holds it)
            delay = store.flush_interval if self._buffers else store.writer_idle_timeout
            del store  # not kept alive while waiting
            backing_off = self._retry_at - time.monotonic()
            if backing_off > 0 and not self._stopping.is_set():
                self._stopping.wait(backing_off)  # after a failure (at most a second): wakes do not hurry it
                continue
            if self._ops:
                return True
            if self._stopping.is_set():
                return False
            woke = self._wake.wait(delay)
            self._wake.clear()
            if self._ops or self._buffers:
                return True
            if not woke and self._retire():
                return False

    def _retire(self) -> bool:
        """Exit if there is still nothing to do: decided under the lock ``_ensure_writer`` takes."""
        with self._lock:
            if self._ops or self._buffers:
                return False
            self._stopping.set()
            return True

    def _connect(self) -> sqlite3.Connection | None:
        """The writer's own connection; None if it cannot be opened: every op waiting then fails with why.

        Opened before any op is taken, so an op is either written or failed, never dropped.
        """
        waiting = len(self._ops)
        try:
            return _open(self._path, create=True, timeout=self._timeout)
        except Exception as error:  # noqa: BLE001 — handed to every waiting caller, which re-raises it
            logger.error("threadflow: cannot open %s for writing: %s", self._path, error)
            for _ in range(waiting):
                op = self._ops.popleft()
                op.fail(error)
                op.done.set()
            self._back_off()
            return None

    def _batch(self, conn: sqlite3.Connection) -> None:
        ops = [self._ops.popleft() for _ in range(len(self._ops))]
        try:
            with self._lock:
                buffers = list(self._buffers.values())
            self._write(conn, ops, buffers)
        finally:
            for op in ops:
                op.done.set()  # whatever happened: no caller is left waiting
            with self._drained:
                self._drained.notify_all()

    def _write(self, conn: sqlite3.Connection, ops: list[_Op], buffers: list[RunBuffer]) -> None:
        """Write a batch: each op after its run's buffered events, then every other run's events.

        With ops (a run starting or ending) it is one transaction. Without —
        most batches of a stream — each statement commits on its own: it holds
        the write lock only while it runs, with the GIL released, so a busy
        stream never makes a writer in another process (a ``runs cancel``)
        wait for this process to get the GIL back between statements. If the
        batch fails, the events go back into their buffers (a statement that
        did commit is written again identically, and ignored) and the writer
        backs off before the next try.
        """
        taken: list[_Taken] = []
        plan: _Plan = []
        try:
            for op in ops:
                if op.drain and op.buffer is not None:
                    plan.append(_take(op.buffer, taken))
                plan.append(op)
            plan += [_take(buffer, taken) for buffer in buffers if buffer.key >= 0]
            if all(isinstance(part, _Taken) and part.quiet for part in plan):
                return  # runs are active but nothing new happened
            if ops:
                with _transaction(conn):
                    _execute(conn, plan)
            else:
                _execute(conn, plan)
        except Exception as error:  # noqa: BLE001 — nothing is lost: put back, tried again, handed to the ops
            logger.warning("threadflow: could not write to %s (%s); trying again", self._path, error)
            for part in reversed(taken):  # newest first: each goes back in front of the one after it
                part.buffer.put_back(part.rows, part.started_at, part.step_name)
            for op in ops:
                op.fail(error)
            self._back_off()
        else:
            self._pause = self._retry_at = 0.0

    def _back_off(self) -> None:
        self._pause = min(max(self._pause * 2, 0.05), 1.0)
        self._retry_at = time.monotonic() + self._pause


def _execute(conn: sqlite3.Connection, plan: _Plan) -> None:
    rows: list[Chunk] = []
    progress: list[_Taken] = []
    for part in plan:
        if isinstance(part, _Op):
            _insert(conn, rows, progress)
            rows, progress = [], []
            _apply(conn, part)
        else:
            rows += part.rows
            progress.append(part)
    _insert(conn, rows, progress)


def _take(buffer: RunBuffer, taken: list[_Taken]) -> _Taken:
    part = _Taken(buffer, *buffer.take())
    taken.append(part)
    return part


def _apply(conn: sqlite3.Connection, op: _Op) -> None:
    """Apply one op in a savepoint, so that its failure fails it alone."""
    if op.apply is None or op.buffer is None:
        return
    conn.execute("SAVEPOINT op")
    try:
        op.apply(conn, op.buffer)
    except Exception as error:  # noqa: BLE001 — handed to the op's caller, which re-raises it
        conn.execute("ROLLBACK TO op")
        op.fail(error)
    conn.execute("RELEASE op")


def _insert(conn: sqlite3.Connection, rows: list[Chunk], progress: list[_Taken]) -> None:
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
                f"UPDATE runs SET step_name = ? WHERE run_key = ? AND status IN ({_ACTIVE_SQL})",
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
        f" WHERE column1 IN (SELECT run_key FROM runs WHERE status IN ({_ACTIVE_SQL}))"
    )


def _ascii_row(row: Chunk) -> Chunk:
    key, first, last, data, header, times = row
    if header is not None:
        data = json.dumps(json.loads(data), ensure_ascii=True)
    return key, first, last, data, header, times


def _insert_run(conn: sqlite3.Connection, buffer: RunBuffer, *, info: RunInfo, inbox: str) -> None:
    """The run's record, owned by this process (whose watcher listens at ``inbox``).

    An earlier run with this id keeps its record and events. If that run is
    still recorded active, its owner must be gone (else ``DuplicateRunError``):
    it is recorded as ended first.
    """
    owner = this_process()._replace(inbox=inbox)
    record = _record(info)
    active = conn.execute(
        f"SELECT run_key, {_OWNER_COLUMNS} FROM runs WHERE run_id = ? AND status IN ({_ACTIVE_SQL})", (record[0],)
    ).fetchall()
    for key, *fields in active:
        previous = RunOwner(*fields)
        if previous.same_process(owner):  # not active here (the registry said so): its end was never written
            _record_abandoned(conn, key=key, error=_END_NOT_RECORDED)
        elif owner_alive(previous):
            raise DuplicateRunError(info.run_id)  # active in another live process
        else:
            _record_abandoned(conn, key=key)
    cursor = conn.execute(
        f"INSERT INTO runs ({_RUN_COLUMNS}, {_OWNER_COLUMNS}) VALUES ({', '.join(['?'] * 17)})",
        (*record, *owner),
    )
    assert cursor.lastrowid is not None
    buffer.key = cursor.lastrowid


def _end_run(conn: sqlite3.Connection, buffer: RunBuffer, *, info: RunInfo) -> None:
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
        f"UPDATE runs SET {_SET_RECORD} WHERE {where} AND status IN ({_ACTIVE_SQL})", (*record[3:], *params)
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


# -- the cancel watcher ---------------------------------------------------------------


#: Seconds the watcher pauses after an unexpected failure, so that a lasting one does not spin.
_WATCHER_PAUSE: Final = 0.05


class _CancelWatcher:
    """One thread per process, running only while some ``SqliteStore`` has active runs of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: set[SqliteStore] = set()
        self._thread: threading.Thread | None = None
        self._inbox: tuple[socket.socket, str] | None = None

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
                self._thread = threading.Thread(
                    target=self._loop, args=(self._inbox,), name="threadflow-cancel-watcher", daemon=True
                )
                self._thread.start()
            return "" if self._inbox is None else self._inbox[1]

    @property
    def running(self) -> bool:
        return self._thread is not None

    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def _loop(self, inbox: tuple[socket.socket, str] | None) -> None:
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
                    self._thread = self._inbox = None  # a later watch() starts another
                if inbox is not None:
                    inbox[0].close()  # its token dies with it: nobody can bind it later and read requests

    def _round(self) -> float | None:
        """One look at every store; the interval until the next, or None to stop (no store has active runs)."""
        with self._lock:
            stores = list(self._stores)
            finished = [store for store in stores if not store._has_active()]
        for store in stores:  # a store whose runs have all ended gets one last look, then is dropped
            self._look(store)
        with self._lock:
            self._stores.difference_update(s for s in finished if not s._has_active())
            if not self._stores:
                self._thread = self._inbox = None  # under the lock watch() takes: a new run starts a new watcher
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

    @staticmethod
    def _look(store: SqliteStore) -> None:
        try:
            store._answer_cancel_requests()
        except Exception:
            logger.exception("threadflow: looking for cancel requests in %s failed", store.path)


_WATCHER = _CancelWatcher()
