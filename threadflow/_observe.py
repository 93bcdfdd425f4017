"""The core's one hook for telemetry: an observer of runs, installed by ``threadflow.telemetry``.

While none is installed (the default) the core pays one attribute read per
run and per accepted cancel, nothing per event: the runner only adds the
observer's per-run sink to its sinks when there is one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from .events import BaseEvent
from .status import CancelCause

__all__ = ["OBSERVER", "Observer", "cancel_requested", "set_observer"]

logger = logging.getLogger("threadflow")


class Observer(Protocol):
    def watch(self, run_id: str, workflow_id: str) -> Callable[[BaseEvent], None] | None:
        """A new run, in the thread that creates it: the sink for its events (None: not interested)."""
        ...

    def cancel_requested(self, run_id: str, cause: CancelCause, reason: str | None) -> None:
        """A cancel of an active run was accepted (the first one; later requests are not reported)."""
        ...


#: The installed observer, or None.
OBSERVER: Observer | None = None


def set_observer(observer: Observer | None) -> None:
    global OBSERVER
    OBSERVER = observer


def cancel_requested(run_id: str, cause: CancelCause, reason: str | None) -> None:
    """Tell the observer, if any; its failure is logged, never raised into the cancel."""
    observer = OBSERVER
    if observer is None:
        return
    try:
        observer.cancel_requested(run_id, cause, reason)
    except Exception:
        logger.exception("threadflow: the telemetry observer failed on a cancel request")
