"""``threadflow.client.Client``: its SSE parsing, its answers, and its errors.

The parser is checked against canned responses (httpx's MockTransport); the
behaviour against a real uvicorn server on 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from threadflow import CancellationError, DuplicateRunError, RunStatus, Workflow, get_context
from threadflow.client import Client, EventStream
from threadflow.events import (
    RunContentEvent,
    WorkflowCancelledEvent,
    WorkflowCompletedEvent,
    WorkflowStartedEvent,
)
from threadflow.server import create_app, running_server

WAIT = 10.0


def started(seq: int = 1, run_id: str = "r") -> WorkflowStartedEvent:
    return WorkflowStartedEvent(run_id=run_id, workflow_id="w", workflow_name="w", seq=seq, created_at=1.0)


def completed(seq: int, content: Any = None) -> WorkflowCompletedEvent:
    return WorkflowCompletedEvent(
        run_id="r", workflow_id="w", workflow_name="w", seq=seq, created_at=2.0, content=content
    )


def canned(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Client:
    """A client whose every request is answered with ``body``."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers or {"x-threadflow-run-id": "r%2F1"})

    return Client("http://threadflow.test", transport=httpx.MockTransport(answer))


# -- parsing server-sent events ---------------------------------------------------


def test_stream_parses_data_fields_into_events() -> None:
    body = (
        f": a keep-alive comment\r\nid: 1\r\ndata: {started().model_dump_json()}\r\n\r\n"
        f"event: ignored\nretry: 10\ndata:{completed(2, 'ok').model_dump_json()}\n\n"
        f"data: {started(3).model_dump_json()}\n\n"  # after the terminal event: never read
    ).encode()
    with canned(body) as client:
        stream = client.stream("w")
        assert stream.run_id == "r/1"  # the header is percent-encoded
        assert list(stream) == [started(), completed(2, "ok")]


def test_data_may_hold_characters_str_splitlines_would_split_at() -> None:
    content = "a\u2028b\x85c\x1cd\u2029e\x0bf"
    body = f"data: {started().model_dump_json()}\n\ndata: {completed(2, content).model_dump_json()}\n\n"
    with canned(body.encode()) as client:
        events = list(client.stream("w"))
    assert isinstance(events[-1], WorkflowCompletedEvent)
    assert events[-1].content == content


def test_a_crlf_split_across_chunks_is_one_line_break() -> None:
    message = f"data: {started().model_dump_json()}\r\n\r\ndata: {completed(2).model_dump_json()}\r\n\r\n".encode()
    cut = message.index(b"\r\n") + 1  # between the \r and the \n

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter([message[:cut], message[cut:]]))

    with Client("http://threadflow.test", transport=httpx.MockTransport(answer)) as client:
        assert list(client.events("w", "r")) == [started(), completed(2)]


def test_a_body_that_ends_without_a_terminal_event_ends_the_stream() -> None:
    with canned(f'data: {started().model_dump_json()}\n\ndata: {{"unfinished'.encode()) as client:
        assert list(client.events("w", "r")) == [started()]


def test_a_stream_the_server_interrupts_raises_naming_the_last_seq() -> None:
    """A stopping server ends the stream with ``stream_interrupted``: not the run's end, so it raises."""
    body = (
        f"id: 1\ndata: {started().model_dump_json()}\n\n"
        'event: stream_interrupted\ndata: {"detail": "the server is stopping"}\n\n'
    ).encode()
    with canned(body) as client:
        events = client.events("w", "r")
        assert next(events) == started()
        expected = r"run 'r/1' was interrupted: the server is stopping \(last seq received: 1\)"
        with pytest.raises(httpx.RemoteProtocolError, match=expected):
            next(events)


# -- answers and errors -----------------------------------------------------------------


@pytest.mark.parametrize(("status", "expected"), [(200, True), (404, False), (409, False)])
def test_cancel_run_answers_true_or_false(status: int, expected: bool) -> None:
    with canned(b'{"detail": "x", "run_id": "r", "status": "completed"}', status=status) as client:
        assert client.cancel_run("w", "r", reason="why") is expected


@pytest.mark.parametrize("status", [401, 422, 500])
def test_cancel_run_raises_for_other_answers_naming_the_detail(status: int) -> None:
    with canned(b'{"detail": "the reason it says"}', status=status) as client:
        with pytest.raises(httpx.HTTPStatusError, match=f"{status}.*the reason it says"):
            client.cancel_run("w", "r")


def test_cancel_run_checks_the_reason_first() -> None:
    with canned(b"{}") as client, pytest.raises(TypeError, match="reason"):
        client.cancel_run("w", "r", reason=5)  # type: ignore[arg-type]


def test_transport_errors_raise() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: connections are refused
        with Client(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(httpx.TransportError):
                client.cancel_run("w", "r")
            with pytest.raises(httpx.TransportError):
                client.stream("w")


def test_paths_are_percent_encoded() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(404, json={"detail": "no"})

    with Client("http://threadflow.test/", transport=httpx.MockTransport(answer)) as client:
        assert client.get_run("a b/c", "r?#1") is None
    assert seen == ["/workflows/a%20b%2Fc/runs/r%3F%231"]


def test_the_api_key_is_sent_as_a_bearer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json=[])

    transport = httpx.MockTransport(answer)
    monkeypatch.delenv("THREADFLOW_API_KEY", raising=False)
    with Client("http://t", transport=transport) as anonymous, Client("http://t", "k1", transport=transport) as keyed:
        anonymous.list_workflows()
        keyed.list_workflows()
    monkeypatch.setenv("THREADFLOW_API_KEY", "k2")
    with Client("http://t", transport=transport) as from_env:
        from_env.list_workflows()
    assert seen == [None, "Bearer k1", "Bearer k2"]


# -- against a real server ----------------------------------------------------------------

cleaned: dict[str, threading.Event] = {}
inside: dict[str, threading.Event] = {}


def tokens(step_input: Any) -> Iterator[str]:
    """Streams ``input`` tokens, then waits for a cancel if ``input`` is negative."""
    run_id = step_input.run_id
    try:
        for n in range(abs(step_input.input)):
            yield f"t{n} "
        if step_input.input < 0:
            inside[run_id].set()
            get_context().wait()
    except CancellationError:
        cleaned[run_id].set()
        raise


TOKENS = Workflow("tokens", steps=[tokens])


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with running_server(create_app(TOKENS)) as url, Client(url) as c:
        yield c


def expect(run_id: str) -> str:
    cleaned[run_id] = threading.Event()
    inside[run_id] = threading.Event()
    return run_id


def test_stream_yields_typed_events_and_knows_the_run_id_first(client: Client) -> None:
    with client.stream("tokens", 3, run_id=expect("c-1")) as stream:
        assert isinstance(stream, EventStream) and stream.run_id == "c-1"
        events = list(stream)
    assert [e.content for e in events if isinstance(e, RunContentEvent)] == ["t0 ", "t1 ", "t2 "]
    assert isinstance(events[-1], WorkflowCompletedEvent) and events[-1].content == "t0 t1 t2 "


def test_stream_run_id_is_the_servers_when_not_chosen(client: Client) -> None:
    with client.stream("tokens", 1) as stream:
        events = list(stream)
    assert stream.run_id == events[0].run_id != ""


@pytest.mark.parametrize("how", ["close", "with", "drop"])
def test_leaving_a_stream_early_cancels_the_run(client: Client, how: str) -> None:
    run_id = expect(f"c-leave-{how}")
    if how == "close":
        stream = client.stream("tokens", -2, run_id=run_id)
        next(stream)
        stream.close()
    elif how == "with":
        with client.stream("tokens", -2, run_id=run_id) as stream:
            next(stream)
    else:
        next(client.stream("tokens", -2, run_id=run_id))  # the stream is garbage at once
    assert cleaned[run_id].wait(WAIT)
    terminal = list(client.events("tokens", run_id))[-1]
    assert isinstance(terminal, WorkflowCancelledEvent) and terminal.cause == "stream_closed"


def test_start_get_run_cancel_run(client: Client) -> None:
    run_id = client.start("tokens", -1, run_id=expect("c-bg"))
    assert run_id == "c-bg"
    assert inside[run_id].wait(WAIT)
    info = client.get_run("tokens", run_id)
    assert info is not None and info.status is RunStatus.waiting
    assert client.cancel_run("tokens", run_id, reason="over HTTP") is True
    assert cleaned[run_id].wait(WAIT)
    terminal = list(client.events("tokens", run_id))[-1]
    assert isinstance(terminal, WorkflowCancelledEvent) and terminal.reason == "over HTTP"
    assert client.cancel_run("tokens", run_id) is False  # 409: it has ended
    assert client.cancel_run("tokens", "no-such-run") is False  # 404
    assert client.cancel_run("no-such-workflow", run_id) is False  # 404
    assert client.get_run("tokens", "no-such-run") is None


def test_events_after_seq_and_closing_a_reader(client: Client) -> None:
    run_id = client.start("tokens", 2)
    everything = list(client.events("tokens", run_id))
    assert list(client.events("tokens", run_id, after_seq=3)) == everything[3:]
    with client.events("tokens", run_id) as reader:
        assert next(reader) == everything[0]
    with pytest.raises(httpx.HTTPStatusError, match="422"):
        client.events("tokens", run_id, after_seq=-1)


def test_a_duplicate_active_run_id_raises_duplicate_run_error(client: Client) -> None:
    run_id = client.start("tokens", -1, run_id=expect("c-dup"))
    assert inside[run_id].wait(WAIT)
    with pytest.raises(DuplicateRunError):
        client.start("tokens", 1, run_id=run_id)
    with pytest.raises(DuplicateRunError):
        client.stream("tokens", 1, run_id=run_id)
    assert client.cancel_run("tokens", run_id)


def test_unknown_workflows_and_bad_input_raise_http_errors(client: Client) -> None:
    with pytest.raises(httpx.HTTPStatusError, match=r"404.*no workflow 'nope'"):
        client.start("nope")
    with pytest.raises(httpx.HTTPStatusError, match="422"):
        client.start("tokens", run_id="a/b")
    expected = {"id": "tokens", "name": "tokens", "description": None, "steps": ["tokens"], "workflow_id": "tokens"}
    assert client.list_workflows() == [expected]
