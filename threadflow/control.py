"""Process-wide run control: cancel, inspect and list runs of any workflow."""

from __future__ import annotations

from ._background import shutdown
from ._reaper import drain
from .events import CancelCause, RunInfo
from .registry import REGISTRY, check_reason
from .storage._defaults import lookup_run

__all__ = ["active_runs", "cancel_run", "get_run", "shutdown"]


def cancel_run(run_id: str, reason: str | None = None) -> bool:
    """Cancel the active run ``run_id`` of any workflow in this process.

    True iff the run is active (it will then end ``cancelled``); False for an
    unknown id or a run that has ended. ``TypeError`` for a non-str reason.
    """
    check_reason(reason)
    if not isinstance(run_id, str):
        return False
    drain()
    return REGISTRY.request_cancel(run_id, reason, CancelCause.requested)


def get_run(run_id: str) -> RunInfo | None:
    """The record of run ``run_id``: active runs, and finished ones the stores still keep."""
    return lookup_run(run_id)


def active_runs() -> list[RunInfo]:
    """The runs of this process that have not ended, oldest first."""
    drain()
    infos = [state.info() for state in REGISTRY.states() if not state.status.is_terminal]
    return sorted(infos, key=lambda info: info.created_at)
