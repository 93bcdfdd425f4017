"""The exceptions threadflow raises.

::

    BaseException
     └── CancellationError        delivered inside step code at a checkpoint
    Exception
     ├── WorkflowError            run() of a workflow whose step failed (.output, __cause__)
     └── ValueError
          └── DuplicateRunError   a run id that is still active in this process

``CancellationError`` derives from ``BaseException`` (as trio's ``Cancelled``
and asyncio's ``CancelledError`` do) so that ``except Exception:`` blocks and
retry loops in user code cannot swallow a cancellation by accident.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .output import WorkflowRunOutput
    from .status import CancelCause

__all__ = ["CancellationError", "DuplicateRunError", "WorkflowError"]


class CancellationError(BaseException):
    """The run was cancelled; raised inside step code at a checkpoint.

    Catch it to clean up, then re-raise it. A step that swallows it does not
    stop the cancellation: the run still ends ``cancelled``.
    """

    def __init__(self, run_id: str, reason: str | None, cause: CancelCause) -> None:
        super().__init__(run_id, reason, cause)
        self.run_id = run_id
        self.reason = reason
        self.cause = cause

    def __str__(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return f"run {self.run_id} cancelled ({self.cause.value}){why}"


class WorkflowError(Exception):
    """A step of the workflow raised; ``.output`` holds the run's record.

    The step's own exception is the ``__cause__``.
    """

    def __init__(self, message: str, output: WorkflowRunOutput) -> None:
        super().__init__(message)
        self.output = output


class DuplicateRunError(ValueError):
    """A run with this id is still active in this process."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run id {run_id!r} is already active")
        self.run_id = run_id
