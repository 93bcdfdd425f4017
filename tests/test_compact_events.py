"""``RunHandle.compact()``: an ended run's events kept as tuples of plain values, rebuilt equal when read.

Every kind of event survives the round trip (equal, the same JSON); the
packed rows are out of the garbage collector's way; a reader that started
before keeps reading; nothing changes while the run is active; the HTTP
server compacts the runs it keeps for replay.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from typing import Any

from threadflow import Agent, RunHandle, Step, Workflow, get_context
from threadflow._packedlog import PackedEvents
from threadflow.events import BaseEvent, RunContentEvent, StepCompletedEvent, WorkflowCancelledEvent
from threadflow.testing import ScriptedModel, ToolCall

WAIT = 10.0


def tokens(step_input: Any) -> Iterator[Any]:
    for n in range(step_input.input):
        yield f"t{n}"


def shaky(step_input: Any) -> str:
    if get_context().attempt < 2:
        raise ValueError("not yet")
    return "steady"


def boom(step_input: Any) -> None:
    raise ValueError("boom")


def held(step_input: Any) -> Iterator[str]:
    yield "first"
    get_context().wait()  # until cancelled


def search(query: str) -> str:
    """Search the archive."""
    return f"found {query}"


def _ended(workflow: Workflow, run_input: Any = None) -> RunHandle:
    handle = workflow.run(run_input, background=True)
    assert handle.wait(WAIT)
    return handle


def _every_kind_of_run() -> list[RunHandle]:
    cancelled = Workflow("held", steps=[held]).run(background=True)
    assert next(e for e in cancelled.events() if isinstance(e, RunContentEvent))
    cancelled.cancel("enough")
    assert cancelled.wait(WAIT)
    agent = Agent(
        model=ScriptedModel(turns=[[ToolCall("c1", "search", '{"query": "x"}')], ["the ", "answer"]]), tools=[search]
    )
    return [
        _ended(Workflow("tokens", steps=[tokens]), 5),
        _ended(Workflow("retried", steps=[Step("shaky", executor=shaky, max_retries=2, retry_delay=0)])),
        _ended(Workflow("failed", steps=[boom])),
        _ended(Workflow("agent", steps=[agent])),
        cancelled,
    ]


def test_every_kind_of_event_comes_back_equal_with_the_same_json() -> None:
    for handle in _every_kind_of_run():
        events = list(handle.events())
        packed = PackedEvents(events)
        assert len(packed) == len(events)
        assert packed[0:] == events
        assert [packed[n] for n in range(len(events))] == events
        assert [e.model_dump_json() for e in packed[0:]] == [e.model_dump_json() for e in events]
        assert [type(e) for e in packed[0:]] == [type(e) for e in events]
    cancel, original = packed[-1], events[-1]
    assert isinstance(cancel, WorkflowCancelledEvent) and isinstance(original, WorkflowCancelledEvent)
    assert cancel.cause is original.cause  # the enum member itself, not its value


def test_packed_rows_of_plain_values_are_untracked_by_the_garbage_collector() -> None:
    packed = PackedEvents(list(_ended(Workflow("tokens", steps=[tokens]), 50).events()))
    gc.collect()
    assert not any(gc.is_tracked(row) for row in packed._rows)


def test_content_that_is_not_a_plain_value_is_kept_as_it_is() -> None:
    payload = {"nested": [1, 2]}

    def gives_a_dict(step_input: Any) -> dict[str, list[int]]:
        return payload

    events = list(_ended(Workflow("dicts", steps=[gives_a_dict])).events())
    packed = PackedEvents(events)
    assert packed[0:] == events
    assert next(e.content for e in packed[0:] if isinstance(e, StepCompletedEvent)) is payload


def test_compact_replays_equal_events_to_every_kind_of_reader() -> None:
    handle = _ended(Workflow("tokens", steps=[tokens]), 20)
    before = list(handle.events())
    handle.compact()
    assert isinstance(handle._log_now()._events, PackedEvents)
    assert list(handle.events()) == before
    assert list(handle.events(after_seq=7)) == before[7:]

    async def from_asyncio() -> tuple[list[BaseEvent], list[BaseEvent]]:
        one: list[BaseEvent] = [event async for event in handle.aevents()]
        batched: list[BaseEvent] = [event async for batch in handle.abatches(limit=4) for event in batch]
        return one, batched

    assert asyncio.run(from_asyncio()) == (before, before)


def test_compact_does_nothing_while_the_run_is_active() -> None:
    gate = threading.Event()

    def gated(step_input: Any) -> Iterator[str]:
        yield "first"
        get_context().wait(gate)
        yield "second"

    handle = Workflow("gated", steps=[gated]).run(background=True)
    events = handle.events()
    assert next(e for e in events if isinstance(e, RunContentEvent)).content == "first"
    handle.compact()
    assert isinstance(handle._log_now()._events, list)
    gate.set()
    assert [e.content for e in events if isinstance(e, RunContentEvent)] == ["second"]
    assert handle.wait(WAIT)


def test_a_reader_that_started_before_compact_keeps_reading_every_event() -> None:
    handle = _ended(Workflow("tokens", steps=[tokens]), 10)
    expected = list(handle.events())
    reader = handle.events()
    first = [next(reader) for _ in range(3)]
    handle.compact()
    assert first + list(reader) == expected


def test_the_server_compacts_the_runs_it_keeps_for_replay() -> None:
    from threadflow._background import WORKER_THREAD_PREFIX
    from threadflow.client import Client
    from threadflow.server import create_app, running_server

    workflow = Workflow("tokens", steps=[tokens])
    with running_server(create_app(workflow)) as url, Client(url) as client:
        with client.stream("tokens", 5) as stream:
            streamed = list(stream)
        for worker in threading.enumerate():  # it compacts the run's events, then exits: joined, it is done
            if worker.name == f"{WORKER_THREAD_PREFIX}{workflow.id}":
                worker.join(WAIT)
        run_id = streamed[0].run_id
        kept = [obj for obj in gc.get_objects() if isinstance(obj, RunHandle) and obj.run_id == run_id]
        assert len(kept) == 1 and isinstance(kept[0]._log_now()._events, PackedEvents)
        assert list(client.events("tokens", run_id)) == streamed
