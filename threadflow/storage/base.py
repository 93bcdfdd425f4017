"""The ``RunStore`` protocol: where runs' records and event logs are kept.

The runner talks to a store at three moments: ``run_created`` when a run is
registered, ``append`` for every event (only when ``records_events`` is
true), and ``run_ended`` with the final record — which must be durable when
it returns, because ``run()`` returns and a stream ends right after it. The
read side (``get_run``, ``list_runs``, ``events``) serves ``get_run()``, the
CLI and HTTP. ``request_cancel`` lets another process ask for a cancel; a
store that cannot reach other processes answers ``None``.

A store that acts on this process's runs (answering a cancel another process
wrote, say) must not import the core: the core lends it a ``LocalRuns`` by
calling its optional ``bind_local_runs(runs)`` when a workflow first uses it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from ..events import BaseEvent, Event
from ..status import RunInfo, RunStatus

__all__ = ["LocalRuns", "QueueStore", "RunStore"]


class LocalRuns(Protocol):
    """The runs active in this process, as the core lends them to a store."""

    def cancel(self, run_id: str, reason: str | None, *, callbacks_elsewhere: bool = False) -> bool:
        """Cancel the active run ``run_id`` exactly as ``threadflow.cancel_run`` does; True iff accepted.

        A thread that serves every run (a store's watcher) passes
        ``callbacks_elsewhere=True``: the run's ``on_cancel`` callbacks then run
        on a thread of their own, so a slow one delays only its own run.
        """
        ...

    def info(self, run_id: str) -> RunInfo | None:
        """The live record of the active run ``run_id``, or None when it is not active here."""
        ...


@runtime_checkable
class RunStore(Protocol):
    #: Whether ``append`` wants every event (a store that keeps only records says False).
    records_events: bool

    def run_created(self, info: RunInfo) -> None:
        """A run was registered (status ``pending``)."""

    def append(self, event: BaseEvent) -> None:
        """One event of an active run, in ``seq`` order. Called on the hot path: buffer it."""

    def run_ended(self, info: RunInfo) -> None:
        """The run's final record; durable (with every event before it) on return."""

    def get_run(self, run_id: str) -> RunInfo | None:
        """The run's latest record, or None."""

    def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow_id: str | None = None,
        limit: int | None = None,
    ) -> Sequence[RunInfo]:
        """Records, newest first."""

    def events(self, run_id: str, after_seq: int = 0) -> Sequence[Event]:
        """The run's stored events with ``seq > after_seq``, in order."""

    def request_cancel(self, run_id: str, reason: str | None = None) -> bool | None:
        """Ask the owning process to cancel; None when this store cannot reach other processes."""

    def close(self) -> None:
        """Flush and release resources."""


@runtime_checkable
class QueueStore(RunStore, Protocol):
    """A ``RunStore`` every process shares, with a run queue: what ``Workflow.enqueue`` needs.

    Workers (``threadflow.Worker``) take the queued runs through the store's
    own claim methods; the enqueuing process follows a run through these.
    """

    def enqueue(self, info: RunInfo, input_json: str, run_timeout: float | None) -> None:
        """Record a queued run (``pending``, no owner) for any worker; ``DuplicateRunError`` if the id is active."""

    def follow(self, run_id: str, after_seq: int = 0) -> Iterator[Event]:
        """The run's events after ``after_seq`` as they are written, by any process, through its terminal event."""

    def wait_ended(self, run_id: str, timeout: float | None = None) -> bool:
        """Block until the run's record is terminal (True) or ``timeout`` seconds pass (False)."""
