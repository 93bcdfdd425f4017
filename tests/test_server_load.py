"""One server, many streams: requests that control runs never queue behind busy worker threads, every stream starts.

``benchmarks/bench_http_load.py`` measures the latencies; these tests pin the behaviour: starting,
cancelling and looking up a run are admitted by worker threads of their own (not anyio's shared
pool), and streams are woken from the runs' threads without holding any worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
from _busy_pool import WAIT, SharedPoolHog

from threadflow import Workflow, get_context
from threadflow.client import Client
from threadflow.events import RunContentEvent, WorkflowCancelledEvent, WorkflowCompletedEvent
from threadflow.server import create_app, running_server

STREAMS = 60
GATE = threading.Event()


def parked(step_input: Any) -> Iterator[str]:
    yield "ready"
    get_context().wait()  # until cancelled


def gated(step_input: Any) -> Iterator[str]:
    yield "ready"
    get_context().wait(GATE)
    yield "done"


def _first_content(client: Client, workflow_id: str, run_id: str) -> None:
    assert any(isinstance(event, RunContentEvent) for event in client.events(workflow_id, run_id, after_seq=0))


def test_a_cancel_is_answered_while_every_shared_worker_thread_is_busy() -> None:
    app = create_app(Workflow("parked", steps=[parked]))
    hog = SharedPoolHog(app)
    with running_server(app) as url, Client(url) as client:
        run_id = client.start("parked")
        events = client.events("parked", run_id)
        assert isinstance(next(e for e in events if isinstance(e, RunContentEvent)), RunContentEvent)
        with hog.holding_every_thread(url):
            answer = httpx.post(f"{url}/workflows/parked/runs/{run_id}/cancel", timeout=WAIT)
            assert answer.status_code == 200, answer.text
            assert isinstance(list(events)[-1], WorkflowCancelledEvent)
            assert httpx.get(f"{url}/workflows/parked/runs/{run_id}", timeout=WAIT).json()["status"] == "cancelled"


def test_runs_start_and_stream_while_every_shared_worker_thread_is_busy() -> None:
    app = create_app(Workflow("parked", steps=[parked]))
    hog = SharedPoolHog(app)
    with running_server(app) as url, Client(url) as client, hog.holding_every_thread(url):
        started = httpx.post(f"{url}/workflows/parked/runs", json={}, timeout=WAIT)
        assert started.status_code == 202, started.text
        with client.stream("parked") as stream:
            assert isinstance(next(e for e in stream if isinstance(e, RunContentEvent)), RunContentEvent)
        assert client.cancel_run("parked", started.json()["run_id"])


def test_many_concurrent_streams_all_get_their_first_event() -> None:
    """STREAMS clients stream at once; each run waits until every client holds its first token."""
    workflow = Workflow("gated", steps=[gated], max_concurrent_runs=STREAMS)
    first = threading.Barrier(STREAMS + 1, timeout=WAIT)
    ends: list[object] = [None] * STREAMS

    def stream(n: int, client: Client) -> None:
        with client.stream("gated") as events:
            for event in events:
                if isinstance(event, RunContentEvent) and event.content == "ready":
                    first.wait()
                ends[n] = event  # the last one wins

    with running_server(create_app(workflow)) as url, Client(url) as client:
        threads = [threading.Thread(target=stream, args=(n, client)) for n in range(STREAMS)]
        try:
            for thread in threads:
                thread.start()
            first.wait()  # every stream holds its first token: none waits behind another
        finally:
            GATE.set()
            for thread in threads:
                thread.join(WAIT)
    assert all(isinstance(end, WorkflowCompletedEvent) for end in ends)


BURST_GATE = threading.Event()


def burst(step_input: Any) -> Iterator[str]:
    yield "first"
    get_context().wait(BURST_GATE)
    yield from (str(n) for n in range(step_input.input))


def test_a_stream_gathering_events_for_its_gap_still_sends_a_full_batch_and_its_end(monkeypatch: Any) -> None:
    """However long the gap between sends, a full batch and the terminal event go out at once."""
    from threadflow.server import _feeds

    monkeypatch.setattr(_feeds, "_SEND_GAP_PER_STREAM", 3600.0)
    monkeypatch.setattr(_feeds, "_MAX_SEND_GAP_SECONDS", 3600.0)
    tokens = 3 * _feeds._MAX_BATCH + 5
    with running_server(create_app(Workflow("burst", steps=[burst]))) as url, Client(url) as client:
        with client.stream("burst", tokens) as stream:
            contents = []
            for event in stream:
                if isinstance(event, RunContentEvent):
                    contents.append(event.content)
                    BURST_GATE.set()  # the rest comes while the stream is inside its gap
            assert contents == ["first", *map(str, range(tokens))]
            assert isinstance(event, WorkflowCompletedEvent)
