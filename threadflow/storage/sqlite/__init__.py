"""``SqliteStore``: durable run history in one SQLite file, shared by every process that opens it.

The file keeps every run's record (with its owning process), every event of
every run, and cancels asked for by other processes (``_schema.py`` has the
tables, versions, migrations and how a file is opened, read-only too). Events
read back, through ``parse_event``, equal to the events the run emitted
(``_layout.py`` has the row layout).

How the pieces fit:

- ``store.py``: ``SqliteStore``, the API the runner, the CLI and HTTP call;
- ``_writer.py``: the writer thread. ``append`` only buffers; the writer
  commits batches, and a run's start and end wait for theirs. When writes
  fail (locked file, full disk) nothing is lost while memory allows, memory
  stays bounded, and a run's end is written once the store can take it;
- ``_rows.py``: the SQL of records, events, abandoned runs and cancel requests;
- ``_liveness.py``: which process owns a run and whether it is still alive. A
  run whose owner died (``kill -9``) is recorded as ended by the next reader:
  status ``error``, error ``"owner process exited"`` (``OWNER_EXITED``), and a
  ``workflow_error`` event with the next ``seq``, in one transaction, so two
  readers never both do it. Owners on other hosts or in other pid namespaces
  are never judged, nor any owner this process cannot be sure about. Should an
  owner judged dead in error still be running, the recorded end stands: its
  later events are not written and ``run_ended`` logs a warning;
- ``_remote_cancel.py`` and ``_nudges.py``: ``request_cancel`` from another
  process, and the owner's watcher thread that answers it (acting exactly as
  ``threadflow.cancel_run`` does, through the ``LocalRuns`` the core lends the
  store with ``bind_local_runs``).

**Content that is not JSON.** ``content`` fields of step and workflow results
accept any value. What pydantic can serialise is stored as pydantic dumps it;
anything else is stored as ``str(value)``. A lone surrogate (which UTF-8, so
SQLite, cannot hold) in any stored text — a reason, an error message, a name,
such content — is stored as ``?``. The run itself is never affected: only the
stored copy differs from the live one. Streamed tokens are always stored
exactly.
"""

from ..errors import StoreError as StoreError
from ._liveness import RunOwner as RunOwner
from ._rows import OWNER_EXITED as OWNER_EXITED
from ._schema import SCHEMA_VERSION as SCHEMA_VERSION
from .store import SqliteStore as SqliteStore

__all__ = ["OWNER_EXITED", "SCHEMA_VERSION", "RunOwner", "SqliteStore", "StoreError"]
