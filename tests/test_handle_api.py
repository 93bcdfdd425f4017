"""Issue 9: what the edges use instead of the core's internals — RunHandle.close/aevents/info, LocalRuns."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator
from typing import Any

import pytest
from conftest import WAIT, names

import threadflow
from threadflow import CancelCause, RunStatus, StepInput, Workflow, get_context
from threadflow.events import Event
from threadflow.storage import MemoryStore
from threadflow.storage.base import LocalRuns


def parked(entered: threading.Event, gate: threading.Event) -> Any:
    """A streaming step: one chunk, then it parks in ``ctx.wait(gate)`` until opened or cancelled."""

    def step(si: StepInput) -> Generator[str, None, None]:
        yield "one"
        entered.set()
        get_context().wait(gate, timeout=WAIT)
        yield "two"

    return step


def test_close_cancels_with_cause_stream_closed_and_says_whether_it_was_accepted() -> None:
    entered, gate = threading.Event(), threading.Event()
    handle = Workflow("w", steps=[parked(entered, gate)]).run(background=True)
    assert entered.wait(WAIT)
    assert handle.close() is True
    assert handle.wait(WAIT)
    output = handle.result(0)
    assert (output.status, output.cause) == (RunStatus.cancelled, CancelCause.stream_closed)
    assert handle.close() is False  # ended: nothing to close


def test_info_is_the_live_record_and_then_the_final_one() -> None:
    entered, gate = threading.Event(), threading.Event()
    handle = Workflow("w", steps=[parked(entered, gate)]).run(background=True, run_id="info-1")
    assert entered.wait(WAIT)
    live = handle.info()
    assert (live.run_id, live.workflow_id, live.status) == ("info-1", "w", RunStatus.waiting)
    assert live == threadflow.get_run("info-1")
    gate.set()
    assert handle.wait(WAIT)
    final = handle.info()
    assert final.status is RunStatus.completed and final.ended_at is not None


def test_aevents_replays_then_follows_live_to_the_terminal_event_without_blocking_the_loop() -> None:
    entered, gate = threading.Event(), threading.Event()
    handle = Workflow("w", steps=[parked(entered, gate)]).run(background=True)
    assert entered.wait(WAIT)

    async def main() -> tuple[list[Event], int]:
        ticks = 0
        seen: list[Event] = []

        async def ticker() -> None:  # proves the loop keeps running while aevents waits
            nonlocal ticks
            while True:
                ticks += 1
                if ticks == 3:
                    gate.set()  # the run goes on only once the loop has turned while we wait
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        async for event in handle.aevents():
            seen.append(event)
        task.cancel()
        return seen, ticks

    events, ticks = asyncio.run(asyncio.wait_for(main(), WAIT))
    assert ticks >= 3
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert names(events)[-1] == "workflow_completed"
    assert [e.content for e in events if str(e.event) == "run_content"] == ["one", "two"]  # type: ignore[union-attr]


def test_aevents_after_seq_and_after_the_end() -> None:
    handle = Workflow("w", steps=[lambda si: "x"]).run(background=True)
    assert handle.wait(WAIT)

    async def collect(after_seq: int) -> list[int]:
        return [e.seq async for e in handle.aevents(after_seq)]

    total = len(list(handle.events()))
    assert asyncio.run(collect(0)) == list(range(1, total + 1))
    assert asyncio.run(collect(2)) == list(range(3, total + 1))
    assert asyncio.run(asyncio.wait_for(collect(total), WAIT)) == []  # past the end of a finished run: ends at once
    with pytest.raises(ValueError, match="after_seq"):
        handle.aevents(-1)  # checked at the call, not at the first iteration
    with pytest.raises(ValueError, match="after_seq"):
        handle.aevents(True)


class BindingStore(MemoryStore):
    """A store that wants the core's LocalRuns, as a store acting on this process's runs does."""

    def __init__(self) -> None:
        super().__init__()
        self.bound: list[LocalRuns] = []

    def bind_local_runs(self, runs: LocalRuns) -> None:
        self.bound.append(runs)


def test_a_store_is_lent_local_runs_once_and_they_cancel_like_cancel_run() -> None:
    store = BindingStore()
    wf = Workflow("w", steps=[parked(entered := threading.Event(), gate := threading.Event())], store=store)
    Workflow("w2", steps=[lambda si: None], store=store)  # a second workflow on the same store
    assert len(store.bound) == 1
    runs = store.bound[0]
    handle = wf.run(background=True, run_id="lent")
    assert entered.wait(WAIT)
    info = runs.info("lent")
    assert info is not None and info.status is RunStatus.waiting
    assert runs.info("nope") is None
    with pytest.raises(TypeError):
        runs.cancel("lent", 42)  # type: ignore[arg-type]
    assert runs.cancel("lent", "from the store") is True
    assert handle.wait(WAIT)
    output = handle.result(0)
    assert (output.status, output.cause, output.reason) == (
        RunStatus.cancelled,
        CancelCause.requested,
        "from the store",
    )
    assert runs.cancel("lent", None) is False and runs.info("lent") is None
    gate.set()


def test_get_run_finds_finished_runs_in_every_store_in_use() -> None:
    store = MemoryStore()
    Workflow("w", steps=[lambda si: None], store=store).run(run_id="kept-here")
    info = threadflow.get_run("kept-here")
    assert info is not None and info.status is RunStatus.completed
