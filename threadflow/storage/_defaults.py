"""Which store a workflow uses by default, and finding a run's record in any of them."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable

from .._reaper import drain
from ..events import CancelCause, RunInfo
from ..registry import REGISTRY
from .base import RunStore
from .memory import MemoryStore

__all__ = ["DB_ENV", "default_store", "lookup_run", "track_store"]

#: The environment variable naming the SQLite database a workflow uses by default.
DB_ENV = "THREADFLOW_DB"

_lock = threading.Lock()
_memory = MemoryStore()
_by_path: dict[str, RunStore] = {}
_known: weakref.WeakSet[RunStore] = weakref.WeakSet()
_known_strong: dict[int, RunStore] = {}  # stores that cannot be weakly referenced (slots, dataclasses)


def default_store() -> RunStore:
    """``SqliteStore($THREADFLOW_DB)`` when that is set (one per path), else the process's ``MemoryStore``."""
    path = os.environ.get(DB_ENV)
    if not path:
        return _memory
    with _lock:
        store = _by_path.get(path)
        if store is None:
            from .sqlite import SqliteStore

            store = _by_path[path] = SqliteStore(path)
        return store


class _TempLocalRuns:  # TEMP-BIND (integrator: drop, the core binds)
    def cancel(self, run_id: str, reason: str | None) -> bool:  # TEMP-BIND (integrator: drop, the core binds)
        drain()  # TEMP-BIND (integrator: drop, the core binds)
        cause = CancelCause.requested  # TEMP-BIND (integrator: drop, the core binds)
        return REGISTRY.request_cancel(run_id, reason, cause)  # TEMP-BIND (integrator: drop, the core binds)

    def info(self, run_id: str) -> RunInfo | None:  # TEMP-BIND (integrator: drop, the core binds)
        state = REGISTRY.get(run_id)  # TEMP-BIND (integrator: drop, the core binds)
        return None if state is None else state.info()  # TEMP-BIND (integrator: drop, the core binds)


def track_store(store: RunStore) -> None:
    """Remember a store in use so that ``threadflow.get_run()`` can find finished runs in it."""
    bind = getattr(store, "bind_local_runs", None)  # TEMP-BIND (integrator: drop, the core binds)
    if bind is not None:  # TEMP-BIND (integrator: drop, the core binds)
        bind(_TempLocalRuns())  # TEMP-BIND (integrator: drop, the core binds)
    if store is not _memory:
        with _lock:
            try:
                _known.add(store)
            except TypeError:  # no __weakref__, or unhashable: keep it (one per such store)
                _known_strong[id(store)] = store


def lookup_run(run_id: str, stores: Iterable[RunStore] | None = None) -> RunInfo | None:
    """The run's record: live from the registry while active, else from the stores."""
    if not isinstance(run_id, str):
        return None
    drain()  # a run a garbage collection abandoned is recorded before we answer
    state = REGISTRY.get(run_id)
    if state is not None:
        return state.info()
    if stores is None:
        with _lock:
            stores = [_memory, *_known, *_known_strong.values()]
    for store in stores:
        info = store.get_run(run_id)
        if info is not None:
            return info
    return None
