"""``PostgresStore``: one run history, run queue and cancel channel shared by every process on every host.

Needs the extra ``threadflow[postgres]`` (psycopg 3 and its pool).

How the pieces fit:

- ``store.py``: ``PostgresStore``, the API the runner, the queue's workers,
  the CLI and HTTP call;
- ``_schema.py``: the tables, their version and migrations;
- ``_rows.py``: the SQL, one function per transaction, with the fencing that
  keeps one terminal event per run when a worker presumed dead still runs;
- ``_writer.py``: batched event writes and the session's lease;
- ``_listener.py``: the LISTEN connection (cancels, answers, new events,
  queued runs) and the re-check that recovers a NOTIFY lost while it was down;
- ``_db.py``: the connection pool, retried across a restarting server.

**Content that is not JSON** is stored as ``str(value)`` (as ``SqliteStore``
does) and marked inexact: a run cannot be resumed from such a step output.
Lone surrogates and NUL characters in stored text become ``?``.
"""

from ..errors import StoreError as StoreError
from ._schema import SCHEMA_VERSION as SCHEMA_VERSION
from .store import HOSTNAME_ENV as HOSTNAME_ENV
from .store import PostgresStore as PostgresStore

__all__ = ["HOSTNAME_ENV", "SCHEMA_VERSION", "PostgresStore", "StoreError"]
