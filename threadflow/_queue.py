"""Queued runs: ``Workflow.enqueue`` and the ``RunHandle`` that follows a run executing on a worker.

The handle holds no runner: everything it answers comes from the shared
store — the record, the event log (followed as it is written, woken by the
store), and cancels (``request_cancel``, which reaches whichever process
runs it, on any host).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

from . import _observe
from ._fastevents import make_event
from ._registry import REGISTRY, new_run_id
from ._validate import check_count, check_id, check_reason
from .events import Event, StepCompletedEvent, WorkflowCompletedEvent
from .exceptions import DuplicateRunError, WorkflowError
from .handles import RunHandle
from .output import WorkflowRunOutput
from .status import RunInfo, RunStatus
from .storage.base import QueueStore

__all__ = ["QueuedHandle", "enqueue"]


def enqueue(workflow: Any, run_input: Any, run_id: str | None) -> QueuedHandle:
    """Record a run of ``workflow`` as ``pending`` in its shared store for any worker; its handle, at once."""
    store = workflow.store
    if not isinstance(store, QueueStore):
        raise ValueError(
            f"workflow {workflow.id!r} cannot enqueue runs: its store ({type(store).__name__}) is not shared "
            "with other processes through a run queue — pass Workflow(store=PostgresStore(dsn)) (or "
            "SqliteStore(path) for processes on one host), or set THREADFLOW_DB"
        )
    run_id = new_run_id() if run_id is None else check_id("run_id", run_id)
    if REGISTRY.get(run_id) is not None:
        raise DuplicateRunError(run_id)
    try:
        input_json = json.dumps(run_input, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"the input of a queued run must be JSON data (a worker in another process reads it): {error}"
        ) from error
    info = make_event(
        RunInfo,
        {
            "run_id": run_id,
            "workflow_id": workflow.id,
            "workflow_name": workflow.name,
            "status": RunStatus.pending,
            "created_at": time.time(),
            "traceparent": _observe.traceparent(),  # the worker's run span continues the caller's trace
        },
    )
    store.enqueue(info, input_json, workflow.run_timeout)
    return QueuedHandle(store, info)


class QueuedHandle(RunHandle):
    """A ``RunHandle`` for a queued run, executing (or waiting) on any worker, on any host.

    ``cancel()`` returns True iff the run will end ``cancelled``; ``close()``
    is a cancel too (the shared store records every remote cancel with
    cause ``requested``). ``wait()``/``result()`` follow the store.
    """

    __slots__ = ("_final", "_info", "_store")

    def __init__(self, store: QueueStore, info: RunInfo) -> None:  # no runner: the run is elsewhere
        self._store = store
        self._info = info
        self._final: WorkflowRunOutput | None = None

    @property
    def run_id(self) -> str:
        return self._info.run_id

    @property
    def workflow_id(self) -> str:
        return self._info.workflow_id

    @property
    def status(self) -> RunStatus:
        return self.info().status

    @property
    def output(self) -> WorkflowRunOutput | None:
        if self._final is None and self.info().status.is_terminal:
            self._final = self._output()
        return self._final

    def info(self) -> RunInfo:
        info = self._store.get_run(self.run_id)
        if info is not None and info.workflow_id == self._info.workflow_id:
            self._info = info
        return self._info

    def cancel(self, reason: str | None = None) -> bool:
        check_reason(reason)
        return bool(self._store.request_cancel(self.run_id, reason))

    def close(self) -> bool:
        return self.cancel(None)

    def done(self) -> bool:
        return self.info().status.is_terminal

    def wait(self, timeout: float | None = None) -> bool:
        return self._store.wait_ended(self.run_id, timeout)

    def result(self, timeout: float | None = None) -> WorkflowRunOutput:
        if not self.wait(timeout):
            raise TimeoutError(f"run {self.run_id} has not ended after {timeout}s")
        output = self.output
        assert output is not None
        if output.status is RunStatus.error:
            raise output.failure()
        return output

    def _output(self) -> WorkflowRunOutput:
        info = self._info
        steps: dict[str, Any] = {}
        content = None
        for event in self._store.events(self.run_id):
            if isinstance(event, StepCompletedEvent):
                steps[event.step_name] = event.content
            elif isinstance(event, WorkflowCompletedEvent):
                content = event.content
        return WorkflowRunOutput.of(info, info.status, content, steps)

    def events(self, after_seq: int = 0) -> Iterator[Event]:
        return iter(self._store.follow(self.run_id, check_count("after_seq", after_seq)))

    def aevents(self, after_seq: int = 0) -> AsyncGenerator[Event, None]:
        return _aevents(self.events(after_seq))

    def running(self) -> bool:
        """True while a worker runs it (``running``, ``waiting`` or ``cancelling``)."""
        return self.info().status in (RunStatus.running, RunStatus.waiting, RunStatus.cancelling)

    def cancelled(self) -> bool:
        """True iff the run has ended ``cancelled``."""
        return self.info().status is RunStatus.cancelled

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """For a run that ended ``error``: the ``WorkflowError`` ``result()`` raises (the step's own
        exception stayed in the worker's process); None for a completed or cancelled run."""
        try:
            self.result(timeout)
        except WorkflowError as error:
            return error
        return None

    def add_done_callback(self, fn: Callable[[RunHandle], object]) -> None:
        """Call ``fn(handle)`` once the run has ended, from a helper thread (at once if it has).

        An ``Exception`` it raises is logged, never raised into the caller.
        """
        if self.done():
            self._call(fn)
            return

        def wait_then_call() -> None:
            self.wait()
            self._call(fn)

        threading.Thread(target=wait_then_call, name="threadflow-queued-wait", daemon=True).start()

    def _set_done(self) -> None:
        """Nothing to do: the run ends in another process."""

    def __repr__(self) -> str:
        return f"<QueuedHandle {self.run_id} {self._info.status.value}>"


async def _aevents(events: Iterator[Event]) -> AsyncGenerator[Event, None]:
    done = object()
    while True:
        event = await asyncio.to_thread(next, events, done)
        if event is done:
            return
        yield event  # type: ignore[misc]  # not `done`, so an Event
