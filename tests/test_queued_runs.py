"""Queued background runs at scale: what a pending run holds, cancelling it racing its start, shutdown of many."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import tracemalloc
from collections.abc import Iterator

import pytest
from conftest import WAIT, names

import threadflow
from threadflow import CancelCause, RunHandle, RunStatus, Step, StepInput, Workflow, get_context
from threadflow.events import BaseEvent, WorkflowCancelledEvent
from threadflow.storage.sqlite import SqliteStore
from threadflow.testing import check_run_events


def blocked_workflow(gate: threading.Event, calls: list[object] | None = None, **options: object) -> Workflow:
    """One run at a time; each parks in ``ctx.wait(gate)`` (a cancel wakes it)."""

    def block(si: StepInput) -> str:
        if calls is not None:
            calls.append(si.input)
        get_context().wait(gate, timeout=WAIT)
        return f"done {si.input}"

    return Workflow("queued", steps=[Step("block", executor=block)], max_concurrent_runs=1, **options)  # type: ignore[arg-type]  # the options are Workflow's own keywords


@pytest.fixture
def running() -> Iterator[tuple[Workflow, threading.Event, list[object]]]:
    """A workflow whose one slot is taken by a run parked until the test opens the gate."""
    gate = threading.Event()
    calls: list[object] = []
    wf = blocked_workflow(gate, calls)
    first = wf.run("first", background=True)
    yield wf, gate, calls
    gate.set()
    assert first.wait(WAIT)


def test_a_queued_run_holds_neither_runner_nor_log_nor_event(
    running: tuple[Workflow, threading.Event, list[object]],
) -> None:
    wf, _, _ = running
    handle = wf.run("queued", background=True)
    assert (handle._runner, handle._log, handle._waiter) == (None, None, None)
    assert handle.status is RunStatus.pending and handle.output is None and not handle.done()
    assert handle.cancel() is True
    assert handle.wait(WAIT)


def test_a_thousand_queued_runs_hold_under_1500_bytes_each(
    running: tuple[Workflow, threading.Event, list[object]],
) -> None:
    wf, _, _ = running
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        handles = [wf.run(i, background=True) for i in range(1000)]
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held / len(handles) < 1500, f"{held / len(handles):.0f} bytes per queued run"  # was ~4500
    assert threadflow.shutdown(timeout=WAIT)


def test_a_run_cancelled_while_queued_has_the_events_output_and_record_of_an_abandoned_one(
    running: tuple[Workflow, threading.Event, list[object]],
) -> None:
    wf, _, calls = running
    handle = wf.run("queued", background=True)
    assert handle.cancel("not now") is True
    assert handle.done()  # recorded by the cancelling thread, at once
    called: list[RunHandle] = []
    handle.add_done_callback(called.append)
    assert called == [handle]
    output = handle.result(0)
    assert (output.status, output.cause, output.reason, output.content) == (
        RunStatus.cancelled,
        CancelCause.requested,
        "not now",
        None,
    )
    assert handle.output is output and handle.cancelled() and handle.exception(0) is None
    events = check_run_events(handle.events())
    assert names(events) == ["workflow_started", "workflow_cancelled"]
    assert [e.model_dump(exclude={"created_at"}) for e in handle.events()] == [
        e.model_dump(exclude={"created_at"}) for e in events
    ]  # a second reader replays the same events
    started, cancelled = events
    assert isinstance(cancelled, WorkflowCancelledEvent)
    assert (cancelled.cause, cancelled.reason, cancelled.step_name) == (CancelCause.requested, "not now", None)
    info = wf.get_run(handle.run_id)
    assert info is not None and info.status is RunStatus.cancelled
    assert info.started_at is not None and info.ended_at is not None
    assert abs(started.created_at - info.started_at) < 1 and abs(cancelled.created_at - info.ended_at) < 1
    assert output.started_at == info.started_at and output.ended_at == info.ended_at
    assert calls == ["first"]


@pytest.mark.stress
def test_a_follower_and_a_cancel_of_a_queued_run_racing_see_its_two_events() -> None:
    """Whether the follower's log is made before or after the cancel records the run, it gets both events."""
    for _ in range(100):
        gate = threading.Event()
        wf = blocked_workflow(gate)
        first = wf.run("first", background=True)
        handle = wf.run("queued", background=True)
        barrier = threading.Barrier(2)
        seen: list[BaseEvent] = []

        def follow(
            handle: RunHandle = handle, barrier: threading.Barrier = barrier, seen: list[BaseEvent] = seen
        ) -> None:
            barrier.wait()
            seen.extend(handle.events())

        follower = threading.Thread(target=follow)
        follower.start()
        barrier.wait()
        assert handle.cancel() is True
        follower.join(WAIT)
        assert not follower.is_alive()
        assert names(check_run_events(seen)) == ["workflow_started", "workflow_cancelled"]
        gate.set()
        assert first.wait(WAIT)


@pytest.mark.stress
def test_a_cancel_racing_the_start_of_a_queued_run_ends_it_cancelled_exactly_once() -> None:
    """The worker taking the run and a thread cancelling it race: one of them owns it, the run ends once.

    Raced until each side has won at least once (at most 1000 times), the GIL
    changing hands between almost any two lines: 100 races at the default
    switch interval once went to the worker every time.
    """
    outcomes: set[RunStatus] = set()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(1000):
            _race_a_cancel_against_the_start(outcomes)
            if len(outcomes) == 2:
                break
    finally:
        sys.setswitchinterval(interval)
    assert RunStatus.cancelled in outcomes and RunStatus.completed in outcomes  # both sides of the race were run


def _race_a_cancel_against_the_start(outcomes: set[RunStatus]) -> None:
    gate = threading.Event()
    calls: list[object] = []
    wf = blocked_workflow(gate, calls)
    first = wf.run("first", background=True)
    handle = wf.run("queued", background=True)
    ended: list[RunHandle] = []
    handle.add_done_callback(ended.append)
    barrier = threading.Barrier(2)
    accepted: list[bool] = []

    def cancel(
        barrier: threading.Barrier = barrier, handle: RunHandle = handle, accepted: list[bool] = accepted
    ) -> None:
        barrier.wait()
        accepted.append(handle.cancel("race"))

    canceller = threading.Thread(target=cancel)
    canceller.start()
    barrier.wait()
    gate.set()  # the first run ends: the worker takes the queued one, unless the cancel did
    canceller.join(WAIT)
    assert handle.wait(WAIT) and first.wait(WAIT)
    assert ended == [handle]
    # An accepted cancel always wins; a refused one came after the run had completed.
    expected = RunStatus.cancelled if accepted == [True] else RunStatus.completed
    assert handle.result(0).status is expected
    events = check_run_events(handle.events())
    assert events[-1].event == f"workflow_{expected.value}"
    info = wf.get_run(handle.run_id)
    assert info is not None and info.status is expected
    assert calls.count("queued") == 1 if expected is RunStatus.completed else calls.count("queued") <= 1
    outcomes.add(expected)


def test_shutdown_with_ten_thousand_queued_ends_every_one_cancelled_and_starts_none() -> None:
    gate = threading.Event()
    calls: list[object] = []
    wf = blocked_workflow(gate, calls)
    first = wf.run("first", background=True)
    handles = [wf.run(i, background=True) for i in range(10_000)]
    assert wf._pool.queued == 10_000
    assert threadflow.shutdown(timeout=WAIT) is True
    assert first.done() and all(h.done() for h in handles)
    assert calls == ["first"]  # no queued run started while the others were being cancelled
    outputs = [h.result(0) for h in handles]
    assert {(o.status, o.cause) for o in outputs} == {(RunStatus.cancelled, CancelCause.shutdown)}
    assert wf._pool.queued == 0
    for handle in handles[-100:]:  # the default store keeps the last 1000 records
        info = wf.get_run(handle.run_id)
        assert info is not None and (info.status, info.cause) == (RunStatus.cancelled, CancelCause.shutdown)
        events = check_run_events(handle.events())
        assert names(events) == ["workflow_started", "workflow_cancelled"]
    assert len(threadflow.active_runs()) == 0


def test_cancelling_every_queued_run_one_by_one_leaves_the_queue_working(
    running: tuple[Workflow, threading.Event, list[object]],
) -> None:
    """Cancelled runs leave holes the workers skip, compacted away; the runs after them still start, in order."""
    wf, gate, calls = running
    handles = [wf.run(i, background=True) for i in range(500)]
    for handle in handles[:-3]:
        assert handle.cancel() is True
    assert wf._pool.queued == 3 and len(wf._pool._queue) < 500
    gate.set()
    assert [h.result(WAIT).content for h in handles[-3:]] == ["done 497", "done 498", "done 499"]
    assert calls == ["first", 497, 498, 499]


def test_a_queued_run_of_a_debug_workflow_logs_its_cancel(caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()
    wf = blocked_workflow(gate, debug_mode=True)
    first = wf.run("first", background=True)
    handle = wf.run("queued", background=True)
    with caplog.at_level(logging.DEBUG, logger="threadflow.events"):
        assert handle.cancel() is True
    logged = [r.getMessage() for r in caplog.records if handle.run_id in r.getMessage()]
    assert len(logged) == 2 and "workflow_cancelled" in logged[1]
    gate.set()
    assert first.wait(WAIT)


def test_a_queued_run_of_a_store_that_records_events_has_them_stored(tmp_path: object) -> None:
    store = SqliteStore(f"{tmp_path}/runs.db")
    try:
        gate = threading.Event()
        wf = blocked_workflow(gate, store=store)
        first = wf.run("first", background=True)
        handle = wf.run("queued", background=True)
        assert handle.cancel() is True
        assert names(store.events(handle.run_id)) == ["workflow_started", "workflow_cancelled"]
        info = store.get_run(handle.run_id)
        assert info is not None and info.status is RunStatus.cancelled
        gate.set()
        assert first.wait(WAIT)
    finally:
        store.close()


@pytest.mark.stress
def test_concurrent_cancels_of_a_queued_run_each_return_once_it_is_recorded() -> None:
    """A cancel returns after the run's callbacks ran: here, once the run is out of the queue and ended.

    The cancels that lose the race wait for the one running the callbacks; the Event they wait on is made by
    the first of them, so every interleaving of "made", "waited on" and "set" is exercised.
    """
    gate = threading.Event()
    wf = blocked_workflow(gate)
    first = wf.run("first", background=True)
    for _ in range(200):
        handle = wf.run("queued", background=True)
        barrier = threading.Barrier(4)
        seen: list[tuple[bool, bool]] = []

        def cancel(
            handle: RunHandle = handle, barrier: threading.Barrier = barrier, seen: list[tuple[bool, bool]] = seen
        ) -> None:
            barrier.wait()
            accepted = handle.cancel()
            seen.append((accepted, handle.done()))

        threads = [threading.Thread(target=cancel) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert len(seen) == 4 and all(done for _, done in seen), seen  # done, whichever cancel returned first
        assert any(accepted for accepted, _ in seen)  # later ones may find it ended already: False
        assert names(check_run_events(handle.events())) == ["workflow_started", "workflow_cancelled"]
    gate.set()
    assert first.wait(WAIT)
