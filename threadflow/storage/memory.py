"""``MemoryStore``: the default store; nothing outlives the process.

It keeps the ``RunInfo`` of the most recent ``max_runs`` finished runs (1,000
by default) so that ``get_run()`` still answers after a run ends, and no
events: memory stays flat however many runs finish.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from .._validate import check_count
from ..events import BaseEvent, Event
from ..status import RunInfo, RunStatus

__all__ = ["MemoryStore", "records_run_starts"]


class _FinalRecord(Protocol):
    """The final state of a run of this process (the core's ``RunState``): never changed once it has ended."""

    run_id: str
    workflow_id: str
    status: RunStatus

    def info(self) -> RunInfo: ...


class MemoryStore:
    """Keeps the records of recent finished runs in memory, and no events."""

    records_events = False

    def __init__(self, max_runs: int = 1000) -> None:
        self.max_runs = check_count("max_runs", max_runs)
        self._lock = threading.Lock()
        self._finished: dict[str, RunInfo | _FinalRecord] = {}  # oldest first

    def run_created(self, info: RunInfo) -> None:
        """Active runs are answered by the registry; nothing to keep yet."""

    def append(self, event: BaseEvent) -> None:
        """Events are not kept."""

    def run_ended(self, info: RunInfo) -> None:
        self._keep(info.run_id, info)

    def keep_final(self, record: _FinalRecord) -> None:
        """``run_ended`` of a run of this process, given its final record: the ``RunInfo`` is made when asked for.

        The core calls this instead of ``run_ended`` on a ``MemoryStore``
        whose ``run_ended`` is not overridden: most runs' records are never read.
        """
        self._keep(record.run_id, record)

    def _keep(self, run_id: str, info: RunInfo | _FinalRecord) -> None:
        finished = self._finished
        with self._lock:
            if run_id in finished:  # a run id can come back (an ended run's id reused): it moves to the end
                del finished[run_id]
            finished[run_id] = info
            while len(finished) > self.max_runs:
                del finished[next(iter(finished))]

    def get_run(self, run_id: str) -> RunInfo | None:
        kept = self._finished.get(run_id)
        return kept if kept is None or isinstance(kept, RunInfo) else kept.info()

    def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow_id: str | None = None,
        limit: int | None = None,
    ) -> Sequence[RunInfo]:
        with self._lock:
            runs = list(reversed(self._finished.values()))
        selected = [
            kept
            for kept in runs
            if (status is None or kept.status == status) and (workflow_id is None or kept.workflow_id == workflow_id)
        ]
        return [kept if isinstance(kept, RunInfo) else kept.info() for kept in selected[:limit]]

    def run_ids_with_prefix(self, prefix: str, *, limit: int = 2) -> list[str]:
        """Up to ``limit`` ids of the kept runs that start with ``prefix``, newest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a non-negative int, not {limit!r}")
        with self._lock:
            run_ids = list(reversed(self._finished))
        return [run_id for run_id in run_ids if run_id.startswith(prefix)][:limit]

    def events(self, run_id: str, after_seq: int = 0) -> Sequence[Event]:
        return []

    def request_cancel(self, run_id: str, reason: str | None = None) -> bool | None:
        return None

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._finished)


def records_run_starts(store: object) -> bool:
    """Whether starting a run writes to ``store`` (its ``run_created`` records something), which may wait on I/O.

    A ``MemoryStore`` answers for active runs from the registry and records
    nothing until a run ends; so does a store that keeps its ``run_created``.
    """
    return getattr(type(store), "run_created", None) is not MemoryStore.run_created
