"""Adversarial review of composition, models/tools, scale-out and the dashboard: one regression test per finding.

Each test names the defect it pins down; see /work/wt/_notes/adversary2.md.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from conftest import WAIT

from threadflow import Agent, RunStatus, StepInput, Workflow
from threadflow.testing import ScriptedModel, ToolCall

# -- composition ---------------------------------------------------------------------------

_CTRL_C_WHILE_WAITING_FOR_BRANCHES = """
import signal, sys, threading, time
from threadflow import Parallel, Step, Workflow, get_context

ended = []
started = threading.Barrier(2, timeout=10)

def branch(name):
    def work(si):
        try:
            started.wait()
            if name == "a":  # Ctrl+C, while the consumer waits for branch events
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            get_context().sleep(2.5)  # a lost interrupt is noticed only when this ends
        finally:
            ended.append(name)
    return Step(name, executor=work)

wf = Workflow("kb", steps=[Parallel(branch("a"), branch("b"))])
for attempt in range(40):
    ended.clear()
    started.reset()
    stream = wf.run(stream=True)
    began = time.monotonic()
    try:
        for _ in stream:
            pass
    except KeyboardInterrupt:
        waited = time.monotonic() - began
    else:
        sys.exit(f"attempt {attempt}: the run ended without the KeyboardInterrupt")
    if waited > 2.0:
        sys.exit(f"attempt {attempt}: the KeyboardInterrupt came {waited:.2f}s late, with the branches' end")
    assert sorted(ended) == ["a", "b"], ended  # every branch stopped before the caller saw it
    assert stream.output.status.value == "cancelled" and stream.output.cause.value == "shutdown"
print("ok")
"""


def test_ctrl_c_while_the_consumer_waits_for_branch_events_reaches_it_at_once() -> None:
    """A SIGINT sent by a branch thread races the consumer into ``SimpleQueue.get()`` (the GIL is
    handed over just before it blocks): about 1 in 6 times it was not raised until a branch event
    came — with branches in a long sleep or a stalled model call, Ctrl+C did nothing."""
    done = subprocess.run(
        [sys.executable, "-c", _CTRL_C_WHILE_WAITING_FOR_BRANCHES],
        capture_output=True,
        text=True,
        timeout=WAIT * 6,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


def test_a_cancel_that_wins_over_a_failing_branch_is_reported_to_telemetry() -> None:
    """The cancel was accepted (the run ends ``cancelled``) but returned before telling the observer:
    no cancel-latency sample, no ``threadflow.cancel_requested`` span event."""
    import threadflow
    from threadflow import _observe
    from threadflow.compose import Parallel
    from threadflow.steps import Step

    heard: list[tuple[str, str | None]] = []

    class Observer:
        def traceparent(self) -> None:
            return None

        def watch(self, run_id: str, workflow_id: str, traceparent: str | None) -> None:
            return None

        def steps(self, run_id: str) -> None:
            return None

        def cancel_requested(self, run_id: str, cause: object, reason: str | None) -> None:
            heard.append((run_id, reason))

    sleeping = threading.Event()

    def failing(si: StepInput) -> None:
        assert sleeping.wait(WAIT)
        raise ValueError("first")

    def cleanup_cancels(si: StepInput) -> None:
        ctx = threadflow.get_context()
        try:
            sleeping.set()
            ctx.sleep(60)
        finally:
            threadflow.cancel_run(ctx.run_id, "late")  # while the failure stops the run

    flow = Workflow("w", steps=[Parallel(Step("cleaner", executor=cleanup_cancels), Step("failing", executor=failing))])
    previous = _observe.OBSERVER
    _observe.set_observer(Observer())
    try:
        out = flow.run()
    finally:
        _observe.set_observer(previous)
    assert out.status is RunStatus.cancelled and heard == [(out.run_id, "late")]


# -- models and tools ----------------------------------------------------------------------


def search(q: str) -> str:
    """Search for ``q``."""
    return f"found {q}"


def _run_one_tool_call(arguments: str) -> tuple[ScriptedModel, list[object]]:
    model = ScriptedModel(turns=[[ToolCall("c1", "search", arguments)], ["done"]])
    stream = Workflow("tools", steps=[Agent(model=model, tools=[search])]).run("hi", stream=True)
    events = list(stream)
    assert stream.output is not None and stream.output.status is RunStatus.completed, stream.output
    return model, events


def test_tool_arguments_nested_too_deep_for_json_are_an_error_result_not_a_crash() -> None:
    """``json.loads`` raises RecursionError, not JSONDecodeError, for deep nesting: the step failed."""
    model, _ = _run_one_tool_call("[" * 100_000 + "]" * 100_000)
    answer = model.calls[1][-1]
    assert answer["role"] == "tool" and answer["content"].startswith("Error: the arguments are not valid JSON")


def test_huge_unusable_tool_arguments_are_quoted_short() -> None:
    """The error quoted the model's whole argument text back to it, and into the event log."""
    model, events = _run_one_tool_call('{"q": "' + "x" * 1_000_000 + '", }')
    content = model.calls[1][-1]["content"]
    completed = [e for e in events if getattr(e, "event", None) == "tool_call_completed"]
    assert len(content) < 1000 and "1000011 characters" in content
    assert len(completed) == 1 and len(str(completed[0].error)) < 1000  # type: ignore[attr-defined]


def test_an_answer_failing_output_schema_is_quoted_short_in_the_error() -> None:
    """The error (event, record, ``WorkflowError``) carried the model's whole answer: 5 MB here."""
    from pydantic import BaseModel

    class Answer(BaseModel):
        x: int

    model = ScriptedModel(['{"x": "' + "y" * 5_000_000 + '"}'])
    out = Workflow("schema", steps=[Agent(model=model, output_schema=Answer)]).run("hi", stream=True)
    events = list(out)
    assert out.output is not None and out.output.status is RunStatus.error
    assert len(out.output.error or "") < 1000 and "5000009 characters" in (out.output.error or "")
    assert len(str(events[-1].error)) < 1000  # type: ignore[attr-defined]


def _in_connect() -> bool:
    """Whether some thread is blocked in a TCP connect (its innermost Python frame makes the call)."""
    frames = sys._current_frames().values()
    return any(frame.f_code.co_name in ("create_connection", "_connect") for frame in frames)


def test_a_cancel_during_the_tcp_connect_lands_at_once() -> None:
    """A server whose accept queue is full drops the SYN: the cancel waited for the connect timeout
    (60 s by default) before the run ended."""
    pytest.importorskip("httpx")
    import socket
    import time

    from threadflow.models import OpenAIChat
    from threadflow.testing import wait_until

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = [socket.socket() for _ in range(4)]  # fill the accept queue: later SYNs are dropped
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
    model = OpenAIChat("m", base_url=f"http://127.0.0.1:{port}/v1", timeout=WAIT * 2, max_retries=0)
    try:
        handle = Workflow("connect", steps=[Agent(model=model)]).run("hi", background=True)
        assert wait_until(_in_connect, WAIT)
        began = time.monotonic()
        assert handle.cancel("stop")
        assert handle.wait(WAIT) and handle.status is RunStatus.cancelled
        assert time.monotonic() - began < WAIT / 2
    finally:
        model.close()
        for sock in (*fillers, listener):
            sock.close()


# -- scale-out -----------------------------------------------------------------------------


def shout(step_input: StepInput) -> str:
    return str(step_input.input).upper()


def test_two_sessions_enqueueing_one_new_run_id_at_once_get_one_duplicate_run_error(pg_dsn: str) -> None:
    """``SELECT ... FOR UPDATE`` locks nothing when the row does not exist yet: both inserted, and the
    loser got psycopg's raw ``UniqueViolation`` instead of ``DuplicateRunError``."""
    pytest.importorskip("psycopg")
    from threadflow.exceptions import DuplicateRunError
    from threadflow.storage import PostgresStore

    stores = [PostgresStore(pg_dsn), PostgresStore(pg_dsn)]
    try:
        flows = [Workflow("q", steps=[shout], store=store) for store in stores]
        for attempt in range(10):
            outcomes = _enqueue_at_once(flows, f"dup-{attempt}")
            assert sorted(type(o).__name__ for o in outcomes) == ["DuplicateRunError", "str"], outcomes
            assert any(isinstance(o, DuplicateRunError) for o in outcomes)
    finally:
        for store in stores:
            store.close()


def _enqueue_at_once(flows: list[Workflow], run_id: str) -> list[object]:
    """Each flow enqueues ``run_id`` in a thread of its own, released together; the run ids or errors."""
    together = threading.Barrier(len(flows), timeout=WAIT)
    outcomes: list[object] = []

    def enqueue(flow: Workflow) -> None:
        together.wait()
        try:
            outcomes.append(flow.enqueue("x", run_id=run_id).run_id)
        except Exception as error:
            outcomes.append(error)

    threads = [threading.Thread(target=enqueue, args=(flow,)) for flow in flows]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    return outcomes


def test_a_cancel_answered_true_for_a_run_whose_owner_vanished_ends_it_cancelled(pg_dsn: str) -> None:
    """``request_cancel`` answers True ("orphaned") for a run whose owner stopped renewing its lease;
    the sweep that then ends such a run (not from the queue, so nobody resumes it) recorded it ``error``
    (OwnerLost): True did not mean cancelled."""
    pytest.importorskip("psycopg")
    import time

    from threadflow.events import WorkflowStartedEvent
    from threadflow.status import RunInfo
    from threadflow.storage import PostgresStore
    from threadflow.testing import wait_until

    front, sweeper, dead = PostgresStore(pg_dsn), PostgresStore(pg_dsn), PostgresStore(pg_dsn, lease_seconds=0.2)
    try:
        base = {"run_id": "vanished", "workflow_id": "plain", "workflow_name": "plain"}
        dead.run_created(RunInfo(**base, status=RunStatus.running, created_at=time.time()))
        dead.append(WorkflowStartedEvent(seq=1, created_at=time.time(), **base))
        dead.flush()
        dead._runs.clear()  # the process is gone: its lease stops being renewed
        assert wait_until(lambda: _lapsed(front, "vanished"), WAIT)
        assert front.request_cancel("vanished", "stop it") is True
        assert sweeper.end_orphans() == 1
        info = front.get_run("vanished")
        assert info is not None and info.status is RunStatus.cancelled and info.reason == "stop it"
        events = list(front.events("vanished"))
        assert [e.seq for e in events] == [1, 2] and events[-1].event == "workflow_cancelled"
    finally:
        for store in (front, sweeper, dead):
            store.close()


def test_a_run_whose_worker_died_before_its_first_event_still_logs_workflow_started_first(pg_dsn: str) -> None:
    """Claimed, then killed before its writer logged anything: the resumed log began with
    ``workflow_resumed`` at seq 1, failing ``check_run_events`` (``workflow_started`` first)."""
    pytest.importorskip("psycopg")
    from threadflow import Worker
    from threadflow.storage import PostgresStore
    from threadflow.testing import check_run_events, wait_until

    front, back, dead = PostgresStore(pg_dsn), PostgresStore(pg_dsn), PostgresStore(pg_dsn, lease_seconds=0.2)
    try:
        handle = Workflow("queued", steps=[shout], store=front).enqueue("hi")
        [claim] = dead.claim(["queued"], 1)
        dead.adopt(claim)
        dead._writer.holders = 0
        dead._runs.clear()
        assert wait_until(lambda: _lapsed(front, handle.run_id), WAIT)
        with Worker(Workflow("queued", steps=[shout], store=back), back, lease_seconds=1.0):
            assert handle.result(WAIT).content == "HI"
        events = check_run_events(front.events(handle.run_id))
        assert [e.event for e in events[:2]] == ["workflow_started", "workflow_resumed"]
    finally:
        for store in (front, back, dead):
            store.close()


def _lapsed(store: object, run_id: str) -> bool:
    """Whether the session owning ``run_id`` has let its lease lapse (read as the sweep reads it)."""
    from threadflow.storage.postgres._schema import NOW

    sql = (
        "SELECT NOT EXISTS (SELECT 1 FROM threadflow_sessions s WHERE s.session = r.session"
        f" AND s.lease_until >= {NOW}) FROM threadflow_runs r WHERE run_id = %s"
    )
    return bool(store._db.read(sql, (run_id,))[0][0])  # type: ignore[attr-defined]


# -- the dashboard and HTTP ----------------------------------------------------------------


@pytest.fixture
def open_server() -> Iterator[object]:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from threadflow.server import create_app

    with TestClient(create_app(Workflow("echo", steps=[lambda si: si.input]))) as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example", "Content-Type": "text/plain"},
        {"Origin": "http://localhost:3000", "Content-Type": "text/plain"},  # another origin on this machine
        {"Origin": "null", "Content-Type": "text/plain"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://testserver"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_without_an_api_key_another_sites_page_cannot_start_runs(open_server: object, headers: dict[str, str]) -> None:
    """A page of any site could start (and cancel) runs on a key-less local server with a "simple"
    text/plain POST, which browsers send without a CORS preflight."""
    client = open_server
    answer = client.post("/workflows/echo/runs", content=b'{"input": "pwned"}', headers=headers)  # type: ignore[attr-defined]
    assert answer.status_code == 403, answer.text
    cancel = client.post("/workflows/echo/runs/x/cancel", content=b"{}", headers=headers)  # type: ignore[attr-defined]
    assert cancel.status_code == 403


def test_without_an_api_key_the_own_page_and_programs_still_start_runs(open_server: object) -> None:
    client = open_server
    for headers in (
        {},  # a program
        {"Origin": "http://testserver"},  # the dashboard, an older browser
        {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
    ):
        answer = client.post("/workflows/echo/runs", json={"input": 1}, headers=headers)  # type: ignore[attr-defined]
        assert answer.status_code == 202, (headers, answer.text)
    assert client.get("/runs", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # type: ignore[attr-defined]


def test_a_session_cookie_is_dead_after_logout() -> None:
    """Logging out only asked the browser to drop the cookie; a copy of it stayed valid for 12 hours."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from threadflow.server import create_app
    from threadflow.server._auth import CSRF_HEADER, SESSION_COOKIE

    with TestClient(create_app(Workflow("echo", steps=[lambda si: si.input]), api_key="k3y")) as client:
        csrf = client.post("/session", json={"api_key": "k3y"}).json()["csrf"]
        token = client.cookies[SESSION_COOKIE]
        other = client.post("/session", json={"api_key": "k3y"})  # a second browser
        assert client.delete("/session", headers={CSRF_HEADER: other.json()["csrf"]}).status_code == 200
        client.cookies.set(SESSION_COOKIE, token)
        assert client.get("/runs").status_code == 200  # the first browser's session is its own
        assert client.delete("/session", headers={CSRF_HEADER: csrf}).status_code == 200
        client.cookies.set(SESSION_COOKIE, token)  # replayed
        assert client.get("/runs").status_code == 401
        assert client.post("/workflows/echo/runs", json={}, headers={CSRF_HEADER: csrf}).status_code == 401


@pytest.mark.parametrize(
    "raw", [b"[" * 20_000, b'[NaN, "r"]', b'[Infinity, "r"]', b'[-Infinity, "r"]', b'[1e999, "r"]']
)
def test_a_hostile_runs_cursor_is_a_422_not_a_500(open_server: object, raw: bytes) -> None:
    """A cursor nested too deep made ``json.loads`` raise RecursionError: a 500. Non-finite times were taken."""
    import base64

    cursor = base64.urlsafe_b64encode(raw).decode()
    answer = open_server.get("/runs", params={"cursor": cursor})  # type: ignore[attr-defined]
    assert answer.status_code == 422, answer.text
