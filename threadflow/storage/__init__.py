"""Where runs are recorded: the ``RunStore`` protocol and its implementations.

``SqliteStore`` is imported on first use, so that ``import threadflow`` does
not load ``sqlite3``.
"""

from typing import TYPE_CHECKING, Any

from .base import RunStore as RunStore
from .errors import StoreError as StoreError
from .memory import MemoryStore as MemoryStore

if TYPE_CHECKING:
    from .sqlite import SqliteStore as SqliteStore

__all__ = ["MemoryStore", "RunStore", "SqliteStore", "StoreError"]


def __getattr__(name: str) -> Any:
    if name == "SqliteStore":
        from .sqlite import SqliteStore

        return SqliteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
