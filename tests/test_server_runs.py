"""Listing runs over HTTP (``GET /runs``, ``GET /workflows/{id}/runs``), the live ``/runs/feed``, browser sessions."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from threadflow import Workflow, WorkflowError, get_context
from threadflow.server import create_app, running_server
from threadflow.server._auth import CSRF_HEADER, SESSION_COOKIE, Sessions
from threadflow.server._status_feed import changes
from threadflow.storage import MemoryStore

WAIT = 10.0


def echo(step_input: Any) -> Any:
    return step_input


def other(step_input: Any) -> str:
    raise ValueError("no")


@pytest.fixture
def app_client() -> Iterator[tuple[Workflow, TestClient]]:
    store = MemoryStore()
    workflow = Workflow("echo", steps=[echo], store=store)
    failing = Workflow("failing", steps=[other], store=store)
    with TestClient(create_app([workflow, failing])) as client:
        client.app_state = {"failing": failing}  # type: ignore[attr-defined]  # the test below needs it
        yield workflow, client


def test_runs_are_listed_newest_first_and_paged_without_gaps_or_repeats(
    app_client: tuple[Workflow, TestClient],
) -> None:
    workflow, client = app_client
    ids = [workflow.run(i, run_id=f"r{i}").run_id for i in range(7)]
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/runs", params=params).json()
        seen += [run["run_id"] for run in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    assert client.get("/runs", params={"limit": 7}).json()["next_cursor"] is None


def test_runs_are_filtered_by_status_and_workflow(app_client: tuple[Workflow, TestClient]) -> None:
    workflow, client = app_client
    workflow.run(1, run_id="ok-1")
    with pytest.raises(WorkflowError):
        client.app_state["failing"].run(None, run_id="bad-1")  # type: ignore[attr-defined]
    assert [r["run_id"] for r in client.get("/runs", params={"status": "error"}).json()["runs"]] == ["bad-1"]
    assert [r["run_id"] for r in client.get("/runs", params={"workflow": "echo"}).json()["runs"]] == ["ok-1"]
    assert [r["run_id"] for r in client.get("/workflows/failing/runs").json()["runs"]] == ["bad-1"]
    assert client.get("/workflows/nope/runs").status_code == 404


@pytest.mark.parametrize(
    "query",
    [{"cursor": "not-a-cursor"}, {"cursor": "WzEsMl0="}, {"status": "done"}, {"limit": 0}, {"limit": 501}],
)
def test_bad_list_queries_are_422(app_client: tuple[Workflow, TestClient], query: dict[str, Any]) -> None:
    assert app_client[1].get("/runs", params=query).status_code == 422


def test_an_active_run_is_listed_with_its_live_record() -> None:
    inside, release = threading.Event(), threading.Event()

    def parked(step_input: Any) -> str:
        inside.set()
        get_context().wait(release)
        return "done"

    workflow = Workflow("parked", steps=[parked], store=MemoryStore())  # it records only ended runs
    with TestClient(create_app(workflow)) as client:
        handle = workflow.run(None, background=True, run_id="live-1")
        try:
            assert inside.wait(WAIT)
            (run,) = client.get("/runs").json()["runs"]
            assert (run["run_id"], run["status"], run["step_name"]) == ("live-1", "waiting", "parked")
        finally:
            release.set()
            handle.wait(WAIT)
        assert client.get("/runs").json()["runs"][0]["status"] == "completed"


def test_changes_send_new_and_changed_runs_oldest_first_and_gone_ones(app_client: tuple[Workflow, TestClient]) -> None:
    workflow = app_client[0]
    for i in range(2):
        workflow.run(i, run_id=f"c{i}")
    first, second = workflow.get_run("c0"), workflow.get_run("c1")
    assert first is not None and second is not None
    text = changes({}, {second.run_id: second, first.run_id: first})
    assert [json.loads(line[6:])["run_id"] for line in text.splitlines() if line.startswith("data:")] == ["c0", "c1"]
    assert changes({first.run_id: first}, {first.run_id: first}) == ""
    assert changes({first.run_id: first}, {}) == 'event: gone\ndata: {"run_id": "c0"}\n\n'


def _feed_messages(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    kind = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            yield kind, json.loads(line[6:])


def test_the_feed_sends_the_runs_then_their_changes() -> None:
    inside, release = threading.Event(), threading.Event()

    def parked(step_input: Any) -> str:
        inside.set()
        get_context().wait(release)
        return "done"

    workflow = Workflow("feedy", steps=[parked], store=MemoryStore())
    with running_server(create_app(workflow)) as url, httpx.Client(base_url=url, timeout=WAIT) as http:
        with http.stream("GET", "/runs/feed") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            handle = workflow.run(None, background=True, run_id="fed-1")
            try:
                statuses: list[str] = []
                for kind, data in _feed_messages(response):
                    assert kind == "run" and data["run_id"] == "fed-1"
                    statuses.append(data["status"])
                    if data["status"] == "waiting":
                        release.set()
                    if data["status"] == "completed":
                        break
            finally:
                release.set()
                handle.wait(WAIT)
    assert statuses[-1] == "completed" and "waiting" in statuses


# -- browser sessions ---------------------------------------------------------------


@pytest.fixture
def keyed() -> Iterator[TestClient]:
    with TestClient(create_app(Workflow("echo", steps=[echo]), api_key="k3y")) as client:
        yield client


def test_without_a_session_only_the_login_form_is_served(keyed: TestClient) -> None:
    page = keyed.get("/")
    assert page.status_code == 200 and 'id="api-key"' in page.text and "app.js" not in page.text
    for path in ("/runs", "/runs/feed", "/static/app.js", "/workflows", "/session", "/metrics"):
        assert keyed.get(path).status_code == 401, path
    assert keyed.get("/static/login.js").status_code == 200


def test_a_session_cookie_opens_reads_and_a_csrf_token_opens_changes(keyed: TestClient) -> None:
    assert keyed.post("/session", json={"api_key": "wrong"}).status_code == 401
    assert keyed.post("/session", content=b"not json").status_code == 401
    login = keyed.post("/session", json={"api_key": "k3y"})
    assert login.status_code == 200
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    csrf = login.json()["csrf"]
    assert keyed.get("/session").json() == {"auth": True, "csrf": csrf}
    assert 'id="runs"' in keyed.get("/").text
    assert keyed.get("/runs").status_code == 200
    assert keyed.post("/workflows/echo/runs", json={}).status_code == 403
    assert keyed.post("/workflows/echo/runs", json={}, headers={CSRF_HEADER: "x" * 64}).status_code == 403
    assert keyed.post("/workflows/echo/runs", json={}, headers={CSRF_HEADER: csrf}).status_code == 202
    assert keyed.delete("/session").status_code == 403  # logging out is a change too
    assert keyed.delete("/session", headers={CSRF_HEADER: csrf}).status_code == 200
    assert keyed.get("/runs").status_code == 401


def test_a_bearer_token_needs_no_csrf_header(keyed: TestClient) -> None:
    bearer = {"Authorization": "Bearer k3y"}
    assert keyed.post("/workflows/echo/runs", json={}, headers=bearer).status_code == 202
    assert keyed.get("/session", headers=bearer).status_code == 401  # no session to describe


def test_forged_expired_and_malformed_sessions_are_refused(keyed: TestClient) -> None:
    other = Sessions()
    for token in (other.new(), "1.2.3", "", "a.b", '"unterminated'):
        keyed.cookies.set(SESSION_COOKIE, token)
        assert keyed.get("/runs").status_code == 401, token
    sessions = Sessions()
    token = sessions.new()
    expiry, _, rest = token.partition(".")
    assert sessions.nonce(token) is not None
    assert sessions.nonce(f"{int(expiry) - 13 * 3600}.{rest}") is None  # a signature over another expiry
    assert keyed.get("/", headers={"Cookie": "threadflow_session=\x7f; x"}).status_code == 200  # the login form


def test_without_a_key_the_session_route_says_so() -> None:
    with TestClient(create_app(Workflow("echo", steps=[echo]))) as client:
        assert client.get("/session").json() == {"auth": False, "csrf": None}
        assert client.post("/workflows/echo/runs", json={}).status_code == 202
        assert 'id="runs"' in client.get("/").text
