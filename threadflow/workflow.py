"""``Workflow``: a named sequence of steps, and the ways to run and cancel it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal, TypedDict, Unpack, overload

from . import _observe
from ._asyncbridge import until_done
from ._background import WorkerPool
from ._gcdefer import drain
from ._printable import safe_repr
from ._queue import enqueue
from ._registry import LOCAL_RUNS, REGISTRY, RunState, new_run_id
from ._runner import Runner
from ._validate import check_count, check_id, check_reason, check_seconds
from .compose import WorkflowStep
from .events import BaseEvent
from .handles import AsyncRunStream, RunHandle, RunStream
from .output import WorkflowRunOutput
from .status import CancelCause, RunInfo
from .steps import Step, as_steps
from .storage import RunStore
from .storage._defaults import default_store, track_store
from .storage.memory import records_run_starts

__all__ = ["RunOptions", "Workflow"]

_event_logger = logging.getLogger("threadflow.events")


class RunOptions(TypedDict, total=False):
    """The options every way of starting a run takes (``run()``, ``arun()``)."""

    #: The run's id (``DuplicateRunError`` if it is active); a random UUID when omitted.
    run_id: str | None
    #: Overrides the workflow's ``run_timeout`` for this run.
    run_timeout: float | None


# The overloads' flags: a call that sets (``_On``) or leaves (``_Off``) stream/background.
_On = Literal[True]
_Off = Literal[False]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _steps_id(steps: Sequence[Step]) -> str:
    """A stable id for an unnamed workflow: its step names, slugged, and a short hash of them."""
    names = [step.name for step in steps]
    digest = hashlib.sha256("\0".join(names).encode()).hexdigest()[:8]
    slug = _slug("-".join(names))[:40].strip("-")
    return f"{slug}-{digest}" if slug else f"workflow-{digest}"


def _debug_sink(inner: Callable[[BaseEvent], None] | None) -> Callable[[BaseEvent], None]:
    """debug_mode: log every event (as its JSON) at DEBUG on the ``threadflow.events`` logger."""

    def log_event(event: BaseEvent) -> None:
        if inner is not None:
            inner(event)
        if _event_logger.isEnabledFor(logging.DEBUG):
            _event_logger.debug("%s", _event_text(event))

    return log_event


def _event_text(event: BaseEvent) -> str:
    """The event's JSON for the log; its ``repr`` when content defeats JSON (logging never fails a run)."""
    try:
        return event.model_dump_json(fallback=safe_repr)  # repr() for content JSON cannot hold
    except Exception:  # noqa: BLE001 — e.g. content that contains itself
        return safe_repr(event)


def _check_timeout(run_timeout: object) -> float | None:
    return check_seconds("run_timeout", run_timeout, positive=True, optional=True)


class Workflow:
    """A sequence of steps run in order, each getting the previous one's output.

    ``run()`` executes in the calling thread (or, with ``background=True``, on
    a worker thread); every run streams the same typed events and can be
    cancelled from any thread with ``cancel_run()``.

    ``id`` defaults to a slug of ``name``. An unnamed workflow (or one whose
    name has nothing to slug) gets an id that is the same in every process,
    so that its stored runs stay findable after a restart: the slug of its
    step names joined by ``-`` (cut at 40 characters), ``-``, and the first 8
    hex digits of the SHA-256 of the names joined by NUL — e.g.
    ``fetch-summarize-1a2b3c4d``. Workflows with the same step names share it.
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
        if id is not None:
            check_id("id", id)
        check_count("max_concurrent_runs", max_concurrent_runs, minimum=1)
        self.steps: tuple[Step, ...] = as_steps(steps)
        self.id = id or _slug(name or "") or _steps_id(self.steps)
        self.name = name or self.id
        self.description = description
        self.run_timeout = _check_timeout(run_timeout)
        self.store: RunStore = store if store is not None else default_store()
        track_store(self.store, LOCAL_RUNS)
        self.max_concurrent_runs = max_concurrent_runs
        self.debug_mode = debug_mode
        self._pool = WorkerPool(max_concurrent_runs, self.id)

    # -- running ------------------------------------------------------------

    @overload
    def run(
        self, input: Any = None, *, stream: _On, background: _Off = False, **opts: Unpack[RunOptions]
    ) -> RunStream: ...
    @overload
    def run(
        self, input: Any = None, *, stream: bool = False, background: _On, **opts: Unpack[RunOptions]
    ) -> RunHandle: ...
    @overload
    def run(
        self, input: Any = None, *, stream: _Off = False, background: _Off = False, **opts: Unpack[RunOptions]
    ) -> WorkflowRunOutput: ...
    @overload
    def run(
        self, input: Any = None, *, stream: bool = False, background: bool = False, **opts: Unpack[RunOptions]
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
        runner.mute()  # nobody reads the events: unless a store or sink does, none is built
        events = runner.events()
        try:
            for _ in events:
                pass
        except KeyboardInterrupt as interrupt:  # Ctrl+C between two events: the user stopped the run
            runner.interrupt(interrupt)
            raise
        return runner.result_or_raise()

    def _new_runner(
        self,
        run_input: Any,
        run_id: str | None,
        run_timeout: float | None,
        *,
        background: bool = False,
        sink: Any = None,
        create: bool = True,
        store: RunStore | None = None,
        traceparent: str | None = None,
    ) -> Runner:
        store = self.store if store is None else store  # a Worker runs a queued run on its own store
        state = self._new_state(run_id, run_timeout, store, background=background)
        state.traceparent = traceparent  # a run created elsewhere continues its trace (the Runner reads it)
        # The runner exists before the run is registered: should an interrupt lose it on the way to
        # the caller, dropping it finishes the run (Runner.__del__), so no window leaks an entry.
        runner = self._make_runner(state, run_input, store, sink)
        self._register(state, create=create, store=store)
        return runner

    def _make_runner(self, state: RunState, run_input: Any, store: RunStore | None, sink: Any) -> Runner:
        if self.debug_mode:
            sink = _debug_sink(sink)
        return Runner(self.steps, state, run_input, store=store, sink=sink)

    def _new_state(
        self, run_id: str | None, run_timeout: float | None, store: RunStore, *, background: bool
    ) -> RunState:
        """A new run's state, not yet registered; at a safe point (runs a garbage collection abandoned are finished)."""
        drain()
        run_id = new_run_id() if run_id is None else check_id("run_id", run_id)
        timeout = _check_timeout(run_timeout) if run_timeout is not None else self.run_timeout
        state = RunState(run_id, self.id, self.name, store=store, timeout=timeout, background=background)
        state.owner = getattr(store, "identity", None)  # a shared store records this process as the owner
        return state

    def _register(self, state: RunState, *, create: bool, store: RunStore) -> None:
        """Add the run to the registry and, when it is new, record it in ``store``."""
        if create:  # kept in the record, for whoever resumes it
            state.traceparent = _observe.traceparent()
        try:
            REGISTRY.add(state)
            # A queued run a Worker claimed has its record already; a MemoryStore ignores it (don't build it).
            if create and records_run_starts(store):
                store.run_created(state.info())
        except BaseException:
            REGISTRY.remove(state)
            raise

    def _background_handle(self, run_input: Any, run_id: str | None, run_timeout: float | None) -> RunHandle:
        """A registered (pending) background run, not yet handed to a worker.

        Its runner is made when the run starts (or is cancelled while queued):
        a queued run holds only its state, its input and its handle. While
        telemetry traces runs it is made at once, so that the observer
        watches the run from the thread that created it, as for any other run.
        """
        state = self._new_state(run_id, run_timeout, self.store, background=True)
        handle = RunHandle(state, self, run_input)
        if _observe.watches_events():
            handle._materialize()
        self._register(state, create=True, store=self.store)
        return handle

    def _runner_for(self, state: RunState, run_input: Any, sink: Any) -> Runner:
        """The runner of a background run registered by ``_background_handle``."""
        runner = self._make_runner(state, run_input, state.store, sink)
        runner.drop_chunks()  # a worker of the pool drives it, and drops what it is handed
        return runner

    def _start_background(self, run_input: Any, run_id: str | None, run_timeout: float | None) -> RunHandle:
        handle = self._background_handle(run_input, run_id, run_timeout)
        self._pool.submit(handle)
        return handle

    def enqueue(self, input: Any = None, *, run_id: str | None = None) -> RunHandle:  # noqa: A002
        """Record a run as ``pending`` in the workflow's shared store for any ``Worker`` to run; returns at once.

        The handle's ``events()``/``result()``/``cancel()``/``status`` work from
        here while the run executes on a worker, on any host. ``ValueError``
        (naming the fix) when the store is not shared across processes (the
        in-memory default); ``TypeError`` when ``input`` is not JSON data.
        """
        return enqueue(self, input, run_id)

    @overload
    def arun(
        self, input: Any = None, *, stream: _On, background: _Off = False, **opts: Unpack[RunOptions]
    ) -> AsyncRunStream: ...
    @overload
    def arun(
        self, input: Any = None, *, stream: bool = False, background: _On, **opts: Unpack[RunOptions]
    ) -> Coroutine[Any, Any, RunHandle]: ...
    @overload
    def arun(
        self, input: Any = None, *, stream: _Off = False, background: _Off = False, **opts: Unpack[RunOptions]
    ) -> Coroutine[Any, Any, WorkflowRunOutput]: ...
    @overload
    def arun(
        self, input: Any = None, *, stream: bool = False, background: bool = False, **opts: Unpack[RunOptions]
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
            return AsyncRunStream(self._background_handle(input, run_id, run_timeout), self._pool.submit)
        return self._arun(input, background=background, run_id=run_id, run_timeout=run_timeout)

    async def _arun(self, run_input: Any, *, background: bool, run_id: str | None, run_timeout: float | None) -> Any:
        handle = self._start_background(run_input, run_id, run_timeout)
        if background:
            return handle
        try:
            await until_done(handle)
        except asyncio.CancelledError:
            handle.cancel("the awaiting asyncio task was cancelled")
            raise
        return handle.result(0)

    def as_step(self, name: str | None = None) -> Step:
        """This workflow as a step of another (``Workflow(steps=[inner, ...])`` calls it for you).

        Its steps run inside the outer run — one run id, events streamed with
        ``step_path`` under ``name`` (default: this workflow's name), cancelled
        with it; see ``threadflow.compose.WorkflowStep`` for its input and output.
        """
        return WorkflowStep(*self.steps, name=name or self.name)

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
        if not isinstance(run_id, str):
            return None
        drain()  # a run a garbage collection abandoned is recorded before we answer
        state = REGISTRY.get(run_id)
        info = state.info() if state is not None else self.store.get_run(run_id)
        return info if info is not None and info.workflow_id == self.id else None

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, id={self.id!r}, steps={[s.name for s in self.steps]})"
