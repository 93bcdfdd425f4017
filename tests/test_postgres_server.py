"""The HTTP server and the CLI over a ``PostgresStore``, unchanged: runs executing on a worker elsewhere are
listed, followed (``/events`` with ``Last-Event-ID``) and cancelled through them (SPEC §10)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import WAIT, names

from threadflow import RunStatus, StepInput, Worker, Workflow, get_context
from threadflow.client import Client
from threadflow.events import WorkflowCancelledEvent, WorkflowCompletedEvent
from threadflow.server import create_app, running_server

pytest.importorskip("psycopg")
from threadflow.storage import PostgresStore


def words(step_input: StepInput) -> Iterator[str]:
    for word in ("one ", "two ", "three"):
        get_context().sleep(0.05)
        yield word


def parked(step_input: StepInput) -> None:
    get_context().sleep(60)


@pytest.fixture
def sides(pg_dsn: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    served, working = PostgresStore(pg_dsn), PostgresStore(pg_dsn)
    yield served, working
    served.close()
    working.close()


def test_events_of_a_run_on_a_worker_stream_from_the_server_with_last_event_id(sides: Any) -> None:
    served, working = sides
    app_flow = Workflow("words", steps=[words], store=served)
    handle = app_flow.enqueue(None)
    with Worker(Workflow("words", steps=[words], store=working), working):
        with running_server(create_app(app_flow)) as url, Client(url) as client:
            events = list(client.events("words", handle.run_id))
            assert isinstance(events[-1], WorkflowCompletedEvent)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert list(client.events("words", handle.run_id, after_seq=3)) == events[3:]
            info = client.get_run("words", handle.run_id)
            assert info is not None and info.owner == working.identity


def test_a_cancel_over_http_reaches_a_run_on_a_worker(sides: Any) -> None:
    served, working = sides
    app_flow = Workflow("parked", steps=[parked], store=served)
    handle = app_flow.enqueue(None)
    with Worker(Workflow("parked", steps=[parked], store=working), working):
        events = handle.events()
        assert names([next(events), next(events)]) == ["workflow_started", "step_started"]
        with running_server(create_app(app_flow)) as url, Client(url) as client:
            assert client.cancel_run("parked", handle.run_id, reason="over http") is True
            assert handle.result(WAIT).status is RunStatus.cancelled
            terminal = list(client.events("parked", handle.run_id))[-1]
            assert isinstance(terminal, WorkflowCancelledEvent) and terminal.reason == "over http"
            assert client.cancel_run("parked", handle.run_id) is False


def test_the_cli_lists_shows_and_logs_runs_in_postgres(sides: Any, pg_dsn: str) -> None:
    served, _ = sides
    output = Workflow("words", steps=[words], store=served).run()
    cli = [sys.executable, "-m", "threadflow", "--db", pg_dsn, "runs"]
    listed = subprocess.run([*cli, "list", "--json"], capture_output=True, text=True, timeout=WAIT, check=True)
    assert [run["run_id"] for run in json.loads(listed.stdout)] == [output.run_id]
    status = subprocess.run(
        [*cli, "status", output.run_id[:8]], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert status.returncode == 0 and "completed" in status.stdout
    logs = subprocess.run([*cli, "logs", output.run_id], capture_output=True, text=True, timeout=WAIT, check=False)
    assert logs.returncode == 0 and "workflow_completed" in logs.stdout
