"""The tables, their version, and migrating a database to this threadflow's version.

What the database keeps (schema version 2; ``threadflow_meta.schema_version`` says which):

- ``threadflow_runs``: one record per run id — the ``RunInfo`` fields; the
  session (a store in one process) that runs it and its ``owner`` text
  (``host:pid``); ``attempt``; for a queued run its input (JSON) and
  ``run_timeout``; the pending cancel request (``cancel_requested``,
  ``cancel_reason``) and the owner's answer. A run id may be used again once
  its run has ended: the new run replaces the old record and log.
- (version 2) ``threadflow_runs.traceparent``: the W3C traceparent of the span
  current where the run was created (NULL when telemetry was off), so a
  worker that runs or resumes it continues that trace.
- ``threadflow_events``: every event, one row per event, keyed ``(run_id, seq)``;
  ``exact`` is false when the event's content was stored as text because it
  was not JSON (such a step output cannot be resumed from).
- ``threadflow_sessions``: each session's lease (``lease_until``, the
  database's clock in Unix seconds), renewed while it runs anything.

Creating or migrating holds a transaction-level advisory lock, so processes
that start together do it once. A database whose version is newer than this
threadflow's is refused with ``StoreError`` before anything is written.
"""

from __future__ import annotations

from typing import Final

from ...status import RunStatus
from ..errors import StoreError
from ._db import Cursor

__all__ = ["ACTIVE", "NOW", "RUN_COLUMNS", "SCHEMA_VERSION", "TERMINAL", "migrate"]

#: The version of the tables this threadflow writes; older databases are migrated, newer ones refused.
SCHEMA_VERSION: Final = 2

ACTIVE: Final = [s.value for s in RunStatus if not s.is_terminal]
TERMINAL: Final = [s.value for s in RunStatus if s.is_terminal]
#: The database's clock, in Unix seconds: leases are judged by one clock whatever the hosts' clocks say.
NOW: Final = "extract(epoch from clock_timestamp())::double precision"
RUN_COLUMNS: Final = (
    "run_id, workflow_id, workflow_name, status, cause, reason, step_name, "
    "error, error_type, created_at, started_at, ended_at, owner, attempt, traceparent"
)

_LOCK_KEY: Final = 0x7468_7266  # "thrf": the advisory lock that serialises creating/migrating the tables

_VERSION_1: Final = [
    """CREATE TABLE threadflow_runs (
        run_id text PRIMARY KEY,
        workflow_id text NOT NULL,
        workflow_name text NOT NULL,
        status text NOT NULL,
        cause text,
        reason text,
        step_name text,
        error text,
        error_type text,
        created_at double precision NOT NULL,
        started_at double precision,
        ended_at double precision,
        owner text,
        attempt integer NOT NULL DEFAULT 1,
        session text,
        queued boolean NOT NULL DEFAULT false,
        input text,
        run_timeout double precision,
        cancel_requested boolean NOT NULL DEFAULT false,
        cancel_reason text,
        cancel_answer boolean
    )""",
    "CREATE INDEX threadflow_runs_created ON threadflow_runs (created_at DESC)",
    # the queue in claim order; workflows are filtered on the few pending rows it walks
    "CREATE INDEX threadflow_runs_queue ON threadflow_runs (created_at)"
    " WHERE status = 'pending' AND queued AND session IS NULL",
    "CREATE INDEX threadflow_runs_owned ON threadflow_runs (session) WHERE session IS NOT NULL"
    " AND status IN ('pending', 'running', 'waiting', 'cancelling')",
    """CREATE TABLE threadflow_events (
        run_id text NOT NULL,
        seq integer NOT NULL,
        data text NOT NULL,
        exact boolean NOT NULL DEFAULT true,
        PRIMARY KEY (run_id, seq)
    )""",
    """CREATE TABLE threadflow_sessions (
        session text PRIMARY KEY,
        owner text NOT NULL,
        lease_until double precision NOT NULL
    )""",
]

#: MIGRATIONS[v] takes a database at version v to v + 1.
MIGRATIONS: Final[dict[int, list[str]]] = {
    1: ["ALTER TABLE threadflow_runs ADD COLUMN IF NOT EXISTS traceparent text"],  # a run keeps its trace
}


def migrate(cursor: Cursor) -> None:
    """Create the tables in an empty database, migrate an older one, refuse a newer one (``StoreError``)."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    cursor.execute("CREATE TABLE IF NOT EXISTS threadflow_meta (key text PRIMARY KEY, value text NOT NULL)")
    cursor.execute("SELECT value FROM threadflow_meta WHERE key = 'schema_version'")
    row = cursor.fetchone()
    if row is None:
        for statement in _VERSION_1:
            cursor.execute(statement)
        version = 1
    else:
        version = int(row[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database's threadflow schema is version {version}, newer than this threadflow's "
            f"({SCHEMA_VERSION}): upgrade threadflow"
        )
    while version < SCHEMA_VERSION:
        for statement in MIGRATIONS[version]:
            cursor.execute(statement)
        version += 1
    cursor.execute(
        "INSERT INTO threadflow_meta (key, value) VALUES ('schema_version', %s)"
        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        (str(version),),
    )
