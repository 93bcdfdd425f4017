"""Which store a workflow uses by default, and which stores are in use (for ``threadflow.get_run``)."""

from __future__ import annotations

import os
import threading
import weakref

from .base import LocalRuns, RunStore
from .memory import MemoryStore

__all__ = ["DB_ENV", "default_store", "is_postgres_url", "known_stores", "open_store", "track_store"]

#: The environment variable naming the database a workflow uses by default: a SQLite path, or a
#: ``postgresql://`` (or ``postgres://``) URL for ``PostgresStore``.
DB_ENV = "THREADFLOW_DB"

_lock = threading.Lock()
_memory = MemoryStore()
_by_path: dict[str, RunStore] = {}
_known: weakref.WeakSet[RunStore] = weakref.WeakSet()
_known_strong: dict[int, RunStore] = {}  # stores that cannot be weakly referenced (slots, dataclasses)


def default_store() -> RunStore:
    """The store ``$THREADFLOW_DB`` names (one per value), else the process's ``MemoryStore``.

    A ``postgresql://`` URL is a ``PostgresStore``; anything else is a ``SqliteStore`` path.
    """
    path = os.environ.get(DB_ENV)
    if not path:
        return _memory
    with _lock:
        store = _by_path.get(path)
        if store is None:
            store = _by_path[path] = open_store(path)
        return store


def is_postgres_url(db: str) -> bool:
    """Whether ``db`` names a PostgreSQL database (a ``postgresql://`` or ``postgres://`` URL)."""
    return db.startswith(("postgresql://", "postgres://"))


def open_store(db: str) -> RunStore:
    """``PostgresStore(db)`` for a ``postgresql://`` URL, else ``SqliteStore(db)``."""
    if is_postgres_url(db):
        from .postgres import PostgresStore

        return PostgresStore(db)
    from .sqlite import SqliteStore

    return SqliteStore(db)


def track_store(store: RunStore, local_runs: LocalRuns) -> None:
    """Remember a store in use so that ``threadflow.get_run()`` can find finished runs in it.

    The first time a store is seen, it is lent ``local_runs`` through its
    optional ``bind_local_runs`` (see ``storage.base``).
    """
    if store is _memory:
        return
    with _lock:
        try:
            new = store not in _known
            _known.add(store)
        except TypeError:  # no __weakref__, or unhashable: keep it (one per such store)
            new = id(store) not in _known_strong
            _known_strong[id(store)] = store
    bind = getattr(store, "bind_local_runs", None)
    if new and bind is not None:
        bind(local_runs)


def known_stores() -> list[RunStore]:
    """The default memory store, then every store a workflow has used."""
    with _lock:
        return [_memory, *_known, *_known_strong.values()]
