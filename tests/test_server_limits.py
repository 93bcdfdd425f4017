"""The HTTP edge under hostile or odd input (issue 8, item 14): body limits, cut-off bodies, odd callbacks, docs."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from threadflow import RunStatus, Workflow, get_context
from threadflow.client import Client
from threadflow.events import WorkflowCancelledEvent
from threadflow.server import DEFAULT_MAX_BODY_BYTES, create_app, running_server

WAIT = 10.0


def echo(step_input: Any) -> Any:
    return step_input.input


ECHO = Workflow("echo", steps=[echo])


def raw_request(url: str, head: str, body: bytes = b"", *, close: bool = False) -> bytes:
    """Send ``head`` and ``body`` on a bare socket and read what the server answers (until it closes or 5 s)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(head.encode() + body)
        if close:
            return b""
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.split(b"\r\n\r\n", 1)[1].endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def post_head(length: str | None = None, *, path: str = "/workflows/echo/runs") -> str:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"


@pytest.fixture(scope="module")
def small() -> Iterator[str]:
    with running_server(create_app(ECHO, max_body_bytes=1024)) as url:
        yield url


# -- request body size ----------------------------------------------------------------------


def test_a_body_declared_over_the_default_limit_is_413_before_it_is_sent() -> None:
    """Only the head and 1 KiB of an 11 MiB body are sent: the 413 comes at once, not after the rest."""
    with running_server(create_app(ECHO)) as url:
        answer = raw_request(url, post_head(str(DEFAULT_MAX_BODY_BYTES + 1)), b'{"input": "' + b"x" * 1024)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert b"larger than this server accepts (10485760 bytes)" in answer


def test_a_chunked_body_over_the_limit_is_413_while_it_arrives(small: str) -> None:
    """No Content-Length: counted as it comes; the body never ends, yet the 413 arrives."""
    chunk = b"[" * 600
    framed = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 2  # 1200 bytes, and no last chunk
    answer = raw_request(small, post_head(None), framed)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_body_at_the_limit_is_read(small: str) -> None:
    body = json.dumps({"input": "x" * (1024 - len('{"input": ""}'))}).encode()
    assert len(body) == 1024
    with httpx.Client(base_url=small, timeout=WAIT) as http:
        assert http.post("/workflows/echo/runs", content=body).status_code == 202
        assert http.post("/workflows/echo/runs", content=body + b" ").status_code == 413
        assert http.post("/workflows/echo/runs/r/cancel", content=b" " * 1025).status_code == 413


def test_create_app_checks_max_body_bytes() -> None:
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="max_body_bytes"):
            create_app(ECHO, max_body_bytes=bad)  # type: ignore[arg-type]


# -- a body cut off mid-way ------------------------------------------------------------------------


class Records(logging.Handler):
    """Every record at WARNING or above; ``arrived`` is set by the first."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.arrived = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.arrived.set()


def test_a_body_cut_off_mid_way_logs_one_line_not_a_traceback() -> None:
    records = Records()
    logging.getLogger().addHandler(records)
    try:
        with running_server(create_app(ECHO)) as url:
            raw_request(url, post_head("100"), b'{"input": ', close=True)  # 10 of 100 bytes, then gone
            assert records.arrived.wait(WAIT)
    finally:
        logging.getLogger().removeHandler(records)
    [record] = records.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "left before sending the whole body" in record.getMessage()
    assert "\n" not in record.getMessage()


# -- an on_cancel callback that raises SystemExit --------------------------------------------------


def exits_on_cancel(step_input: Any) -> str:
    ctx = get_context()

    def leave() -> None:
        raise SystemExit("a callback that exits")

    ctx.on_cancel(leave)
    STUBBORN_INSIDE.set()
    ctx.wait()
    return "never"


STUBBORN_INSIDE = threading.Event()
STUBBORN = Workflow("stubborn", steps=[exits_on_cancel])


def test_cancel_is_200_when_an_on_cancel_callback_raises_system_exit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="threadflow")  # the core logs the callback's exception
    with running_server(create_app(STUBBORN)) as url, Client(url) as client:
        run_id = client.start("stubborn")
        assert STUBBORN_INSIDE.wait(WAIT)
        response = httpx.post(f"{url}/workflows/stubborn/runs/{run_id}/cancel", timeout=WAIT)
        assert response.status_code == 200, response.text
        assert response.json()["status"] in {"cancelling", "cancelled"}
        terminal = list(client.events("stubborn", run_id))[-1]
        info = client.get_run("stubborn", run_id)
    assert isinstance(terminal, WorkflowCancelledEvent)
    assert info is not None and info.status is RunStatus.cancelled


# -- the OpenAPI schema documents every answer -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "codes"),
    [
        ("get", "/workflows", {"200", "401"}),
        ("post", "/workflows/{workflow_id}/runs", {"200", "202", "400", "401", "404", "409", "413", "422"}),
        ("get", "/workflows/{workflow_id}/runs/{run_id}", {"200", "401", "404", "422"}),
        ("get", "/workflows/{workflow_id}/runs/{run_id}/events", {"200", "401", "404", "422"}),
        ("post", "/workflows/{workflow_id}/runs/{run_id}/cancel", {"200", "400", "401", "404", "409", "413", "422"}),
    ],
)
def test_the_schema_documents_each_routes_answers(method: str, path: str, codes: set[str]) -> None:
    responses = create_app(ECHO).openapi()["paths"][path][method]["responses"]
    assert set(responses) == codes
    assert all(answer["description"] for answer in responses.values())


def test_the_schema_says_streams_are_event_streams() -> None:
    paths = create_app(ECHO).openapi()["paths"]
    assert "text/event-stream" in paths["/workflows/{workflow_id}/runs"]["post"]["responses"]["200"]["content"]
    events = paths["/workflows/{workflow_id}/runs/{run_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
