"""The events a run emits: the single wire format of threadflow.

Every event is an immutable pydantic model with the fields ``event``,
``run_id``, ``workflow_id``, ``workflow_name``, ``seq`` and ``created_at``.
``Event`` is the discriminated union of them all, on the ``event`` field, and
``parse_event()`` reads back what ``model_dump_json()`` wrote, exactly. The same
JSON travels through streams, stores, the CLI and HTTP.

Events of a step inside a composite step (``Parallel``, ``Loop``, ...) say
where they came from in ``step_path``; branch events are merged into the one
stream in the order they happened.

A run's events are numbered ``seq`` 1, 2, 3, ... without gaps; the first is
``workflow_started`` and the last is exactly one of ``workflow_completed``,
``workflow_cancelled`` or ``workflow_error``.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .status import CancelCause, RunStatus

__all__ = [
    "BaseEvent",
    "CancelCause",
    "Event",
    "RunCancelledEvent",
    "RunCompletedEvent",
    "RunContentEvent",
    "RunErrorEvent",
    "RunEvent",
    "RunStartedEvent",
    "RunStatus",
    "StepCompletedEvent",
    "StepRetryingEvent",
    "StepStartedEvent",
    "ToolCallCompletedEvent",
    "ToolCallStartedEvent",
    "WorkflowCancelledEvent",
    "WorkflowCompletedEvent",
    "WorkflowErrorEvent",
    "WorkflowResumedEvent",
    "WorkflowRunEvent",
    "WorkflowStartedEvent",
    "is_terminal",
    "parse_event",
]


class WorkflowRunEvent(enum.StrEnum):
    """Names of the workflow-level events."""

    workflow_started = "workflow_started"
    step_started = "step_started"
    step_retrying = "step_retrying"
    step_completed = "step_completed"
    workflow_completed = "workflow_completed"
    workflow_cancelled = "workflow_cancelled"
    workflow_error = "workflow_error"
    workflow_resumed = "workflow_resumed"


class RunEvent(enum.StrEnum):
    """Names of the events of one step's own run (an agent or a streaming function)."""

    run_started = "run_started"
    run_content = "run_content"
    run_completed = "run_completed"
    run_cancelled = "run_cancelled"
    run_error = "run_error"
    tool_call_started = "tool_call_started"
    tool_call_completed = "tool_call_completed"


class BaseEvent(BaseModel):
    """Fields every event has."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event: Any
    run_id: str
    workflow_id: str
    workflow_name: str
    seq: int
    created_at: float

    #: True for the three events that end a run.
    terminal: ClassVar[bool] = False


class _StepEvent(BaseEvent):
    step_name: str
    step_index: int
    #: Where the step is: the ``/``-joined names from the top-level step down, a loop iteration
    #: written ``name[i]`` (``review[2]/draft``); equal to ``step_name`` for a top-level step.
    #: None only in logs written before composite steps existed.
    step_path: str | None = None


class _StepRunEvent(_StepEvent):
    agent_name: str | None = None


class WorkflowStartedEvent(BaseEvent):
    event: Literal[WorkflowRunEvent.workflow_started] = WorkflowRunEvent.workflow_started


class StepStartedEvent(_StepEvent):
    event: Literal[WorkflowRunEvent.step_started] = WorkflowRunEvent.step_started


class StepRetryingEvent(_StepEvent):
    """The attempt ``attempt`` failed with ``error``; the next starts after ``delay`` seconds.

    Content streamed by the failed attempt is to be discarded by the consumer.
    """

    event: Literal[WorkflowRunEvent.step_retrying] = WorkflowRunEvent.step_retrying
    attempt: int
    error: str
    error_type: str
    delay: float


class StepCompletedEvent(_StepEvent):
    event: Literal[WorkflowRunEvent.step_completed] = WorkflowRunEvent.step_completed
    content: Any = None


class WorkflowCompletedEvent(BaseEvent):
    event: Literal[WorkflowRunEvent.workflow_completed] = WorkflowRunEvent.workflow_completed
    content: Any = None
    status: Literal[RunStatus.completed] = RunStatus.completed
    terminal: ClassVar[bool] = True


class WorkflowCancelledEvent(BaseEvent):
    event: Literal[WorkflowRunEvent.workflow_cancelled] = WorkflowRunEvent.workflow_cancelled
    reason: str | None = None
    cause: CancelCause
    step_name: str | None = None
    status: Literal[RunStatus.cancelled] = RunStatus.cancelled
    terminal: ClassVar[bool] = True


class WorkflowErrorEvent(BaseEvent):
    event: Literal[WorkflowRunEvent.workflow_error] = WorkflowRunEvent.workflow_error
    error: str
    error_type: str
    step_name: str | None = None
    status: Literal[RunStatus.error] = RunStatus.error
    terminal: ClassVar[bool] = True


class WorkflowResumedEvent(BaseEvent):
    """A worker took the run over after its owner stopped renewing its lease.

    Steps completed before keep their logged outputs; the step that was running starts again.
    """

    event: Literal[WorkflowRunEvent.workflow_resumed] = WorkflowRunEvent.workflow_resumed
    attempt: int
    previous_owner: str | None = None


class RunStartedEvent(_StepRunEvent):
    event: Literal[RunEvent.run_started] = RunEvent.run_started


class RunContentEvent(_StepRunEvent):
    event: Literal[RunEvent.run_content] = RunEvent.run_content
    content: str


class RunCompletedEvent(_StepRunEvent):
    event: Literal[RunEvent.run_completed] = RunEvent.run_completed
    content: Any = None


class RunCancelledEvent(_StepRunEvent):
    event: Literal[RunEvent.run_cancelled] = RunEvent.run_cancelled
    reason: str | None = None
    cause: CancelCause


class RunErrorEvent(_StepRunEvent):
    event: Literal[RunEvent.run_error] = RunEvent.run_error
    error: str
    error_type: str


class ToolCallStartedEvent(_StepRunEvent):
    """An agent is calling its tool ``tool_name`` with ``tool_args`` (the model's arguments, parsed)."""

    event: Literal[RunEvent.tool_call_started] = RunEvent.tool_call_started
    tool_name: str
    tool_args: dict[str, Any]
    tool_call_id: str


class ToolCallCompletedEvent(_StepRunEvent):
    """The tool call ``tool_call_id`` returned ``result`` (JSON-able) or failed with ``error``.

    ``error`` is None when the tool returned; otherwise ``result`` is None and
    ``error`` is what the model was told (``"ValueError: ..."``).
    """

    event: Literal[RunEvent.tool_call_completed] = RunEvent.tool_call_completed
    tool_call_id: str
    result: Any = None
    error: str | None = None
    tool_name: str | None = None


Event = Annotated[
    WorkflowStartedEvent
    | StepStartedEvent
    | StepRetryingEvent
    | StepCompletedEvent
    | WorkflowCompletedEvent
    | WorkflowCancelledEvent
    | WorkflowErrorEvent
    | WorkflowResumedEvent
    | RunStartedEvent
    | RunContentEvent
    | RunCompletedEvent
    | RunCancelledEvent
    | RunErrorEvent
    | ToolCallStartedEvent
    | ToolCallCompletedEvent,
    Field(discriminator="event"),
]

_event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: str | bytes | bytearray | dict[str, Any]) -> Event:
    """Read an event back from its JSON (``model_dump_json()``) or its dict form.

    Raises ``pydantic.ValidationError`` when ``data`` is not an event.
    """
    if isinstance(data, dict):
        return _event_adapter.validate_python(data)
    return _event_adapter.validate_json(data)


def is_terminal(event: BaseEvent) -> bool:
    """True for ``workflow_completed``, ``workflow_cancelled`` and ``workflow_error``."""
    return event.terminal
