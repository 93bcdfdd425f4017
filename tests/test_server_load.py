"""One server, many streams: requests that control runs never queue behind busy worker threads, every stream starts.

``benchmarks/bench_http_load.py`` measures the latencies; these tests pin the behaviour: starting,
cancelling and looking up a run are admitted by worker threads of their own (not anyio's shared
pool), and streams are woken from the runs' threads without holding any worker thread.
"""

from __future__ import annotations

import collections
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _busy_pool import WAIT, SharedPoolHog

from threadflow import RunInfo, Workflow, get_context
from threadflow.client import Client
from threadflow.events import RunContentEvent, WorkflowCancelledEvent, WorkflowCompletedEvent
from threadflow.server import create_app, running_server
from threadflow.storage import MemoryStore

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


# -- starting a run on the event loop -------------------------------------------------------------


class RecordingStore(MemoryStore):
    """A store that records each new run, as SQLite and PostgreSQL do: notes the thread that did."""

    def __init__(self) -> None:
        super().__init__()
        self.created_on: list[str] = []

    def run_created(self, info: RunInfo) -> None:
        self.created_on.append(threading.current_thread().name)


def _hops(monkeypatch: Any) -> list[str]:
    """The functions the app hands to a control thread, by name (they still run there)."""
    from threadflow.server import _app, _capacity

    hops: list[str] = []
    original = _capacity.on_control_thread

    async def noted(fn: Any, *args: object) -> Any:
        hops.append(fn.__name__)
        return await original(fn, *args)

    monkeypatch.setattr(_app, "on_control_thread", noted)
    return hops


def test_a_run_on_a_memory_store_starts_on_the_event_loop_without_a_control_thread(monkeypatch: Any) -> None:
    hops = _hops(monkeypatch)
    with running_server(create_app(Workflow("parked", steps=[parked]))) as url, Client(url) as client:
        with client.stream("parked") as stream:
            assert isinstance(next(e for e in stream if isinstance(e, RunContentEvent)), RunContentEvent)
        started = httpx.post(f"{url}/workflows/parked/runs", json={}, timeout=WAIT)
        assert started.status_code == 202, started.text
        assert client.cancel_run("parked", started.json()["run_id"])
    assert "_start" not in hops


def test_a_run_whose_store_records_it_at_the_start_is_started_off_the_event_loop(monkeypatch: Any) -> None:
    """The store may wait for a database: its write never holds up the loop serving every stream."""
    hops = _hops(monkeypatch)
    store = RecordingStore()
    with running_server(create_app(Workflow("parked", steps=[parked], store=store))) as url, Client(url) as client:
        with client.stream("parked") as stream:
            assert isinstance(next(e for e in stream if isinstance(e, RunContentEvent)), RunContentEvent)
    assert hops.count("_start") == 1
    assert len(store.created_on) == 1 and store.created_on[0] != LOOP_THREAD


LOOP_THREAD = "threadflow-http"  # running_server's thread, which runs the event loop


# -- the finished runs kept for replay ------------------------------------------------------------

RELEASE: dict[str, threading.Event] = collections.defaultdict(threading.Event)


def held(step_input: Any) -> str:
    get_context().wait(RELEASE[step_input.run_id])
    return str(step_input.input)


def test_the_finished_runs_kept_for_replay_are_the_ones_that_ended_last() -> None:
    """keep_finished_runs=2, three runs started a, b, c and ended c, a, b: c is the one dropped."""
    workflow = Workflow("held", steps=[held])
    with running_server(create_app(workflow, keep_finished_runs=2)) as url, Client(url) as client:
        prefix = uuid.uuid4().hex[:8]
        run_ids = [client.start("held", name, run_id=f"{prefix}-{name}") for name in "abc"]
        for name in "cab":
            RELEASE[f"{prefix}-{name}"].set()
            assert isinstance(list(client.events("held", f"{prefix}-{name}"))[-1], WorkflowCompletedEvent)
        for run_id in run_ids[:2]:
            assert isinstance(list(client.events("held", run_id))[-1], WorkflowCompletedEvent)
        with pytest.raises(httpx.HTTPStatusError, match="not kept"):
            client.events("held", run_ids[2])


def test_a_run_id_used_again_replays_the_newer_run_and_keeps_its_place() -> None:
    workflow = Workflow("held", steps=[held])
    run_id = f"again-{uuid.uuid4().hex[:8]}"
    with running_server(create_app(workflow, keep_finished_runs=1)) as url, Client(url) as client:
        for value in ("first", "second"):
            RELEASE[run_id] = threading.Event()
            client.start("held", value, run_id=run_id)
            RELEASE[run_id].set()
            end = list(client.events("held", run_id))[-1]
            assert isinstance(end, WorkflowCompletedEvent) and end.content == value
        replayed = list(client.events("held", run_id))[-1]
        assert isinstance(replayed, WorkflowCompletedEvent) and replayed.content == "second"
