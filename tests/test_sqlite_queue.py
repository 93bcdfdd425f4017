"""The run queue on ``SqliteStore``: several processes on one host share one file (SPEC §10).

Claims are ``BEGIN IMMEDIATE`` transactions (SQLite's write lock is the
``SKIP LOCKED`` here); a dead worker is known by its pid, so its queued runs
are resumed at the next claim by another worker.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import WAIT, names

from threadflow import CancelCause, RunStatus, StepInput, Worker, Workflow, get_context
from threadflow.events import WorkflowResumedEvent
from threadflow.storage import SqliteStore
from threadflow.storage.sqlite import SCHEMA_VERSION

TESTS = Path(__file__).parent


def double(step_input: StepInput) -> int:
    return int(step_input.input) * 2


def parked(step_input: StepInput) -> None:
    get_context().sleep(60)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


@pytest.fixture
def stores(db: Path) -> Iterator[tuple[SqliteStore, SqliteStore]]:
    front, back = SqliteStore(db), SqliteStore(db)
    yield front, back
    front.close()
    back.close()


def test_a_queued_run_executes_on_a_worker(stores: Any) -> None:
    front, back = stores
    handle = Workflow("double", steps=[double], store=front).enqueue(21)
    info = handle.info()
    assert (info.status, info.owner, info.attempt) == (RunStatus.pending, None, 1)
    with Worker(Workflow("double", steps=[double], store=back), back):
        assert handle.result(WAIT).content == 42
    assert names(handle.events()) == ["workflow_started", "step_started", "step_completed", "workflow_completed"]
    assert handle.info().owner is not None and handle.info().owner.endswith(f":{os.getpid()}")  # type: ignore[union-attr]


def test_a_pending_queued_run_is_cancelled_without_a_worker(stores: Any) -> None:
    front, _ = stores
    handle = Workflow("double", steps=[double], store=front).enqueue(1)
    assert handle.cancel("no") is True
    info = handle.info()
    assert (info.status, info.cause, info.reason) == (RunStatus.cancelled, CancelCause.requested, "no")
    assert names(handle.events()) == ["workflow_started", "workflow_cancelled"]
    assert handle.cancel() is False


def test_a_running_queued_run_is_cancelled_through_the_store(stores: Any) -> None:
    front, back = stores
    handle = Workflow("parked", steps=[parked], store=front).enqueue(None)
    with Worker(Workflow("parked", steps=[parked], store=back), back):
        events = handle.events()
        assert names([next(events), next(events)]) == ["workflow_started", "step_started"]
        assert front.request_cancel(handle.run_id, "stop") is True
        assert handle.result(WAIT).status is RunStatus.cancelled


def test_a_version_2_file_is_migrated_to_the_queue(db: Path) -> None:
    SqliteStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute("DROP INDEX runs_queue")
    for column in ("queued", "input", "run_timeout", "attempt", "unresumable", "traceparent"):
        conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with SqliteStore(db) as store:
        handle = Workflow("double", steps=[double], store=store).enqueue(2)
        assert handle.cancel() is True
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    finally:
        conn.close()


# -- several processes ------------------------------------------------------------------------------


class Workers:
    """``threadflow --db FILE worker pg_flows:ALL`` subprocesses, each stopped at the end."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.procs: list[subprocess.Popen[str]] = []
        self.drains: list[threading.Thread] = []

    def start(self, *, stall: bool = False) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(TESTS), "PG_FLOWS_STALL": "1" if stall else ""}
        argv = [
            sys.executable,
            "-m",
            "threadflow",
            "--db",
            str(self.db),
            "worker",
            "pg_flows:ALL",
            "--concurrency",
            "2",
        ]
        proc = subprocess.Popen(argv, env=env, cwd=TESTS, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        up = threading.Event()
        drain = threading.Thread(target=_drain, args=(proc, up), daemon=True)
        drain.start()
        self.drains.append(drain)
        assert up.wait(WAIT)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for drain in self.drains:
            drain.join(WAIT)
        for proc in self.procs:
            if proc.stderr is not None:
                proc.stderr.close()


def _drain(proc: subprocess.Popen[str], up: threading.Event) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        if "threadflow worker" in line:
            up.set()


@pytest.fixture
def workers(db: Path) -> Iterator[Workers]:
    SqliteStore(db).close()  # the file exists before the workers open it
    running = Workers(db)
    yield running
    running.stop_all()


def flow(store: SqliteStore, name: str) -> Workflow:
    sys.path.insert(0, str(TESTS))
    import pg_flows

    template = {w.id: w for w in pg_flows.ALL}[name]
    return Workflow(name, steps=list(template.steps), store=store)


def test_runs_spread_over_worker_processes_on_one_host(workers: Workers, db: Path) -> None:
    first, second = workers.start(), workers.start()
    with SqliteStore(db) as store:
        handles = [flow(store, "naps").enqueue(0.3) for _ in range(8)]
        for handle in handles:
            assert handle.result(WAIT).status is RunStatus.completed
        pids = {int((handle.info().owner or ":0").rsplit(":", 1)[1]) for handle in handles}
    assert pids == {first.pid, second.pid}


def test_a_killed_worker_s_runs_resume_in_another_process(workers: Workers, db: Path) -> None:
    doomed = workers.start(stall=True)
    with SqliteStore(db) as store:
        handle = flow(store, "resumable").enqueue(7)
        events = handle.events()
        assert names(next(events) for _ in range(4))[-1] == "step_started"
        rescuer = workers.start()
        doomed.kill()
        output = handle.result(WAIT)
        assert output.status is RunStatus.completed and output.content["first"]["input"] == 7
        log = list(store.events(handle.run_id))
        assert [e.seq for e in log] == list(range(1, len(log) + 1)) and sum(e.terminal for e in log) == 1
        [resumed] = [e for e in log if isinstance(e, WorkflowResumedEvent)]
        assert resumed.attempt == 2 and (resumed.previous_owner or "").endswith(f":{doomed.pid}")
        assert handle.info().owner.endswith(f":{rescuer.pid}")  # type: ignore[union-attr]
        assert names(log).count("step_completed") == 2  # the first step was not run again


def test_output_that_is_not_json_cannot_be_resumed(workers: Workers, db: Path) -> None:
    doomed = workers.start(stall=True)
    with SqliteStore(db) as store:
        handle = flow(store, "unresumable").enqueue(None)
        events = handle.events()
        assert names(next(events) for _ in range(4))[-1] == "step_started"
        workers.start()
        doomed.kill()
        assert handle.wait(WAIT)
        info = handle.info()
        assert info.status is RunStatus.error and "'opaque' is not JSON" in (info.error or "")


def test_workflow_resumed_round_trips_and_is_built_fast() -> None:
    from threadflow._fastevents import make_event
    from threadflow.events import parse_event

    fields = {"run_id": "r", "workflow_id": "w", "workflow_name": "w", "seq": 5, "created_at": 1.5}
    event = WorkflowResumedEvent(attempt=2, previous_owner="host-a:12", **fields)
    assert parse_event(event.model_dump_json()) == event
    assert make_event(WorkflowResumedEvent, {**fields, "attempt": 2, "previous_owner": "host-a:12"}) == event
    assert str(event.event) == "workflow_resumed" and not event.terminal


def fails(step_input: StepInput) -> None:
    raise ValueError("bad input")


def test_a_queued_handle_reads_like_a_future_too(stores: Any) -> None:
    front, back = stores
    seen: list[Any] = []
    ended = threading.Event()
    ok = Workflow("double", steps=[double], store=front).enqueue(2)
    bad = Workflow("fails", steps=[fails], store=front).enqueue(None)
    assert not ok.running() and not ok.cancelled() and not ok.done()
    ok.add_done_callback(lambda h: (seen.append(h), ended.set()))
    with Worker([Workflow("double", steps=[double], store=back), Workflow("fails", steps=[fails], store=back)], back):
        assert ok.result(WAIT).content == 4
        error = bad.exception(WAIT)
    assert ended.wait(WAIT) and seen == [ok]
    assert ok.exception(0) is None and not ok.cancelled() and not ok.running()
    assert error is not None and "ValueError: bad input" in str(error)
    late: list[Any] = []
    ok.add_done_callback(lambda h: (late.append(h), 1 / 0))  # at once; its error is logged, not raised
    assert late == [ok]
    pending = Workflow("double", steps=[double], store=front).enqueue(3)
    assert pending.cancel() and pending.cancelled()


def test_the_live_record_of_a_run_names_the_owner_its_stored_record_does(stores: Any) -> None:
    """While a run is active in this process its record comes from the registry: it must agree with the file's."""
    import threadflow

    front, back = stores
    handle = Workflow("parked", steps=[parked], store=front).enqueue(None)
    with Worker(Workflow("parked", steps=[parked], store=back), back):
        events = handle.events()
        assert names([next(events), next(events)]) == ["workflow_started", "step_started"]
        try:
            live, stored = threadflow.get_run(handle.run_id), back.get_run(handle.run_id)
            assert live is not None and stored is not None
            assert live.status is RunStatus.waiting  # answered by the registry: the step sleeps
            assert (live.owner, live.attempt) == (stored.owner, stored.attempt)
            assert live.owner is not None and live.owner.endswith(f":{os.getpid()}")
        finally:
            assert handle.cancel() is True
        assert handle.result(WAIT).status is RunStatus.cancelled
    plain = Workflow("plain", steps=[parked], store=front).run(background=True)
    try:
        live, stored = threadflow.get_run(plain.run_id), front.get_run(plain.run_id)
        assert live is not None and stored is not None and live.owner == stored.owner is not None
    finally:
        plain.cancel()
        assert plain.wait(WAIT)
