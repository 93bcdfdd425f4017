"""Background runs and ``RunHandle`` (SPEC §1, issue 3): handles, queueing, replay, subscribers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import WAIT, names

import threadflow
from threadflow import (
    CancelCause,
    CancellationError,
    DuplicateRunError,
    RunHandle,
    RunStatus,
    Step,
    StepInput,
    Workflow,
    WorkflowError,
    WorkflowRunOutput,
    get_context,
)
from threadflow._registry import REGISTRY
from threadflow.events import BaseEvent, WorkflowCancelledEvent
from threadflow.storage import MemoryStore
from threadflow.testing import check_run_events


def status_of(handle: RunHandle) -> RunStatus:
    return handle.status  # a call, so that type checkers do not narrow it between two reads


class Entrances:
    """Counts step executions that have started, so a test can wait for the N-th."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.who: list[Any] = []
        self.inside = 0
        self.most_inside = 0

    def enter(self, who: Any) -> None:
        with self._cond:
            self.who.append(who)
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self._cond.notify_all()

    def leave(self) -> None:
        with self._cond:
            self.inside -= 1

    def wait_for(self, count: int, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.who) >= count, timeout)


def gated_step(gate: threading.Event, entrances: Entrances | None = None) -> Callable[[StepInput], str]:
    """A step that parks in ``ctx.wait(gate)`` (a cancel wakes it) and then echoes its input."""

    def gated(si: StepInput) -> str:
        if entrances is not None:
            entrances.enter(si.input)
        try:
            if not get_context().wait(gate, timeout=WAIT):
                raise TimeoutError("the test never opened the gate")
            return f"done {si.input}"
        finally:
            if entrances is not None:
                entrances.leave()

    return gated


# -- the handle -------------------------------------------------------------------


def test_background_returns_a_handle_at_once_and_result_waits_for_the_output() -> None:
    gate = threading.Event()
    entrances = Entrances()
    wf = Workflow("bg", steps=[gated_step(gate, entrances)])

    handle = wf.run("x", background=True)

    assert isinstance(handle, RunHandle)
    assert entrances.wait_for(1)
    assert handle.done() is False
    assert handle.wait(0) is False
    with pytest.raises(TimeoutError):
        handle.result(timeout=0)
    gate.set()
    output = handle.result(WAIT)
    assert isinstance(output, WorkflowRunOutput)
    assert output.status is RunStatus.completed
    assert output.content == "done x"
    assert output.run_id == handle.run_id
    assert handle.done() is True
    assert handle.wait(0) is True
    assert handle.status is RunStatus.completed
    assert handle.result(0) == output


def test_handle_run_id_is_the_chosen_one_and_duplicates_are_rejected_while_active() -> None:
    gate = threading.Event()
    wf = Workflow("bg", steps=[gated_step(gate)])

    handle = wf.run("x", background=True, run_id="chosen-id")

    assert handle.run_id == "chosen-id"
    with pytest.raises(DuplicateRunError):
        wf.run("y", background=True, run_id="chosen-id")
    with pytest.raises(DuplicateRunError):
        Workflow("other", steps=[gated_step(gate)]).run(run_id="chosen-id", stream=True)
    gate.set()
    assert handle.result(WAIT).content == "done x"
    again = wf.run("z", background=True, run_id="chosen-id")  # free again once ended
    assert again.result(WAIT).content == "done z"


def test_status_is_running_inside_a_step_and_terminal_after() -> None:
    release = threading.Event()
    entered = threading.Event()
    seen: list[RunStatus | None] = []

    def busy(si: StepInput) -> str:
        info = threadflow.get_run(get_context().run_id)
        seen.append(info.status if info is not None else None)
        entered.set()
        release.wait(WAIT)  # blocking, not a ctx.wait: the run stays running
        return "ok"

    wf = Workflow("bg", steps=[busy])
    handle = wf.run(background=True)
    assert entered.wait(WAIT)
    assert status_of(handle) is RunStatus.running
    assert seen == [RunStatus.running]
    release.set()
    assert handle.result(WAIT).status is RunStatus.completed
    assert status_of(handle) is RunStatus.completed


def test_result_of_a_failed_run_raises_workflow_error_with_output_and_cause() -> None:
    raised: list[BaseException] = []

    def broken(si: StepInput) -> None:
        error = ValueError("boom")
        raised.append(error)
        raise error

    wf = Workflow("bg", steps=[broken])
    handle = wf.run(background=True)

    with pytest.raises(WorkflowError) as info:
        handle.result(WAIT)

    assert info.value.__cause__ is raised[0]
    assert info.value.output.status is RunStatus.error
    assert info.value.output.error == "boom"
    assert info.value.output.error_type == "ValueError"
    assert info.value.output.step_name == "broken"
    assert handle.status is RunStatus.error
    assert handle.done()
    with pytest.raises(WorkflowError):  # asking again raises again
        handle.result(0)
    assert names(check_run_events(handle.events()))[-1] == "workflow_error"


# -- cancel(reason) -----------------------------------------------------------------


def test_cancel_wakes_a_waiting_step_runs_its_cleanup_and_records_the_reason() -> None:
    entrances = Entrances()
    cleanup: list[tuple[str | None, CancelCause]] = []

    def step(si: StepInput) -> str:
        entrances.enter(si.input)
        try:
            get_context().wait()  # only a cancel ends this
        except CancellationError as cancelled:
            cleanup.append((cancelled.reason, cancelled.cause))
            raise
        return "unreachable"

    wf = Workflow("bg", steps=[step])
    handle = wf.run("x", background=True)
    assert entrances.wait_for(1)

    assert handle.cancel("user pressed stop") is True

    output = handle.result(WAIT)
    assert output.status is RunStatus.cancelled
    assert (output.cause, output.reason, output.step_name) == (CancelCause.requested, "user pressed stop", "step")
    assert output.content is None
    assert cleanup == [("user pressed stop", CancelCause.requested)]
    events = check_run_events(handle.events())
    terminal = events[-1]
    assert isinstance(terminal, WorkflowCancelledEvent)
    assert (terminal.cause, terminal.reason, terminal.step_name) == (CancelCause.requested, "user pressed stop", "step")


def test_cancel_answers_true_while_active_and_false_after_and_the_first_reason_wins() -> None:
    entered = threading.Event()
    release = threading.Event()

    def stubborn(si: StepInput) -> str:
        entered.set()
        release.wait(WAIT)  # ignores the cancel: the run stays cancelling until this returns
        return "discarded"

    wf = Workflow("bg", steps=[stubborn])
    other = Workflow("other", steps=[stubborn])
    handle = wf.run(background=True)
    assert entered.wait(WAIT)

    assert handle.cancel("first") is True
    assert handle.status is RunStatus.cancelling
    assert handle.cancel("second") is True  # still active: True again, changes nothing
    assert wf.cancel_run(handle.run_id, "third") is True
    assert threadflow.cancel_run(handle.run_id, "fourth") is True
    assert other.cancel_run(handle.run_id) is False  # not that workflow's run
    release.set()

    output = handle.result(WAIT)
    assert (output.status, output.reason, output.cause) == (RunStatus.cancelled, "first", CancelCause.requested)
    assert output.content is None  # the step's late result is discarded
    assert handle.cancel("late") is False
    assert wf.cancel_run(handle.run_id) is False
    assert threadflow.cancel_run(handle.run_id) is False
    assert handle.result(0).reason == "first"


def test_cancel_checks_its_reason_before_anything_else() -> None:
    wf = Workflow("bg", steps=[lambda si: "ok"])
    handle = wf.run(background=True)
    assert handle.result(WAIT).status is RunStatus.completed
    with pytest.raises(TypeError):
        handle.cancel(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        wf.cancel_run("no-such-run", reason=b"bytes")  # type: ignore[arg-type]
    assert wf.cancel_run("no-such-run") is False


def test_cancelling_a_streaming_step_from_another_thread_ends_run_then_workflow_cancelled() -> None:
    parked = threading.Event()
    finally_ran = threading.Event()

    def chunks(si: StepInput) -> Iterator[str]:
        try:
            yield "one "
            yield "two "
            parked.set()
            get_context().wait()
            yield "never"
        finally:
            finally_ran.set()

    wf = Workflow("bg", steps=[Step("chunks", executor=chunks)])
    handle = wf.run(background=True)
    assert parked.wait(WAIT)

    results: list[bool] = []
    canceller = threading.Thread(target=lambda: results.append(handle.cancel("enough")))
    canceller.start()
    canceller.join(WAIT)

    assert results == [True]
    assert handle.result(WAIT).status is RunStatus.cancelled
    assert finally_ran.is_set()
    assert names(check_run_events(handle.events())) == [
        "workflow_started",
        "step_started",
        "run_started",
        "run_content",
        "run_content",
        "run_cancelled",
        "workflow_cancelled",
    ]


# -- max_concurrent_runs and queued runs ------------------------------------------------


def test_at_most_max_concurrent_runs_execute_and_the_rest_are_pending() -> None:
    gates = [threading.Event() for _ in range(6)]
    entrances = Entrances()

    def step(si: StepInput) -> str:
        return gated_step(gates[si.input], entrances)(si)

    wf = Workflow("bg", steps=[step], max_concurrent_runs=2)
    handles = [wf.run(i, background=True) for i in range(6)]

    for opened in range(6):
        assert entrances.wait_for(min(opened + 2, 6))
        started = set(entrances.who)
        waiting = [h for i, h in enumerate(handles) if i not in started]
        assert all(h.status is RunStatus.pending for h in waiting)
        pending = {info.run_id for info in threadflow.active_runs() if info.status is RunStatus.pending}
        assert pending == {h.run_id for h in waiting}
        gates[opened].set()
        assert handles[opened].result(WAIT).content == f"done {opened}"

    assert sorted(entrances.who[:2]) == [0, 1]
    assert entrances.who[2:] == [2, 3, 4, 5]  # FIFO
    assert entrances.most_inside == 2
    assert [h.status for h in handles] == [RunStatus.completed] * 6


def test_queued_runs_start_in_submission_order() -> None:
    gate = threading.Event()
    entrances = Entrances()
    wf = Workflow("bg", steps=[gated_step(gate, entrances)], max_concurrent_runs=1)
    handles = [wf.run(i, background=True) for i in range(5)]
    gate.set()
    for handle in handles:
        assert handle.result(WAIT).status is RunStatus.completed
    assert entrances.who == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("how", ["handle", "workflow", "process"])
def test_a_run_cancelled_while_queued_never_starts_and_does_not_wait_for_a_slot(how: str) -> None:
    gate = threading.Event()
    entrances = Entrances()
    wf = Workflow("bg", steps=[gated_step(gate, entrances)], max_concurrent_runs=1)
    running = wf.run("first", background=True)
    assert entrances.wait_for(1)
    queued = wf.run("queued", background=True)
    info = wf.get_run(queued.run_id)
    assert info is not None and info.status is RunStatus.pending
    assert queued.status is RunStatus.pending

    if how == "handle":
        accepted = queued.cancel("not needed")
    elif how == "workflow":
        accepted = wf.cancel_run(queued.run_id, "not needed")
    else:
        accepted = threadflow.cancel_run(queued.run_id, "not needed")

    assert accepted is True
    assert queued.wait(WAIT), "a queued run that was cancelled waited for a slot"
    assert running.done() is False  # the slot is still taken
    output = queued.result(0)
    assert (output.status, output.cause, output.reason) == (RunStatus.cancelled, CancelCause.requested, "not needed")
    events = check_run_events(queued.events())
    assert names(events) == ["workflow_started", "workflow_cancelled"]
    terminal = events[-1]
    assert isinstance(terminal, WorkflowCancelledEvent)
    assert (terminal.cause, terminal.reason, terminal.step_name) == (CancelCause.requested, "not needed", None)
    assert queued.cancel() is False

    gate.set()
    assert running.result(WAIT).status is RunStatus.completed
    assert entrances.who == ["first"]  # the cancelled run's step never ran


def test_the_runs_after_a_cancelled_queued_run_still_start() -> None:
    gate = threading.Event()
    entrances = Entrances()
    wf = Workflow("bg", steps=[gated_step(gate, entrances)], max_concurrent_runs=1)
    handles = [wf.run(i, background=True) for i in range(4)]
    assert entrances.wait_for(1)
    assert handles[2].cancel() is True
    gate.set()
    assert [h.result(WAIT).status for h in handles] == [
        RunStatus.completed,
        RunStatus.completed,
        RunStatus.cancelled,
        RunStatus.completed,
    ]
    assert entrances.who == [0, 1, 3]


# -- events(): replay and subscribers --------------------------------------------------


def streaming_workflow(gate: threading.Event | None = None, count: int = 3) -> Workflow:
    def chunks(si: StepInput) -> Iterator[str]:
        for i in range(count):
            yield f"c{i} "
            if gate is not None and i == 0:
                get_context().wait(gate, timeout=WAIT)

    return Workflow("bg", steps=[Step("chunks", executor=chunks), Step("tail", executor=lambda si: "tail")])


def test_a_late_subscriber_gets_the_whole_run_replayed() -> None:
    handle = streaming_workflow().run(background=True)
    assert handle.wait(WAIT)

    first = check_run_events(handle.events())
    again = check_run_events(handle.events())

    assert names(first) == [
        "workflow_started",
        "step_started",
        "run_started",
        "run_content",
        "run_content",
        "run_content",
        "run_completed",
        "step_completed",
        "step_started",
        "step_completed",
        "workflow_completed",
    ]
    assert first == again
    assert [e.content for e in first if str(e.event) == "run_content"] == ["c0 ", "c1 ", "c2 "]  # type: ignore[attr-defined]
    assert {e.run_id for e in first} == {handle.run_id}


def test_events_after_seq_skips_what_the_subscriber_already_has() -> None:
    handle = streaming_workflow().run(background=True)
    assert handle.wait(WAIT)
    everything = list(handle.events())
    last = everything[-1].seq

    assert list(handle.events(after_seq=0)) == everything
    assert [e.seq for e in handle.events(after_seq=3)] == list(range(4, last + 1))
    assert list(handle.events(after_seq=last - 1)) == [everything[-1]]
    assert list(handle.events(after_seq=last)) == []
    with pytest.raises(ValueError):
        handle.events(after_seq=-1)


def test_a_subscriber_joining_mid_run_gets_the_replay_then_follows_live() -> None:
    gate = threading.Event()
    handle = streaming_workflow(gate).run(background=True)

    early = handle.events()
    head = [next(early) for _ in range(4)]  # up to the first chunk; the step is now held by the gate
    assert names(head)[-1] == "run_content"
    late = handle.events()
    replayed = [next(late) for _ in range(4)]
    assert replayed == head
    resumed = handle.events(after_seq=head[-1].seq)

    gate.set()
    rest_early, rest_late, rest_resumed = list(early), list(late), list(resumed)
    assert rest_early == rest_late == rest_resumed
    check_run_events(head + rest_early)
    assert names(rest_early)[-1] == "workflow_completed"


def test_several_subscribers_in_several_threads_see_the_same_events() -> None:
    gate = threading.Event()
    handle = streaming_workflow(gate, count=50).run(background=True)
    subscribers = 4
    start = threading.Barrier(subscribers + 1)
    seen: list[list[BaseEvent]] = [[] for _ in range(subscribers)]

    def subscribe(index: int) -> None:
        start.wait(WAIT)
        seen[index].extend(handle.events())

    threads = [threading.Thread(target=subscribe, args=(i,)) for i in range(subscribers)]
    for thread in threads:
        thread.start()
    start.wait(WAIT)
    gate.set()  # most of the run now happens while all four follow it live
    for thread in threads:
        thread.join(WAIT)

    assert handle.result(WAIT).status is RunStatus.completed
    full = check_run_events(handle.events())
    assert len(full) == 50 + 8
    assert all(events == full for events in seen)


def test_a_subscriber_that_stops_reading_does_not_hold_up_the_run() -> None:
    handle = streaming_workflow(count=200).run(background=True)
    abandoned = handle.events()
    next(abandoned)  # reads one event and then never again
    assert handle.result(WAIT).status is RunStatus.completed
    assert len(list(abandoned)) == 200 + 8 - 1


def test_leaving_events_early_does_not_cancel_the_run() -> None:
    """A handle's subscribers only watch; unlike a RunStream's consumer, leaving is not a cancel."""
    gate = threading.Event()
    handle = streaming_workflow(gate).run(background=True)
    for event in handle.events():
        if str(event.event) == "run_content":
            break
    gate.set()
    assert handle.result(WAIT).status is RunStatus.completed


# -- known bugs --------------------------------------------------------------------------


class FailingStore(MemoryStore):
    """A store that records events and fails (disk full) on the terminal one."""

    records_events = True

    def append(self, event: BaseEvent) -> None:
        if str(event.event) == "workflow_completed":
            raise OSError("disk full")


def test_a_store_failing_on_the_terminal_event_does_not_strand_the_handles_subscribers() -> None:
    handle = Workflow("bg", steps=[lambda si: "ok"], store=FailingStore()).run(background=True)
    assert handle.wait(WAIT)
    try:
        assert len(REGISTRY) == 0, "the ended run's registry entry was never removed"
        followed: list[BaseEvent] = []
        follower = threading.Thread(target=lambda: followed.extend(handle.events()), daemon=True)
        follower.start()
        follower.join(2.0)
        assert not follower.is_alive(), "events() never ended: the log has no terminal event"
        check_run_events(followed)
        handle.result(0)  # an output, or a WorkflowError naming the store's failure
    finally:
        REGISTRY.remove(handle._state)  # so that the leak does not fail the tests after this one
