"""Many runs followed on one event loop share one waker: every follower still sees every event, in order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

from threadflow import RunHandle, Workflow, get_context
from threadflow.events import RunContentEvent

WAIT = 10.0
RUNS, TOKENS = 50, 20
GATE = threading.Event()


def gated(step_input: Any) -> Iterator[str]:
    yield "ready"
    get_context().wait(GATE)
    for n in range(TOKENS):
        yield str(n)


async def _follow(handle: RunHandle, ready: asyncio.Event, seen: list[str], count: list[int]) -> list[int]:
    seqs = []
    async for event in handle.aevents():
        seqs.append(event.seq)
        if isinstance(event, RunContentEvent):
            seen.append(event.content)
            if event.content == "ready":
                count[0] += 1
                if count[0] == RUNS:
                    ready.set()
    return seqs


async def _follow_all(handles: list[RunHandle]) -> list[tuple[list[int], list[str]]]:
    ready, count = asyncio.Event(), [0]
    seen: list[list[str]] = [[] for _ in handles]
    tasks = [asyncio.create_task(_follow(h, ready, s, count)) for h, s in zip(handles, seen, strict=True)]
    await asyncio.wait_for(ready.wait(), WAIT)  # every follower is waiting on the shared waker now
    GATE.set()  # the runs' threads append at once, from RUNS threads
    seqs = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    return list(zip(seqs, seen, strict=True))


def test_followers_of_many_runs_on_one_loop_each_see_every_event_in_order() -> None:
    workflow = Workflow("gated", steps=[gated], max_concurrent_runs=RUNS)
    handles = [workflow.run(None, background=True) for _ in range(RUNS)]
    try:
        followed = asyncio.run(_follow_all(handles))
    finally:
        GATE.set()
    for handle, (seqs, contents) in zip(handles, followed, strict=True):
        assert seqs == list(range(1, len(seqs) + 1))
        assert contents == ["ready", *map(str, range(TOKENS))]
        assert handle.wait(WAIT)
        assert [event.seq for event in handle.events()] == seqs  # through the terminal event, none missed
