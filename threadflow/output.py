"""``WorkflowRunOutput``: what a finished run returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .exceptions import WorkflowError
from .status import CancelCause, RunStatus

__all__ = ["RunRecord", "WorkflowRunOutput"]


class RunRecord(Protocol):
    """What an output is made from: a live run's state or a stored ``RunInfo``."""

    @property
    def run_id(self) -> str: ...

    @property
    def workflow_id(self) -> str: ...

    @property
    def workflow_name(self) -> str: ...

    @property
    def step_name(self) -> str | None: ...

    @property
    def cause(self) -> CancelCause | None: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def error(self) -> str | None: ...

    @property
    def error_type(self) -> str | None: ...

    @property
    def created_at(self) -> float: ...

    @property
    def started_at(self) -> float | None: ...

    @property
    def ended_at(self) -> float | None: ...


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

    @classmethod
    def of(cls, record: RunRecord, status: RunStatus, content: Any, step_outputs: dict[str, Any]) -> WorkflowRunOutput:
        """The output of the run ``record`` describes, ended ``status``."""
        return cls(  # positional, in field order: a run's output is built on every run
            record.run_id,
            record.workflow_id,
            record.workflow_name,
            status,
            content,
            step_outputs,
            record.step_name,
            record.cause,
            record.reason,
            record.error,
            record.error_type,
            record.created_at,
            record.started_at,
            record.ended_at,
        )

    def failure(self) -> WorkflowError:
        """The ``WorkflowError`` that ``run()`` / ``result()`` raise for this (``error``) run."""
        return WorkflowError(
            f"workflow {self.workflow_id!r} run {self.run_id} failed in step "
            f"{self.step_name!r}: {self.error_type}: {self.error}",
            self,
        )
