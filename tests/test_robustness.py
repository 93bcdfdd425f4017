"""Regression tests for the edges an independent review found: garbage collection, hostile
steps and callbacks, threads that close streams they do not consume."""

from __future__ import annotations

import dataclasses
import gc
import math
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import WAIT

import threadflow
from threadflow import (
    CancelCause,
    CancellationError,
    RunStatus,
    Step,
    StepInput,
    Workflow,
    get_context,
)
from threadflow._timer import TIMER
from threadflow.events import BaseEvent, RunContentEvent, RunStartedEvent
from threadflow.storage import MemoryStore
from threadflow.testing import check_run_events


class RecordingStore(MemoryStore):
    """Keeps every event, like a durable store would."""

    records_events = True

    def __init__(self) -> None:
        super().__init__()
        self.log: list[BaseEvent] = []

    def append(self, event: BaseEvent) -> None:
        self.log.append(event)


def endless(si: StepInput) -> Iterator[str]:
    while True:
        yield "x"


@pytest.mark.parametrize("started", [False, True])
def test_a_stream_collected_while_a_threadflow_lock_is_held_does_not_deadlock(started: bool) -> None:
    wf = Workflow("w", steps=[endless], run_timeout=60)  # its end touches the timer's lock
    stream = wf.run(stream=True)
    run_id = stream.run_id
    if started:
        next(iter(stream))  # a started generator: GeneratorExit arrives during the collection
    cycle: list[Any] = [stream]
    cycle.append(cycle)
    del stream, cycle
    with TIMER._cond:  # a collection inside a threadflow critical section: must not deadlock
        gc.collect()
    info = threadflow.get_run(run_id)  # a safe point: the run is recorded now
    assert info is not None
    assert (info.status, info.cause) == (RunStatus.cancelled, CancelCause.stream_closed)


def test_cleanup_raising_keyboard_interrupt_while_leaving_still_records_the_run() -> None:
    def step(si: StepInput) -> Iterator[str]:
        try:
            yield "x"
            yield "y"
        finally:
            raise KeyboardInterrupt  # a second Ctrl-C during cleanup

    wf = Workflow("w", steps=[step])
    stream = wf.run(stream=True)
    names = [str(next(stream).event) for _ in range(4)]
    assert names[-1] == "run_content"  # the step is suspended inside its try block
    with pytest.raises(KeyboardInterrupt):
        stream.close()
    assert stream.output is not None and stream.output.status is RunStatus.cancelled


def test_a_raising_done_callback_does_not_cost_a_worker_slot(caplog: pytest.LogCaptureFixture) -> None:
    registered, called = threading.Event(), threading.Event()
    wf = Workflow("w", steps=[lambda si: registered.wait(WAIT)], max_concurrent_runs=1)
    first = wf.run(background=True)

    def boom() -> None:
        raise RuntimeError("callback failed")

    first.add_done_callback(boom)
    first.add_done_callback(called.set)  # runs even though the one before raised
    registered.set()
    assert called.wait(WAIT)
    second = wf.run(background=True)
    registered.set()
    assert second.result(WAIT).status is RunStatus.completed  # the only worker slot is free again
    assert any("callback failed" in (record.exc_text or "") for record in caplog.records)


def test_timer_survives_an_on_cancel_callback_raising_a_base_exception() -> None:
    class Stop(BaseException):
        pass

    def raising(si: StepInput) -> None:
        ctx = get_context()
        unblock = threading.Event()

        def callback() -> None:
            raise Stop

        ctx.on_cancel(callback)
        ctx.on_cancel(unblock.set)  # still called after the one before raised
        unblock.wait(WAIT)  # blocked outside any checkpoint: the budget is being spent
        ctx.check_cancellation()

    def blocked(si: StepInput) -> None:
        unblock = threading.Event()
        get_context().on_cancel(unblock.set)
        unblock.wait(WAIT)

    first = Workflow("w", steps=[raising], run_timeout=0.01).run()
    assert (first.status, first.cause) == (RunStatus.cancelled, CancelCause.timeout)
    second = Workflow("w2", steps=[blocked], run_timeout=0.05).run()  # needs a live timer thread
    assert (second.status, second.cause) == (RunStatus.cancelled, CancelCause.timeout)


def test_handing_over_step_completed_is_a_checkpoint() -> None:
    def step(si: StepInput) -> Iterator[str]:
        yield "a"

    wf = Workflow("w", steps=[step, lambda si: "second"])
    stream = wf.run(stream=True)
    seen = []
    for event in stream:
        seen.append(str(event.event))
        if event.event == "run_completed":
            assert wf.cancel_run(stream.run_id) is True
    assert seen[-2:] == ["run_completed", "workflow_cancelled"]


def test_leaving_right_after_run_started_logs_a_matching_run_cancelled() -> None:
    store = RecordingStore()
    wf = Workflow("w", steps=[endless], store=store)
    for event in wf.run(stream=True):
        if isinstance(event, RunStartedEvent):
            break
    names = [str(e.event) for e in check_run_events(store.log)]
    assert names == ["workflow_started", "step_started", "run_started", "run_cancelled", "workflow_cancelled"]


def test_close_from_another_thread_only_requests_the_cancel() -> None:
    wf = Workflow("w", steps=[endless])
    stream = wf.run(stream=True)
    got_one, closed = threading.Event(), threading.Event()
    seen: list[BaseEvent] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            for event in stream:
                seen.append(event)
                if isinstance(event, RunContentEvent) and not got_one.is_set():
                    got_one.set()
                    assert closed.wait(WAIT)
        except BaseException as error:
            errors.append(error)

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert got_one.wait(WAIT)
    stream.close()  # not the consuming thread, consumer parked between two events
    closed.set()
    consumer.join(WAIT)
    assert errors == []
    check_run_events(seen)
    assert stream.output is not None and stream.output.cause is CancelCause.stream_closed


def test_debug_mode_survives_content_that_is_not_json(caplog: pytest.LogCaptureFixture) -> None:
    class Opaque:
        pass

    wf = Workflow("w", steps=[lambda si: Opaque()], debug_mode=True)
    with caplog.at_level("DEBUG", logger="threadflow.events"):
        out = wf.run()
    assert out.status is RunStatus.completed and isinstance(out.content, Opaque)
    handle = wf.run(background=True)
    assert [e.seq for e in handle.events()] == [1, 2, 3, 4]


def test_a_second_concurrent_cancel_returns_only_after_the_callbacks_ran() -> None:
    in_callback, release = threading.Event(), threading.Event()
    registered = threading.Event()

    def step(si: StepInput) -> None:
        ctx = get_context()
        ctx.on_cancel(lambda: (in_callback.set(), release.wait(WAIT)))
        registered.set()
        release.wait(WAIT)  # not a checkpoint: the run stays active while the callback runs
        ctx.check_cancellation()

    wf = Workflow("w", steps=[step])
    handle = wf.run(background=True)
    assert registered.wait(WAIT)
    first = threading.Thread(target=handle.cancel)
    first.start()
    assert in_callback.wait(WAIT)
    second_returned, second_waits, progressed = threading.Event(), threading.Event(), threading.Event()

    def watch_for_a_wait(frame: Any, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is threading.Event.wait.__code__:
            second_waits.set()
            progressed.set()

    def second_cancel() -> None:
        sys.setprofile(watch_for_a_wait)  # this thread only: tells us once it blocks
        try:
            handle.cancel()
        finally:
            sys.setprofile(None)
        second_returned.set()
        progressed.set()

    second = threading.Thread(target=second_cancel)
    second.start()
    assert progressed.wait(WAIT)  # it either returned (the defect) or blocked waiting for the callbacks
    assert not second_returned.is_set(), "a second cancel returned while on_cancel callbacks were running"
    assert second_waits.is_set()
    release.set()
    first.join(WAIT)
    second.join(WAIT)
    assert second_returned.is_set()
    assert handle.result(WAIT).status is RunStatus.cancelled


def test_infinite_sleeps_and_numeric_waits() -> None:
    results: list[bool] = []
    asleep = threading.Event()

    def step(si: StepInput) -> None:
        ctx = get_context()
        results.append(ctx.wait(0.001))  # a number is a timeout
        asleep.set()
        ctx.sleep(math.inf)

    wf = Workflow("w", steps=[step])
    handle = wf.run(background=True)
    assert asleep.wait(WAIT)
    handle.cancel()
    out = handle.result(WAIT)
    assert out.status is RunStatus.cancelled and out.error is None
    assert results == [False]
    with pytest.raises(threadflow.WorkflowError):
        Workflow("w", steps=[lambda si: get_context().sleep(float("nan"))]).run()


def test_step_input_can_be_built_to_unit_test_an_executor() -> None:
    def executor(si: StepInput) -> str:
        return f"{si.input}+{si.previous_step_content}"

    assert executor(StepInput(input="a", previous_step_content="b")) == "a+b"
    assert StepInput(input=1).prompt == "1"


def test_a_store_that_cannot_be_weakly_referenced_is_accepted() -> None:
    @dataclasses.dataclass
    class DataStore:  # a dataclass: unhashable, and with slots no weak references
        records_events: bool = False
        ended: dict[str, Any] = dataclasses.field(default_factory=dict)

        def run_created(self, info: Any) -> None:
            pass

        def append(self, event: Any) -> None:
            pass

        def run_ended(self, info: Any) -> None:
            self.ended[info.run_id] = info

        def get_run(self, run_id: str) -> Any:
            return self.ended.get(run_id)

        def list_runs(self, **filters: Any) -> list[Any]:
            return list(self.ended.values())

        def events(self, run_id: str, after_seq: int = 0) -> list[Any]:
            return []

        def request_cancel(self, run_id: str, reason: str | None = None) -> None:
            return None

        def close(self) -> None:
            pass

    store = DataStore()
    out = Workflow("w", steps=[lambda si: 1], store=store).run()  # type: ignore[arg-type]
    info = threadflow.get_run(out.run_id)
    assert info is not None and info is store.ended[out.run_id]


def test_cancellation_error_swallowed_by_a_function_step_between_steps() -> None:
    ran: list[str] = []

    def first(si: StepInput) -> str:
        assert threadflow.cancel_run(si.run_id)  # the step runs, and its run is cancelled under it
        try:
            get_context().check_cancellation()
        except CancellationError:
            ran.append("swallowed")
        return "x"

    wf = Workflow("w", steps=[Step("first", executor=first), Step("second", executor=lambda si: ran.append("2nd"))])
    stream = wf.run(stream=True)
    list(stream)
    assert ran == ["swallowed"]  # the first step did run; the second never did
    assert stream.output is not None and stream.output.status is RunStatus.cancelled
    assert stream.output.content is None
