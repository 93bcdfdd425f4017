"""``RunHandle.abatches()``: a run's events in batches for code that forwards them, gathered without waking the loop.

The first batch holds what is logged already and comes without a wait; a
gathering consumer is woken by the run's thread only for the terminal event
or a full batch; a wake-up is never lost between the consumer's last look
and its wait; ``wake`` makes it yield at once.
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

from threadflow import RunHandle, Workflow, _asyncbridge, get_context
from threadflow._runlog import EventLog
from threadflow.events import BaseEvent, Event, RunContentEvent, WorkflowCompletedEvent, WorkflowStartedEvent

WAIT = 10.0


class Gate:
    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()

    def step(self, step_input: Any) -> Iterator[str]:
        yield "first"
        self.inside.set()
        get_context().wait(self.release, timeout=WAIT)
        yield "second"


def _gated(gate: Gate) -> RunHandle:
    handle = Workflow("gated", steps=[gate.step]).run(background=True)
    assert gate.inside.wait(WAIT)  # started, and its first token logged
    return handle


def test_the_events_already_logged_are_the_first_batch_without_a_wait() -> None:
    gate = Gate()
    handle = _gated(gate)

    async def first_batch() -> list[Any]:
        batches: Any = handle.abatches()  # an async generator: it has aclose()
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


def test_batches_follow_the_run_to_its_end() -> None:
    gate = Gate()
    handle = _gated(gate)

    async def all_batches() -> list[Event]:
        seen: list[Event] = []
        async for batch in handle.abatches():
            seen.extend(batch)
            gate.release.set()  # after the first batch the iterator waits for more
        return seen

    try:
        events = asyncio.run(asyncio.wait_for(all_batches(), WAIT))
    finally:
        gate.release.set()
    assert [event.content for event in events if isinstance(event, RunContentEvent)] == ["first", "second"]
    assert isinstance(events[-1], WorkflowCompletedEvent)
    assert [event.seq for event in events] == list(range(1, len(events) + 1))


def _ended(tokens: int = 3) -> RunHandle:
    handle = Workflow("ended", steps=[jittery]).run([tokens, 0], background=True)
    assert handle.wait(WAIT)
    return handle


async def _every(handle: RunHandle, after_seq: int = 0, limit: int = 64) -> list[list[Event]]:
    return [batch async for batch in handle.abatches(after_seq, limit=limit)]


def test_replay_starts_after_the_seq_given_and_ends_at_once_past_the_end() -> None:
    handle = _ended()
    every = [event for batch in asyncio.run(_every(handle)) for event in batch]
    assert [event.seq for batch in asyncio.run(_every(handle, 2)) for event in batch] == [e.seq for e in every[2:]]
    assert asyncio.run(_every(handle, len(every))) == []
    assert asyncio.run(_every(handle, len(every) + 5)) == []


def test_a_backlog_comes_in_batches_of_at_most_limit() -> None:
    handle = _ended(tokens=20)
    batches = asyncio.run(_every(handle, limit=4))
    assert all(len(batch) <= 4 for batch in batches) and len(batches) > 5
    assert [event.seq for batch in batches for event in batch] == list(range(1, sum(map(len, batches)) + 1))


def test_bad_arguments_are_refused_at_once() -> None:
    handle = _ended()
    with pytest.raises(ValueError, match="after_seq"):
        handle.abatches(-1)
    with pytest.raises(ValueError, match="limit"):
        handle.abatches(limit=0)


def test_closing_the_iterator_removes_its_listener_from_the_log() -> None:
    """Closed while it waits for events: the run's thread no longer calls into it."""
    gate = Gate()
    handle = _gated(gate)
    log = handle._log_now()

    async def close_while_waiting() -> None:
        woken = asyncio.Event()
        batches: Any = handle.abatches(wake=woken)
        await batches.__anext__()
        assert len(log._listeners) == 1
        woken.set()  # the next look yields at once, an empty batch: the iterator was waiting
        assert await batches.__anext__() == []
        await batches.aclose()

    try:
        asyncio.run(asyncio.wait_for(close_while_waiting(), WAIT))
        assert log._listeners == ()
    finally:
        gate.release.set()


def test_closing_aevents_removes_its_listener_at_once() -> None:
    """``aevents()`` follows through ``abatches``' machinery: its ``aclose()`` closes that too, not a GC later."""
    gate = Gate()
    handle = _gated(gate)
    log = handle._log_now()

    async def close_after_the_first_event() -> None:
        events: Any = handle.aevents()
        assert isinstance(await events.__anext__(), WorkflowStartedEvent)
        assert len(log._listeners) == 1
        await events.aclose()
        assert len(log._listeners) == 0

    try:
        asyncio.run(asyncio.wait_for(close_after_the_first_event(), WAIT))
    finally:
        gate.release.set()


def test_a_gathering_iterator_holds_trickling_events_until_its_gap_has_passed() -> None:
    """With a gap of an hour, the second token waits; the terminal event ends the gathering at once."""
    gate = Gate()
    handle = _gated(gate)

    async def batches() -> list[list[Event]]:
        seen: list[list[Event]] = []
        async for batch in handle.abatches(gather=lambda: 3600.0):
            seen.append(batch)
            gate.release.set()
        return seen

    try:
        got = asyncio.run(asyncio.wait_for(batches(), WAIT))
    finally:
        gate.release.set()
    assert len(got) == 2  # what was logged at first, then the rest in one batch with the terminal event
    assert [e.content for e in got[1] if isinstance(e, RunContentEvent)] == ["second"]
    assert isinstance(got[1][-1], WorkflowCompletedEvent)


# -- no wake-up lost between the run's thread and the consumer ------------------------------------


def jittery(step_input: Any) -> Iterator[str]:
    """``input[0]`` tokens, each after a pause of 0-200 µs or none: the consumer sees bursts and quiet spells."""
    pauses = random.Random(step_input.input[1])
    for n in range(step_input.input[0]):
        if pauses.random() < 0.5:
            time.sleep(pauses.random() * 0.0002)
        yield str(n)


@pytest.mark.stress
@pytest.mark.parametrize("gap", [None, 0.0005])
def test_every_event_reaches_a_consumer_while_its_run_appends(gap: float | None) -> None:
    """200 runs, each followed while it appends: a lost wake-up would leave its consumer waiting for ever.

    Without a gap the consumer only ever waits for the next event; with one it
    also gathers (waits for the terminal event or a full batch, or its timer).
    """
    workflow = Workflow("jittery", steps=[jittery])
    gather = None if gap is None else (lambda: gap)

    async def all_runs() -> None:
        for seed in range(200):
            handle = workflow.run([50, seed], background=True)
            sizes: list[int] = []
            seen: list[Event] = []
            async for batch in handle.abatches(limit=8, gather=gather):
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


def test_an_event_appended_just_before_the_consumer_waits_is_not_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal event lands after the consumer looked and before it says what it waits for: it still comes.

    (The run's thread saw nobody waiting, so it woke nobody: the consumer's
    own last look is what finds the event.)
    """
    events: list[BaseEvent] = list(_ended().events())
    log = EventLog()
    for event in events[:-1]:
        log.append(event)
    original = _asyncbridge._Watch.wait

    async def terminal_lands_first(watch: Any, *args: Any) -> bool:
        if not log.done:
            log.append(events[-1])
        return await original(watch, *args)

    monkeypatch.setattr(_asyncbridge._Watch, "wait", terminal_lands_first)

    async def every_event() -> list[Any]:
        return [event async for batch in _asyncbridge.follow_batches(log, 0, 64, None, None) for event in batch]

    assert asyncio.run(asyncio.wait_for(every_event(), WAIT)) == events


# -- a wake-up from outside is never lost ----------------------------------------------------------


def _quiet() -> tuple[RunHandle, threading.Event]:
    """A run that logged 4 events and then stays quiet longer than a test waits; set the event to end it."""
    inside, release = threading.Event(), threading.Event()

    def quiet(step_input: Any) -> Iterator[str]:
        yield "first"
        inside.set()
        get_context().wait(release, timeout=6 * WAIT)

    handle = Workflow("quiet", steps=[quiet]).run(background=True)
    assert inside.wait(WAIT)
    assert len(handle._log_now()) == 4  # workflow_started, step_started, run_started, "first"
    return handle, release


def test_a_wake_set_before_the_first_look_ends_the_wait_at_once() -> None:
    """``wake`` set before the iterator starts (a server stopping as a stream opens): its first look answers it.

    Nothing is logged after ``after_seq`` and the run is quiet, so only the
    wake-up can end the wait; clearing it at the look would leave the
    consumer waiting for the run's next event.
    """
    handle, release = _quiet()

    async def first_batch() -> list[Event]:
        woken = asyncio.Event()
        woken.set()
        batches: Any = handle.abatches(4, wake=woken)
        try:
            return list(await asyncio.wait_for(batches.__anext__(), WAIT))
        finally:
            await batches.aclose()

    try:
        assert asyncio.run(first_batch()) == []
    finally:
        release.set()
        handle.result(WAIT)


def test_a_wake_set_while_the_consumer_holds_a_batch_is_answered() -> None:
    """Set while the consumer works on a batch, with a backlog left to gather: the next look yields at once.

    The consumer takes 3 of the 4 events logged and gathers the rest for an
    hour; its wake-up, set before it asks for more, must not wait for that.
    """
    handle, release = _quiet()

    async def after_the_wake() -> list[Event]:
        woken = asyncio.Event()
        batches: Any = handle.abatches(limit=3, gather=lambda: 3600.0, wake=woken)
        try:
            assert len(await batches.__anext__()) == 3
            woken.set()  # the consumer's own reason, set before it asks for more
            return list(await asyncio.wait_for(batches.__anext__(), WAIT))
        finally:
            await batches.aclose()

    try:
        assert asyncio.run(after_the_wake()) == []
    finally:
        release.set()
        handle.result(WAIT)
