"""A client leaving is noticed, and its run cancelled, even when the server is busy (issue 8, item 15).

``benchmarks/bench_http_disconnect.py`` measures the latency; these tests pin the two causes found:
the cancel waited for the app's shared worker threads, and a run that raced ahead
of its client was sent in one huge step of the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

from _busy_pool import WAIT, SharedPoolHog

from threadflow import CancellationError, Workflow, get_context
from threadflow.client import Client
from threadflow.events import RunContentEvent
from threadflow.server import create_app, running_server

INSIDE, CLEANED = threading.Event(), threading.Event()


def parked(step_input: Any) -> Iterator[str]:
    try:
        yield "ready"
        INSIDE.set()
        get_context().wait()
    except CancellationError:
        CLEANED.set()
        raise


def test_a_disconnect_cancels_its_run_while_every_shared_worker_thread_is_busy() -> None:
    app = create_app(Workflow("parked", steps=[parked]))
    hog = SharedPoolHog(app)
    with running_server(app) as url, Client(url) as client:
        stream = client.stream("parked")
        assert isinstance(next(e for e in stream if isinstance(e, RunContentEvent)), RunContentEvent)
        assert INSIDE.wait(WAIT)
        with hog.holding_every_thread(url):  # every shared worker thread now waits
            stream.close()
            assert CLEANED.wait(WAIT / 2), "the run was not cancelled while the worker threads were busy"


def firehose(step_input: Any) -> Iterator[str]:
    for _ in range(step_input.input):
        yield "t"


def test_a_backlog_is_sent_in_bounded_batches() -> None:
    """A run far ahead of its client: each send carries a bounded number of events, one per loop turn."""
    workflow = Workflow("firehose", steps=[firehose])
    app = create_app(workflow)
    with running_server(app) as url, Client(url) as client:
        run_id = client.start("firehose", 2000)
        assert len(list(client.events("firehose", run_id))) == 2006  # it has ended: all of it is a backlog
    sizes = asyncio.run(_event_counts_per_send(app, f"/workflows/firehose/runs/{run_id}/events"))
    assert sum(sizes) == 2006
    assert max(sizes) <= 64


async def _event_counts_per_send(app: Any, path: str) -> list[int]:
    """Call the ASGI app directly; the number of SSE messages in each body chunk it sends."""
    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "query_string": b""}
    scope |= {"headers": [], "http_version": "1.1", "scheme": "http", "server": ("t", 80), "root_path": ""}
    never = asyncio.Event()
    sizes: list[int] = []

    async def receive() -> dict[str, Any]:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            sizes.append(message["body"].count(b"\ndata: ") + message["body"].startswith(b"data: "))

    await asyncio.wait_for(app(scope, receive, send), WAIT)
    return sizes
