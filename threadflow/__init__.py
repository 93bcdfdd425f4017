"""threadflow: synchronous workflows that stream typed events and cancel cleanly from anywhere."""

from ._background import shutdown as shutdown
from ._worker import Worker as Worker
from .agents import Agent as Agent
from .agents import Model as Model
from .compose import Condition as Condition
from .compose import Loop as Loop
from .compose import Parallel as Parallel
from .compose import Router as Router
from .compose import Steps as Steps
from .context import RunContext as RunContext
from .context import get_context as get_context
from .context import shield as shield
from .control import active_runs as active_runs
from .control import cancel_run as cancel_run
from .control import get_run as get_run
from .events import RunEvent as RunEvent
from .events import WorkflowRunEvent as WorkflowRunEvent
from .exceptions import CancellationError as CancellationError
from .exceptions import DuplicateRunError as DuplicateRunError
from .exceptions import WorkflowError as WorkflowError
from .handles import RunHandle as RunHandle
from .handles import RunStream as RunStream
from .output import WorkflowRunOutput as WorkflowRunOutput
from .retry import RetryPolicy as RetryPolicy
from .status import CancelCause as CancelCause
from .status import RunInfo as RunInfo
from .status import RunStatus as RunStatus
from .steps import Step as Step
from .steps import StepInput as StepInput
from .workflow import Workflow as Workflow

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "CancelCause",
    "CancellationError",
    "Condition",
    "DuplicateRunError",
    "Loop",
    "Model",
    "Parallel",
    "RetryPolicy",
    "Router",
    "RunContext",
    "RunEvent",
    "RunHandle",
    "RunInfo",
    "RunStatus",
    "RunStream",
    "Step",
    "StepInput",
    "Steps",
    "Worker",
    "Workflow",
    "WorkflowError",
    "WorkflowRunEvent",
    "WorkflowRunOutput",
    "active_runs",
    "cancel_run",
    "get_context",
    "get_run",
    "shield",
    "shutdown",
]
