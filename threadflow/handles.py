"""What ``run()`` hands back: a ``RunStream`` to iterate, or a ``RunHandle`` on a background run."""

from __future__ import annotations

import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Generator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING

from ._reaper import finish_soon
from .events import BaseEvent, CancelCause, Event, RunStatus
from .exceptions import WorkflowError
from .output import WorkflowRunOutput
from .registry import REGISTRY, RunState, check_reason

if TYPE_CHECKING:
    from ._runner import Runner

__all__ = ["EventLog", "RunHandle", "RunStream", "result_or_raise"]

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
        # drops this iterator, whose close() closes the run (SPEC §3 rule 8)
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


class EventLog:
    """A background run's events, kept for replay and followed live by any number of readers.

    Readers are cursors into one list, so a reader that stops reading never
    blocks the run and costs no memory of its own; the log itself holds the
    run's events (what ``events(after_seq=0)`` must replay) and goes away
    with the handle.
    """

    __slots__ = ("_cond", "_events", "_listeners", "_waiters", "done")

    def __init__(self) -> None:
        self._events: list[BaseEvent] = []
        self._cond = threading.Condition(threading.Lock())
        self._waiters = 0
        self._listeners: list[Callable[[], None]] = []
        self.done = False

    def append(self, event: BaseEvent) -> None:
        with self._cond:
            self._events.append(event)
            if event.terminal:
                self.done = True
            if self._waiters:
                self._cond.notify_all()
            listeners = self._listeners[:] if self._listeners else None
        if listeners:
            for listener in listeners:
                listener()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every append (from the run's thread)."""
        with self._cond:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with self._cond:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def since(self, after_seq: int) -> list[BaseEvent]:
        """The events with ``seq > after_seq`` logged so far."""
        with self._cond:
            return self._events[after_seq:]

    def follow(self, after_seq: int = 0, timeout: float | None = None) -> Iterator[Event]:
        """Replay, then follow live until the terminal event."""
        cursor = after_seq
        while True:
            with self._cond:
                while len(self._events) <= cursor and not self.done:
                    self._waiters += 1
                    try:
                        self._cond.wait(timeout)
                    finally:
                        self._waiters -= 1
                batch = self._events[cursor:]
                finished = self.done
            for event in batch:
                cursor += 1
                yield event  # type: ignore[misc]  # the runner logs only Event members
            if finished and cursor >= len(self._events):
                return


class RunHandle:
    """A run executing on a background worker thread.

    ``cancel()`` never waits for the run's code; ``wait()``/``result()`` do.
    """

    __slots__ = ("_callbacks", "_done", "_lock", "_log", "_runner")

    def __init__(self, runner: Runner, log: EventLog) -> None:
        self._runner = runner
        self._log = log
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

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
    def state(self) -> RunState:
        return self._runner.state

    @property
    def output(self) -> WorkflowRunOutput | None:
        return self._runner.output

    def cancel(self, reason: str | None = None) -> bool:
        """Request the cancel; True iff the run was still active (it will end ``cancelled``)."""
        check_reason(reason)
        return REGISTRY.cancel(self._runner.state, reason, CancelCause.requested)

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run has ended (True) or ``timeout`` seconds pass (False)."""
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> WorkflowRunOutput:
        """The run's output, as ``run()`` returns it: raises ``WorkflowError`` if a step failed.

        Raises ``TimeoutError`` if the run has not ended within ``timeout`` seconds.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"run {self.run_id} has not ended after {timeout}s")
        return result_or_raise(self._runner)

    def events(self, after_seq: int = 0) -> Iterator[Event]:
        """The run's events after ``after_seq``: what was emitted so far, then live ones, to the end."""
        if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
            raise ValueError(f"after_seq must be a non-negative int, not {after_seq!r}")
        return self._log.follow(after_seq)

    @property
    def log(self) -> EventLog:
        return self._log

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the run has ended (at once if it has), from the ending thread.

        An exception it raises is logged.
        """
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def _set_done(self) -> None:
        with self._lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a caller's callback must not take the worker thread down
                logger.exception("threadflow: done callback %r of run %s raised", callback, self.run_id)

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id} {self.status.value}>"


def result_or_raise(runner: Runner) -> WorkflowRunOutput:
    output = runner.output
    assert output is not None, "the run has not ended"
    if output.status is RunStatus.error:
        failure = runner.failure
        raise WorkflowError(
            f"workflow {output.workflow_id!r} run {output.run_id} failed in step "
            f"{output.step_name!r}: {output.error_type}: {output.error}",
            output,
        ) from (failure.error if failure is not None else None)
    return output
