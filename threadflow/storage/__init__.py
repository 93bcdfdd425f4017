"""Where runs are recorded: the ``RunStore`` protocol and its implementations.

``SqliteStore`` and ``StoreError`` are imported on first use, so that
``import threadflow`` does not load ``sqlite3``.
"""

from typing import TYPE_CHECKING, Any

from .base import RunStore as RunStore
from .memory import MemoryStore as MemoryStore

if TYPE_CHECKING:
    from .sqlite import SqliteStore as SqliteStore
    from .sqlite import StoreError as StoreError

__all__ = ["MemoryStore", "RunStore", "SqliteStore", "StoreError"]

_LAZY = frozenset({"SqliteStore", "StoreError"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import sqlite

        return getattr(sqlite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
