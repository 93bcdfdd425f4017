"""How an SSE response is sent: from the request's own task, with keep-alive comments while the run is quiet.

Under load every turn of the event loop is long, so these pin the turns a
stream no longer waits for (a task group before the headers, a pump task
before the first batch), and what the response now does itself (keep-alive comments).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _busy_pool import WAIT
from test_abatches import Gate

from threadflow import Workflow
from threadflow.server import _sse, create_app


def _gated(name: str, gate: Gate, **options: Any) -> Workflow:
    return Workflow(name, steps=[gate.step], **options)


def _scope(method: str, path: str, body: bytes = b"") -> dict[str, Any]:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b""}
    return scope | {"headers": headers, "http_version": "1.1", "scheme": "http", "server": ("t", 80), "root_path": ""}


async def _call(app: Any, scope: dict[str, Any], body: bytes, on_send: Any) -> None:
    """Call the ASGI app directly; the client never leaves (``receive`` waits after the body)."""
    never = asyncio.Event()
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        on_send(message)

    await asyncio.wait_for(app(scope, receive, send), WAIT)


# -- the response ---------------------------------------------------------------------------------


def test_a_quiet_stream_sends_keep_alive_comments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sse, "KEEP_ALIVE_SECONDS", 0.01)
    gate = Gate()
    app = create_app(_gated("quiet", gate))
    bodies: list[bytes] = []

    def on_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])
            if message["body"].startswith(b": keep-alive"):
                gate.release.set()  # one came while the run was quiet: let it end

    body = b'{"stream": true}'
    try:
        asyncio.run(_call(app, _scope("POST", "/workflows/quiet/runs", body), body, on_send))
    finally:
        gate.release.set()
    assert b": keep-alive\n\n" in bodies
    assert b'"workflow_completed"' in b"".join(bodies)
    assert bodies[-1] == b""  # the body was ended, and nothing was sent after it
