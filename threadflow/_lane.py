"""A lane of a run: where steps are called, retried, timed, streamed and composed.

A run has one lane of its own (the ``Runner``, in ``_runner.py``) and one more
per branch of a ``Parallel``. A lane calls each step's code with the run's
context ambient, retries failed attempts, arms a step's timeout, and drives a
streaming step: every ``str`` it yields becomes a ``run_content`` event, and
a cancel found at a checkpoint is delivered *inside* the step, thrown into a
generator at its ``yield`` so its ``except CancellationError`` / ``finally``
cleanup runs. Composite steps run their children through a lane's
``sequence`` / ``child`` / ``parallel`` / ``branch``.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import time
from collections.abc import Callable, Generator, Sequence
from types import GeneratorType
from typing import TYPE_CHECKING, Any, cast

from . import _observe
from ._abandon import throw_cancel
from ._aio import AsyncSteps, is_async
from ._branches import run_branches
from ._fastevents import make_event, make_exact, template
from ._printable import safe_str
from ._registry import RunState
from ._timer import TIMER
from .context import _CURRENT, RunContext, cancellation_error
from .events import (
    BaseEvent,
    RunCancelledEvent,
    RunCompletedEvent,
    RunContentEvent,
    RunErrorEvent,
    RunStartedEvent,
    StepCompletedEvent,
    StepRetryingEvent,
    StepStartedEvent,
)
from .exceptions import CancellationError
from .steps import EventMarker, Step, StepInput

if TYPE_CHECKING:
    from ._runner import Runner
    from .compose import Composite

__all__ = ["UNHEARD", "EventSink", "Lane", "StepFailed"]

logger = logging.getLogger("threadflow")

_time = time.time

EventSink = Callable[[BaseEvent], None]

#: What ``emit`` returns in a run nobody listens to (``Runner.mute``): no event is built.
UNHEARD = cast("BaseEvent", None)


class StepFailed(Exception):
    """A step raised (after its retries); the step's exception is ``error``."""

    def __init__(self, step: Step, error: BaseException) -> None:
        super().__init__(f"step {step.name!r} failed: {type(error).__name__}: {safe_str(error)}")
        self.step = step
        self.error = error


class _StepRaised(Exception):
    """Carries a ``BaseException`` a step raised that is the step's error, not a signal to the runner."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class Lane:
    """Executes steps and produces their events: the run's own lane, or one branch of a ``Parallel``.

    The run's lane is its ``Runner``, driven by the consumer. A branch lane
    runs in a branch thread; the events it yields go to the run's channel,
    where the consumer numbers and records them (``Runner.forward``). Each
    lane has its own ``RunContext`` (shields are per branch) over the run's one
    ``RunState`` (the cancel is per run).
    """

    def __init__(self, state: RunState, ctx: RunContext, run_input: Any, outputs: dict[str, Any]) -> None:
        self.state = state
        self.ctx = ctx
        self.input = run_input
        self.outputs = outputs
        self.sink: EventSink | None = None
        self.seq = 0
        self.content: Any = None
        # The streaming step now suspended at a yield, and its run_* event fields.
        self._step_gen: Generator[Any, None, Any] | None = None
        # The contextvars.Context that generator's code runs in, the run's context ambient there.
        self._step_context: contextvars.Context | None = None
        self._stream_fields: dict[str, Any] | None = None
        self._aio: AsyncSteps | None = None  # the lane's private event loop, made by its first async step
        self._base = {"run_id": state.run_id, "workflow_id": state.workflow_id, "workflow_name": state.workflow_name}
        #: "" for top-level steps; "fanout/" inside the composite step "fanout".
        self.prefix = ""
        self._root: Runner | None = None  # a branch's run lane; None in the run's own lane (no self-cycle)
        #: Nobody listens (``Runner.mute``): events are numbered, never built.
        self.quiet = False
        #: The consumer drops what it is handed (a background worker): the sink alone carries
        #: the events, and a streamed chunk's event is not handed over (``Runner.drop_chunks``).
        self.sink_only = False
        #: The run's step spans while telemetry traces it (``threadflow._observe``), else None.
        self.spans: _observe.StepScopes | None = None
        self._span_path = ""  # the step whose code runs next in this lane (for its span)

    @property
    def root(self) -> Runner:
        """The run's own lane, where branch events are numbered and recorded.

        Not stored on the run's lane itself: a reference to itself would make
        every run cyclic garbage, left for the garbage collector to find.
        """
        return self._root if self._root is not None else cast("Runner", self)

    @property
    def aio(self) -> AsyncSteps:
        """The lane's async steps' runner, made on first use (most runs have no async step)."""
        aio = self._aio
        if aio is None:
            aio = self._aio = AsyncSteps(self.state, self.ctx)
        return aio

    def close_aio(self) -> None:
        """Close the lane's event loop, if an async step made one."""
        if self._aio is not None:
            self._aio.close()

    # -- events -------------------------------------------------------------

    def emit(self, cls: type[BaseEvent], **fields: Any) -> BaseEvent:
        """Number an event, log it to the store / run record, and return it for the consumer.

        In a muted run (nobody listens) it only numbers it, and returns ``UNHEARD``.
        """
        self.seq += 1
        if self.quiet:
            return UNHEARD
        fields.update(self._base)
        fields["seq"] = self.seq
        fields["created_at"] = _time()
        event = make_event(cls, fields)
        if self.sink is not None:
            self.sink(event)
        elif self.spans is not None:  # a branch lane: its step spans open here, before its step code runs
            self.spans.emitted(event)
        return event

    def _step_fields(self, step: Step, index: int, agent: bool = False) -> dict[str, Any]:
        name = step.name
        fields: dict[str, Any] = {"step_name": name, "step_index": index, "step_path": self.prefix + name}
        if agent:
            fields["agent_name"] = step.agent_name
        return fields

    # -- steps ------------------------------------------------------------

    def _checkpoint(self) -> None:
        if self.state.cancel_requested:
            raise cancellation_error(self.state)

    def _run_step(self, index: int, step: Step) -> Generator[BaseEvent, None, Any]:
        """Run one step, retrying failed attempts as its policy says."""
        ctx = self.ctx
        attempts = step.retry.attempts(ctx.sleep) if step.retry is not None else None
        attempt = 1
        while True:
            ctx.attempt = attempt
            self._checkpoint()
            try:
                if step.timeout is None and not step.composite:  # most steps: no generator layer of their own
                    result = self._call(index, step)
                    content = (
                        (yield from self._stream(index, step, result)) if type(result) is GeneratorType else result
                    )
                else:
                    content = yield from self._timed_attempt(index, step)
            except StepFailed as failed:
                ctx.end_step()
                delay = attempts.failed(failed.error) if attempts is not None else None
                if attempts is None or delay is None:
                    raise
                self._checkpoint()
                yield self.emit(
                    StepRetryingEvent,
                    attempt=attempt,
                    error=safe_str(failed.error),
                    error_type=type(failed.error).__name__,
                    delay=delay,
                    **self._step_fields(step, index),
                )
                self._in_step(attempts.sleep, delay)
                attempt += 1
            else:
                # on_cancel registrations last as long as the step; on a cancel
                # they must still fire, so they are not dropped on that path.
                ctx.end_step()
                return content

    def _timed_attempt(self, index: int, step: Step) -> Generator[BaseEvent, None, Any]:
        """One attempt of ``step``, under its ``timeout`` when it has one: a budget per attempt.

        Without a timeout this is the attempt itself, so the per-event path
        gains no generator layer.
        """
        if step.timeout is None:
            return self._attempt(index, step)
        return self._attempt_with_deadline(index, step, step.timeout)

    def _attempt_with_deadline(self, index: int, step: Step, seconds: float) -> Generator[BaseEvent, None, Any]:
        budget = TIMER.start_step(self.state, seconds, step.name, nested=bool(self.prefix))
        try:
            return (yield from self._attempt(index, step))
        finally:
            TIMER.end_step(self.state, budget)  # an attempt that overran is cancelled by now

    def _in_step(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn`` with the run's context as the ambient one (and its step's span current, when traced)."""
        spans = self.spans
        span_token = spans.enter(self._span_path) if spans is not None else None
        token = _CURRENT.set(self.ctx)
        try:
            return fn(*args)
        finally:
            _CURRENT.reset(token)
            if spans is not None:
                spans.leave(span_token)

    def _attempt(self, index: int, step: Step) -> Generator[BaseEvent, None, Any]:
        if step.composite:
            self._span_path = self.prefix + step.name  # its evaluator or selector runs in its span
            return (yield from self._composite(step, self._step_input(index, step)))
        result = self._call(index, step)
        if type(result) is GeneratorType:
            return (yield from self._stream(index, step, result))
        return result

    def _step_input(self, index: int, step: Step) -> StepInput:
        state = self.state
        return StepInput(
            self.input, self.content, state.run_id, state.workflow_id, step.name, index, _outputs=self.outputs
        )

    def _call(self, index: int, step: Step) -> Any:
        """Call a (non-composite) step: its output, or the generator of a streaming step, not yet started."""
        step_input = self._step_input(index, step)
        self._span_path = self.prefix + step.name
        try:
            result = self._in_step(step.start, step_input)
            if type(result) is not GeneratorType and is_async(result):  # an async step
                result = self._in_step(self.aio.settle, step.name, result)
        except Exception as error:
            self._checkpoint()  # a step that fails because it was cancelled was cancelled
            raise StepFailed(step, error) from error
        except (CancellationError, GeneratorExit) as error:
            if self.state.cancel_requested:
                raise cancellation_error(self.state) from error
            raise StepFailed(step, error) from error  # the step's own, with no cancel accepted: an error
        if type(result) is not GeneratorType:
            self._checkpoint()  # the step ignored the cancel: its result is discarded
        return result

    def _stream(self, index: int, step: Step, gen: Generator[Any, None, Any]) -> Generator[BaseEvent, None, Any]:
        """Drive a streaming step, yielding one ``run_content`` per string it yields."""
        run_fields = self._step_fields(step, index, agent=True)
        self._step_gen = gen  # from here on, a consumer leaving must close it
        self._stream_fields = run_fields
        yield self.emit(RunStartedEvent, **run_fields)
        state, ctx, sink, quiet, sink_only = self.state, self.ctx, self.sink, self.quiet, self.sink_only
        # The step's code runs in a Context of its own, entered for each resumption: the run's
        # context is ambient exactly while step code runs, at the price of one call per chunk.
        resume: Callable[..., Any] = self._enter_step_context().run
        spans = self.spans
        if spans is not None:  # traced: the step's span is current while its code runs, never across a yield
            resume = functools.partial(resume, _traced, spans, run_fields["step_path"])
        content_fields = template(RunContentEvent, {**self._base, **run_fields})
        chunks: list[str] = []
        thrown = 0
        try:
            while True:
                try:
                    if state.cancel_requested and not ctx.shield_depth:
                        chunk = resume(throw_cancel, gen, state, thrown)
                        thrown += 1
                    else:
                        chunk = resume(next, gen)
                except StopIteration as stop:
                    value = stop.value
                    break
                except GeneratorExit as error:
                    # Raised by the step itself: the consumer's own GeneratorExit arrives at our yield below.
                    raise _StepRaised(error) from error
                if type(chunk) is not str:
                    if type(chunk) is EventMarker:  # an agent's tool call: an event of its own
                        if not (state.cancel_requested and not ctx.shield_depth):
                            yield self.emit(chunk.cls, **chunk.fields, **run_fields)
                        continue
                    if not isinstance(chunk, str):
                        self._close_quietly(gen)
                        raise TypeError(
                            f"step {step.name!r} yielded {type(chunk).__name__}; a streaming step must yield str"
                        )
                    chunk = str.__str__(chunk)  # a str subclass is a string; the event holds a plain one
                if state.cancel_requested and not ctx.shield_depth:
                    continue  # the checkpoint before handing it over: throw in at the top
                chunks.append(chunk)
                self.seq += 1
                if quiet:
                    yield UNHEARD
                    continue
                fields = content_fields.copy()
                fields["seq"] = self.seq
                fields["created_at"] = _time()
                fields["content"] = chunk
                event = make_exact(RunContentEvent, fields)
                if sink is not None:
                    sink(event)
                    if sink_only:
                        continue  # the next step of the loop is the checkpoint the yield would have been
                yield event
        except CancellationError as error:
            self._step_gen = self._step_context = None
            if not state.cancel_requested:  # the step's own, with no cancel accepted: an error
                yield self.emit(RunErrorEvent, error=safe_str(error), error_type=type(error).__name__, **run_fields)
                raise StepFailed(step, error) from error
            yield self.emit(RunCancelledEvent, reason=state.reason, cause=state.effective_cause, **run_fields)
            raise
        except Exception as raised:  # noqa: BLE001 — the step's error, re-raised as StepFailed below
            self._step_gen = self._step_context = None
            failure = raised.error if type(raised) is _StepRaised else raised
            if state.cancel_requested:
                yield self.emit(RunCancelledEvent, reason=state.reason, cause=state.effective_cause, **run_fields)
                raise cancellation_error(state) from failure
            yield self.emit(RunErrorEvent, error=safe_str(failure), error_type=type(failure).__name__, **run_fields)
            raise StepFailed(step, failure) from failure
        self._step_gen = self._step_context = None
        if state.cancel_requested:  # the step swallowed the cancel and returned
            yield self.emit(RunCancelledEvent, reason=state.reason, cause=state.effective_cause, **run_fields)
            raise cancellation_error(state)
        content = "".join(chunks) if value is None else value
        yield self.emit(RunCompletedEvent, content=content, **run_fields)
        return content

    def _enter_step_context(self) -> contextvars.Context:
        """A copy of this thread's context with the run's context ambient: where a streaming step's code runs."""
        context = self._step_context = contextvars.copy_context()
        context.run(_CURRENT.set, self.ctx)
        return context

    def in_step_context(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn`` where the suspended streaming step's code runs (``_in_step`` when there is none)."""
        context = self._step_context
        if context is None:
            return self._in_step(fn, *args)
        return context.run(fn, *args)

    def _close_quietly(self, gen: Generator[Any, None, Any]) -> None:
        """Close a step generator (its ``finally`` runs with the run's context); log what it raises."""
        try:
            self.in_step_context(gen.close)
        except Exception:
            logger.debug("threadflow: closing a step generator raised", exc_info=True)

    # -- composite steps: the ``compose.Driver`` their ``drive`` is given ---

    def _composite(self, step: Step, step_input: StepInput) -> Generator[BaseEvent, None, Any]:
        """Run a composite step; its children's events carry ``step_path`` under its own."""
        saved = self.prefix, self.input
        try:
            return (yield from cast("Composite", step).drive(self, step_input, self.prefix + step.name))
        except (StepFailed, CancellationError):
            raise
        except Exception as error:  # its evaluator, selector or end condition raised
            self._checkpoint()
            raise StepFailed(step, error) from error
        finally:
            self.prefix, self.input = saved
            self.ctx.step_name = step.name

    def sequence(
        self, steps: Sequence[Step], step_input: StepInput, path: str
    ) -> Generator[BaseEvent, None, list[Any]]:
        """Run ``steps`` in order as children at ``path``, each given the one before's output."""
        self.input, self.content = step_input.input, step_input.previous_step_content
        outputs = []
        for index, step in enumerate(steps):
            self.prefix = path + "/"  # a composite child restores it, but a failed one may not have
            outputs.append((yield from self.child(index, step)))
        return outputs

    def child(self, index: int, step: Step) -> Generator[BaseEvent, None, Any]:
        """One child step with its ``step_started`` / ``step_completed``, as the top-level loop runs one."""
        self._checkpoint()
        self.ctx.step_name = step.name
        fields = self._step_fields(step, index)
        yield self.emit(StepStartedEvent, **fields)
        content = yield from self._run_step(index, step)
        self._checkpoint()
        self.outputs[fields["step_path"]] = self.content = content
        yield self.emit(StepCompletedEvent, content=content, **fields)
        self._checkpoint()
        return content

    def parallel(
        self, steps: Sequence[Step], step_input: StepInput, path: str
    ) -> Generator[BaseEvent, None, dict[str, Any]]:
        """Run ``steps`` at once, one branch each (``threadflow._branches``); their outputs by name."""
        return run_branches(self, steps, step_input, path)  # no generator layer of our own: every event passes here

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call user code (an evaluator, a selector) with this lane's context as the ambient one."""
        return self._in_step(fn, *args)

    def branch(self, step_input: StepInput, path: str) -> Lane:
        """A lane for one branch at ``path``: its own context, the run's state and outputs."""
        lane = Lane(self.state, RunContext(self.state, branch=True), step_input.input, self.outputs)
        lane.content = step_input.previous_step_content
        lane.prefix = path + "/"
        lane._root = self.root
        lane.quiet = self.quiet
        lane.spans = self.spans
        return lane


def _traced(spans: _observe.StepScopes, path: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn`` with the step ``path``'s span current (in the step's own context)."""
    token = spans.enter(path)
    try:
        return fn(*args)
    finally:
        spans.leave(token)
