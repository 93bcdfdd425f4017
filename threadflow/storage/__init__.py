"""Where runs are recorded: the ``RunStore`` protocol and its implementations.

``SqliteStore`` is imported on first use, so that ``import threadflow`` does
not load ``sqlite3``. ``default_store()`` is the store a ``Workflow`` given
none uses: ``SqliteStore($THREADFLOW_DB)`` when ``DB_ENV`` names one, else the
process's ``MemoryStore``.
"""

from typing import TYPE_CHECKING, Any

from ._defaults import DB_ENV as DB_ENV
from ._defaults import default_store as default_store
from .base import RunStore as RunStore
from .errors import StoreError as StoreError
from .memory import MemoryStore as MemoryStore

if TYPE_CHECKING:
    from .sqlite import SqliteStore as SqliteStore

__all__ = ["DB_ENV", "MemoryStore", "RunStore", "SqliteStore", "StoreError", "default_store"]


def __getattr__(name: str) -> Any:
    if name == "SqliteStore":
        from .sqlite import SqliteStore

        return SqliteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
