"""The run loop: the only code that calls steps, yields events and hits checkpoints.

``Runner.events()`` is a generator driven by whoever consumes the run — the
caller of ``run()``, the ``for`` loop over a ``RunStream``, or a background
worker. Step code executes inside ``next()`` on it, in the consumer's thread.

Checkpoints here: the start of every step and every attempt, and both sides
of every event handed to the consumer. A cancel found at a checkpoint is
delivered *inside* the step: thrown into a generator step at its ``yield``,
so that its ``except CancellationError`` / ``finally`` cleanup runs.

If the consumer leaves (``GeneratorExit`` at one of our yields), the run is
finished without it by ``threadflow._abandon``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any, cast

from . import _observe
from ._abandon import abandon, crash
from ._fastevents import renumber
from ._gcdefer import finish_soon
from ._lane import EventSink, Lane, StepFailed
from ._printable import safe_str
from ._registry import REGISTRY, RunState
from ._timer import TIMER
from .context import RunContext
from .events import (
    BaseEvent,
    StepCompletedEvent,
    StepStartedEvent,
    WorkflowCancelledEvent,
    WorkflowCompletedEvent,
    WorkflowErrorEvent,
    WorkflowResumedEvent,
    WorkflowStartedEvent,
)
from .exceptions import CancellationError
from .output import WorkflowRunOutput
from .status import CancelCause, RunStatus
from .steps import Step
from .storage.memory import MemoryStore

if TYPE_CHECKING:
    from .storage.base import RunStore

__all__ = ["Runner", "StepFailed", "record_end"]

logger = logging.getLogger("threadflow")

_time = time.time
_PLAIN_RUN_ENDED = MemoryStore.run_ended


class Runner(Lane):
    """Drives one run from ``workflow_started`` to its one terminal event."""

    def __init__(
        self,
        steps: tuple[Step, ...],
        state: RunState,
        run_input: Any,
        *,
        store: RunStore | None,
        sink: EventSink | None = None,
    ) -> None:
        super().__init__(state, RunContext(state), run_input, {})
        self.steps = steps
        self.store = store
        observer = _observe.OBSERVER
        watch = None
        #: Told of the run's start and end only, even in a muted run (metrics).
        self.ends: _observe.RunEnds | None = None
        if observer is not None:  # state.traceparent is set here only for a run created elsewhere
            watch = observer.watch(state.run_id, state.workflow_id, state.traceparent)
            self.spans = observer.steps(state.run_id)
            self.ends = _observe.run_ends()
        recorder = store.append if store is not None and store.records_events else None
        self.sink = sink if recorder is None and watch is None else _fan_out([s for s in (recorder, sink, watch) if s])
        self.failure: StepFailed | None = None
        self.output: WorkflowRunOutput | None = None
        # Events recorded after the consumer left (abandon): a consumer that comes back reads them.
        self.unsent: list[BaseEvent] = []
        self._step_index = -1
        #: Where branch threads put their events for the consumer; made by the run's first Parallel.
        self.channel: SimpleQueue[Any] | None = None
        self._resumed: dict[str, Any] | None = None  # set by resume(): the workflow_resumed event's fields
        self._first_step = 0

    def __del__(self) -> None:
        # The last safety net of "no leaks": a runner dropped while its run is still registered and
        # active (an interrupt between registering the run and handing it to its caller, a generator
        # that never started) finishes the run, at a safe point if a garbage collection dropped it.
        state = self.state
        if not state.status.is_terminal and REGISTRY.get(state.run_id) is state:
            finish_soon(self.abandon)

    def forward(self, event: BaseEvent) -> BaseEvent:
        """A branch's event, in the consumer's thread: number it in the run's sequence and record it."""
        self.seq += 1
        if not self.quiet:
            renumber(event, self.seq)
            if self.sink is not None:
                self.sink(event)
        return event

    def mute(self) -> None:
        """The consumer discards every event (a plain ``run()``): if no sink listens either, build none.

        Events are still numbered (``seq`` advances as if they were made);
        ``emit`` returns ``UNHEARD`` and the output is built as always. A
        store that records events, a sink (a handle's log, ``debug_mode``) or
        a telemetry observer's watch each make the run heard; its ``ends``
        hears of the run's start and end without any event. Before ``events()``.
        """
        self.quiet = self.sink is None

    def drop_chunks(self) -> None:
        """The consumer drops every event it is handed (a background worker): a chunk's goes to the sink only.

        A streaming step's ``run_content`` events then reach their readers
        through the sink (the handle's log) alone, saving a hand-over through
        every generator layer per chunk; the checkpoints stay where they were.
        Only for a run with a sink. Before ``events()``.
        """
        self.sink_only = self.sink is not None

    # -- the run ------------------------------------------------------------

    def resume(self, outputs: dict[str, Any], *, last_seq: int, attempt: int, previous_owner: str | None) -> None:
        """Continue a run another process began: before ``events()``, never after.

        ``outputs`` are the logged outputs of its completed steps: the steps
        from the first one missing there run (the one that was running starts
        again); the run's first event is ``workflow_resumed`` and numbering
        continues after ``last_seq``.
        """
        self.seq = last_seq
        self._resumed = {"attempt": attempt, "previous_owner": previous_owner}
        while self._first_step < len(self.steps) and self.steps[self._first_step].name in outputs:
            name = self.steps[self._first_step].name
            self.outputs[name] = self.content = outputs[name]
            self._first_step += 1

    def events(self) -> Generator[BaseEvent, None, None]:
        """Run every step, yielding each event; ends with exactly one terminal event."""
        try:
            self._begin()
            quiet = self.quiet  # nobody listens: number the events, don't even hand them over
            if quiet:
                self.emit_started()
            else:
                if self._resumed is None or not self.seq:  # resumed with nothing logged: the log still starts so
                    yield self.emit_started()
                if self._resumed is not None:
                    yield self.emit(WorkflowResumedEvent, **self._resumed)
            for index, step in enumerate(self.steps):
                if index < self._first_step:
                    continue  # completed before the run was resumed
                self._checkpoint()
                self._step_index = index
                self.state.step_name = self.ctx.step_name = step.name
                if quiet:
                    self.seq += 1
                else:
                    fields = {"step_name": step.name, "step_index": index, "step_path": step.name}
                    yield self.emit(StepStartedEvent, **fields)
                content = yield from self._run_step(index, step)
                self._checkpoint()  # handing step_completed over is a checkpoint too
                self.outputs[step.name] = self.content = content
                if quiet:
                    self.seq += 1
                else:
                    yield self.emit(StepCompletedEvent, content=content, **fields)
                self._checkpoint()
            terminal = self._finish(RunStatus.completed)
        except CancellationError:
            terminal = self._finish(RunStatus.cancelled)
        except StepFailed as failed:
            self.failure = failed
            terminal = self._finish(RunStatus.error)
        except GeneratorExit:
            finish_soon(self.abandon)  # inside a garbage collection: later, at a safe point
            raise
        except BaseException as error:  # KeyboardInterrupt, SystemExit, a failing store
            crash(self, error)
            raise
        if not self.quiet:
            yield terminal

    def _begin(self) -> None:
        state = self.state
        state.started_at = _time()
        REGISTRY.set_status(state, RunStatus.running)
        TIMER.resume(state)

    # -- the end ------------------------------------------------------------

    def _finish(self, wanted: RunStatus) -> BaseEvent:
        """Decide the final status (cancel wins), record it, leave the registry; the terminal event.

        However the recording fails (a store that raises), the run still
        leaves the registry and its output is set; the failure then propagates.
        """
        state = self.state
        try:  # from the decision on: whatever interrupts this (Ctrl+C, a store), the entry goes
            final = REGISTRY.finish(state, wanted)
            TIMER.stop(state)
            if final is RunStatus.error:
                error = self.failure.error if self.failure is not None else RuntimeError("run failed")
                state.error, state.error_type = safe_str(error), type(error).__name__
            self.output = self._output(final)
            terminal = self._emit_terminal(final)
            if self.ends is not None:
                cause = state.effective_cause if final is RunStatus.cancelled else None
                self.ends.ended(state.run_id, state.workflow_id, final, cause)
            if self.store is not None:
                record_end(self.store, state)
        finally:
            REGISTRY.remove(state)
            self.close_aio()
        return terminal

    def emit_started(self) -> BaseEvent:
        """``emit`` the ``workflow_started`` event; ``ends`` hears of it even in a muted run."""
        event = self.emit(WorkflowStartedEvent)
        if self.ends is not None:
            self.ends.started(self.state.workflow_id)
        return event

    def _emit_terminal(self, final: RunStatus) -> BaseEvent:
        state = self.state
        if final is RunStatus.completed:
            return self.emit(WorkflowCompletedEvent, content=self.content)
        if final is RunStatus.cancelled:
            return self.emit(
                WorkflowCancelledEvent, reason=state.reason, cause=state.effective_cause, step_name=state.step_name
            )
        return self.emit(WorkflowErrorEvent, error=state.error, error_type=state.error_type, step_name=state.step_name)

    def _output(self, final: RunStatus) -> WorkflowRunOutput:
        content = self.content if final is RunStatus.completed else None
        return WorkflowRunOutput.of(self.state, final, content, self.outputs)

    def result_or_raise(self) -> WorkflowRunOutput:
        """The ended run's output, as ``run()`` returns it: ``WorkflowError`` if a step failed."""
        output = self.output
        assert output is not None, "the run has not ended"
        if output.status is RunStatus.error:
            failure = self.failure
            raise output.failure() from (failure.error if failure is not None else None)
        return output

    def interrupt(self, error: BaseException) -> None:
        """A ``KeyboardInterrupt`` stopped the run: a cancel (cause ``shutdown``) that the caller also sees.

        The step's cleanup runs as for any cancel and the run is recorded
        ``cancelled``; the caller re-raises ``error``. Does nothing once the run has ended.
        """
        REGISTRY.cancel(self.state, f"interrupted ({type(error).__name__})", CancelCause.shutdown)
        abandon(self)

    def _fail(self, error: BaseException) -> None:
        """End the run ``error`` with ``error`` as the failure of the step it was in."""
        self.failure = StepFailed(self.steps[max(self._step_index, 0)], error)
        self._finish(RunStatus.error)

    # -- the consumer left, or the run crashed: see threadflow._abandon ----

    def abandon(self) -> None:
        """The consumer left: cancel (``stream_closed``), let the step clean up, record the end."""
        abandon(self)


def record_end(store: RunStore, state: RunState) -> None:
    """Give ``store`` the record of a run that has ended (``run_ended``).

    A plain ``MemoryStore`` is given the run's final state instead, and makes
    the ``RunInfo`` only if someone asks for it: most records are never read.
    """
    if type(store).run_ended is _PLAIN_RUN_ENDED:
        cast("MemoryStore", store).keep_final(state)
    else:
        store.run_ended(state.info())


def _fan_out(sinks: list[EventSink]) -> EventSink | None:
    if not sinks:
        return None
    if len(sinks) == 1:
        return sinks[0]

    def fan_out(event: BaseEvent) -> None:
        # Every sink gets the event even if an earlier one raises (a failing
        # store must not starve a handle's followers of the terminal event).
        failure: BaseException | None = None
        for sink in sinks:
            try:
                sink(event)
            except BaseException as error:  # noqa: BLE001 — re-raised below
                failure = failure or error
        if failure is not None:
            raise failure

    return fan_out
