"""How an SSE response is sent: from the request's own task, the events already logged in the first send.

Under load every turn of the event loop is long, so these pin the turns a
stream no longer waits for (a task group before the headers, a pump task
before the first batch), and what the response now does itself (keep-alive comments).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _busy_pool import WAIT

from threadflow import RunHandle, Workflow, get_context
from threadflow.events import RunContentEvent, WorkflowCompletedEvent, WorkflowStartedEvent
from threadflow.server import _sse, create_app
from threadflow.server._feeds import Feed, batched


class Gate:
    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()

    def step(self, step_input: Any) -> Iterator[str]:
        yield "first"
        self.inside.set()
        get_context().wait(self.release, timeout=WAIT)
        yield "second"


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


# -- the first batch ----------------------------------------------------------------------------


def test_the_events_already_logged_are_the_first_batch_without_a_turn_of_the_loop() -> None:
    """The stream's first look finds them: it does not wait for a pump task to start on a later turn."""
    gate = Gate()
    handle = _gated("first-batch", gate).run(background=True)
    assert gate.inside.wait(WAIT)  # started, and its first token logged

    async def first_batch() -> list[Any]:
        batches: Any = batched(handle.aevents(), Feed())  # an async generator: it has aclose()
        step = batches.__anext__()
        try:
            with pytest.raises(StopIteration) as ready:  # completed without suspending
                step.send(None)
        finally:
            step.close()
            await batches.aclose()
        return list(ready.value.value)

    try:
        batch = asyncio.run(first_batch())
    finally:
        gate.release.set()
    assert isinstance(batch[0], WorkflowStartedEvent)
    assert [event.content for event in batch if isinstance(event, RunContentEvent)] == ["first"]


def test_a_stream_started_at_once_follows_the_run_to_its_end() -> None:
    """The pump, stepped by hand until it waits, carries on as a task: the later events still come."""
    gate = Gate()
    handle = _gated("carry-on", gate).run(background=True)
    assert gate.inside.wait(WAIT)

    async def all_batches(handle: RunHandle) -> list[Any]:
        seen: list[Any] = []
        async for batch in batched(handle.aevents(), Feed()):
            seen.extend(batch)
            if not gate.release.is_set():
                gate.release.set()  # the pump is waiting for more now
        return seen

    try:
        events = asyncio.run(asyncio.wait_for(all_batches(handle), WAIT))
    finally:
        gate.release.set()
    assert [event.content for event in events if isinstance(event, RunContentEvent)] == ["first", "second"]
    assert isinstance(events[-1], WorkflowCompletedEvent)
    assert [event.seq for event in events] == list(range(1, len(events) + 1))


def test_closing_a_stream_at_once_ends_the_pump() -> None:
    """Closed right after its first batch (before the pump's task has run): the pump's follow still ends."""
    gate = Gate()
    handle = _gated("closing", gate).run(background=True)
    assert gate.inside.wait(WAIT)
    ended = asyncio.Event()

    async def follow_then_mark() -> Any:
        try:
            async for event in handle.aevents():
                yield event
        finally:
            ended.set()

    async def close_after_first() -> None:
        batches: Any = batched(follow_then_mark(), Feed())
        await batches.__anext__()
        await batches.aclose()
        await ended.wait()

    try:
        asyncio.run(asyncio.wait_for(close_after_first(), WAIT))
    finally:
        gate.release.set()


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
