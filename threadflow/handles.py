"""What ``run()`` and ``arun()`` hand back: ``RunStream``, ``RunHandle`` and ``AsyncRunStream``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._abandon import unstarted_events
from ._asyncbridge import follow, follow_batches, until_done
from ._gcdefer import finish_soon
from ._registry import REGISTRY, RunState
from ._runlog import EventLog
from ._validate import check_count, check_reason
from .events import BaseEvent, Event
from .output import WorkflowRunOutput
from .status import CancelCause, RunInfo, RunStatus

if TYPE_CHECKING:
    from ._runner import Runner
    from .workflow import Workflow

__all__ = ["AsyncRunStream", "RunHandle", "RunStream"]

logger = logging.getLogger("threadflow")

# Makes a RunHandle's runner, log or waiter on first use and guards its end (once per run, briefly).
_LAZY = threading.Lock()


class RunStream:
    """The events of one run, produced in the calling thread as you iterate.

    Nothing runs until the first ``next()``. ``run_id`` is known at once.
    Leaving early — ``break``, ``close()``, the ``with`` block's end, or
    dropping an un-iterated stream — cancels the run with cause
    ``stream_closed``: the step's cleanup runs and the run is recorded as
    ``cancelled``. ``output`` is the ``WorkflowRunOutput`` once the stream has ended.
    """

    __slots__ = ("__weakref__", "_claim", "_consumer", "_gen", "_runner")

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._gen: Generator[BaseEvent, None, None] = runner.events()
        self._consumer: int | None = None  # the thread iterating (or closing), once one is
        # Taken only until a thread owns the stream, and by a close() of an unstarted one.
        self._claim = threading.Lock()
        # A generator that never started runs no code when it is collected, so
        # the abandoned-before-start case is recorded from a finaliser instead.
        weakref.finalize(self._gen, finish_soon, runner.abandon)

    @property
    def run_id(self) -> str:
        return self._runner.state.run_id

    @property
    def output(self) -> WorkflowRunOutput | None:
        return self._runner.output

    @property
    def status(self) -> RunStatus:
        return self._runner.state.status

    def __iter__(self) -> Iterator[Event]:
        return self._loop()

    def _loop(self) -> Generator[Event, None, None]:
        # One generator per loop: when a ``for`` loop is left by ``break`` it
        # drops this iterator, whose close() closes the run (the consumer leaving is a cancel)
        # even while the caller still holds the stream.
        if self._consumer is None:
            self._own()
        yield from self._gen  # type: ignore[misc]  # the runner yields only Event members
        yield from self._unsent()

    def __next__(self) -> Event:
        if self._consumer is None:
            self._own()
        try:
            return next(self._gen)  # type: ignore[return-value]
        except StopIteration:
            for event in self._unsent():
                return event
            raise

    def _own(self) -> None:
        with self._claim:
            if self._consumer is None:
                self._consumer = threading.get_ident()

    def _unsent(self) -> Iterator[Event]:
        """What was recorded after the consumer left, for a consumer that comes back (once each)."""
        with self._claim:  # a close() of an unstarted stream may still be recording them
            unsent = self._runner.unsent
        while unsent:
            yield unsent.pop(0)  # type: ignore[misc]  # the runner records only Event members

    def close(self) -> None:
        """Stop consuming: cancels a run that has not ended (cause ``stream_closed``). Never raises.

        From the consuming thread, the step's cleanup has run when it returns.
        From another thread (or from step code) it only requests the cancel:
        the consumer's next ``next()`` delivers it, so two threads never drive
        the run at once. A stream closed before anyone iterated it is recorded
        at once; iterating it afterwards yields ``workflow_started`` and
        ``workflow_cancelled`` (cause ``stream_closed``) — every consumer sees
        exactly one terminal event.
        """
        me = threading.get_ident()
        with self._claim:
            consumer = self._consumer
            if consumer is None:  # nobody iterates it yet: this thread ends it before anyone can
                self._consumer = me
                self._gen.close()
                self._runner.abandon()
                return
        if consumer != me or inspect.getgeneratorstate(self._gen) == inspect.GEN_RUNNING:
            REGISTRY.cancel(self._runner.state, None, CancelCause.stream_closed)
            return
        started = inspect.getgeneratorstate(self._gen) != inspect.GEN_CREATED
        self._gen.close()
        if not started:
            self._runner.abandon()

    def __enter__(self) -> RunStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RunStream {self.run_id} {self.status.value}>"


class RunHandle:
    """A run executing on a background worker thread.

    ``cancel()`` never waits for the run's code; ``wait()``/``result()`` do.

    It reads like a ``concurrent.futures.Future`` where the two meet —
    ``done()``, ``running()``, ``cancelled()``, ``result(timeout)``,
    ``exception(timeout)``, ``add_done_callback(fn)`` — with these differences:

    - ``result()`` of a cancelled run returns its ``WorkflowRunOutput``
      (status ``cancelled``); a Future raises ``CancelledError``.
    - ``result()`` of a failed run raises ``WorkflowError`` (carrying
      ``.output``), whose ``__cause__`` is the step's exception;
      ``exception()`` returns that step's exception, not the ``WorkflowError``.
    - ``cancel()`` also stops a run that is already running (it returns True
      iff the run was still active); a Future's cancel only stops one that
      has not started. ``cancelled()`` becomes True only once the run has
      ended, after its cleanup, not when ``cancel()`` returns.
    - There is no ``set_result()`` / ``set_exception()``, and a handle is not
      accepted by ``concurrent.futures.wait()`` / ``as_completed()``.
    """

    # A queued run holds only its state and what it needs to start: its runner, its event log
    # and the Event that wait() blocks on are made on first use (``_materialize``, ``_log_now``,
    # ``_waiter_now``), so 10^4 pending runs cost little memory.
    __slots__ = (
        "_callbacks",
        "_ended",
        "_input",
        "_log",
        "_unheard_output",
        "_queued",
        "_runner",
        "_source",
        "_state",
        "_waiter",
    )

    def __init__(self, state: RunState, source: Workflow, run_input: Any) -> None:
        self._state = state
        self._source: Workflow | None = source  # builds the runner; dropped once it has
        self._input = run_input
        self._runner: Runner | None = None
        self._log: EventLog | None = None
        self._ended = False  # changes only under _LAZY
        self._unheard_output: WorkflowRunOutput | None = None  # of a run ended by _end_unheard, made when asked for
        self._waiter: threading.Event | None = None
        self._callbacks: list[Callable[[RunHandle], object]] | None = None
        #: True while the run waits in a WorkerPool's queue (owned by the pool, under its lock).
        self._queued = False

    def __del__(self) -> None:
        # The runner's own safety net (Runner.__del__) does not exist yet for a run still queued: a
        # handle dropped before it reached its pool (an interrupt between registering the run and
        # submitting it) would leave a pending run nobody starts. Finish it, at a safe point.
        try:
            state, unstarted = self._state, self._runner is None and self._source is not None
        except AttributeError:  # __init__ was interrupted: the run was never registered
            return
        if unstarted and not state.status.is_terminal and REGISTRY.get(state.run_id) is state:
            finish_soon(functools.partial(_abandon_unstarted, self))

    def _materialize(self) -> Runner:
        """The run's runner, made (with its event log as sink) the first time anyone needs it."""
        runner = self._runner
        if runner is not None:
            return runner
        with _LAZY:
            if self._runner is None:
                assert self._source is not None
                log = self._log_locked()
                self._runner = self._source._runner_for(self._state, self._input, log.append)
                self._source = self._input = None
            return self._runner

    def _log_now(self) -> EventLog:
        log = self._log
        if log is not None:
            return log
        with _LAZY:
            return self._log_locked()

    def _log_locked(self) -> EventLog:
        if self._log is None:
            self._log = EventLog()
            if self._unheard:  # ended by _end_unheard before anyone asked for its events
                for event in unstarted_events(self._state):
                    self._log.append(event)
        return self._log

    @property
    def _unheard(self) -> bool:
        """True once ``_end_unheard`` took the run over: it has no runner, and never will."""
        return self._runner is None and self._source is None

    def _end_unheard(self) -> EventLog | None:
        """The queued run was cancelled and has ended (``Registry.finish``) without a runner.

        Its events are made only when someone asks for them (``_log_locked``);
        the log a follower already made is returned, for the caller to fill.
        """
        with _LAZY:
            self._source = self._input = None
            return self._log

    def _waiter_now(self) -> threading.Event:
        with _LAZY:
            if self._waiter is None:
                self._waiter = threading.Event()
                if self._ended:
                    self._waiter.set()
            return self._waiter

    @property
    def run_id(self) -> str:
        return self._state.run_id

    @property
    def workflow_id(self) -> str:
        return self._state.workflow_id

    @property
    def status(self) -> RunStatus:
        return self._state.status

    @property
    def output(self) -> WorkflowRunOutput | None:
        runner = self._runner
        if runner is not None:
            return runner.output
        if not self._ended:
            return None
        with _LAZY:  # ended by _end_unheard: cancelled before it started
            if self._unheard_output is None:
                self._unheard_output = WorkflowRunOutput.of(self._state, RunStatus.cancelled, None, {})
            return self._unheard_output

    def info(self) -> RunInfo:
        """A snapshot of the run's record (as ``get_run()`` answers it), live while it is active."""
        return self._state.info()

    def cancel(self, reason: str | None = None) -> bool:
        """Request the cancel; True iff the run was still active (it will end ``cancelled``)."""
        check_reason(reason)
        return REGISTRY.cancel(self._state, reason, CancelCause.requested)

    def close(self) -> bool:
        """The consumer of this run's events has left: cancel with cause ``stream_closed``.

        True iff the run was still active (it will end ``cancelled``); a no-op
        returning False once it has ended. Like ``cancel()``, never waits for the run's code.
        """
        return REGISTRY.cancel(self._state, None, CancelCause.stream_closed)

    def done(self) -> bool:
        """True once the run has ended and its output is set."""
        return self._ended

    def running(self) -> bool:
        """True while the run has started and not ended (``running``, ``waiting`` or ``cancelling``)."""
        state = self._state
        return state.started_at is not None and not self._ended and not state.status.is_terminal

    def cancelled(self) -> bool:
        """True iff the run has ended ``cancelled``."""
        output = self.output
        return self._ended and output is not None and output.status is RunStatus.cancelled

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run has ended (True) or ``timeout`` seconds pass (False)."""
        return self._ended or self._waiter_now().wait(timeout)

    def result(self, timeout: float | None = None) -> WorkflowRunOutput:
        """The run's output, as ``run()`` returns it: raises ``WorkflowError`` if a step failed.

        Raises ``TimeoutError`` if the run has not ended within ``timeout`` seconds.
        """
        if not self.wait(timeout):
            raise TimeoutError(f"run {self.run_id} has not ended after {timeout}s")
        runner = self._runner
        if runner is None:  # ended by _end_unheard: cancelled, never started
            output = self.output
            assert output is not None
            return output
        return runner.result_or_raise()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception of the step that failed the run (status ``error``); None for a completed or cancelled run.

        It is the same object ``result()`` chains as the ``WorkflowError``'s
        ``__cause__``. Raises ``TimeoutError`` if the run has not ended within
        ``timeout`` seconds.
        """
        if not self.wait(timeout):
            raise TimeoutError(f"run {self.run_id} has not ended after {timeout}s")
        runner = self._runner
        if runner is None:  # ended by _end_unheard: cancelled, never started
            return None
        failure = runner.failure
        output = runner.output
        if output is None or output.status is not RunStatus.error or failure is None:
            return None
        return failure.error

    def events(self, after_seq: int = 0) -> Iterator[Event]:
        """The run's events after ``after_seq``: what was emitted so far, then live ones, to the end.

        The iteration ends once the run has ended (``done()``), not merely its
        terminal event logged: the run's end is still being recorded then.
        """
        return self._log_now().follow(check_count("after_seq", after_seq), then=self.wait)

    def aevents(self, after_seq: int = 0) -> AsyncGenerator[Event, None]:
        """``events()`` for asyncio: ``async for ev in handle.aevents()`` never blocks the event loop.

        Replays the events after ``after_seq``, then follows live ones through
        the terminal event. ``ValueError`` (at once) for a bad ``after_seq``.
        """
        return follow(self._log_now(), check_count("after_seq", after_seq))

    def abatches(
        self,
        after_seq: int = 0,
        *,
        limit: int = 64,
        gather: Callable[[], float] | None = None,
        wake: asyncio.Event | None = None,
    ) -> AsyncGenerator[list[Event], None]:
        """``aevents()`` in batches, for code that forwards a run's events (an SSE or websocket server).

        Each batch holds what the run has logged since the one before, at most
        ``limit`` events; the first holds everything logged already, and comes
        without a wait. ``gather``, if given, is asked after each batch how
        many seconds to gather events that trickle in before the next one;
        the terminal event and a full batch end the gathering at once, and
        while it lasts the run's events cost the event loop nothing (the
        run's thread wakes it only for those two). ``wake``: an
        ``asyncio.Event`` of yours; setting it makes the iterator yield at
        once (also when set before the first look, or while you hold a
        batch), an empty batch if nothing new was logged. The iterator
        clears it when it has answered it: check your own reason for
        setting it after every batch.
        ``ValueError`` (at once) for a bad ``after_seq`` or ``limit``.
        """
        after_seq = check_count("after_seq", after_seq)
        if check_count("limit", limit) == 0:
            raise ValueError("limit must be at least 1")
        return follow_batches(self._log_now(), after_seq, limit, gather, wake)

    def compact(self) -> None:
        """Keep this ended run's events compactly: a quarter of the memory, nothing for the garbage collector to walk.

        For code that keeps many ended handles for their events (the HTTP
        server keeps its ``keep_finished_runs``): kept as objects, every
        event is two containers that each full garbage collection walks, and
        with a few hundred runs of a few hundred events kept its pauses
        reached 0.1-0.3 s. Events read afterwards (``events()``,
        ``aevents()``, ``abatches()``) are rebuilt as they are read: equal to
        the originals, new objects, about 2 µs each. Does nothing while the
        run is active.
        """
        log = self._log
        if log is not None and self._ended:
            log.pack()

    def add_done_callback(self, fn: Callable[[RunHandle], object]) -> None:
        """Call ``fn(handle)`` once, when the run has ended.

        Called from the thread that ends the run, or at once in the calling
        thread if it has already ended. An ``Exception`` it raises is logged
        (logger ``threadflow``), never raised into the caller or the worker.
        """
        with _LAZY:
            if not self._ended:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        self._call(fn)

    def _set_done(self) -> None:
        with _LAZY:
            self._ended = True
            waiter, callbacks, self._callbacks = self._waiter, self._callbacks, None
        if waiter is not None:
            waiter.set()
        interrupt: BaseException | None = None
        for fn in callbacks or ():
            try:
                self._call(fn)
            except BaseException as error:  # Ctrl+C, sys.exit(): the callbacks after it (an await's) still run
                logger.exception("threadflow: done callback %r of run %s raised", fn, self.run_id)
                interrupt = interrupt or error
        if interrupt is not None:
            raise interrupt

    def _call(self, fn: Callable[[RunHandle], object]) -> None:
        try:
            fn(self)
        except Exception:  # a caller's callback must not take the worker thread (or the caller) down
            logger.exception("threadflow: done callback %r of run %s raised", fn, self.run_id)

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id} {self.status.value}>"


class AsyncRunStream:
    """What ``arun(stream=True)`` returns: an async iterator over the run's events.

    The run is registered at once (``run_id`` is known, a duplicate id raises)
    and starts on the first iteration; one that is never iterated and is
    dropped is recorded ``cancelled`` (``stream_closed``), like a ``RunStream``.
    Leaving the loop early cancels the run (``stream_closed``); cancelling the
    iterating task cancels it (``requested``).
    """

    def __init__(self, handle: RunHandle, start: Callable[[RunHandle], None]) -> None:
        self._handle = handle
        self._start = start
        self._started = False
        self._unstarted = weakref.finalize(self, finish_soon, functools.partial(_abandon_unstarted, handle))

    @property
    def run_id(self) -> str:
        return self._handle.run_id

    @property
    def output(self) -> WorkflowRunOutput | None:
        return self._handle.output

    def __await__(self) -> Generator[Any, None, AsyncRunStream]:
        # ``async for ev in await wf.arun(x, stream=True)`` works too.
        return self._itself().__await__()

    async def _itself(self) -> AsyncRunStream:
        return self

    def __aiter__(self) -> AsyncIterator[Event]:
        if not self._started:
            self._started = True
            self._unstarted.detach()
            self._start(self._handle)
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        handle = self._handle
        try:
            async with contextlib.aclosing(handle.aevents()) as events:
                async for event in events:
                    yield event
            await until_done(handle)  # the terminal event is logged before the run leaves the registry
        except asyncio.CancelledError:
            handle.cancel("the awaiting asyncio task was cancelled")
            raise
        finally:
            handle.close()  # an early exit (break, aclose) is the consumer leaving; no-op once ended


def _abandon_unstarted(handle: RunHandle) -> None:
    try:
        handle._materialize().abandon()
    finally:
        handle._set_done()
