"""Finishing a run without its consumer: the consumer left, or something no step handles escaped.

When the consumer leaves (``GeneratorExit`` at one of the runner's yields, a
dropped stream), ``abandon()`` cancels the run with cause ``stream_closed``,
drives the suspended step through its cleanup (letting a shielded section
finish first) and records the terminal event — to the store and the run's
record, since Python forbids yielding after ``GeneratorExit``. ``crash()``
records a run that a ``BaseException`` (or a failing store) tore out of the
loop. ``throw_cancel()`` is how a cancel enters a step suspended at a ``yield``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from ._fastevents import make_event
from ._registry import REGISTRY, RunState
from .context import cancellation_error
from .events import BaseEvent, RunCancelledEvent, WorkflowCancelledEvent, WorkflowStartedEvent
from .exceptions import CancellationError
from .status import CancelCause, RunStatus

if TYPE_CHECKING:
    from ._runner import Runner

__all__ = ["SWALLOW_LIMIT", "abandon", "crash", "throw_cancel", "unstarted_events"]

logger = logging.getLogger("threadflow")

#: Times a generator step may swallow the cancel thrown into it and yield again
#: before it is closed instead: level-triggered, yet a step cannot keep a
#: cancelled run alive for ever.
SWALLOW_LIMIT = 2


def throw_cancel(gen: Generator[Any, None, Any], state: RunState, thrown: int) -> Any:
    """Deliver the cancel into a step suspended at its ``yield``; the step's next chunk, if it swallows it."""
    if thrown >= SWALLOW_LIMIT:
        try:
            gen.close()
        except Exception:
            logger.debug("threadflow: a step ignored GeneratorExit after swallowing the cancel", exc_info=True)
        raise cancellation_error(state)
    return gen.throw(cancellation_error(state))


def crash(runner: Runner, error: BaseException) -> None:
    """Something no step handles escaped: record the run as ended, then let it propagate.

    A ``KeyboardInterrupt`` is the user stopping the run: it is recorded as a
    cancel (cause ``shutdown``), with the step's cleanup run, not as an error.
    """
    if isinstance(error, KeyboardInterrupt):
        runner.interrupt(error)
        return
    gen, runner._step_gen = runner._step_gen, None
    try:
        if gen is not None:
            runner._close_quietly(gen)
    finally:
        runner._step_context = None
        if not runner.state.status.is_terminal:
            runner._fail(error)


def abandon(runner: Runner) -> None:
    """The consumer left: cancel (``stream_closed``), let the step clean up, record the end.

    Safe to call at any point, and more than once; does nothing once the
    run has ended. Whatever the step's cleanup raises (even
    ``KeyboardInterrupt``), the run is recorded and leaves the registry.
    """
    state = runner.state
    if state.status.is_terminal or REGISTRY.get(state.run_id) is not state:
        return  # ended, or never registered (its id was taken): nothing to record
    REGISTRY.cancel(state, None, CancelCause.stream_closed)
    gen, runner._step_gen = runner._step_gen, None
    try:
        if gen is not None:
            _drain(runner, gen)
    finally:
        runner._step_context = None
        if not state.status.is_terminal:
            _record_abandoned(runner, gen is not None)


def _record_abandoned(runner: Runner, in_stream: bool) -> None:
    """Record the end; the events also go to ``runner.unsent``, for a consumer that comes back."""
    state, unsent = runner.state, runner.unsent
    if in_stream and runner._stream_fields is not None:
        run_fields = runner._stream_fields
        unsent.append(runner.emit(RunCancelledEvent, reason=state.reason, cause=state.effective_cause, **run_fields))
    if state.started_at is None:  # never iterated: the log still starts with workflow_started
        state.started_at = time.time()
        unsent.append(runner.emit_started())
    unsent.append(runner._finish(RunStatus.cancelled))


def _drain(runner: Runner, gen: Generator[Any, None, Any]) -> None:
    """Run a suspended step to its end without a consumer: shielded code first, then the cancel."""
    state = runner.state
    thrown = 0
    while True:
        try:
            if runner.ctx.shield_depth:
                runner.in_step_context(next, gen)  # its output is discarded: nobody is listening
            else:
                runner.in_step_context(throw_cancel, gen, state, thrown)
                thrown += 1
        except (StopIteration, CancellationError):
            return
        except Exception:
            logger.debug("threadflow: step raised while cleaning up an abandoned run", exc_info=True)
            return


def unstarted_events(state: RunState) -> list[BaseEvent]:
    """The events of a run cancelled before it started, once it has ended: what ``abandon`` records for it.

    ``workflow_started`` (seq 1, at ``started_at``) and ``workflow_cancelled``
    (seq 2, at ``ended_at``), field for field as the runner emits them; made
    from the ended run's record, for a run whose events nobody had asked for yet.
    """
    base = {"run_id": state.run_id, "workflow_id": state.workflow_id, "workflow_name": state.workflow_name}
    started = make_event(WorkflowStartedEvent, {**base, "seq": 1, "created_at": state.started_at})
    ended = {"reason": state.reason, "cause": state.effective_cause, "step_name": state.step_name}
    cancelled = make_event(WorkflowCancelledEvent, {**ended, **base, "seq": 2, "created_at": state.ended_at})
    return [started, cancelled]
