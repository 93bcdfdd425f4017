"""``Workflow``: a named sequence of steps, and the ways to run and cancel it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Sequence
from typing import Any, Literal, overload

from ._background import WorkerPool
from ._reaper import drain, finish_soon
from ._runner import Runner
from .events import BaseEvent, CancelCause, Event, RunInfo
from .handles import EventLog, RunHandle, RunStream, result_or_raise
from .output import WorkflowRunOutput
from .registry import REGISTRY, RunState, check_reason
from .steps import Step, as_steps
from .storage import RunStore
from .storage._defaults import default_store, lookup_run, track_store

__all__ = ["AsyncRunStream", "Workflow"]

_event_logger = logging.getLogger("threadflow.events")


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or uuid.uuid4().hex


def new_run_id() -> str:
    """A random (version 4) UUID string, made without the uuid module's object overhead."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _debug_sink(inner: Callable[[BaseEvent], None] | None) -> Callable[[BaseEvent], None]:
    """debug_mode: log every event (as its JSON) at DEBUG on the ``threadflow.events`` logger."""

    def log_event(event: BaseEvent) -> None:
        if inner is not None:
            inner(event)
        if _event_logger.isEnabledFor(logging.DEBUG):
            # repr() for content JSON cannot hold: logging must never fail a run
            _event_logger.debug("%s", event.model_dump_json(fallback=repr))

    return log_event


def _check_timeout(run_timeout: object) -> float | None:
    if run_timeout is None:
        return None
    if isinstance(run_timeout, bool) or not isinstance(run_timeout, (int, float)) or not run_timeout > 0:
        raise ValueError(f"run_timeout must be a positive number of seconds, not {run_timeout!r}")
    return float(run_timeout)


class Workflow:
    """A sequence of steps run in order, each getting the previous one's output.

    ``run()`` executes in the calling thread (or, with ``background=True``, on
    a worker thread); every run streams the same typed events and can be
    cancelled from any thread with ``cancel_run()``.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        steps: Sequence[object],
        id: str | None = None,  # noqa: A002 — the public name of the option
        description: str | None = None,
        run_timeout: float | None = None,
        store: RunStore | None = None,
        max_concurrent_runs: int = 32,
        debug_mode: bool = False,
    ) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if id is not None and (not isinstance(id, str) or not id):
            raise ValueError(f"id must be a non-empty str, not {id!r}")
        if isinstance(max_concurrent_runs, bool) or not isinstance(max_concurrent_runs, int) or max_concurrent_runs < 1:
            raise ValueError(f"max_concurrent_runs must be a positive int, not {max_concurrent_runs!r}")
        self.steps: tuple[Step, ...] = as_steps(steps)
        self.id = id or (_slug(name) if name else uuid.uuid4().hex)
        self.name = name or self.id
        self.description = description
        self.run_timeout = _check_timeout(run_timeout)
        self.store: RunStore = store if store is not None else default_store()
        track_store(self.store)
        self.max_concurrent_runs = max_concurrent_runs
        self.debug_mode = debug_mode
        self._pool = WorkerPool(max_concurrent_runs, self.id)

    # -- running ------------------------------------------------------------

    @overload
    def run(
        self,
        input: Any = None,
        *,
        stream: Literal[True],
        background: Literal[False] = False,
        run_id: str | None = None,
        run_timeout: float | None = None,
    ) -> RunStream: ...

    @overload
    def run(
        self,
        input: Any = None,
        *,
        stream: bool = False,
        background: Literal[True],
        run_id: str | None = None,
        run_timeout: float | None = None,
    ) -> RunHandle: ...

    @overload
    def run(
        self,
        input: Any = None,
        *,
        stream: Literal[False] = False,
        background: Literal[False] = False,
        run_id: str | None = None,
        run_timeout: float | None = None,
    ) -> WorkflowRunOutput: ...

    @overload
    def run(
        self,
        input: Any = None,
        *,
        stream: bool = False,
        background: bool = False,
        run_id: str | None = None,
        run_timeout: float | None = None,
    ) -> WorkflowRunOutput | RunStream | RunHandle: ...

    def run(
        self,
        input: Any = None,  # noqa: A002
        *,
        stream: bool = False,
        background: bool = False,
        run_id: str | None = None,
        run_timeout: float | None = None,
    ) -> WorkflowRunOutput | RunStream | RunHandle:
        """Run the workflow.

        - default: runs to the end in this thread; returns the output of a
          completed or cancelled run, raises ``WorkflowError`` if a step failed;
        - ``stream=True``: returns a ``RunStream`` at once; nothing runs until it is iterated;
        - ``background=True``: starts the run on a worker thread, returns a ``RunHandle``.

        ``run_id`` chooses the id (``DuplicateRunError`` if it is active);
        ``run_timeout`` overrides the workflow's.
        """
        if background:
            return self._start_background(input, run_id, run_timeout)
        runner = self._new_runner(input, run_id, run_timeout)
        if stream:
            return RunStream(runner)
        for _ in runner.events():
            pass
        return result_or_raise(runner)

    def _new_runner(
        self,
        run_input: Any,
        run_id: str | None,
        run_timeout: float | None,
        *,
        background: bool = False,
        sink: Any = None,
    ) -> Runner:
        drain()  # a safe point: finish runs a garbage collection abandoned
        if run_id is None:
            run_id = new_run_id()
        elif not isinstance(run_id, str) or not run_id:
            raise ValueError(f"run_id must be a non-empty str, not {run_id!r}")
        timeout = _check_timeout(run_timeout) if run_timeout is not None else self.run_timeout
        state = RunState(run_id, self.id, self.name, store=self.store, timeout=timeout, background=background)
        REGISTRY.add(state)
        try:
            self.store.run_created(state.info())
        except BaseException:
            REGISTRY.remove(state)
            raise
        if self.debug_mode:
            sink = _debug_sink(sink)
        return Runner(self.steps, state, run_input, store=self.store, sink=sink)

    def _background_handle(self, run_input: Any, run_id: str | None, run_timeout: float | None) -> RunHandle:
        """A registered (pending) background run, not yet handed to a worker."""
        log = EventLog()
        runner = self._new_runner(run_input, run_id, run_timeout, background=True, sink=log.append)
        return RunHandle(runner, log)

    def _start_background(self, run_input: Any, run_id: str | None, run_timeout: float | None) -> RunHandle:
        handle = self._background_handle(run_input, run_id, run_timeout)
        self._pool.submit(handle)
        return handle

    @overload
    def arun(
        self,
        input: Any = None,
        *,
        stream: Literal[True],
        background: Literal[False] = False,
        run_id: str | None = None,
        run_timeout: float | None = None,
    ) -> AsyncRunStream: ...

    @overload
    def arun(
        self,
        input: Any = None,
        *,
        stream: bool = False,
        background: Literal[True],
        run_id: str | None = None,
        run_timeout: float | None = None,
    ) -> Coroutine[Any, Any, RunHandle]: ...

    @overload
    def arun(
        self,
        input: Any = None,
        *,
        stream: Literal[False] = False,
        background: Literal[False] = False,
        run_id: str | None = None,
        run_timeout: float | None = None,
    ) -> Coroutine[Any, Any, WorkflowRunOutput]: ...

    @overload
    def arun(
        self,
        input: Any = None,
        *,
        stream: bool = False,
        background: bool = False,
        run_id: str | None = None,
        run_timeout: float | None = None,
    ) -> AsyncRunStream | Coroutine[Any, Any, WorkflowRunOutput | RunHandle]: ...

    def arun(
        self,
        input: Any = None,  # noqa: A002
        *,
        stream: bool = False,
        background: bool = False,
        run_id: str | None = None,
        run_timeout: float | None = None,
    ) -> AsyncRunStream | Coroutine[Any, Any, Any]:
        """The asyncio entry point; the run executes on a worker thread, never blocking the loop.

        - ``await wf.arun(x)``: the output (``WorkflowError`` if a step failed);
        - ``await wf.arun(x, background=True)``: a ``RunHandle``, at once;
        - ``async for ev in wf.arun(x, stream=True)``: the events; the run starts
          on the first iteration, and leaving the loop early cancels it
          (``stream_closed``).

        Cancelling the awaiting task cancels the run (cause ``requested``). As
        with any coroutine, nothing starts until it is awaited.
        """
        if stream and not background:
            return AsyncRunStream(self, self._background_handle(input, run_id, run_timeout))
        return self._arun(input, background=background, run_id=run_id, run_timeout=run_timeout)

    async def _arun(self, run_input: Any, *, background: bool, run_id: str | None, run_timeout: float | None) -> Any:
        handle = self._start_background(run_input, run_id, run_timeout)
        if background:
            return handle
        try:
            await _until_done(handle)
        except asyncio.CancelledError:
            handle.cancel("the awaiting asyncio task was cancelled")
            raise
        return handle.result(0)

    # -- control ------------------------------------------------------------

    def cancel_run(self, run_id: str, reason: str | None = None) -> bool:
        """Cancel this workflow's active run ``run_id``; True iff it was active (it will end ``cancelled``).

        Callable from any thread, any number of times; never waits for the
        run's code, only for its ``on_cancel`` callbacks. ``TypeError`` for a
        non-str reason.
        """
        check_reason(reason)
        if not isinstance(run_id, str):
            return False
        drain()
        return REGISTRY.request_cancel(run_id, reason, CancelCause.requested, workflow_id=self.id)

    def get_run(self, run_id: str) -> RunInfo | None:
        """The run's record while it is active, and after it ends while the store keeps it."""
        info = lookup_run(run_id, stores=(self.store,))
        return info if info is not None and info.workflow_id == self.id else None

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, id={self.id!r}, steps={[s.name for s in self.steps]})"


class AsyncRunStream:
    """What ``arun(stream=True)`` returns: an async iterator over the run's events.

    The run is registered at once (``run_id`` is known, a duplicate id raises)
    and starts on the first iteration; one that is never iterated and is
    dropped is recorded ``cancelled`` (``stream_closed``), like a ``RunStream``.
    """

    def __init__(self, workflow: Workflow, handle: RunHandle) -> None:
        self._workflow = workflow
        self._handle = handle
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
            self._workflow._pool.submit(self._handle)
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        handle = self._handle
        cursor = 0
        try:
            while True:
                for event in await _next_batch(handle.log, cursor):
                    cursor += 1
                    yield event  # type: ignore[misc]  # the runner logs only Event members
                    if event.terminal:  # logged before the run leaves the registry: wait for that
                        await _until_done(handle)
                        return
        except asyncio.CancelledError:
            handle.cancel("the awaiting asyncio task was cancelled")
            raise
        finally:
            # an early exit (break, aclose) is the consumer leaving; no-op once ended
            REGISTRY.cancel(handle.state, None, CancelCause.stream_closed)


def _abandon_unstarted(handle: RunHandle) -> None:
    try:
        handle._runner.abandon()
    finally:
        handle._set_done()


def _threadsafe_setter(loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> Callable[[], None]:
    def set_from_any_thread() -> None:
        # RuntimeError: the loop has closed, so nobody is waiting any more
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(wake.set)

    return set_from_any_thread


async def _until_done(handle: RunHandle) -> None:
    """Wait, without blocking the loop, until the background run has ended."""
    wake = asyncio.Event()
    listener = _threadsafe_setter(asyncio.get_running_loop(), wake)
    handle.add_done_callback(listener)
    while not handle.done():
        await wake.wait()
        wake.clear()


async def _next_batch(log: EventLog, cursor: int) -> list[BaseEvent]:
    """The events after ``cursor``, waiting without blocking the loop until there is one."""
    batch = log.since(cursor)
    if batch:
        return batch
    wake = asyncio.Event()
    listener = _threadsafe_setter(asyncio.get_running_loop(), wake)
    log.add_listener(listener)
    try:
        while not (batch := log.since(cursor)):
            await wake.wait()
            wake.clear()
        return batch
    finally:
        log.remove_listener(listener)
