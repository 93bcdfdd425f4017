"""The core's one hook for telemetry: an observer of runs, installed by ``threadflow.telemetry``.

While none is installed (the default) the core pays one attribute read per
run and per accepted cancel, nothing per event: the runner only adds the
observer's per-run sink to its sinks when there is one. An observer that
needs only each run's start and end (metrics) asks for them with ``ends``,
and a run nobody else listens to stays quiet: it builds no event at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from .events import BaseEvent
from .status import CancelCause, RunStatus

__all__ = [
    "OBSERVER",
    "Observer",
    "RunEnds",
    "StepScopes",
    "cancel_requested",
    "run_ends",
    "set_observer",
    "traceparent",
    "watches_events",
]

logger = logging.getLogger("threadflow")


class StepScopes(Protocol):
    """One run's step spans as the runner's threads see them (only while telemetry is on)."""

    def emitted(self, event: BaseEvent) -> None:
        """A branch lane's event, in the branch's thread as it is made (before the consumer forwards it)."""
        ...

    def enter(self, step_path: str) -> Any:
        """Make the span of ``step_path`` (or of its nearest open ancestor) current; a token for ``leave``."""
        ...

    def leave(self, token: Any) -> None:
        """Undo ``enter``, in the same thread."""
        ...


class RunEnds(Protocol):
    """Told when each run starts and ends, in the run's thread: at its ``workflow_started`` and terminal event."""

    def started(self, workflow_id: str) -> None:
        """A run emitted ``workflow_started`` (a resumed run that logged it before does not)."""
        ...

    def ended(self, run_id: str, workflow_id: str, status: RunStatus, cause: CancelCause | None) -> None:
        """A run ended ``status`` (``cause``: a cancelled run's), right after its terminal event was emitted."""
        ...


class Observer(Protocol):
    def traceparent(self) -> str | None:
        """The W3C traceparent of the span current in this thread (None: no span, or not tracing)."""
        ...

    def watch(self, run_id: str, workflow_id: str, traceparent: str | None) -> Callable[[BaseEvent], None] | None:
        """A new run, in the thread that creates it: the sink for its events (None: not interested).

        ``traceparent``, when given, is the run's parent (a run created elsewhere, kept in its record);
        otherwise the span current here is.
        """
        ...

    def steps(self, run_id: str) -> StepScopes | None:
        """The run's step spans, for step code to run inside (None: not tracing)."""
        ...

    def ends(self) -> RunEnds | None:
        """What hears of every run's start and end, and nothing else (None: not interested). Optional.

        Unlike ``watch``'s sink it leaves a run nobody else hears quiet: no
        event is built for it (metrics count runs so).
        """
        ...

    def cancel_requested(self, run_id: str, cause: CancelCause, reason: str | None) -> None:
        """A cancel of an active run was accepted (the first one; later requests are not reported)."""
        ...


#: The installed observer, or None.
OBSERVER: Observer | None = None


def set_observer(observer: Observer | None) -> None:
    global OBSERVER
    OBSERVER = observer


def watches_events() -> bool:
    """True if the observer may want a new run's events as they are made (not only its start and end).

    Then the run's ``watch`` must be taken in the thread that creates the run.
    An observer that says nothing of it (no ``watches_events``) is assumed to.
    """
    observer = OBSERVER
    return observer is not None and bool(getattr(observer, "watches_events", True))


def run_ends() -> RunEnds | None:
    """What hears of each run's start and end: the observer's optional ``ends``, or None."""
    ends = getattr(OBSERVER, "ends", None)
    return ends() if ends is not None else None


def traceparent() -> str | None:
    """The traceparent to keep in a new run's record: None unless an observer traces."""
    observer = OBSERVER
    return None if observer is None else observer.traceparent()


def cancel_requested(run_id: str, cause: CancelCause, reason: str | None) -> None:
    """Tell the observer, if any; its failure is logged, never raised into the cancel."""
    observer = OBSERVER
    if observer is None:
        return
    try:
        observer.cancel_requested(run_id, cause, reason)
    except Exception:
        logger.exception("threadflow: the telemetry observer failed on a cancel request")
