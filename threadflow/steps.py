"""Steps: what a workflow runs, and what each step is given.

A step has exactly one of an *executor* (a callable taking a ``StepInput``)
or an *agent*. A plain executor's return value is the step's output. An
executor that returns a generator streams: every ``str`` it yields becomes a
``RunContentEvent``, and its return value — or, when it returns ``None``, the
yielded strings joined — is the output. An agent streams its model's tokens.
An ``async def`` executor (or one returning a coroutine) is awaited, and an
async-generator executor streams like a generator, on the run's private event
loop (``threadflow._aio``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tenacity.wait import WaitBaseT

from ._validate import check_seconds
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .agents import Agent

__all__ = ["EventMarker", "Executor", "Step", "StepInput", "as_step"]


class EventMarker:
    """Yielded by an agent's stream instead of a token: "emit this run event here".

    Machinery between ``agents`` and the runner (tool calls): the runner
    hands the consumer ``cls`` built from ``fields`` plus the step's own
    fields, at a checkpoint like any token. Users' generator steps yield ``str``.
    """

    __slots__ = ("cls", "fields")

    def __init__(self, cls: type[Any], **fields: Any) -> None:
        self.cls = cls
        self.fields = fields


@dataclass(slots=True)
class StepInput:
    """What a step's executor is called with.

    Build one yourself to unit-test an executor: ``StepInput(input=..., previous_step_content=...)``.
    """

    #: The workflow's input.
    input: Any = None
    #: The output of the step before this one (None for the first step).
    previous_step_content: Any = None
    run_id: str = ""
    workflow_id: str = ""
    step_name: str = ""
    step_index: int = 0
    _outputs: Mapping[str, Any] = field(default_factory=dict, repr=False, kw_only=True)

    def get_step_content(self, name: str) -> Any:
        """The output of the earlier step ``name``; ``KeyError`` if no such step has run."""
        try:
            return self._outputs[name]
        except KeyError:
            ran = ", ".join(self._outputs) or "none"
            raise KeyError(f"no step named {name!r} has completed in this run (completed: {ran})") from None

    @property
    def prompt(self) -> str:
        """The text an agent answers: the previous step's output, else the workflow input."""
        source = self.previous_step_content if self.previous_step_content is not None else self.input
        return "" if source is None else str(source)


Executor = Callable[[StepInput], Any]


class Step:
    """One named unit of a workflow: an executor or an agent, retried on failure if asked.

    ``retry=RetryPolicy(...)`` sets how failures are retried; ``max_retries`` /
    ``retry_delay`` / ``retry_wait`` are shorthands for one (``ValueError`` with both).
    ``timeout`` (seconds, positive and finite, or None) limits each attempt's
    active time, counted like ``run_timeout`` (time in ``ctx.sleep`` /
    ``ctx.wait`` does not count): an attempt that runs longer is cancelled
    with cause ``timeout`` and the run ends ``cancelled`` (a timeout is not
    retried). Raises ``ValueError`` unless exactly one of ``executor`` /
    ``agent`` is given, or for a bad ``timeout``.
    """

    __slots__ = ("agent", "description", "executor", "name", "retry", "timeout")

    #: True for the composite steps of ``threadflow.compose``, which the runner drives itself.
    composite: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        *,
        executor: Executor | None = None,
        agent: Agent | None = None,
        description: str | None = None,
        max_retries: int = 0,
        retry_delay: float = 0.0,
        retry_wait: WaitBaseT | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a step needs a non-empty str name, not {name!r}")
        if (executor is None) == (agent is None):
            which = "both" if executor is not None else "neither"
            raise ValueError(f"step {name!r}: give exactly one of executor= or agent= (got {which})")
        if executor is not None and not callable(executor):
            raise TypeError(f"step {name!r}: executor must be callable, not {type(executor).__name__}")
        if agent is not None and not hasattr(agent, "stream_answer"):
            raise TypeError(f"step {name!r}: agent must be a threadflow.Agent, not {type(agent).__name__}")
        self.name = name
        self.executor = executor
        self.agent = agent
        self.description = description
        self.retry = _retry_policy(name, retry, max_retries, retry_delay, retry_wait)
        self.timeout = check_seconds(f"step {name!r}: timeout", timeout, positive=True, optional=True, finite=True)

    @property
    def agent_name(self) -> str | None:
        return self.agent.name if self.agent is not None else None

    @property
    def retries(self) -> bool:
        return self.retry is not None

    def start(self, step_input: StepInput) -> Any:
        """Run the executor (or open the agent's stream); a generator means the step streams."""
        if self.agent is not None:
            return self.agent.stream_answer(step_input.prompt)
        assert self.executor is not None
        return self.executor(step_input)

    def __repr__(self) -> str:
        kind = f"agent={self.agent_name!r}" if self.agent is not None else "executor"
        return f"Step({self.name!r}, {kind})"


def _retry_policy(
    name: str, retry: RetryPolicy | None, max_retries: int, retry_delay: float, retry_wait: WaitBaseT | None
) -> RetryPolicy | None:
    """The step's policy: ``retry=`` itself, or the one its shorthands describe (never both)."""
    if retry is None:
        return RetryPolicy.from_shorthands(max_retries, retry_delay, retry_wait)
    if not isinstance(retry, RetryPolicy):
        raise TypeError(f"step {name!r}: retry= takes a threadflow.RetryPolicy, not {type(retry).__name__}")
    if max_retries or retry_delay or retry_wait is not None:
        raise ValueError(f"step {name!r}: give retry= or max_retries=/retry_delay=/retry_wait=, not both")
    return retry


def as_step(item: object, name: str | None = None) -> Step:
    """Accept a ``Step``, an ``Agent`` or a plain callable in ``Workflow(steps=[...])``."""
    from .agents import Agent

    if isinstance(item, Step):
        return item
    if isinstance(item, Agent):
        return Step(name or item.name, agent=item, description=item.description)
    to_step = getattr(type(item), "as_step", None)
    if to_step is not None:  # a Workflow: its steps, run inside this one
        step: Step = to_step(item, name)
        return step
    if callable(item):
        doc = inspect.getdoc(item)
        return Step(name or _callable_name(item), executor=item, description=doc.splitlines()[0] if doc else None)
    raise TypeError(
        f"a workflow step must be a Step, an Agent or a callable (or a Workflow), not {type(item).__name__}"
    )


def _callable_name(item: object) -> str:
    return getattr(item, "__name__", None) or type(item).__name__


def as_steps(items: Sequence[object]) -> tuple[Step, ...]:
    """Validate a workflow's steps: at least one, unique names.

    A name derived from a callable or an agent that is already taken gets a
    suffix (``<lambda>_2``); two ``Step``s given the same name are an error.
    """
    from .agents import Agent

    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"steps must be a sequence of steps, not {type(items).__name__}")
    if not items:
        raise ValueError("a workflow needs at least one step")
    explicit = {item.name for item in items if isinstance(item, Step)}
    steps: list[Step] = []
    taken: set[str] = set()
    for item in items:
        if isinstance(item, Step):
            if item.name in taken:
                raise ValueError(f"two steps are named {item.name!r}; step names must be unique in a workflow")
            step = item
        else:
            named = isinstance(item, Agent) or hasattr(type(item), "as_step")  # an agent, a workflow
            base = str(getattr(item, "name", "")) if named else _callable_name(item)
            name, n = base, 1
            while name in taken or name in explicit:
                n += 1
                name = f"{base}_{n}"
            step = as_step(item, name)
        taken.add(step.name)
        steps.append(step)
    return tuple(steps)
