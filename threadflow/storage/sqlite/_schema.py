"""The file: its schema, versions and migrations, opening it, and refusing files that are not a run history.

What it keeps (schema version 4; ``meta.schema_version`` says which):

- ``runs``: one record per run — the ``RunInfo`` fields plus its owner (host,
  pid, process start identity, pid namespace, and the token of its cancel
  inbox: see ``_liveness.py``). A run id may be used again once its run has
  ended: every run keeps its record and log, and a lookup by id answers for
  the newest;
- ``events``: every event of every run, a stretch of a run's events per row
  (``_layout.py`` describes the layout);
- ``cancel_requests``: cancels asked for by other processes, and their answers;
- (version 3) the run queue's columns of ``runs``: ``queued`` runs keep their
  ``input`` and ``run_timeout`` for a worker; until one claims it a queued run's
  owner is nobody (``owner_pid`` 0); ``attempt`` counts resumes; ``unresumable``
  names completed steps whose output is not JSON (``_queue.py``);
- (version 4) ``runs.traceparent``: the W3C traceparent of the span current
  where the run was created (NULL when telemetry was off), so a worker that
  runs or resumes it continues that trace.

**Durability.** WAL with ``synchronous=NORMAL``: a committed run survives the
crash or ``kill -9`` of any process; a power loss can lose the last commits.

**Bad files.** A missing file (with ``create=False``), a file that is not a
threadflow database (another program's, even one holding only a view), one
with a schema version this threadflow does not know (0, or newer) raises
``StoreError`` before anything is written to it. The schema is created only
in a new file, or one with nothing in it at all.

**Read-only.** ``open_history(..., readonly=True)`` opens with ``mode=ro`` and
writes nothing (no schema, no migration, no WAL switch). A WAL file read
read-only still needs its ``-shm`` index, which SQLite cannot create where
the directory is not writable (a read-only file system): then it is opened
``immutable=1``, which is safe exactly there, since no writer can exist
either. A file older than this threadflow cannot be migrated read-only:
``StoreError`` says so.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ...status import RunStatus
from ..errors import StoreError

__all__ = [
    "ACTIVE",
    "ACTIVE_SQL",
    "OWNER_COLUMNS",
    "RUN_COLUMNS",
    "SCHEMA_VERSION",
    "open_history",
    "transaction",
    "writable",
]

#: The version of the layout this threadflow writes; older files are migrated, newer ones refused.
SCHEMA_VERSION: Final = 4

ACTIVE: Final = tuple(s.value for s in RunStatus if not s.is_terminal)
ACTIVE_SQL: Final = ", ".join(f"'{s}'" for s in ACTIVE)
RUN_COLUMNS: Final = (
    "run_id, workflow_id, workflow_name, status, cause, reason, step_name, "
    "error, error_type, created_at, started_at, ended_at"
)
OWNER_COLUMNS: Final = "owner_host, owner_pid, owner_start, owner_ns, owner_inbox"

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
        owner_inbox TEXT NOT NULL DEFAULT '',
        queued INTEGER NOT NULL DEFAULT 0,
        input TEXT,
        run_timeout REAL,
        attempt INTEGER NOT NULL DEFAULT 1,
        unresumable TEXT,
        traceparent TEXT
    )"""
#: Version 3's queue (``_queue.py``): pending queued runs no worker has claimed (owner_pid 0), oldest first.
_QUEUE_INDEX: Final = (
    "CREATE INDEX runs_queue ON runs (created_at) WHERE status = 'pending' AND queued AND owner_pid = 0"
)
_RUNS_INDEXES: Final = (
    "CREATE INDEX runs_by_id ON runs (run_id)",
    # a run id is used by at most one active run (a finished run's id may be used again)
    f"CREATE UNIQUE INDEX runs_active_id ON runs (run_id) WHERE status IN ({ACTIVE_SQL})",
    "CREATE INDEX runs_by_created ON runs (created_at)",
    "CREATE INDEX runs_by_status ON runs (status, created_at)",
    "CREATE INDEX runs_by_workflow ON runs (workflow_id, created_at)",
    _QUEUE_INDEX,
)
_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    _RUNS_TABLE,
    *_RUNS_INDEXES,
    """CREATE TABLE events (
        run_key INTEGER NOT NULL,
        first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        data TEXT NOT NULL,  -- the events first_seq..last_seq: see _layout.py
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
    columns = f"run_key, {RUN_COLUMNS}, owner_host, owner_pid, owner_start"
    conn.execute(f"INSERT INTO runs ({columns}) SELECT {columns} FROM runs_v1")
    conn.execute("DROP TABLE runs_v1")  # its indexes go with it
    for statement in _RUNS_INDEXES:
        conn.execute(statement)
    conn.execute("ALTER TABLE cancel_requests ADD COLUMN owner_ns TEXT NOT NULL DEFAULT ''")


def _to_version_3(conn: sqlite3.Connection) -> None:
    """The run queue: a run may be queued (its input kept for a worker), resumed (``attempt``), unresumable."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    for column in (
        "queued INTEGER NOT NULL DEFAULT 0",
        "input TEXT",
        "run_timeout REAL",
        "attempt INTEGER NOT NULL DEFAULT 1",
        "unresumable TEXT",
    ):
        if column.split()[0] not in have:  # a version-1 file got them from version 2's new table
            conn.execute(f"ALTER TABLE runs ADD COLUMN {column}")
    conn.execute(_QUEUE_INDEX.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS"))


def _to_version_4(conn: sqlite3.Connection) -> None:
    """A run keeps the traceparent it was created under (a version-1 file got it from version 2's new table)."""
    if "traceparent" not in {row[1] for row in conn.execute("PRAGMA table_info(runs)")}:
        conn.execute("ALTER TABLE runs ADD COLUMN traceparent TEXT")


#: Upgrades from version ``n - 1`` to ``n``, applied in order inside one transaction.
_MIGRATIONS: Final[dict[int, Callable[[sqlite3.Connection], None]]] = {
    2: _to_version_2,
    3: _to_version_3,
    4: _to_version_4,
}


class transaction:
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


def open_history(
    path: Path, *, create: bool, timeout: float, readonly: bool = False
) -> tuple[sqlite3.Connection, bool]:
    """Connect to ``path`` and check (or create) the schema; the connection, and whether it is read-only.

    Nothing is written to a file that fails the checks. An existing history
    that cannot be written — its file or directory read-only, or its WAL
    index impossible to open for writing — is opened read-only instead.
    """
    existed = path.exists()
    if not create and not existed:
        raise StoreError(f"{path}: no such run history (the file does not exist)")
    if path.is_dir():
        raise StoreError(f"{path}: is a directory, not a run history")
    if readonly or (existed and not writable(path)):
        return _open_readonly(path, timeout), True
    try:
        return _open_writable(path, create=create, timeout=timeout), False
    except _CannotOpen:
        if not existed:
            raise
    return _open_readonly(path, timeout), True


def writable(path: Path) -> bool:
    """Whether this process may write the file and create its ``-wal`` and ``-shm`` beside it."""
    return os.access(path, os.W_OK) and os.access(path.absolute().parent, os.W_OK)


class _CannotOpen(StoreError):
    """SQLite could not open the file, or its WAL index, as asked (not a verdict on its content)."""


def _connect(path: Path, query: str, timeout: float) -> sqlite3.Connection:
    uri = f"{path.absolute().as_uri()}?{query}"
    try:
        return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as error:
        raise StoreError(f"{path}: cannot open ({error})") from error


def _open_writable(path: Path, *, create: bool, timeout: float) -> sqlite3.Connection:
    conn = _connect(path, f"mode={'rwc' if create else 'rw'}", timeout)
    try:
        _check_schema(conn, path, create=create)
        _use_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


def _open_readonly(path: Path, timeout: float) -> sqlite3.Connection:
    """``mode=ro``; ``immutable=1`` when even that cannot open the WAL index (see the module's docstring)."""
    for query in ("mode=ro", "mode=ro&immutable=1"):
        conn = _connect(path, query, timeout)
        try:
            _check_schema(conn, path, create=False, readonly=True)
        except _CannotOpen:
            conn.close()
            if "immutable" in query:
                raise
            continue
        except BaseException:
            conn.close()
            raise
        return conn
    raise AssertionError("unreachable")


#: SQLite's primary result codes that mean "could not open (for writing)", not "this is not a database".
_CANNOT_OPEN: Final = frozenset({sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM})


def _check_schema(conn: sqlite3.Connection, path: Path, *, create: bool, readonly: bool = False) -> None:
    try:
        if create and _is_empty(conn):  # a new file, or one with nothing in it at all: never another program's
            _changing_schema(path, "create the run history in", functools.partial(_create_schema, conn))
        tables = _tables(conn)
        if "meta" not in tables or "runs" not in tables:
            what = "it is empty" if _is_empty(conn) else "it has no threadflow tables"
            raise StoreError(f"{path}: not a threadflow run history ({what})")
        version = _schema_version(conn, path)
        if version < SCHEMA_VERSION and readonly:
            raise StoreError(f"{path}: schema version {version} needs an upgrade, and the file is opened read-only")
        if version < SCHEMA_VERSION:
            what = f"upgrade the run history (schema version {version} to {SCHEMA_VERSION}) in"
            _changing_schema(path, what, functools.partial(_migrate, conn, path))
    except sqlite3.DatabaseError as error:
        if getattr(error, "sqlite_errorcode", 0) & 0xFF in _CANNOT_OPEN:
            raise _CannotOpen(f"{path}: cannot open ({error})") from error
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
    with transaction(conn):
        if not _is_empty(conn):
            return  # another process created it first
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Upgrade to ``SCHEMA_VERSION`` in one transaction (another process may have done it first)."""
    with transaction(conn):
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
