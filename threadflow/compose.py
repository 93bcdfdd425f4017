"""Composite steps: ``Parallel``, ``Condition``, ``Loop``, ``Router``, ``Steps`` — steps made of steps.

Each is a ``Step``: it stands anywhere a step can (a workflow's steps, inside
another composite) and emits ``step_started`` / ``step_completed`` for
itself. Its children's events carry ``step_path``, the ``/``-joined names
from the top-level step down, a loop iteration written ``name[i]`` (1 for the
first): ``fanout/summarize``, ``review[2]/draft``. A child's output is also
kept in the run's ``step_outputs`` under its path.

What each gives its children and returns:

- ``Steps(*steps)``: runs them in order, each given the one before's output
  (the first, the output before the composite); returns the last one's.
- ``Parallel(*steps)``: runs them at once, each on a thread of the branch
  pool, all given the composite's own ``StepInput``; returns
  ``{step name: output}``. It ends only when every branch has ended; a
  branch that fails stops its siblings (their cleanup runs) and the run
  ends ``error`` with that branch's exception.
- ``Condition(evaluator, steps)``: runs ``steps`` (as ``Steps``) iff
  ``evaluator(step_input)`` is true; when skipped its output is its input's
  ``previous_step_content``, so the next step sees what it would have seen.
- ``Loop(steps, max_iterations=, end_condition=)``: runs ``steps`` (as
  ``Steps``) up to ``max_iterations`` times; iteration ``i + 1`` starts from
  iteration ``i``'s last output; it stops early once
  ``end_condition(outputs)`` is true, ``outputs`` being that iteration's
  outputs in step order. Returns the last iteration's last output.
- ``Router(selector, choices)``: ``selector(step_input)`` names what to run:
  a choice (the ``Step``, the callable or agent it was made from, or its
  name) or a list of them, run in that order; returns the last one's output
  (none chosen: the input's ``previous_step_content``).

An evaluator, selector or end condition that raises fails the composite step
like any step error. Composite steps are not retried; ``timeout=`` limits the
whole composite step, as ``Step(timeout=)`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ._branches import POOL
from ._validate import check_count, check_seconds
from .steps import Step, StepInput, as_steps

if TYPE_CHECKING:
    from .events import BaseEvent

__all__ = ["Composite", "Condition", "Driver", "Loop", "Parallel", "Router", "Steps", "set_max_branch_threads"]


class Driver(Protocol):
    """What the runner lends a composite step to run its children (``threadflow._lane.Lane``)."""

    def sequence(
        self, steps: Sequence[Step], step_input: StepInput, path: str
    ) -> Generator[BaseEvent, None, list[Any]]: ...

    def parallel(
        self, steps: Sequence[Step], step_input: StepInput, path: str
    ) -> Generator[BaseEvent, None, dict[str, Any]]: ...

    def call(self, fn: Callable[..., Any], *args: Any) -> Any: ...


class Composite(Step):
    """A step whose work is other steps; the runner calls ``drive`` instead of an executor."""

    __slots__ = ("steps",)
    composite: ClassVar[bool] = True
    kind: ClassVar[str] = "steps"

    def __init__(
        self, steps: Sequence[object], name: str | None, *, description: str | None = None, timeout: float | None = None
    ) -> None:
        # Not Step.__init__: a composite has neither executor nor agent, and is never retried.
        self.steps = as_steps(steps)
        self.name = name if name is not None else _default_name(self.kind, self.steps)
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a {type(self).__name__} needs a non-empty str name, not {name!r}")
        self.executor = self.agent = None
        self.description = description
        self.retry = None
        self.timeout = check_seconds(f"step {self.name!r}: timeout", timeout, positive=True, optional=True, finite=True)

    def drive(self, driver: Driver, step_input: StepInput, path: str) -> Generator[BaseEvent, None, Any]:
        """Run the children through ``driver``, their paths under ``path``; the composite's output."""
        outputs = yield from driver.sequence(self.steps, step_input, path)
        return outputs[-1]

    def start(self, step_input: StepInput) -> Any:
        raise TypeError(f"{type(self).__name__} {self.name!r} is run by a workflow, not called")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, steps={[s.name for s in self.steps]})"


class Steps(Composite):
    """``Steps(*steps, name=None)``: a named sequence of steps."""

    __slots__ = ()

    def __init__(self, *steps: object, name: str | None = None, timeout: float | None = None) -> None:
        super().__init__(steps, name, timeout=timeout)


class Parallel(Composite):
    """``Parallel(*steps, name=None)``: the steps at once, one branch each; ``{name: output}``."""

    __slots__ = ()
    kind = "parallel"

    def __init__(self, *steps: object, name: str | None = None, timeout: float | None = None) -> None:
        super().__init__(steps, name, timeout=timeout)

    def drive(self, driver: Driver, step_input: StepInput, path: str) -> Generator[BaseEvent, None, Any]:
        return driver.parallel(self.steps, step_input, path)  # not a generator layer: every branch event passes


class Condition(Composite):
    """``Condition(evaluator, steps, name=None)``: ``steps`` only if ``evaluator(step_input)`` is true."""

    __slots__ = ("evaluator",)
    kind = "condition"

    def __init__(
        self,
        evaluator: Callable[[StepInput], object],
        steps: object,
        name: str | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        _check_callable("evaluator", evaluator)
        super().__init__(_as_list(steps), name, timeout=timeout)
        self.evaluator = evaluator

    def drive(self, driver: Driver, step_input: StepInput, path: str) -> Generator[BaseEvent, None, Any]:
        if not driver.call(self.evaluator, step_input):
            return step_input.previous_step_content
        return (yield from super().drive(driver, step_input, path))


class Loop(Composite):
    """``Loop(steps, *, max_iterations, end_condition=None, name=None)``: repeat until done."""

    __slots__ = ("end_condition", "max_iterations")
    kind = "loop"

    def __init__(
        self,
        steps: object,
        *,
        max_iterations: int,
        end_condition: Callable[[list[Any]], object] | None = None,
        name: str | None = None,
        timeout: float | None = None,
    ) -> None:
        check_count("max_iterations", max_iterations, minimum=1)
        if end_condition is not None:
            _check_callable("end_condition", end_condition)
        super().__init__(_as_list(steps), name, timeout=timeout)
        self.max_iterations = max_iterations
        self.end_condition = end_condition

    def drive(self, driver: Driver, step_input: StepInput, path: str) -> Generator[BaseEvent, None, Any]:
        for iteration in range(1, self.max_iterations + 1):
            outputs = yield from driver.sequence(self.steps, step_input, f"{path}[{iteration}]")
            if self.end_condition is not None and driver.call(self.end_condition, outputs):
                break
            step_input = _following(step_input, outputs[-1])
        return outputs[-1]


class Router(Composite):
    """``Router(selector, choices, name=None)``: run the choice(s) ``selector(step_input)`` picks."""

    __slots__ = ("_by_item", "selector")
    kind = "router"

    def __init__(
        self,
        selector: Callable[[StepInput], object],
        choices: Sequence[object],
        name: str | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        _check_callable("selector", selector)
        super().__init__(choices, name, timeout=timeout)
        self.selector = selector
        # A choice may be named by what the user passed (a function, an agent), its Step, or its name.
        self._by_item = list(zip(choices, self.steps, strict=True))

    def drive(self, driver: Driver, step_input: StepInput, path: str) -> Generator[BaseEvent, None, Any]:
        picked = driver.call(self.selector, step_input)
        chosen = [self._choice(item) for item in _as_list(picked)] if picked is not None else []
        if not chosen:
            return step_input.previous_step_content
        outputs = yield from driver.sequence(chosen, step_input, path)
        return outputs[-1]

    def _choice(self, item: object) -> Step:
        for given, step in self._by_item:
            if item is given or item is step or (isinstance(item, str) and item == step.name):
                return step
        names = ", ".join(repr(s.name) for s in self.steps)
        raise ValueError(f"router {self.name!r}: the selector chose {item!r}, which is not one of {names}")


class WorkflowStep(Steps):
    """A ``Workflow`` used as a step (``Workflow.as_step()``): its steps, run inside the outer run.

    Its input is the step's prompt — the previous step's output, else the
    outer workflow's input — so the inner workflow's first step sees it as
    ``step_input.input``, as it would when run alone. Its output is its last
    step's. Its events stream through the outer run (one run id), under its
    name in ``step_path``; it is cancelled with the outer run. The inner
    workflow's own ``run_timeout`` and store do not apply.
    """

    __slots__ = ()

    def drive(self, driver: Driver, step_input: StepInput, path: str) -> Generator[BaseEvent, None, Any]:
        source = step_input.previous_step_content
        inner = _following(step_input, None)
        inner.input = source if source is not None else step_input.input
        return (yield from super().drive(driver, inner, path))


def set_max_branch_threads(max_threads: int) -> int:
    """Bound the process-wide pool of branch threads (default 32); returns the previous bound.

    Running branches keep their threads; threads above a lowered bound exit
    as soon as they are between branches. Also settable with the environment variable
    ``THREADFLOW_BRANCH_THREADS`` (read at import).
    """
    check_count("max_threads", max_threads, minimum=1)
    return POOL.resize(max_threads)


def _following(step_input: StepInput, content: Any) -> StepInput:
    """``step_input`` with ``previous_step_content`` replaced: what the next round starts from."""
    return StepInput(
        step_input.input,
        content,
        step_input.run_id,
        step_input.workflow_id,
        step_input.step_name,
        step_input.step_index,
        _outputs=step_input._outputs,
    )


def _as_list(items: object) -> list[object]:
    if isinstance(items, (list, tuple)):
        return list(items)
    return [items]


def _check_callable(what: str, fn: object) -> None:
    if not callable(fn):
        raise TypeError(f"{what} must be callable, not {type(fn).__name__}")


def _default_name(kind: str, steps: Sequence[Step]) -> str:
    return f"{kind}_{'_'.join(step.name for step in steps)}"
