"""A server's stream ends with ``Stopped`` once its feed is stopped, whenever the stop comes (``run_batches``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from threadflow import Workflow, get_context
from threadflow.server._feeds import Feed, Stopped, run_batches

WAIT = 10.0


def test_a_feed_stopped_before_its_stream_starts_ends_a_quiet_stream_at_once() -> None:
    """``OPEN_FEEDS.add`` stops a feed at once when its server is stopping: the stream must end, not wait.

    The run is quiet and the reader has every event already (a client back
    with its ``Last-Event-ID``), so no event of the run will end the wait.
    """
    inside, release = threading.Event(), threading.Event()

    def quiet(step_input: Any) -> Iterator[str]:
        yield "first"
        inside.set()
        get_context().wait(release, timeout=6 * WAIT)  # longer than the test waits for the stream

    handle = Workflow("quiet", steps=[quiet]).run(background=True)
    assert inside.wait(WAIT)
    logged = len(handle._log_now())

    async def stream() -> list[Any]:
        feed = Feed()
        feed.stop()  # as OPEN_FEEDS.add does for a stream that opens while its server stops
        return [batch async for batch in run_batches(handle, logged, feed)]

    try:
        with pytest.raises(Stopped):
            asyncio.run(asyncio.wait_for(stream(), WAIT))
    finally:
        release.set()
        handle.result(WAIT)


def test_a_stream_that_sent_the_terminal_event_ends_cleanly_though_its_server_stops() -> None:
    """The stop comes while the last batch (the run's end) is being sent: nothing is interrupted.

    ``stream_interrupted`` after the terminal event would tell a reader of
    the raw SSE (the dashboard, curl) that the stream was cut after all.
    """

    def quick(step_input: Any) -> str:
        return "done"

    handle = Workflow("quick", steps=[quick]).run(background=True)
    assert handle.wait(WAIT)

    async def stream() -> list[Any]:
        feed = Feed()
        batches: list[Any] = []
        async for batch in run_batches(handle, 0, feed):
            batches.append(batch)
            feed.stop()  # the server starts to stop while this batch goes out
        return batches

    batches = asyncio.run(asyncio.wait_for(stream(), WAIT))
    assert batches[-1][-1].terminal
