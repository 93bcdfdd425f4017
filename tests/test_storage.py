"""The ``RunStore`` contract, run against ``MemoryStore``, ``SqliteStore`` and ``PostgresStore`` alike.

``MemoryStore`` keeps no events and cannot reach other processes, by design
(SPEC §1): the event-log and cross-process assertions skip it explicitly, and
its ``request_cancel`` answers None.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import threadflow
from threadflow import CancelCause, RunStatus, Step, StepInput, Workflow, WorkflowError, get_context
from threadflow.events import RunContentEvent
from threadflow.storage import MemoryStore, RunStore, SqliteStore
from threadflow.testing import check_run_events

pytestmark = pytest.mark.usefixtures("no_leaked_runs")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunStore]:
    made: RunStore
    if request.param == "postgres":
        from threadflow.storage import PostgresStore

        made = PostgresStore(request.getfixturevalue("pg_dsn"))
    else:
        made = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "runs.db")
    yield made
    made.close()


def keeps_events(store: RunStore) -> None:
    if not store.records_events:
        pytest.skip(f"{type(store).__name__} keeps no events, by design (SPEC §1)")


def tokens(step_input: StepInput) -> Iterator[str]:
    yield from ("alpha ", "beta ", "gamma")


def shout(step_input: StepInput) -> str:
    return str(step_input.previous_step_content).upper()


def fail(step_input: StepInput) -> str:
    raise ValueError("the draft is empty")


def test_both_stores_are_run_stores(store: RunStore) -> None:
    assert isinstance(store, RunStore)


def test_a_completed_run_is_recorded(store: RunStore) -> None:
    workflow = Workflow("write", steps=[tokens, shout], store=store)
    output = workflow.run("topic")
    info = store.get_run(output.run_id)
    assert info is not None
    assert (info.run_id, info.workflow_id, info.workflow_name) == (output.run_id, "write", "write")
    assert info.status is RunStatus.completed
    assert (info.cause, info.reason, info.error) == (None, None, None)
    assert info.step_name == "shout"
    assert info.started_at is not None and info.ended_at is not None
    assert info.created_at <= info.started_at <= info.ended_at
    assert info.model_copy(update={"owner": None}) == output_info(output)


def output_info(output: threadflow.WorkflowRunOutput) -> threadflow.RunInfo:
    fields = ("run_id", "workflow_id", "workflow_name", "status", "cause", "reason", "step_name", "error")
    more = ("error_type", "created_at", "started_at", "ended_at")
    return threadflow.RunInfo(**{name: getattr(output, name) for name in fields + more})


def test_a_cancelled_run_keeps_its_cause_reason_and_step(store: RunStore) -> None:
    workflow = Workflow("write", steps=[tokens, shout], store=store)
    stream = workflow.run("topic", stream=True)
    for event in stream:
        if isinstance(event, RunContentEvent):
            assert workflow.cancel_run(stream.run_id, reason="changed my mind")
    info = store.get_run(stream.run_id)
    assert info is not None
    assert info.status is RunStatus.cancelled
    assert (info.cause, info.reason, info.step_name) == (CancelCause.requested, "changed my mind", "tokens")


def test_a_failed_run_keeps_the_error(store: RunStore) -> None:
    workflow = Workflow("write", steps=[tokens, fail], store=store)
    with pytest.raises(WorkflowError) as raised:
        workflow.run("topic")
    info = store.get_run(raised.value.output.run_id)
    assert info is not None
    assert info.status is RunStatus.error
    assert (info.error, info.error_type, info.step_name) == ("the draft is empty", "ValueError", "fail")


def test_an_unknown_run_is_none(store: RunStore) -> None:
    assert store.get_run("no-such-run") is None
    assert store.get_run(42) is None  # type: ignore[arg-type]
    assert list(store.events("no-such-run")) == []


def test_list_runs_is_newest_first_and_filters(store: RunStore) -> None:
    first = Workflow("alpha", steps=[tokens], store=store)
    second = Workflow("beta", steps=[tokens, fail], store=store)
    one = first.run().run_id
    with pytest.raises(WorkflowError) as raised:
        second.run()
    two = raised.value.output.run_id
    stream = first.run(stream=True)
    stream.close()  # the consumer leaving is a cancel (stream_closed)
    three = stream.run_id

    assert [info.run_id for info in store.list_runs()] == [three, two, one]
    assert [info.run_id for info in store.list_runs(limit=2)] == [three, two]
    assert list(store.list_runs(limit=0)) == []
    assert [info.run_id for info in store.list_runs(workflow_id="alpha")] == [three, one]
    assert [info.run_id for info in store.list_runs(status=RunStatus.error)] == [two]
    cancelled = store.list_runs(status=RunStatus.cancelled, workflow_id="alpha")
    assert [(info.run_id, info.cause) for info in cancelled] == [(three, CancelCause.stream_closed)]
    assert list(store.list_runs(status=RunStatus.completed, workflow_id="beta")) == []


def test_get_run_answers_from_the_store_after_the_run_ends(store: RunStore) -> None:
    workflow = Workflow("write", steps=[tokens], store=store)
    run_id = workflow.run().run_id
    assert threadflow.get_run(run_id) == store.get_run(run_id) == workflow.get_run(run_id)
    assert workflow.get_run(run_id) is not None


def test_the_event_log_is_every_event_exactly(store: RunStore) -> None:
    keeps_events(store)
    workflow = Workflow("write", steps=[tokens, shout, tokens], store=store)
    streamed = list(workflow.run("topic", stream=True))
    stored = list(store.events(streamed[0].run_id))
    assert stored == streamed
    assert [type(event) for event in stored] == [type(event) for event in streamed]
    check_run_events(stored)
    assert list(store.events(streamed[0].run_id, after_seq=4)) == streamed[4:]
    assert list(store.events(streamed[0].run_id, after_seq=len(streamed))) == []


def test_request_cancel_answers_false_for_unknown_and_ended_runs(store: RunStore) -> None:
    run_id = Workflow("write", steps=[tokens], store=store).run().run_id
    if store.request_cancel(run_id) is None:
        assert isinstance(store, MemoryStore)  # cannot reach other processes: says so with None
        return
    assert store.request_cancel(run_id, "too late") is False
    assert store.request_cancel("no-such-run") is False


def test_request_cancel_checks_the_reason_first(store: RunStore) -> None:
    if isinstance(store, MemoryStore):
        pytest.skip("MemoryStore.request_cancel answers None without looking at anything")
    with pytest.raises(TypeError):
        store.request_cancel("no-such-run", reason=42)  # type: ignore[arg-type]


def test_request_cancel_cancels_an_active_run_of_this_process(store: RunStore) -> None:
    if isinstance(store, MemoryStore):
        pytest.skip("MemoryStore cannot reach runs through the store: cancel_run() does")
    parked, release = threading.Event(), threading.Event()

    def wait_for_cancel(step_input: StepInput) -> str:
        parked.set()
        get_context().wait(release, timeout=30)
        return "not cancelled"

    handle = Workflow("park", steps=[Step("park", executor=wait_for_cancel)], store=store).run(background=True)
    assert parked.wait(10)
    assert store.request_cancel(handle.run_id, "asked through the store") is True
    assert handle.wait(10)
    info = store.get_run(handle.run_id)
    assert info is not None
    assert (info.status, info.cause, info.reason) == (
        RunStatus.cancelled,
        CancelCause.requested,
        "asked through the store",
    )


def test_run_ids_with_prefix_are_distinct_and_newest_first(store: RunStore) -> None:
    workflow = Workflow("write", steps=[tokens], store=store)
    for run_id in ("abc-1", "abd-2", "abc-3", "xyz-4", "abc-1"):  # a finished run's id may be used again
        workflow.run(run_id=run_id)
    lookup = store.run_ids_with_prefix  # type: ignore[attr-defined]  # not part of the RunStore protocol
    assert lookup("abc") == ["abc-1", "abc-3"]  # abc-1 ran again last: newest first, once
    assert lookup("ab", limit=3) == ["abc-1", "abc-3", "abd-2"]
    assert lookup("abd") == ["abd-2"]
    assert lookup("abc-3", limit=5) == ["abc-3"]  # a whole id is a prefix of itself
    assert lookup("") == ["abc-1", "xyz-4"]
    assert lookup("zz") == [] and lookup("abc", limit=0) == []
    assert lookup("%") == [] and lookup("_") == []  # no pattern characters
    with pytest.raises(ValueError):
        lookup("a", limit=-1)
