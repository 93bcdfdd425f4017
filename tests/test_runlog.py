"""A background run's event log: followers read without a lock and are woken once per batch.

The writer appends unlocked and wakes only readers registered as sleeping; a
reader registers, then looks at the log once more before it blocks. These
tests pin every interleaving of that handshake (with hooks, not sleeps), then
run many writers' and readers' worth of real races.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import WAIT

from threadflow import Step, StepInput, Workflow
from threadflow._fastevents import make_event
from threadflow._runlog import EventLog
from threadflow.events import BaseEvent, RunContentEvent, WorkflowCompletedEvent

_BASE: dict[str, Any] = {"run_id": "r", "workflow_id": "w", "workflow_name": "w", "created_at": 0.0}


def content(seq: int) -> BaseEvent:
    fields = {"seq": seq, "step_name": "s", "step_index": 0, "step_path": "s", "content": "x"}
    return make_event(RunContentEvent, {**_BASE, **fields})


def terminal(seq: int) -> BaseEvent:
    return make_event(WorkflowCompletedEvent, {**_BASE, "seq": seq, "content": "done"})


def follow_in_thread(log: EventLog, after_seq: int = 0) -> tuple[threading.Thread, list[int]]:
    seen: list[int] = []
    # daemon: a failing test must not hang the suite on a reader left blocked
    thread = threading.Thread(target=lambda: seen.extend(e.seq for e in log.follow(after_seq)), daemon=True)
    thread.start()
    return thread, seen


class HookedLock:
    """The log's lock, calling ``hook()`` after the reader's registration releases it (once)."""

    def __init__(self, hook: Any) -> None:
        self._lock = threading.Lock()
        self._hook = hook

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        hook, self._hook = self._hook, None
        if hook is not None:
            hook()


def test_an_event_appended_between_registering_and_the_last_look_is_seen_without_blocking() -> None:
    log = EventLog()
    log._lock = HookedLock(lambda: (log.append(content(1)), log.append(terminal(2))))  # type: ignore[assignment]
    assert [e.seq for e in log.follow()] == [1, 2]
    assert log._sleepers == []  # it unregistered itself: nobody will release it late


def test_a_reader_that_went_to_sleep_is_woken_by_the_next_append() -> None:
    log = EventLog()
    registered = threading.Event()
    log._lock = HookedLock(registered.set)  # type: ignore[assignment]
    thread, seen = follow_in_thread(log)
    assert registered.wait(WAIT)
    log._lock = threading.Lock()  # type: ignore[assignment]
    # Whether the reader has blocked yet or is still on its last look, the append reaches it.
    log.append(content(1))
    log.append(terminal(2))
    thread.join(WAIT)
    assert not thread.is_alive() and seen == [1, 2]
    assert log._sleepers == []


class CountingLog(EventLog):
    __slots__ = ("wakes",)

    def __init__(self) -> None:
        super().__init__()
        self.wakes = 0

    def _wake(self) -> None:
        self.wakes += 1
        super()._wake()


def test_appends_while_the_reader_is_busy_wake_nobody_and_it_reads_them_in_one_batch() -> None:
    log = CountingLog()
    registered, got_first, go = threading.Event(), threading.Event(), threading.Event()
    log._lock = HookedLock(registered.set)  # type: ignore[assignment]
    seen: list[int] = []

    def slow_reader() -> None:
        for event in log.follow():
            seen.append(event.seq)
            if event.seq == 1:
                got_first.set()
                go.wait(WAIT)  # busy with the first event while the writer goes on

    thread = threading.Thread(target=slow_reader, daemon=True)  # daemon: a failing test must not hang the suite
    thread.start()
    assert registered.wait(WAIT)
    log.append(content(1))
    assert got_first.wait(WAIT)
    woken_for_first = log.wakes
    assert woken_for_first <= 1
    for seq in range(2, 50):
        log.append(content(seq))
    assert log.wakes == woken_for_first  # nobody sleeps: 48 appends, no wake-up
    go.set()
    log.append(terminal(50))
    thread.join(WAIT)
    assert seen == list(range(1, 51))
    assert log.wakes <= woken_for_first + 1


def test_a_reader_joining_after_the_end_replays_everything_and_returns() -> None:
    log = EventLog()
    for seq in range(1, 4):
        log.append(content(seq))
    log.append(terminal(4))
    assert [e.seq for e in log.follow()] == [1, 2, 3, 4]
    assert [e.seq for e in log.follow(2)] == [3, 4]
    assert list(log.follow(4)) == []  # past the end of a finished log: ends at once


def test_then_is_called_once_the_terminal_event_is_read() -> None:
    log = EventLog()
    log.append(terminal(1))
    calls = []
    assert [e.seq for e in log.follow(0, then=lambda: calls.append(1))] == [1]
    assert calls == [1]


def test_listeners_hear_every_append_and_can_leave() -> None:
    log = EventLog()
    heard: list[str] = []
    first, second = (lambda: heard.append("a")), (lambda: heard.append("b"))
    log.add_listener(first)
    log.add_listener(second)
    log.append(content(1))
    log.remove_listener(first)
    log.remove_listener(first)  # a second removal is a no-op
    log.append(terminal(2))
    assert heard == ["a", "b", "b"]


@pytest.mark.stress
def test_many_readers_joining_at_any_time_each_see_every_event_once_in_order() -> None:
    for _ in range(20):
        _readers_race(readers=8, total=2000)


def _readers_race(readers: int, total: int) -> None:
    log = EventLog()
    go = threading.Barrier(readers + 1)
    results: list[list[int]] = [[] for _ in range(readers)]

    def read(i: int) -> None:
        go.wait()
        results[i].extend(e.seq for e in log.follow(i * 100 if i % 2 else 0))

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(readers)]
    for thread in threads:
        thread.start()
    go.wait()
    for seq in range(1, total):
        log.append(content(seq))
    log.append(terminal(total))
    for thread in threads:
        thread.join(WAIT)
    for i, seen in enumerate(results):
        start = i * 100 if i % 2 else 0
        assert seen == list(range(start + 1, total + 1)), i
    assert log._sleepers == []


@pytest.mark.stress
def test_paced_background_runs_feed_early_and_late_followers_to_the_end() -> None:
    def paced(si: StepInput) -> Iterator[str]:
        for _ in range(30):
            threading.Event().wait(0.0005)  # the step's own pacing (code under test), not synchronisation
            yield "x"

    wf = Workflow("runlog-paced", steps=[Step("s", executor=paced)], max_concurrent_runs=16)
    handles = [wf.run(background=True) for _ in range(16)]
    halfway = [threading.Event() for _ in handles]
    seen: dict[tuple[int, str], list[str]] = {}

    def consume(i: int, who: str) -> None:
        events = seen.setdefault((i, who), [])
        for event in handles[i].events():
            events.append(event.event)
            if events.count("run_content") == 10:
                halfway[i].set()

    def join_late(i: int) -> None:
        halfway[i].wait(WAIT)  # joins while the run streams: replays, then follows live
        consume(i, "late")

    threads = [threading.Thread(target=consume, args=(i, "early")) for i in range(16)]
    threads += [threading.Thread(target=join_late, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(seen) == 32
    for events in seen.values():
        assert events.count("run_content") == 30
        assert events[0] == "workflow_started" and events[-1] == "workflow_completed"
    assert all(handle.done() for handle in handles)


def test_a_background_run_logs_every_chunk_that_its_worker_no_longer_hands_over() -> None:
    """The worker drops what the run hands it, so chunks go to the log only: none is lost or renumbered."""
    release = threading.Event()

    def step(si: StepInput) -> Iterator[str]:
        yield "a"
        release.wait(WAIT)
        yield "b"
        yield "c"

    wf = Workflow("runlog-chunks", steps=[Step("s", executor=step)])
    handle = wf.run(background=True)
    live = handle.events()
    first = [next(live) for _ in range(4)]  # started, step_started, run_started, the first chunk
    assert [e.event for e in first][-1] == "run_content"
    release.set()
    rest = list(live)
    replay = list(handle.events())
    assert replay == first + rest
    assert [e.seq for e in replay] == list(range(1, len(replay) + 1))
    assert [e.content for e in replay if e.event == "run_content"] == ["a", "b", "c"]  # type: ignore[union-attr]
    assert replay[-1].event == "workflow_completed"


class Interrupted(Exception):
    pass


def test_a_reader_interrupted_while_it_sleeps_leaves_no_registration_behind() -> None:
    """A signal handler raising in a sleeping reader (Ctrl+C in the main thread) unregisters it."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    log = EventLog()
    registered = threading.Event()
    log._lock = HookedLock(registered.set)  # type: ignore[assignment]
    main = threading.get_ident()
    killer = threading.Thread(target=lambda: registered.wait(WAIT) and signal.pthread_kill(main, signal.SIGUSR1))
    killer.start()
    try:
        with pytest.raises(Interrupted):
            list(log.follow())  # blocks: nothing is ever appended
    finally:
        killer.join(WAIT)
        signal.signal(signal.SIGUSR1, previous)
    assert log._sleepers == []
    log.append(terminal(1))  # and the log still works for the next reader
    assert [e.seq for e in log.follow()] == [1]
