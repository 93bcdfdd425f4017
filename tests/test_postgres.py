"""PostgresStore, the run queue and cross-session cancels, in one process (SPEC §10).

Two stores on one database are two sessions: what one enqueues or asks, the
other runs or answers, exactly as two hosts would (the multi-process cases
are in ``test_postgres_hosts.py``). Every test gets an empty schema of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import WAIT, names

import threadflow
from threadflow import CancelCause, RunStatus, StepInput, Worker, Workflow, WorkflowError, get_context
from threadflow.events import WorkflowResumedEvent
from threadflow.storage import MemoryStore, PostgresStore, StoreError
from threadflow.storage.postgres import SCHEMA_VERSION

pytest.importorskip("psycopg")


@pytest.fixture
def stores(pg_dsn: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two sessions on one database: (the enqueuing side, the worker's side)."""
    front, back = PostgresStore(pg_dsn), PostgresStore(pg_dsn)
    yield front, back
    front.close()
    back.close()


def shout(step_input: StepInput) -> str:
    return str(step_input.input).upper()


def tokens(step_input: StepInput) -> Iterator[str]:
    yield from ("a ", "b ", "c")


def wait_forever(step_input: StepInput) -> None:
    get_context().sleep(60)


def flows(store: PostgresStore, *steps: Any, name: str = "queued") -> Workflow:
    return Workflow(name, steps=list(steps), store=store)


# -- the store ---------------------------------------------------------------------------


def test_the_schema_is_versioned_and_a_newer_one_is_refused(pg_dsn: str) -> None:
    PostgresStore(pg_dsn).close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT value FROM threadflow_meta WHERE key = 'schema_version'").fetchone()
        assert row == (str(SCHEMA_VERSION),)
        conn.execute("UPDATE threadflow_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer"):
        PostgresStore(pg_dsn)


def test_a_bad_dsn_fails_in_the_constructor() -> None:
    with pytest.raises(StoreError, match="cannot connect"):
        PostgresStore("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2", connect_timeout=2)
    with pytest.raises(ValueError):
        PostgresStore("")


def test_threadflow_db_selects_postgres(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from threadflow.storage._defaults import open_store

    store = open_store(pg_dsn)
    try:
        assert isinstance(store, PostgresStore)
    finally:
        store.close()


def test_events_are_stored_exactly_and_a_lone_surrogate_is_replaced(stores: Any) -> None:
    store, _ = stores

    def odd(step_input: StepInput) -> str:
        return "nul\x00 and \ud800 surrogate"

    streamed = list(flows(store, tokens, odd).run("x", stream=True))
    stored = list(store.events(streamed[0].run_id))
    assert names(stored) == names(streamed)
    assert stored[:-2] == streamed[:-2]
    # JSON escapes NUL, so the event keeps it; a lone surrogate (no UTF-8 for it) becomes "?"
    assert stored[-1].content == "nul\x00 and ? surrogate"  # type: ignore[union-attr]


def test_the_owner_is_recorded(stores: Any) -> None:
    store, _ = stores
    output = flows(store, shout).run("x")
    info = store.get_run(output.run_id)
    assert info is not None and info.owner == store.identity and info.attempt == 1


# -- enqueue and workers ------------------------------------------------------------------


def test_enqueue_needs_a_shared_store() -> None:
    with pytest.raises(ValueError, match="PostgresStore"):
        Workflow("local", steps=[shout], store=MemoryStore()).enqueue("x")


def test_enqueue_needs_json_input(stores: Any) -> None:
    with pytest.raises(TypeError, match="JSON"):
        flows(stores[0], shout).enqueue(object())


def test_a_queued_run_executes_on_a_worker_and_is_followed_from_the_enqueuer(stores: Any) -> None:
    front, back = stores
    handle = flows(front, shout, tokens).enqueue("hello")
    assert handle.status is RunStatus.pending and handle.info().owner is None
    with Worker(flows(back, shout, tokens), back, concurrency=2):
        events = list(handle.events())
        output = handle.result(WAIT)
    assert names(events)[0] == "workflow_started" and names(events)[-1] == "workflow_completed"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert output.content == "a b c" and output.step_outputs["shout"] == "HELLO"
    info = handle.info()
    assert (info.status, info.owner, info.attempt) == (RunStatus.completed, back.identity, 1)
    assert handle.done() and handle.wait(0)


def test_a_failed_queued_run_raises_from_result(stores: Any) -> None:
    front, back = stores

    def boom(step_input: StepInput) -> None:
        raise ValueError("no")

    handle = flows(front, boom).enqueue(None)
    with Worker(flows(back, boom), back):
        with pytest.raises(WorkflowError, match="ValueError: no"):
            handle.result(WAIT)


def test_a_pending_run_cancelled_before_any_worker_ends_cancelled(stores: Any) -> None:
    front, _ = stores
    handle = flows(front, shout).enqueue("x")
    assert handle.cancel("not needed") is True
    assert handle.status is RunStatus.cancelled
    assert names(handle.events()) == ["workflow_started", "workflow_cancelled"]
    info = handle.info()
    assert (info.cause, info.reason, info.owner) == (CancelCause.requested, "not needed", None)
    assert handle.cancel() is False  # terminal now


def test_a_cancel_from_another_session_ends_the_run_cancelled(stores: Any) -> None:
    front, back = stores
    handle = flows(front, wait_forever).enqueue(None)
    with Worker(flows(back, wait_forever), back):
        events = handle.events()
        assert names([next(events), next(events)]) == ["workflow_started", "step_started"]
        assert handle.cancel("stop it") is True
        assert handle.result(WAIT).status is RunStatus.cancelled
    assert names(events) == ["workflow_cancelled"]
    info = handle.info()
    assert (info.status, info.cause, info.reason) == (RunStatus.cancelled, CancelCause.requested, "stop it")


def test_a_lost_notify_is_recovered_by_the_recheck(stores: Any) -> None:
    front, back = stores
    handle = flows(front, wait_forever).enqueue(None)
    dropped = threading.Event()
    original = back._listener.on_cancel

    def drop_first(run_id: str) -> None:  # a NOTIFY sent while the listener was away
        if not dropped.is_set():
            dropped.set()
            return
        original(run_id)

    back._listener.on_cancel = drop_first
    with Worker(flows(back, wait_forever), back):
        events = handle.events()
        assert names([next(events), next(events)]) == ["workflow_started", "step_started"]
        assert front.request_cancel(handle.run_id, "late", timeout=WAIT) is True
        assert dropped.is_set()
        assert handle.result(WAIT).status is RunStatus.cancelled


def test_a_terminated_listen_connection_reconnects_and_cancels_still_arrive(stores: Any, pg_dsn: str) -> None:
    front, back = stores
    handle = flows(front, wait_forever).enqueue(None)
    with Worker(flows(back, wait_forever), back):
        events = handle.events()
        assert names([next(events), next(events)]) == ["workflow_started", "step_started"]
        before = back._listener.reconnects
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN%%' AND application_name = '' AND pid <> pg_backend_pid()"
            ).fetchall()
        assert killed
        assert front.request_cancel(handle.run_id, "after the drop", timeout=WAIT) is True
        assert handle.result(WAIT).status is RunStatus.cancelled
        assert back._listener.reconnects > before


def test_a_local_run_is_cancelled_through_the_store_from_another_session(stores: Any) -> None:
    front, back = stores
    started = threading.Event()

    def wait_here(step_input: StepInput) -> None:
        started.set()
        get_context().sleep(60)

    handle = flows(back, wait_here).run(background=True)
    assert started.wait(WAIT)
    assert front.request_cancel(handle.run_id, "remote") is True
    assert handle.result(WAIT).status is RunStatus.cancelled
    assert front.request_cancel(handle.run_id) is False
    assert front.request_cancel("no-such-run") is False


def test_runs_are_resumed_after_their_last_completed_step(stores: Any, pg_dsn: str) -> None:
    """A session that stops renewing (here: its lease is faked lapsed) loses its runs to another worker."""
    front, back = stores
    calls: list[str] = []

    def first(step_input: StepInput) -> dict[str, int]:
        calls.append("first")
        return {"n": step_input.input}

    def second(step_input: StepInput) -> int:
        calls.append("second")
        return int(step_input.previous_step_content["n"]) + 1

    handle = flows(front, first, second).enqueue(41)
    # A dead worker: it claimed the run and completed the first step, then vanished.
    dead = PostgresStore(pg_dsn, lease_seconds=0.2)
    try:
        [claim] = dead.claim(["queued"], 1)
        dead.adopt(claim)
        from threadflow.events import StepCompletedEvent, StepStartedEvent, WorkflowStartedEvent

        base = {"run_id": handle.run_id, "workflow_id": "queued", "workflow_name": "queued", "created_at": 1.0}
        dead.append(WorkflowStartedEvent(seq=1, **base))
        dead.append(StepStartedEvent(seq=2, step_name="first", step_index=0, **base))
        dead.append(StepCompletedEvent(seq=3, step_name="first", step_index=0, content={"n": 41}, **base))
        dead.append(StepStartedEvent(seq=4, step_name="second", step_index=1, **base))
        dead.flush()
        dead._writer.holders = 0
        dead._runs.clear()  # stops renewing: the lease lapses after 0.2 s
        with Worker(flows(back, first, second), back, lease_seconds=1.0):
            output = handle.result(WAIT)
    finally:
        dead.close()
    assert output.content == 42 and calls == ["second"]  # the first step was not run again
    events = list(front.events(handle.run_id))
    assert names(events) == [
        "workflow_started",
        "step_started",
        "step_completed",
        "step_started",
        "workflow_resumed",
        "step_started",
        "step_completed",
        "workflow_completed",
    ]
    assert [e.seq for e in events] == list(range(1, 9))
    resumed = events[4]
    assert isinstance(resumed, WorkflowResumedEvent)
    assert (resumed.attempt, resumed.previous_owner) == (2, dead.identity)
    info = handle.info()
    assert (info.attempt, info.owner) == (2, back.identity)


def test_a_run_whose_output_is_not_json_cannot_be_resumed(stores: Any, pg_dsn: str) -> None:
    front, back = stores
    handle = flows(front, shout, shout).enqueue("x")
    dead = PostgresStore(pg_dsn, lease_seconds=0.2)
    try:
        [claim] = dead.claim(["queued"], 1)
        dead.adopt(claim)
        from threadflow.events import StepCompletedEvent, WorkflowStartedEvent

        base = {"run_id": handle.run_id, "workflow_id": "queued", "workflow_name": "queued", "created_at": 1.0}
        dead.append(WorkflowStartedEvent(seq=1, **base))
        dead.append(StepCompletedEvent(seq=2, step_name="shout", step_index=0, content={1, 2}, **base))
        dead.flush()
        dead._runs.clear()
        with Worker(flows(back, shout, shout), back, lease_seconds=1.0):
            assert handle.wait(WAIT)
    finally:
        dead.close()
    info = handle.info()
    assert info.status is RunStatus.error and "cannot be resumed" in (info.error or "")
    assert "not JSON" in (info.error or "")
    assert names(front.events(handle.run_id))[-1] == "workflow_error"


def test_a_worker_stops_gracefully_and_cancels_what_outlasts_the_deadline(stores: Any) -> None:
    front, back = stores
    handle = flows(front, wait_forever).enqueue(None)
    worker = Worker(flows(back, wait_forever), back)
    worker.start()
    events = handle.events()
    assert names([next(events), next(events)]) == ["workflow_started", "step_started"]
    assert worker.stop(timeout=0.1) is False
    info = handle.info()
    assert (info.status, info.cause) == (RunStatus.cancelled, CancelCause.shutdown)
    assert threadflow.active_runs() == []
