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

from ._asyncbridge import follow, until_done
from ._gcdefer import finish_soon
from ._registry import REGISTRY, RunState
from ._runlog import EventLog
from ._validate import check_count, check_reason
from .events import BaseEvent, Event
from .output import WorkflowRunOutput
from .status import CancelCause, RunInfo, RunStatus

if TYPE_CHECKING:
    from ._runner import Runner

__all__ = ["AsyncRunStream", "RunHandle", "RunStream"]

logger = logging.getLogger("threadflow")


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

    __slots__ = ("_callbacks", "_done", "_lock", "_log", "_runner")

    def __init__(self, runner: Runner, log: EventLog) -> None:
        self._runner = runner
        self._log = log
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[RunHandle], object]] = []

    @property
    def run_id(self) -> str:
        return self._runner.state.run_id

    @property
    def workflow_id(self) -> str:
        return self._runner.state.workflow_id

    @property
    def status(self) -> RunStatus:
        return self._runner.state.status

    @property
    def _state(self) -> RunState:
        return self._runner.state

    @property
    def output(self) -> WorkflowRunOutput | None:
        return self._runner.output

    def info(self) -> RunInfo:
        """A snapshot of the run's record (as ``get_run()`` answers it), live while it is active."""
        return self._runner.state.info()

    def cancel(self, reason: str | None = None) -> bool:
        """Request the cancel; True iff the run was still active (it will end ``cancelled``)."""
        check_reason(reason)
        return REGISTRY.cancel(self._runner.state, reason, CancelCause.requested)

    def close(self) -> bool:
        """The consumer of this run's events has left: cancel with cause ``stream_closed``.

        True iff the run was still active (it will end ``cancelled``); a no-op
        returning False once it has ended. Like ``cancel()``, never waits for the run's code.
        """
        return REGISTRY.cancel(self._runner.state, None, CancelCause.stream_closed)

    def done(self) -> bool:
        """True once the run has ended and its output is set."""
        return self._done.is_set()

    def running(self) -> bool:
        """True while the run has started and not ended (``running``, ``waiting`` or ``cancelling``)."""
        state = self._runner.state
        return state.started_at is not None and not self._done.is_set() and not state.status.is_terminal

    def cancelled(self) -> bool:
        """True iff the run has ended ``cancelled``."""
        output = self._runner.output
        return self._done.is_set() and output is not None and output.status is RunStatus.cancelled

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run has ended (True) or ``timeout`` seconds pass (False)."""
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> WorkflowRunOutput:
        """The run's output, as ``run()`` returns it: raises ``WorkflowError`` if a step failed.

        Raises ``TimeoutError`` if the run has not ended within ``timeout`` seconds.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"run {self.run_id} has not ended after {timeout}s")
        return self._runner.result_or_raise()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception of the step that failed the run (status ``error``); None for a completed or cancelled run.

        It is the same object ``result()`` chains as the ``WorkflowError``'s
        ``__cause__``. Raises ``TimeoutError`` if the run has not ended within
        ``timeout`` seconds.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"run {self.run_id} has not ended after {timeout}s")
        failure = self._runner.failure
        output = self._runner.output
        if output is None or output.status is not RunStatus.error or failure is None:
            return None
        return failure.error

    def events(self, after_seq: int = 0) -> Iterator[Event]:
        """The run's events after ``after_seq``: what was emitted so far, then live ones, to the end.

        The iteration ends once the run has ended (``done()``), not merely its
        terminal event logged: the run's end is still being recorded then.
        """
        return self._log.follow(check_count("after_seq", after_seq), then=self._done.wait)

    def aevents(self, after_seq: int = 0) -> AsyncGenerator[Event, None]:
        """``events()`` for asyncio: ``async for ev in handle.aevents()`` never blocks the event loop.

        Replays the events after ``after_seq``, then follows live ones through
        the terminal event. ``ValueError`` (at once) for a bad ``after_seq``.
        """
        return follow(self._log, check_count("after_seq", after_seq))

    def add_done_callback(self, fn: Callable[[RunHandle], object]) -> None:
        """Call ``fn(handle)`` once, when the run has ended.

        Called from the thread that ends the run, or at once in the calling
        thread if it has already ended. An ``Exception`` it raises is logged
        (logger ``threadflow``), never raised into the caller or the worker.
        """
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        self._call(fn)

    def _set_done(self) -> None:
        with self._lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            self._call(fn)

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
        handle._runner.abandon()
    finally:
        handle._set_done()
