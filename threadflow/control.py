"""Process-wide run control: cancel, inspect and list runs of any workflow."""

from __future__ import annotations

from ._background import shutdown
from ._gcdefer import drain
from ._registry import LOCAL_RUNS, REGISTRY
from .status import RunInfo
from .storage._defaults import known_stores

__all__ = ["active_runs", "cancel_run", "get_run", "shutdown"]


def cancel_run(run_id: str, reason: str | None = None) -> bool:
    """Cancel the active run ``run_id`` of any workflow in this process.

    True iff the run is active (it will then end ``cancelled``); False for an
    unknown id or a run that has ended. ``TypeError`` for a non-str reason.
    """
    return LOCAL_RUNS.cancel(run_id, reason)


def get_run(run_id: str) -> RunInfo | None:
    """The record of run ``run_id``: live while it is active, else from the first store that keeps it.

    The stores searched are the default one and every store a workflow of this process has used.
    """
    if not isinstance(run_id, str):
        return None
    drain()  # a run a garbage collection abandoned is recorded before we answer
    info = LOCAL_RUNS.info(run_id)
    if info is not None:
        return info
    for store in known_stores():
        info = store.get_run(run_id)
        if info is not None:
            return info
    return None


def active_runs() -> list[RunInfo]:
    """The runs of this process that have not ended, oldest first."""
    drain()
    infos = [state.info() for state in REGISTRY.states() if not state.status.is_terminal]
    return sorted(infos, key=lambda info: info.created_at)
