"""``WorkflowRunOutput``: what a finished run returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .status import CancelCause, RunStatus

__all__ = ["WorkflowRunOutput"]


@dataclass(slots=True)
class WorkflowRunOutput:
    """The result of one run, whichever way it ended.

    ``content`` is the last step's output for a completed run and ``None``
    otherwise; ``step_outputs`` holds the output of every step that completed.
    """

    run_id: str
    workflow_id: str
    workflow_name: str
    status: RunStatus
    content: Any = None
    step_outputs: dict[str, Any] = field(default_factory=dict)
    #: The step running (or last run) when the run ended.
    step_name: str | None = None
    cause: CancelCause | None = None
    reason: str | None = None
    error: str | None = None
    error_type: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None

    @property
    def completed(self) -> bool:
        return self.status is RunStatus.completed

    @property
    def cancelled(self) -> bool:
        return self.status is RunStatus.cancelled
