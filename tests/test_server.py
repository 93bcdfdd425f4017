"""The HTTP API (SPEC §5, issue 5) against a real uvicorn server on 127.0.0.1, with the real client.

Every route and status code, auth on and off, a dropped stream cancelling
its run (cause ``stream_closed``, cleanup run), and cancel racing completion.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from fastapi import WebSocket
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from threadflow import CancellationError, RunInfo, RunStatus, Workflow, get_context
from threadflow.client import Client
from threadflow.events import (
    BaseEvent,
    Event,
    RunContentEvent,
    WorkflowCancelledEvent,
    WorkflowCompletedEvent,
    WorkflowErrorEvent,
    WorkflowStartedEvent,
    parse_event,
)
from threadflow.server import create_app, running_server
from threadflow.storage import MemoryStore, SqliteStore

WAIT = 10.0  # seconds; a bound for waits that normally take milliseconds


class Probe:
    """What one run of the ``gated`` step did: got inside, was released, cleaned up after a cancel."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        self.cleaned = threading.Event()


_probes_lock = threading.Lock()
PROBES: dict[str, Probe] = collections.defaultdict(Probe)


def probe(run_id: str) -> Probe:
    with _probes_lock:
        return PROBES[run_id]


def echo(step_input: Any) -> Any:
    return step_input.input


def boom(step_input: Any) -> None:
    raise ValueError("boom")


def gated(step_input: Any) -> Iterator[str]:
    """Streams "ready", then waits (cancellably) until the test releases it."""
    me = probe(step_input.run_id)
    try:
        yield "ready"
        me.inside.set()
        get_context().wait(me.release)
    except CancellationError:
        me.cleaned.set()
        raise


def odd(step_input: Any) -> Any:
    return {"object": object(), "surrogate": "\ud800"}  # JSON cannot carry either as-is


class RecordingStore(MemoryStore):
    """A store that also keeps every event, as a SqliteStore does; ``reachable`` answers request_cancel."""

    records_events = True

    def __init__(self, reachable: bool | None = None) -> None:
        super().__init__()
        self.logs: dict[str, list[BaseEvent]] = collections.defaultdict(list)
        self.reachable = reachable
        self.cancel_requests: list[tuple[str, str | None]] = []

    def append(self, event: BaseEvent) -> None:
        self.logs[event.run_id].append(event)

    def events(self, run_id: str, after_seq: int = 0) -> Sequence[Event]:
        return [e for e in list(self.logs.get(run_id, ())) if e.seq > after_seq]  # type: ignore[misc]

    def request_cancel(self, run_id: str, reason: str | None = None) -> bool | None:
        self.cancel_requests.append((run_id, reason))
        return self.reachable


class BusyStore(RecordingStore):
    """Writes for the runs in ``hold`` wait until ``release`` (a database another process holds busy).

    ``hold_end``: ``run_ended`` waits; ``hold_terminal``: appending the terminal event
    waits. ``entered`` says a write is waiting; ``reads`` counts ``events()`` calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hold_end: set[str] = set()
        self.hold_terminal: set[str] = set()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.ended: set[str] = set()
        self.reads = 0
        self._reading = threading.Condition()

    def _wait_if(self, held: bool) -> None:
        if held:
            self.entered.set()
            self.release.wait(WAIT)

    def append(self, event: BaseEvent) -> None:
        self._wait_if(event.terminal and event.run_id in self.hold_terminal)
        super().append(event)

    def run_ended(self, info: RunInfo) -> None:
        self._wait_if(info.run_id in self.hold_end)
        super().run_ended(info)
        self.ended.add(info.run_id)

    def events(self, run_id: str, after_seq: int = 0) -> Sequence[Event]:
        with self._reading:
            self.reads += 1
            self._reading.notify_all()
        return super().events(run_id, after_seq)

    def wait_for_reads(self, count: int) -> bool:
        with self._reading:
            return self._reading.wait_for(lambda: self.reads >= count, WAIT)


ECHO = Workflow("echo", steps=[echo])
GATED = Workflow("gated", steps=[gated])
BOOM = Workflow("boom", steps=[boom])
ODD = Workflow("odd", steps=[odd])
STORED = Workflow("stored", steps=[gated], store=RecordingStore())
APP_STORE = RecordingStore(reachable=True)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app = create_app([ECHO, GATED, BOOM, ODD, STORED], store=APP_STORE)
    with running_server(app) as url:
        yield url


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=WAIT) as client:
        yield client


@pytest.fixture
def client(server: str) -> Iterator[Client]:
    with Client(server) as c:
        yield c


def new_id() -> str:
    return f"run-{uuid.uuid4().hex}"


def sse_events(text: str) -> list[Event]:
    return [parse_event(line[len("data: ") :]) for line in text.split("\n") if line.startswith("data: ")]


def assert_one_run(events: Sequence[BaseEvent]) -> None:
    """SPEC §2: one workflow_started first, exactly one terminal event last, seq 1, 2, 3, ..."""
    assert events[0].event == "workflow_started"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.terminal for e in events] == [False] * (len(events) - 1) + [True]
    assert len({e.run_id for e in events}) == 1


def start_gated(client: Client, workflow_id: str = "gated") -> tuple[str, Probe]:
    run_id = client.start(workflow_id, run_id=new_id())
    me = probe(run_id)
    assert me.inside.wait(WAIT)
    return run_id, me


# -- GET /workflows ---------------------------------------------------------------


def test_list_workflows(http: httpx.Client) -> None:
    response = http.get("/workflows")
    assert response.status_code == 200
    workflows = {w["id"]: w for w in response.json()}
    assert set(workflows) == {"echo", "gated", "boom", "odd", "stored"}
    gated = {"id": "gated", "name": "gated", "description": None, "steps": ["gated"], "workflow_id": "gated"}
    assert workflows["gated"] == gated


# -- POST /workflows/{id}/runs ----------------------------------------------------


def test_start_in_background_answers_202_with_the_run_id(http: httpx.Client, client: Client) -> None:
    response = http.post("/workflows/echo/runs", json={"input": {"a": [1, 2]}, "run_id": "bg-1"})
    assert response.status_code == 202
    body = response.json()
    assert body["run_id"] == "bg-1" and body["workflow_id"] == "echo"
    assert body["status"] in {s.value for s in RunStatus}
    assert response.headers["location"] == "/workflows/echo/runs/bg-1"
    assert response.headers["x-threadflow-run-id"] == "bg-1"
    events = list(client.events("echo", "bg-1"))
    assert_one_run(events)
    assert isinstance(events[-1], WorkflowCompletedEvent) and events[-1].content == {"a": [1, 2]}


def test_start_with_an_empty_body_uses_the_defaults(http: httpx.Client) -> None:
    response = http.post("/workflows/echo/runs")
    assert response.status_code == 202
    uuid.UUID(response.json()["run_id"])


def test_start_streaming_answers_the_events_as_sse(http: httpx.Client) -> None:
    response = http.post("/workflows/echo/runs", json={"input": "hello", "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert_one_run(events)
    assert events[0].run_id == response.headers["x-threadflow-run-id"]
    assert isinstance(events[-1], WorkflowCompletedEvent) and events[-1].content == "hello"
    ids = [int(line[4:]) for line in response.text.split("\n") if line.startswith("id: ")]
    assert ids == [e.seq for e in events]


def test_a_failing_step_streams_workflow_error(client: Client) -> None:
    with client.stream("boom") as stream:
        events = list(stream)
    assert isinstance(events[-1], WorkflowErrorEvent)
    assert (events[-1].error_type, events[-1].error) == ("ValueError", "boom")


def test_content_json_cannot_carry_still_streams(client: Client) -> None:
    events = list(client.stream("odd"))
    assert isinstance(events[-1], WorkflowCompletedEvent)
    assert events[-1].content["surrogate"] == "\ufffd"
    assert events[-1].content["object"].startswith("<object object")


def test_start_unknown_workflow_is_404(http: httpx.Client) -> None:
    for stream in (False, True):
        response = http.post("/workflows/nope/runs", json={"stream": stream})
        assert response.status_code == 404
        assert "nope" in response.json()["detail"]


def test_start_with_an_active_run_id_is_409(http: httpx.Client, client: Client) -> None:
    run_id, me = start_gated(client)
    for stream in (False, True):
        response = http.post("/workflows/gated/runs", json={"run_id": run_id, "stream": stream})
        assert response.status_code == 409
        assert run_id in response.json()["detail"]
    me.release.set()
    assert isinstance(list(client.events("gated", run_id))[-1], WorkflowCompletedEvent)
    # once it has ended the id may be used again
    assert http.post("/workflows/echo/runs", json={"run_id": run_id}).status_code == 202


@pytest.mark.parametrize(
    ("body", "where", "words"),
    [
        (b"{", ["body"], "not usable JSON"),
        (b"\xff\xfe\x00", ["body"], "not usable JSON"),
        (b'{"input": NaN}', ["body"], "NaN is not a JSON value"),
        (b'{"input": "\\ud800"}', ["body"], "lone surrogate"),
        (b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}", ["body"], "not usable JSON"),
        (b'{"input": ' + b"[" * 150 + b"]" * 150 + b"}", ["body"], "nested more than"),
        (b'{"input": 1' + b"0" * 5000 + b"}", ["body"], "not usable JSON"),
        (b"[]", ["body"], "must be a JSON object, not an array"),
        (b"null", ["body"], "must be a JSON object, not null"),
        (b'{"stream": "yes"}', ["body", "stream"], "boolean"),
        (b'{"stream": 1}', ["body", "stream"], "boolean"),
        (b'{"run_id": 7}', ["body", "run_id"], "string"),
        (b'{"run_id": ""}', ["body", "run_id"], "at least 1 character"),
        (b'{"run_id": "a/b"}', ["body", "run_id"], "URL path segment"),
        (b'{"run_id": ".."}', ["body", "run_id"], "URL path segment"),
        (b'{"inptu": 1}', ["body", "inptu"], "Extra inputs are not permitted"),
    ],
)
def test_start_with_a_bad_body_is_422_naming_the_problem(
    http: httpx.Client, body: bytes, where: list[str], words: str
) -> None:
    response = http.post("/workflows/echo/runs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == where
    assert words in error["msg"]


def test_run_ids_outside_latin1_travel_percent_encoded_in_headers(http: httpx.Client, client: Client) -> None:
    response = http.post("/workflows/echo/runs", json={"run_id": "日本-\u2028"})
    assert response.status_code == 202
    assert response.headers["x-threadflow-run-id"] == "%E6%97%A5%E6%9C%AC-%E2%80%A8"
    assert client.get_run("echo", "日本-\u2028") is not None


# -- GET /workflows/{id}/runs/{run_id} ----------------------------------------------


def test_get_run_answers_the_record_while_active_and_after(http: httpx.Client, client: Client) -> None:
    run_id, me = start_gated(client)
    active = http.get(f"/workflows/gated/runs/{run_id}")
    assert active.status_code == 200
    assert active.json()["status"] == "waiting" and active.json()["step_name"] == "gated"
    me.release.set()
    list(client.events("gated", run_id))
    ended = client.get_run("gated", run_id)
    assert ended is not None and ended.status is RunStatus.completed and ended.ended_at is not None


def test_get_run_unknown_is_404(http: httpx.Client) -> None:
    assert http.get("/workflows/echo/runs/no-such-run").status_code == 404
    assert http.get("/workflows/nope/runs/no-such-run").status_code == 404


def test_a_run_belongs_to_its_workflow(http: httpx.Client, client: Client) -> None:
    run_id, me = start_gated(client)
    try:
        assert http.get(f"/workflows/echo/runs/{run_id}").status_code == 404
        assert http.post(f"/workflows/echo/runs/{run_id}/cancel").status_code == 404
        assert http.get(f"/workflows/echo/runs/{run_id}/events").status_code == 404
    finally:
        me.release.set()
        assert_one_run(list(client.events("gated", run_id)))  # ended before the leak check looks


# -- GET .../events -------------------------------------------------------------------


def test_events_replay_after_seq(client: Client, http: httpx.Client) -> None:
    run_id = client.start("echo", "x")
    everything = list(client.events("echo", run_id))
    assert_one_run(everything)
    assert list(client.events("echo", run_id, after_seq=2)) == everything[2:]
    assert list(client.events("echo", run_id, after_seq=len(everything))) == []
    assert list(client.events("echo", run_id, after_seq=10_000)) == []
    resumed = http.get(f"/workflows/echo/runs/{run_id}/events", headers={"Last-Event-ID": "3"})
    assert sse_events(resumed.text) == everything[3:]


def test_events_follow_a_live_run_to_its_end(client: Client) -> None:
    run_id, me = start_gated(client)
    with client.events("gated", run_id) as events:
        first = [next(events) for _ in range(4)]  # started, step_started, run_started, "ready"
        assert isinstance(first[-1], RunContentEvent) and first[-1].content == "ready"
        me.release.set()
        rest = list(events)
    assert_one_run(first + rest)
    assert isinstance(rest[-1], WorkflowCompletedEvent) and rest[-1].content == "ready"


def test_closing_an_events_reader_leaves_the_run_alone(client: Client) -> None:
    run_id, me = start_gated(client)
    with client.events("gated", run_id) as events:
        next(events)
    assert client.get_run("gated", run_id).status is RunStatus.waiting  # type: ignore[union-attr]
    me.release.set()
    assert isinstance(list(client.events("gated", run_id))[-1], WorkflowCompletedEvent)


def test_events_bad_query_is_422(http: httpx.Client) -> None:
    for params in [{"after_seq": "-1"}, {"after_seq": "x"}, {"after_seq": str(2**63)}]:
        response = http.get("/workflows/echo/runs/r/events", params=params)
        assert response.status_code == 422, params


@pytest.mark.parametrize("value", ["x", "-1", "1e3", "null", "", "3.0", str(2**63), "\u0663"])
def test_a_last_event_id_that_names_no_seq_is_ignored(http: httpx.Client, client: Client, value: str) -> None:
    """SSE lets a client send back whatever id it saw; what is not a seq number replays from after_seq."""
    run_id = client.start("echo", "x")
    everything = list(client.events("echo", run_id))
    headers = {"Last-Event-ID": value.encode()}  # raw UTF-8 bytes for the non-ASCII digit
    response = http.get(f"/workflows/echo/runs/{run_id}/events", params={"after_seq": 1}, headers=headers)
    assert response.status_code == 200, response.text
    assert sse_events(response.text) == everything[1:]


def test_the_schema_documents_last_event_id_as_the_rule_applied(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    [header] = [
        p
        for p in schema["paths"]["/workflows/{workflow_id}/runs/{run_id}/events"]["get"]["parameters"]
        if p["in"] == "header"
    ]
    assert header["name"] == "Last-Event-ID"
    assert header["schema"]["anyOf"][0] == {"type": "string"}  # any string: nothing it allows is a 422
    assert "ignored" in header["description"]


def test_events_unknown_run_is_404(http: httpx.Client) -> None:
    assert http.get("/workflows/echo/runs/no-such-run/events").status_code == 404
    assert http.get("/workflows/nope/runs/no-such-run/events").status_code == 404


def test_events_of_a_run_kept_nowhere_is_404(http: httpx.Client) -> None:
    handle = ECHO.run("not through the app", background=True)  # the MemoryStore keeps no events
    handle.wait(WAIT)
    response = http.get(f"/workflows/echo/runs/{handle.run_id}/events")
    assert response.status_code == 404
    assert "not kept" in response.json()["detail"]


def test_events_from_a_store_that_records_them_are_replayed_and_followed(client: Client) -> None:
    run_id = new_id()
    me = probe(run_id)
    handle = STORED.run(None, background=True, run_id=run_id)  # started in-process, not through the app
    assert me.inside.wait(WAIT)
    with client.events("stored", run_id) as events:
        assert isinstance(next(events), BaseEvent)
        me.release.set()
        rest = list(events)
    assert handle.wait(WAIT)
    assert isinstance(rest[-1], WorkflowCompletedEvent)
    assert list(client.events("stored", run_id, after_seq=1)) == rest


def test_events_followed_in_a_store_wait_for_the_stored_terminal_event() -> None:
    """The registry says completed before the store has the terminal event: the reader waits for it."""
    store = BusyStore()
    workflow = Workflow("late", steps=[gated], store=store)
    run_id = new_id()
    me = probe(run_id)
    store.hold_terminal.add(run_id)
    with running_server(create_app(workflow)) as url, Client(url) as client:
        handle = workflow.run(None, background=True, run_id=run_id)  # not through the app: read from the store
        assert me.inside.wait(WAIT)
        with client.events("late", run_id) as events:
            first = next(events)
            me.release.set()
            assert store.entered.wait(WAIT)  # completed in the registry; the terminal event not stored yet
            assert store.wait_for_reads(store.reads + 2)  # the reader has looked since
            store.release.set()
            rest = list(events)
        assert handle.wait(WAIT)
    assert_one_run([first, *rest])
    assert isinstance(rest[-1], WorkflowCompletedEvent)


# -- runs known only to the app's own store (another process's) ------------------------


def _foreign_run(status: RunStatus) -> str:
    """A run's record and first event, as another process sharing the store would have written them."""
    run_id = new_id()
    APP_STORE.run_ended(RunInfo(run_id=run_id, workflow_id="echo", workflow_name="echo", status=status, created_at=1.0))
    APP_STORE.append(WorkflowStartedEvent(run_id=run_id, workflow_id="echo", workflow_name="echo", seq=1, created_at=1))
    return run_id


def test_the_app_store_answers_for_runs_of_other_processes(http: httpx.Client, client: Client) -> None:
    done = _foreign_run(RunStatus.completed)
    info = client.get_run("echo", done)
    assert info is not None and info.status is RunStatus.completed
    assert [e.seq for e in client.events("echo", done)] == [1]
    cancel = http.post(f"/workflows/echo/runs/{done}/cancel")
    assert cancel.status_code == 409 and cancel.json()["status"] == "completed"


def test_cancel_of_another_processes_run_goes_through_the_store(http: httpx.Client) -> None:
    running = _foreign_run(RunStatus.running)
    response = http.post(f"/workflows/echo/runs/{running}/cancel", json={"reason": "from afar"})
    assert response.status_code == 200
    assert response.json() == {"run_id": running, "status": "cancelling"}
    assert (running, "from afar") in APP_STORE.cancel_requests
    APP_STORE.reachable = None  # a store that cannot reach other processes
    try:
        refused = http.post(f"/workflows/echo/runs/{running}/cancel")
        assert refused.status_code == 409 and refused.json()["status"] == "running"
    finally:
        APP_STORE.reachable = True


# -- POST .../cancel ---------------------------------------------------------------------


def test_cancel_a_running_run_is_200_and_it_ends_cancelled(http: httpx.Client, client: Client) -> None:
    run_id, me = start_gated(client)
    response = http.post(f"/workflows/gated/runs/{run_id}/cancel", json={"reason": "enough"})
    assert response.status_code == 200
    assert response.json()["run_id"] == run_id
    assert response.json()["status"] in {"cancelling", "cancelled"}
    events = list(client.events("gated", run_id))
    assert me.cleaned.is_set()
    terminal = events[-1]
    assert isinstance(terminal, WorkflowCancelledEvent)
    assert (terminal.reason, terminal.cause) == ("enough", "requested")
    # cancelling again: it has ended, and the 409 names how
    again = http.post(f"/workflows/gated/runs/{run_id}/cancel")
    assert again.status_code == 409
    assert again.json()["status"] == "cancelled" and "cancelled" in again.json()["detail"]


def test_cancel_without_a_body_and_twice_while_active(http: httpx.Client, client: Client) -> None:
    run_id, _ = start_gated(client)
    first = http.post(f"/workflows/gated/runs/{run_id}/cancel")
    second = http.post(f"/workflows/gated/runs/{run_id}/cancel", json={"reason": "later"})
    assert first.status_code == 200
    assert second.status_code in {200, 409}  # 200 while still cancelling, 409 once it has ended
    terminal = list(client.events("gated", run_id))[-1]
    assert isinstance(terminal, WorkflowCancelledEvent) and terminal.reason is None  # the first request fixed it


def test_cancel_of_ended_runs_is_409_naming_the_status(http: httpx.Client, client: Client) -> None:
    completed = client.start("echo", 1)
    failed = client.start("boom")
    for workflow_id, run_id, status in [("echo", completed, "completed"), ("boom", failed, "error")]:
        list(client.events(workflow_id, run_id))
        response = http.post(f"/workflows/{workflow_id}/runs/{run_id}/cancel")
        assert response.status_code == 409
        assert response.json()["status"] == status
        assert status in response.json()["detail"]


def test_cancel_unknown_run_or_workflow_is_404(http: httpx.Client) -> None:
    assert http.post("/workflows/echo/runs/no-such-run/cancel").status_code == 404
    assert http.post("/workflows/nope/runs/no-such-run/cancel").status_code == 404


@pytest.mark.parametrize("body", [b'{"reason": 5}', b'{"reason": ["x"]}', b'{"why": "x"}', b"[]", b"{"])
def test_cancel_with_a_bad_body_is_422(http: httpx.Client, body: bytes) -> None:
    response = http.post("/workflows/echo/runs/r/cancel", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "body"


@pytest.mark.stress
def test_cancel_racing_completion_over_http(server: str, client: Client) -> None:
    """200 means the run ends cancelled; 409 means it had completed, and says so."""
    jitter = random.Random(5)
    with httpx.Client(base_url=server, timeout=WAIT) as http:
        for _ in range(25):
            run_id, me = start_gated(client)
            barrier = threading.Barrier(2)

            def release(me: Probe = me, barrier: threading.Barrier = barrier, delay: float = jitter.random()) -> None:
                barrier.wait()
                # A random head start for the cancel, so that both outcomes happen; the
                # assertions hold whichever side wins, so this is jitter, not synchronisation.
                threading.Event().wait(delay * 0.001)
                me.release.set()

            releaser = threading.Thread(target=release)
            releaser.start()
            barrier.wait()
            response = http.post(f"/workflows/gated/runs/{run_id}/cancel")
            releaser.join()
            terminal = list(client.events("gated", run_id))[-1]
            if response.status_code == 200:
                assert isinstance(terminal, WorkflowCancelledEvent)
                assert response.json()["status"] in {"cancelling", "cancelled"}
            else:
                assert response.status_code == 409
                assert isinstance(terminal, WorkflowCompletedEvent)
                assert response.json()["status"] == "completed"


# -- the consumer leaving is a cancel ------------------------------------------------------


def _assert_stream_closed(client: Client, workflow_id: str, run_id: str, me: Probe) -> None:
    assert me.cleaned.wait(WAIT), "the step's cleanup did not run"
    terminal = list(client.events(workflow_id, run_id))[-1]
    assert isinstance(terminal, WorkflowCancelledEvent)
    assert terminal.cause == "stream_closed"
    info = client.get_run(workflow_id, run_id)
    assert info is not None and info.status is RunStatus.cancelled and info.cause == "stream_closed"


def test_closing_the_client_stream_cancels_the_run(client: Client) -> None:
    run_id = new_id()
    me = probe(run_id)
    stream = client.stream("gated", run_id=run_id)
    assert stream.run_id == run_id
    for event in stream:
        if isinstance(event, RunContentEvent):
            break
    assert me.inside.wait(WAIT)
    stream.close()
    _assert_stream_closed(client, "gated", run_id, me)


def test_dropping_the_connection_cancels_the_run(server: str, client: Client) -> None:
    """A bare socket: the request is sent, the first event read, then the socket closed."""
    run_id = new_id()
    me = probe(run_id)
    host, port = server.removeprefix("http://").split(":")
    body = json.dumps({"run_id": run_id, "stream": True}).encode()
    request = (
        f"POST /workflows/gated/runs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(request)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert me.inside.wait(WAIT)
    _assert_stream_closed(client, "gated", run_id, me)


def test_dropping_a_queued_stream_never_blocks_the_event_loop() -> None:
    """Cancelling a queued run records its end in the store, which may wait: never on the event loop."""
    store = BusyStore()
    workflow = Workflow("queued", steps=[gated], store=store, max_concurrent_runs=1)
    queued = new_id()
    store.hold_end.add(queued)
    with running_server(create_app(workflow)) as url, Client(url) as client:
        running, me = start_gated(client, "queued")  # takes the only slot
        client.stream("queued", run_id=queued).close()  # the response has begun; the run waits for a slot
        assert store.entered.wait(WAIT)  # the cancel is recording the queued run's end, and waits
        assert [w["id"] for w in client.list_workflows()] == ["queued"]  # the server still answers
        assert queued not in store.ended
        store.release.set()
        me.release.set()
        assert isinstance(list(client.events("queued", running))[-1], WorkflowCompletedEvent)
        info = client.get_run("queued", queued)
    assert info is not None and info.status is RunStatus.cancelled and info.cause == "stream_closed"


def test_stopping_the_server_ends_open_streams_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    """No stream is cut (nor an error logged): each ends with ``stream_interrupted``, which the client raises."""
    caplog.set_level(logging.WARNING)
    watched, owned = new_id(), new_id()
    with running_server(create_app(GATED)) as url:
        client = Client(url)
        client.start("gated", run_id=watched)
        reader = client.events("gated", watched)
        owner = client.stream("gated", run_id=owned)
        assert [next(reader).seq, next(owner).seq] == [1, 1]
        assert probe(owned).inside.wait(WAIT)
    # The server has stopped (its thread joined): a cancel it made would already be accepted, and
    # an accepted cancel is visible at once as the status. The watched run must be untouched.
    watched_info = GATED.get_run(watched)
    assert watched_info is not None and watched_info.status in {RunStatus.running, RunStatus.waiting}
    try:
        for stream in (reader, owner):
            with pytest.raises(httpx.RemoteProtocolError, match="interrupted: the server is stopping"):
                list(stream)
    finally:
        client.close()
        probe(watched).release.set()
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
    assert probe(owned).cleaned.wait(WAIT)  # the run the stream owned was cancelled (stream_closed)


def test_a_stream_read_to_the_end_is_not_cancelled(client: Client) -> None:
    with client.stream("echo", "whole") as stream:
        events = list(stream)
    assert isinstance(events[-1], WorkflowCompletedEvent)
    info = client.get_run("echo", stream.run_id)
    assert info is not None and info.status is RunStatus.completed


# -- auth ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured() -> Iterator[str]:
    with running_server(create_app(ECHO, api_key="s3cret")) as url:
        yield url


ROUTES = [
    ("GET", "/workflows"),
    ("POST", "/workflows/echo/runs"),
    ("GET", "/workflows/echo/runs/r"),
    ("GET", "/workflows/echo/runs/r/events"),
    ("POST", "/workflows/echo/runs/r/cancel"),
    ("GET", "/openapi.json"),
    ("GET", "/no/such/route"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Bearer s3cret-and-more", "Basic s3cret", "s3cret"])
def test_with_a_key_every_route_needs_the_bearer_token(
    secured: str, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.request(method, secured + path, headers=headers, timeout=WAIT)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Bearer" in response.json()["detail"]


def test_with_the_key_the_routes_answer(secured: str) -> None:
    headers = {"Authorization": "Bearer s3cret"}
    assert httpx.get(secured + "/workflows", headers=headers, timeout=WAIT).status_code == 200
    lower = {"Authorization": "bearer s3cret"}  # the scheme is case-insensitive (RFC 7235)
    assert httpx.get(secured + "/workflows/echo/runs/r", headers=lower, timeout=WAIT).status_code == 404
    with Client(secured, api_key="s3cret") as client:
        assert [e.event for e in client.stream("echo", 1)][-1] == "workflow_completed"
        assert client.cancel_run("echo", "no-such-run") is False


def test_the_client_raises_on_auth_errors(secured: str) -> None:
    with Client(secured, api_key="wrong") as client:
        with pytest.raises(httpx.HTTPStatusError, match="401"):
            client.cancel_run("echo", "r")
        with pytest.raises(httpx.HTTPStatusError, match="401"):
            client.stream("echo")
        with pytest.raises(httpx.HTTPStatusError, match="401"):
            client.get_run("echo", "r")


def test_the_key_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THREADFLOW_API_KEY", "from-env")
    with running_server(create_app(ECHO)) as url:
        assert httpx.get(url + "/workflows", timeout=WAIT).status_code == 401
        with Client(url) as client:  # the client reads it too
            assert client.list_workflows()[0]["id"] == "echo"
    monkeypatch.setenv("THREADFLOW_API_KEY", "")
    with running_server(create_app(ECHO)) as url:  # empty means no auth
        assert httpx.get(url + "/workflows", timeout=WAIT).status_code == 200


async def say_hello(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


def test_with_a_key_a_websocket_without_it_is_closed_with_1008() -> None:
    app = create_app(ECHO, api_key="s3cret")
    app.add_api_websocket_route("/ws", say_hello)  # an app's own websocket route is guarded too
    with TestClient(app) as http:  # the lifespan needs no key
        for headers in [{}, {"Authorization": "Bearer wrong"}]:
            with pytest.raises(WebSocketDisconnect) as refused, http.websocket_connect("/ws", headers=headers):
                pass
            assert refused.value.code == 1008
        with http.websocket_connect("/ws", headers={"Authorization": "Bearer s3cret"}) as websocket:
            assert websocket.receive_text() == "hello"


# -- building and serving the app -------------------------------------------------------------


def test_create_app_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="at least one"):
        create_app([])
    with pytest.raises(ValueError, match="two workflows"):
        create_app([ECHO, Workflow("echo", steps=[echo])])
    with pytest.raises(TypeError, match="Workflow"):
        create_app([ECHO, "gated"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="api_key"):
        create_app(ECHO, api_key="")
    with pytest.raises(ValueError, match="keep_finished_runs"):
        create_app(ECHO, keep_finished_runs=-1)


def test_a_mapping_serves_workflows_under_its_keys() -> None:
    with running_server(create_app({"first": ECHO})) as url, Client(url) as client:
        assert [w["id"] for w in client.list_workflows()] == ["first"]
        run_id = client.start("first", "x")
        assert isinstance(list(client.events("first", run_id))[-1], WorkflowCompletedEvent)
        assert client.get_run("first", run_id) is not None


def test_finished_runs_beyond_keep_finished_runs_are_not_replayed() -> None:
    with running_server(create_app(ECHO, keep_finished_runs=2)) as url, Client(url) as client:
        run_ids = []
        for n in range(4):
            run_ids.append(client.start("echo", n))
            list(client.events("echo", run_ids[-1]))  # to its end, so it counts as finished
        assert list(client.events("echo", run_ids[-1]))  # still kept
        with pytest.raises(httpx.HTTPStatusError, match="not kept"):
            client.events("echo", run_ids[0])
        assert client.get_run("echo", run_ids[0]) is not None  # the record is the store's


SERVED_MODULE = """
from threadflow import Workflow

def echo(step_input):
    return step_input.input

workflow = Workflow("served", steps=[echo])
"""


def _serve(tmp_path: pathlib.Path, *args: str) -> subprocess.Popen[str]:
    """``python -m threadflow *args`` in ``tmp_path``, next to a module that defines a workflow."""
    (tmp_path / "served_module.py").write_text(SERVED_MODULE)
    env = {key: value for key, value in os.environ.items() if not key.startswith("THREADFLOW_")}
    command = [sys.executable, "-m", "threadflow", *args]
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_threadflow_serve_serves_a_module_workflow(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "runs.db"
    process = _serve(tmp_path, "--db", str(db), "serve", "served_module:workflow", "--port", "0", "--api-key", "k")
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("threadflow: serving served_module:workflow on http://127.0.0.1:"), line
        url = line.split(" on ")[1].strip()
        assert httpx.get(url + "/workflows", timeout=WAIT).status_code == 401
        with Client(url, api_key="k") as client:
            with client.stream("served", "hi") as stream:
                assert [e.event for e in stream][-1] == "workflow_completed"
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl+C
        _, err = process.communicate(timeout=WAIT)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    with SqliteStore(db, create=False) as store:  # --db: the workflow kept its runs there
        info = store.get_run(stream.run_id)
        assert info is not None and info.status is RunStatus.completed
        assert [e.event for e in store.events(stream.run_id)][-1] == "workflow_completed"


def test_threadflow_serve_with_an_unusable_db_exits_1_in_one_line(tmp_path: pathlib.Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"garbage")
    process = _serve(tmp_path, "--db", str(junk), "serve", "served_module:workflow", "--port", "0")
    _, err = process.communicate(timeout=WAIT * 3)
    assert process.returncode == 1, err  # as `threadflow runs` and `threadflow demo` answer for that file
    assert err.startswith("threadflow serve: ") and str(junk) in err
    assert len(err.splitlines()) == 1, err


@pytest.mark.parametrize("target", ["served_module", "served_module:missing", "no_such_module:x", "served_module:echo"])
def test_threadflow_serve_rejects_a_bad_target_with_exit_2(tmp_path: pathlib.Path, target: str) -> None:
    process = _serve(tmp_path, "serve", target, "--port", "0")
    _, err = process.communicate(timeout=WAIT * 3)
    assert process.returncode == 2, err
    assert "cannot serve" in err
