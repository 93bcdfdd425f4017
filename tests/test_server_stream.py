"""How an SSE response is sent: from the request's own task, the events already logged in the first send.

Under load every turn of the event loop is long, so these pin the turns a
stream no longer waits for (a task group before the headers, a pump task
before the first batch), and what the response now does itself (keep-alive comments).
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _busy_pool import WAIT

from threadflow import RunHandle, Workflow, get_context
from threadflow._runlog import EventLog
from threadflow.events import RunContentEvent, WorkflowCompletedEvent, WorkflowStartedEvent
from threadflow.server import _feeds, _sse, create_app
from threadflow.server._feeds import Feed, log_batches


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
    """The stream reads the run's log itself: the events logged so far go out before any wait."""
    gate = Gate()
    handle = _gated("first-batch", gate).run(background=True)
    assert gate.inside.wait(WAIT)  # started, and its first token logged

    async def first_batch() -> list[Any]:
        batches: Any = log_batches(handle._log_now(), 0, Feed())  # an async generator: it has aclose()
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


def test_a_stream_follows_the_run_to_its_end() -> None:
    gate = Gate()
    handle = _gated("carry-on", gate).run(background=True)
    assert gate.inside.wait(WAIT)

    async def all_batches(handle: RunHandle) -> list[Any]:
        seen: list[Any] = []
        async for batch in log_batches(handle._log_now(), 0, Feed()):
            seen.extend(batch)
            if not gate.release.is_set():
                gate.release.set()  # the stream is waiting for more now
        return seen

    try:
        events = asyncio.run(asyncio.wait_for(all_batches(handle), WAIT))
    finally:
        gate.release.set()
    assert [event.content for event in events if isinstance(event, RunContentEvent)] == ["first", "second"]
    assert isinstance(events[-1], WorkflowCompletedEvent)
    assert [event.seq for event in events] == list(range(1, len(events) + 1))


def test_a_stream_replays_after_the_seq_it_is_given_and_ends_at_once_past_the_end() -> None:
    handle = _gated("replay", Gate()).run(background=True)
    handle.cancel()
    assert handle.wait(WAIT)

    async def replayed(after_seq: int) -> list[Any]:
        return [event async for batch in log_batches(handle._log_now(), after_seq, Feed()) for event in batch]

    every = asyncio.run(replayed(0))
    assert [event.seq for event in asyncio.run(replayed(2))] == [event.seq for event in every[2:]]
    assert asyncio.run(replayed(len(every))) == []
    assert asyncio.run(replayed(len(every) + 5)) == []


def test_closing_a_stream_removes_its_listener_from_the_log() -> None:
    """Closed while waiting for events: the run's thread no longer calls into the gone stream."""
    gate = Gate()
    handle = _gated("closing", gate).run(background=True)
    assert gate.inside.wait(WAIT)
    log = handle._log_now()

    async def close_while_waiting() -> None:
        batches: Any = log_batches(log, 0, Feed())
        await batches.__anext__()
        waiting = asyncio.ensure_future(batches.__anext__())
        await asyncio.sleep(0)  # it now waits for the next event
        assert len(log._listeners) == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await batches.aclose()

    try:
        asyncio.run(asyncio.wait_for(close_while_waiting(), WAIT))
        assert log._listeners == ()
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


# -- no wake-up lost between the run's thread and the stream ------------------------------------


def jittery(step_input: Any) -> Iterator[str]:
    """``input`` tokens, each after a pause of 0-200 µs or none: the stream sees bursts and quiet spells."""
    pauses = random.Random(step_input.input[1])
    for n in range(step_input.input[0]):
        if pauses.random() < 0.5:
            time.sleep(pauses.random() * 0.0002)
        yield str(n)


@pytest.mark.stress
@pytest.mark.parametrize("gap", [0.0, 0.0005])
def test_every_event_reaches_a_stream_while_its_run_appends(monkeypatch: pytest.MonkeyPatch, gap: float) -> None:
    """200 runs, each followed while it appends: a lost wake-up would leave its stream waiting for ever.

    With no gap the stream only ever waits for the next event; with a gap it
    also gathers (waits for the terminal event or a full batch, or its timer).
    """
    monkeypatch.setattr(_feeds, "_SEND_GAP_PER_STREAM", gap)
    monkeypatch.setattr(_feeds, "_MAX_BATCH", 8)
    workflow = Workflow("jittery", steps=[jittery])

    async def all_runs() -> None:
        for seed in range(200):
            sizes: list[int] = []
            handle = workflow.run([50, seed], background=True)
            seen: list[Any] = []
            async for batch in log_batches(handle._log_now(), 0, Feed()):
                sizes.append(len(batch))
                seen.extend(batch)
            assert [event.seq for event in seen] == list(range(1, len(seen) + 1))
            assert [e.content for e in seen if isinstance(e, RunContentEvent)] == [str(n) for n in range(50)]
            assert isinstance(seen[-1], WorkflowCompletedEvent)
            assert max(sizes) <= 8

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the GIL changes hands between almost any two lines: the races happen
    try:
        asyncio.run(asyncio.wait_for(all_runs(), 6 * WAIT))
    finally:
        sys.setswitchinterval(interval)


def test_an_event_appended_just_before_the_stream_waits_is_not_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal event lands after the stream looked and before it says what it waits for: it still goes out.

    (The run's thread saw nobody waiting, so it woke nobody: the stream's own
    last look is what finds the event.)
    """
    monkeypatch.setattr(_feeds, "_SEND_GAP_PER_STREAM", 0.0)
    handle = Workflow("finished", steps=[jittery]).run([3, 0], background=True)
    assert handle.wait(WAIT)
    events = handle._log_now().since(0)
    log = EventLog()
    for event in events[:-1]:
        log.append(event)
    original = _feeds._Watch.wait

    async def terminal_lands_first(watch: Any, want: int, timeout: float | None = None) -> None:
        if not log.done:
            log.append(events[-1])
        await original(watch, want, timeout)

    monkeypatch.setattr(_feeds._Watch, "wait", terminal_lands_first)

    async def every_event() -> list[Any]:
        return [event async for batch in log_batches(log, 0, Feed()) for event in batch]

    assert asyncio.run(asyncio.wait_for(every_event(), WAIT)) == events
