"""Issue 14: a plain run() nobody listens to builds no events; listeners see exactly what they always did."""

from __future__ import annotations

import gc
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import threadflow._lane as lane_module
from threadflow import (
    CancellationError,
    RunStatus,
    StepInput,
    Workflow,
    WorkflowError,
    _observe,
    cancel_run,
    get_context,
)
from threadflow._observe import set_observer
from threadflow.compose import Parallel
from threadflow.events import BaseEvent
from threadflow.status import CancelCause, RunInfo
from threadflow.storage import MemoryStore


def tokens(step_input: StepInput) -> Iterator[str]:
    yield "a"
    yield "b"


def upper(step_input: StepInput) -> str:
    return str(step_input.previous_step_content).upper()


def left(step_input: StepInput) -> str:
    return "L"


def right(step_input: StepInput) -> Iterator[str]:
    yield "R"


def mixed(name: str, **options: Any) -> Workflow:
    """Plain, streaming and parallel (a streaming branch) steps."""
    return Workflow(name, steps=[tokens, upper, Parallel(left, right, name="both")], **options)


@pytest.fixture(autouse=True)
def no_observer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Metrics, once enabled (by another test), watch every run of the process: then no run is quiet."""
    monkeypatch.setattr(_observe, "OBSERVER", None)


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the events the runner builds, by type."""
    counts: Counter[str] = Counter()

    def counting(real: Callable[[type[Any], dict[str, Any]], Any]) -> Callable[[type[Any], dict[str, Any]], Any]:
        def build(cls: type[Any], fields: dict[str, Any]) -> Any:
            counts[cls.__name__] += 1
            return real(cls, fields)

        return build

    for name in ("make_event", "make_exact"):  # the run loop's two ways of building an event
        monkeypatch.setattr(lane_module, name, counting(getattr(lane_module, name)))
    return counts


def test_a_plain_run_nobody_listens_to_builds_no_event(built: Counter[str]) -> None:
    output = mixed("quiet-plain").run("x")
    assert output.status is RunStatus.completed
    assert output.step_outputs["upper"] == "AB"
    assert output.content == {"left": "L", "right": "R"}
    assert output.step_outputs["both/right"] == "R"
    assert not built  # the check can fail: the same workflow streamed builds events (next test)


def test_a_streamed_run_builds_every_event(built: Counter[str]) -> None:
    events = list(mixed("quiet-streamed").run("x", stream=True))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event == "workflow_completed"
    assert built["RunContentEvent"] == 3  # a, b and the branch's R


def test_a_quiet_run_that_fails_or_is_cancelled_still_ends_right(built: Counter[str]) -> None:
    def boom(step_input: StepInput) -> str:
        raise ValueError("boom")

    with pytest.raises(WorkflowError) as failed:
        Workflow("quiet-error", steps=[tokens, boom]).run("x")
    assert failed.value.output.status is RunStatus.error
    assert (failed.value.output.step_name, failed.value.output.error_type) == ("boom", "ValueError")

    def cancel_self(step_input: StepInput) -> Iterator[str]:
        run_id = get_context().run_id
        yield "before"
        cancel_run(run_id, "enough")
        try:
            yield "after"
        except CancellationError:
            raise

    output = Workflow("quiet-cancel", steps=[cancel_self, upper]).run("x")
    assert (output.status, output.reason, output.cause) == (RunStatus.cancelled, "enough", CancelCause.requested)
    assert output.step_name == "cancel_self"
    assert not built


class RecordingStore(MemoryStore):
    records_events = True

    def __init__(self) -> None:
        super().__init__()
        self.events: list[BaseEvent] = []

    def append(self, event: BaseEvent) -> None:
        self.events.append(event)


def _kinds(events: list[BaseEvent]) -> list[tuple[str, int]]:
    return [(e.event, e.seq) for e in events]


def test_every_listener_of_a_plain_run_gets_every_event(caplog: pytest.LogCaptureFixture) -> None:
    streamed = _kinds(list(mixed("quiet-reference").run("x", stream=True)))
    # a store that records events
    store = RecordingStore()
    mixed("quiet-store", store=store).run("x")
    assert _kinds(store.events) == streamed
    # debug_mode's event log
    with caplog.at_level(logging.DEBUG, logger="threadflow.events"):
        mixed("quiet-debug", debug_mode=True).run("x")
    assert len([r for r in caplog.records if r.name == "threadflow.events"]) == len(streamed)
    # a telemetry observer's watch
    seen: list[BaseEvent] = []

    class Observer:
        def traceparent(self) -> None:
            return None

        def watch(self, run_id: str, workflow_id: str, traceparent: str | None) -> Callable[[BaseEvent], None] | None:
            return seen.append

        def steps(self, run_id: str) -> None:
            return None

        def cancel_requested(self, run_id: str, cause: CancelCause, reason: str | None) -> None:
            pass

    set_observer(Observer())
    try:
        mixed("quiet-observed").run("x")
    finally:
        set_observer(None)
    assert _kinds(seen) == streamed


def test_a_background_run_of_a_quiet_workflow_still_logs_its_events() -> None:
    handle = mixed("quiet-background").run("x", background=True)
    events = list(handle.events())
    assert events[-1].event == "workflow_completed"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize("how", ["run", "stream"])
def test_a_finished_run_leaves_no_cyclic_garbage(how: str) -> None:
    """Regression: Lane.root referred to the run's lane itself, so every run waited for the cycle collector."""
    wf = Workflow(f"no-garbage-{how}", steps=[tokens, upper])

    def one() -> None:
        if how == "run":
            wf.run("x")
        else:
            for _ in wf.run("x", stream=True):
                pass

    one()
    gc.collect()
    gc.disable()
    try:
        gc.set_debug(gc.DEBUG_SAVEALL)
        for _ in range(5):
            one()
        gc.collect()
        leftovers = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert leftovers == []


def test_run_info_is_unchanged_by_muting() -> None:
    wf = mixed("quiet-info")
    output = wf.run("x")
    info = wf.get_run(output.run_id)
    assert isinstance(info, RunInfo)
    assert (info.status, info.step_name) == (RunStatus.completed, "both")


def test_a_store_that_overrides_run_created_still_gets_it() -> None:
    """run() skips building the record only for MemoryStore's own run_created, which keeps nothing."""
    created: list[RunInfo] = []

    class Creating(MemoryStore):
        def run_created(self, info: RunInfo) -> None:
            created.append(info)

    output = Workflow("quiet-created", steps=[upper], store=Creating()).run("x")
    assert [(i.run_id, i.status) for i in created] == [(output.run_id, RunStatus.pending)]


def test_a_forked_child_makes_other_run_ids_than_its_parent() -> None:
    """Run ids come from a buffer of os.urandom bytes: a forked child must not reuse the parent's."""
    from threadflow._registry import new_run_id

    new_run_id()  # the buffer is filled now, and inherited by the child
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report three ids and leave at once
        try:
            os.write(write, ",".join(new_run_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    parent = {new_run_id() for _ in range(3)}
    assert len(child) == 3
    assert not child & parent


def test_run_ids_are_distinct_version_4_uuids_whichever_thread_takes_them() -> None:
    """Ids are made in batches and popped: threads racing for them never share one, and each is a valid UUID4."""
    import threading
    import uuid

    from threadflow._registry import new_run_id

    barrier = threading.Barrier(8)
    taken: list[list[str]] = [[] for _ in range(8)]

    def take(mine: list[str]) -> None:
        barrier.wait()
        mine.extend(new_run_id() for _ in range(2_000))  # several refills of the batch, raced

    threads = [threading.Thread(target=take, args=(mine,)) for mine in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [run_id for mine in taken for run_id in mine]
    assert len(set(ids)) == len(ids) == 16_000
    for run_id in ids:
        parsed = uuid.UUID(run_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, run_id)
    variants = {run_id[19] for run_id in ids}
    assert variants == set("89ab")  # the variant's two random bits are random


def test_a_runs_output_carries_each_field_of_its_record() -> None:
    """WorkflowRunOutput.of builds positionally: every field must land in its own place."""
    from threadflow._registry import RunState
    from threadflow.output import WorkflowRunOutput

    state = RunState("r-id", "w-id", "w-name")
    state.step_name, state.cause, state.reason = "the-step", CancelCause.timeout, "the reason"
    state.error, state.error_type = "the error", "TheError"
    state.created_at, state.started_at, state.ended_at = 1.0, 2.0, 3.0
    outputs = {"the-step": "out"}
    output = WorkflowRunOutput.of(state, RunStatus.cancelled, "content", outputs)
    assert (output.run_id, output.workflow_id, output.workflow_name) == ("r-id", "w-id", "w-name")
    assert (output.status, output.content, output.step_outputs) == (RunStatus.cancelled, "content", outputs)
    assert (output.step_name, output.cause, output.reason) == ("the-step", CancelCause.timeout, "the reason")
    assert (output.error, output.error_type) == ("the error", "TheError")
    assert (output.created_at, output.started_at, output.ended_at) == (1.0, 2.0, 3.0)


def test_a_memory_store_keeps_a_finished_runs_final_state_and_answers_with_its_run_info() -> None:
    """The RunInfo of a run of this process is made when asked for: equal to what run_ended used to be given."""
    from threadflow.storage.memory import MemoryStore as Memory

    store = Memory(max_runs=2)
    wf = Workflow("kept", steps=[upper], store=store)
    first, second = wf.run("a"), wf.run("b")

    def fails(step_input: StepInput) -> None:
        raise ValueError("no")

    with pytest.raises(WorkflowError) as failed:
        Workflow("kept", steps=[fails], store=store).run()
    third = failed.value.output
    assert store.get_run(first.run_id) is None  # max_runs: the oldest went
    for output in (second, third):
        info = store.get_run(output.run_id)
        assert type(info) is RunInfo
        assert (info.run_id, info.status, info.started_at, info.ended_at) == (
            output.run_id,
            output.status,
            output.started_at,
            output.ended_at,
        )
        assert (info.error, info.error_type, info.step_name) == (output.error, output.error_type, output.step_name)
    listed = store.list_runs(status=RunStatus.error)
    assert [type(i) for i in listed] == [RunInfo] and listed[0].run_id == third.run_id
    assert [i.run_id for i in store.list_runs(limit=1)] == [third.run_id]
    assert [i.run_id for i in store.list_runs(workflow_id="nope")] == []
