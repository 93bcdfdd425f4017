"""Where runs are recorded: the ``RunStore`` protocol and its implementations.

``SqliteStore`` and ``PostgresStore`` are imported on first use, so that
``import threadflow`` loads neither ``sqlite3`` nor psycopg. ``default_store()`` is the store a
``Workflow`` given none uses: ``SqliteStore($THREADFLOW_DB)`` when ``DB_ENV`` names one, else the
process's ``MemoryStore``.
"""

from typing import TYPE_CHECKING, Any

from ._defaults import DB_ENV as DB_ENV
from ._defaults import default_store as default_store
from .base import RunStore as RunStore
from .errors import StoreError as StoreError
from .memory import MemoryStore as MemoryStore

if TYPE_CHECKING:
    from .postgres import PostgresStore as PostgresStore
    from .sqlite import SqliteStore as SqliteStore

__all__ = ["DB_ENV", "MemoryStore", "PostgresStore", "RunStore", "SqliteStore", "StoreError", "default_store"]


def __getattr__(name: str) -> Any:
    if name == "SqliteStore":
        from .sqlite import SqliteStore

        return SqliteStore
    if name == "PostgresStore":
        from .postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
