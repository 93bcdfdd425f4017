"""Where a run is: ``RunStatus``, why it was cancelled: ``CancelCause``, and its record: ``RunInfo``.

"Terminal" is spelled once: ``RunStatus.is_terminal`` (the statuses a run
ends in); ``ACTIVE_STATUSES`` are the others.
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict

__all__ = ["ACTIVE_STATUSES", "CancelCause", "RunInfo", "RunStatus"]


class RunStatus(enum.StrEnum):
    """Where a run is in its lifecycle. The last three are terminal."""

    pending = "pending"
    running = "running"
    waiting = "waiting"
    cancelling = "cancelling"
    completed = "completed"
    cancelled = "cancelled"
    error = "error"

    @property
    def is_terminal(self) -> bool:
        """True for ``completed``, ``cancelled`` and ``error``: the run has ended."""
        return self not in ACTIVE_STATUSES


#: The statuses of a run that has not ended.
ACTIVE_STATUSES = frozenset({RunStatus.pending, RunStatus.running, RunStatus.waiting, RunStatus.cancelling})


class CancelCause(enum.StrEnum):
    """Why a run was cancelled."""

    requested = "requested"  # cancel_run(), RunHandle.cancel(), the CLI, HTTP
    timeout = "timeout"  # run_timeout elapsed
    stream_closed = "stream_closed"  # the consumer left the stream
    shutdown = "shutdown"  # threadflow.shutdown() or interpreter exit


class RunInfo(BaseModel):
    """A snapshot of one run's record: what ``get_run()`` and the stores answer."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    workflow_id: str
    workflow_name: str
    status: RunStatus
    cause: CancelCause | None = None
    reason: str | None = None
    step_name: str | None = None
    error: str | None = None
    error_type: str | None = None
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    #: The process running it on a shared store: ``"host:pid"`` (None while pending, and in a MemoryStore).
    owner: str | None = None
    #: 1, then +1 each time a worker resumes the run after its owner stopped renewing its lease.
    attempt: int = 1
    #: The W3C ``traceparent`` of the span current where the run was created, kept so that a worker that
    #: runs or resumes it continues that trace (None when telemetry was off, or no span was current).
    traceparent: str | None = None
