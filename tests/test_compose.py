"""Composite steps (SPEC §8): Parallel, Condition, Loop, Router, Steps, and a Workflow as a step.

The guarantee under test is trio's nursery rule, in threads: no branch
outlives its run. Every test synchronises with Events and Barriers; the only
sleeps are ``ctx.sleep`` calls inside the steps under test.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import pytest
from conftest import WAIT, names

import threadflow
from threadflow import (
    CancelCause,
    CancellationError,
    Condition,
    Loop,
    Parallel,
    Router,
    RunStatus,
    Step,
    StepInput,
    Steps,
    Workflow,
    WorkflowError,
    get_context,
    shield,
)
from threadflow._branches import POOL
from threadflow.compose import set_max_branch_threads
from threadflow.events import BaseEvent, StepStartedEvent, parse_event
from threadflow.storage import SqliteStore


def well_formed(events: list[BaseEvent]) -> list[BaseEvent]:
    """seq 1..n without gaps, one workflow_started first, exactly one terminal event, last."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert names(events)[0] == "workflow_started"
    assert [e.terminal for e in events] == [False] * (len(events) - 1) + [True]
    assert len({e.run_id for e in events}) == 1
    return events


def paths(events: list[BaseEvent], event: str = "step_started") -> list[str | None]:
    return [getattr(e, "step_path", None) for e in events if e.event == event]


def const(value: Any, name: str) -> Step:
    return Step(name, executor=lambda si: value)


def inc(si: StepInput) -> int:
    return int(si.previous_step_content or 0) + 1


@pytest.fixture
def pool_bound() -> Iterator[None]:
    previous = POOL.max_threads
    yield
    set_max_branch_threads(previous)


# -- 1. every composite is a step, nests, and a workflow can be one -------------------------


def test_composites_are_exported_steps() -> None:
    for cls in (Parallel, Condition, Loop, Router, Steps):
        assert cls.__name__ in threadflow.__all__
    made = [Parallel(inc), Condition(bool, inc), Loop(inc, max_iterations=2), Router(lambda si: inc, [inc]), Steps(inc)]
    assert all(isinstance(step, Step) for step in made)
    assert [step.name for step in made] == ["parallel_inc", "condition_inc", "loop_inc", "router_inc", "steps_inc"]


def test_each_composite_runs_its_children_and_gives_its_output() -> None:
    wf = Workflow(
        "all",
        steps=[
            Loop([inc], max_iterations=10, end_condition=lambda outs: outs[-1] >= 3, name="count"),
            Steps(inc, Step("double", executor=lambda si: si.previous_step_content * 2), name="seq"),
            Condition(lambda si: si.previous_step_content > 100, [inc], name="never"),
            Condition(lambda si: si.previous_step_content == 8, [inc], name="yes"),
            Router(lambda si: ["b", "a"], [const("A", "a"), const("B", "b")], name="route"),
            Parallel(Step("echo", executor=lambda si: si.previous_step_content), const("x", "x"), name="fan"),
        ],
    )
    events = well_formed(list(wf.run(stream=True)))
    assert events[-1].content == {"echo": "A", "x": "x"}  # type: ignore[attr-defined]
    completed = {e.step_path: e.content for e in events if e.event == "step_completed"}  # type: ignore[attr-defined]
    assert completed["count"] == 3 and completed["count[3]/inc"] == 3 and "count[4]/inc" not in completed
    assert completed["seq"] == 8 and completed["never"] == 8 and completed["yes"] == 9
    assert completed["route"] == "A" and completed["route/b"] == "B"
    assert paths(events).index("route/b") < paths(events).index("route/a")


def test_every_nested_event_carries_its_path() -> None:
    inner = Parallel(Steps(const(1, "draft"), name="write"), const(2, "check"), name="fan")
    wf = Workflow("nest", steps=[Loop([inner], max_iterations=2, name="review"), inc])
    events = well_formed(list(wf.run(stream=True)))
    started = paths(events)
    assert started[0] == "review" and started[-1] == "inc"
    assert set(started[1:-1]) == {
        "review[1]/fan", "review[1]/fan/write", "review[1]/fan/write/draft", "review[1]/fan/check",
        "review[2]/fan", "review[2]/fan/write", "review[2]/fan/write/draft", "review[2]/fan/check",
    }  # fmt: skip
    for event in events:
        if hasattr(event, "step_path"):
            assert event.step_path.rsplit("/", 1)[-1].split("[")[0] == event.step_name  # type: ignore[attr-defined]


def test_a_top_level_step_path_is_its_name() -> None:
    def stream(si: StepInput) -> Iterator[str]:
        yield "a"

    events = list(Workflow("flat", steps=[inc, stream]).run(stream=True))
    for event in events:
        if hasattr(event, "step_name") and event.event != "workflow_cancelled":
            assert event.step_path == event.step_name  # type: ignore[attr-defined]


def test_outputs_of_nested_steps_are_kept_under_their_paths() -> None:
    seen: list[Any] = []

    def reader(si: StepInput) -> None:
        seen.append(si.get_step_content("fan/b"))

    out = Workflow("o", steps=[Parallel(const(1, "a"), const(2, "b"), name="fan"), reader]).run()
    assert seen == [2]
    assert out.step_outputs["fan"] == {"a": 1, "b": 2} and out.step_outputs["fan/a"] == 1


def test_router_accepts_the_callable_it_was_given_and_rejects_strangers() -> None:
    def left(si: StepInput) -> str:
        return "L"

    def right(si: StepInput) -> str:
        return "R"

    assert Workflow("r", steps=[Router(lambda si: right, [left, right])]).run().content == "R"
    assert Workflow("r0", steps=[inc, Router(lambda si: None, [left])]).run().content == 1  # nothing chosen
    with pytest.raises(WorkflowError) as caught:
        Workflow("r2", steps=[Router(lambda si: "nope", [left, right], name="pick")]).run()
    assert isinstance(caught.value.__cause__, ValueError) and "pick" in str(caught.value.__cause__)


def test_a_raising_evaluator_fails_its_composite() -> None:
    def evaluator(si: StepInput) -> bool:
        raise KeyError("boom")

    with pytest.raises(WorkflowError) as caught:
        Workflow("e", steps=[Condition(evaluator, [inc], name="gate")]).run()
    assert caught.value.output.step_name == "gate" and isinstance(caught.value.__cause__, KeyError)


def test_bad_composite_definitions_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_iterations"):
        Loop(inc, max_iterations=0)
    with pytest.raises(TypeError, match="evaluator"):
        Condition("yes", inc)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one step"):
        Parallel()
    with pytest.raises(ValueError, match="unique"):
        Parallel(const(1, "a"), const(2, "a"))


def test_a_workflow_is_a_step_of_another() -> None:
    inner = Workflow("inner", steps=[Step("shout", executor=lambda si: str(si.input).upper() + "!")])
    outer = Workflow("outer", steps=[Step("prep", executor=lambda si: si.input * 2), inner])
    events = well_formed(list(outer.run("ab", stream=True)))
    assert paths(events) == ["prep", "inner", "inner/shout"]
    assert events[-1].content == "ABAB!"  # type: ignore[attr-defined]
    assert {e.workflow_id for e in events} == {"outer"}


def test_parse_event_reads_logs_written_before_step_path() -> None:
    old = {
        "event": "step_started", "run_id": "r", "workflow_id": "w", "workflow_name": "w",
        "seq": 2, "created_at": 1.0, "step_name": "s", "step_index": 0,
    }  # fmt: skip
    event = parse_event(json.dumps(old))
    assert isinstance(event, StepStartedEvent) and event.step_path is None
    new = StepStartedEvent(**old, step_path="fan/s")  # type: ignore[arg-type]
    assert parse_event(new.model_dump_json()) == new


# -- 2. events: merged in the consumer's thread, in the order they happened -----------------


def test_branches_really_run_at_once() -> None:
    barrier = threading.Barrier(4, timeout=WAIT)  # a broken barrier fails the branch, and the run

    def meet(si: StepInput) -> int:
        return barrier.wait()

    out = Workflow("b", steps=[Parallel(*(Step(f"s{i}", executor=meet) for i in range(4)), name="fan")]).run()
    assert sorted(out.content.values()) == [0, 1, 2, 3]


def test_branch_events_are_merged_in_the_order_they_happened() -> None:
    turns = [threading.Event() for _ in range(4)]

    def player(first: int) -> Any:
        def play(si: StepInput) -> Iterator[str]:
            for turn in range(first, 4, 2):
                assert turns[turn].wait(WAIT)
                yield f"t{turn}"
                if turn + 1 < 4:
                    # The event is on the channel before the other branch may make its own.
                    turns[turn + 1].set()

        return play

    turns[0].set()
    wf = Workflow("m", steps=[Parallel(Step("even", executor=player(0)), Step("odd", executor=player(1)))])
    threads, contents = set(), []
    for event in wf.run(stream=True):
        threads.add(threading.current_thread())
        if event.event == "run_content":
            contents.append(event.content)  # type: ignore[attr-defined]
    assert contents == ["t0", "t1", "t2", "t3"]
    assert threads == {threading.current_thread()}


# -- 3. cancellation reaches every branch --------------------------------------------------


class Branches:
    """Branches that record what they did, for the cancel tests."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.started = threading.Barrier(count + 1, timeout=WAIT)
        self.callbacks: list[str] = []
        self.cleaned: list[str] = []
        self.exited: list[str] = []
        self.lock = threading.Lock()

    def note(self, where: list[str], name: str) -> None:
        with self.lock:
            where.append(name)

    def sleeper(self, name: str) -> Step:
        def sleep(si: StepInput) -> None:
            ctx = get_context()
            ctx.on_cancel(lambda: self.note(self.callbacks, name))
            try:
                self.started.wait()
                ctx.sleep(60)
            except CancellationError:
                self.note(self.cleaned, name)
                raise
            finally:
                self.note(self.exited, name)

        return Step(name, executor=sleep)

    def streamer(self, name: str) -> Step:
        def stream(si: StepInput) -> Iterator[str]:
            try:
                yield f"{name}-0"
                self.started.wait()
                while True:
                    yield name
            except CancellationError:
                self.note(self.cleaned, name)
                raise
            finally:
                self.note(self.exited, name)

        return Step(name, executor=stream)

    def all_exited(self) -> bool:
        with self.lock:
            return len(self.exited) == self.count


def cancel_when_started(branches: Branches, run_id: str) -> tuple[threading.Thread, list[bool]]:
    """Cancel the run from another thread once every branch has reached ``branches.started``."""
    accepted: list[bool] = []

    def cancel() -> None:
        branches.started.wait()
        accepted.append(threadflow.cancel_run(run_id, "stop"))

    thread = threading.Thread(target=cancel)
    thread.start()
    return thread, accepted


def test_a_cancel_wakes_every_sleeping_branch_and_the_terminal_event_comes_last() -> None:
    branches = Branches(8)
    wf = Workflow("sleepers", steps=[Parallel(*(branches.sleeper(f"b{i}") for i in range(8)), name="fan")])
    stream = wf.run(stream=True)
    canceller, accepted = cancel_when_started(branches, stream.run_id)
    events = []
    for event in stream:
        if event.terminal:
            assert branches.all_exited(), "the terminal event came before every branch had stopped"
        events.append(event)
    canceller.join(WAIT)
    well_formed(events)
    assert accepted == [True]
    assert events[-1].event == "workflow_cancelled" and events[-1].reason == "stop"  # type: ignore[attr-defined]
    assert sorted(branches.callbacks) == sorted(branches.cleaned) == sorted(f"b{i}" for i in range(8))


def test_a_cancel_mid_stream_throws_into_every_streaming_branch() -> None:
    branches = Branches(3)
    wf = Workflow("streams", steps=[Parallel(*(branches.streamer(f"s{i}") for i in range(3)), name="fan")])
    stream = wf.run(stream=True)
    canceller, accepted = cancel_when_started(branches, stream.run_id)
    events = well_formed(list(stream))
    canceller.join(WAIT)
    assert accepted == [True] and sorted(branches.cleaned) == ["s0", "s1", "s2"]
    cancelled = [e.step_path for e in events if e.event == "run_cancelled"]  # type: ignore[attr-defined]
    assert sorted(cancelled) == ["fan/s0", "fan/s1", "fan/s2"]
    assert stream.output is not None and stream.output.status is RunStatus.cancelled


def test_shield_is_per_branch() -> None:
    shielded, release, asleep, sleeper_woke = (threading.Event() for _ in range(4))
    record: list[str] = []

    def guarded(si: StepInput) -> None:
        with shield():
            shielded.set()
            assert release.wait(WAIT)  # not a checkpoint: the shielded work finishes
            record.append("shielded work done")
        get_context().check_cancellation()
        record.append("not reached")

    def sleeper(si: StepInput) -> None:
        try:
            asleep.set()
            get_context().sleep(60)  # not shielded: must wake while the sibling is still shielded
        except CancellationError:
            sleeper_woke.set()
            raise

    wf = Workflow("sh", steps=[Parallel(Step("guarded", executor=guarded), Step("sleeper", executor=sleeper))])
    handle = wf.run(background=True)
    assert shielded.wait(WAIT) and asleep.wait(WAIT)  # both started: a branch not started never will
    assert handle.cancel("now")
    assert sleeper_woke.wait(WAIT), "a shield in one branch held back the cancel of another"
    release.set()
    assert handle.wait(WAIT) and handle.status is RunStatus.cancelled
    assert record == ["shielded work done"]


def test_leaving_the_stream_stops_every_branch_first() -> None:
    branches = Branches(4)
    wf = Workflow("leave", steps=[Parallel(*(branches.streamer(f"s{i}") for i in range(4)), name="fan")])
    threading.Thread(target=branches.started.wait).start()  # let the branches stream on together
    seen = 0
    with wf.run(stream=True) as stream:
        for event in stream:
            seen += event.event == "run_content" and event.content == "s0"  # type: ignore[attr-defined]
            if seen > 3:
                break
    assert branches.all_exited()
    info = wf.get_run(stream.run_id)
    assert info is not None and info.status is RunStatus.cancelled and info.cause is CancelCause.stream_closed


def test_run_timeout_reaches_every_branch() -> None:
    branches = Branches(3)
    branches.started = threading.Barrier(3, timeout=WAIT)  # nobody else waits: the timeout cancels
    wf = Workflow("rt", steps=[Parallel(*(branches.sleeper(f"b{i}") for i in range(3)))], run_timeout=0.2)
    out = wf.run()
    assert out.status is RunStatus.cancelled and out.cause is CancelCause.timeout
    assert sorted(branches.cleaned) == ["b0", "b1", "b2"]


@pytest.mark.parametrize("where", ["composite", "branch"])
def test_a_step_timeout_reaches_every_branch(where: str) -> None:
    branches = Branches(2)
    branches.started = threading.Barrier(2, timeout=WAIT)
    slow = branches.sleeper("slow")
    if where == "branch":
        slow = Step("slow", executor=slow.executor, timeout=0.2)
    fan = Parallel(slow, branches.sleeper("other"), name="fan", timeout=0.2 if where == "composite" else None)
    out = Workflow("st", steps=[fan]).run()
    assert out.status is RunStatus.cancelled and out.cause is CancelCause.timeout
    assert out.reason is not None and ("'fan'" if where == "composite" else "'slow'") in out.reason
    assert sorted(branches.cleaned) == ["other", "slow"]


def test_a_cancel_reaches_a_nested_workflow() -> None:
    branches = Branches(2)
    inner = Workflow("inner", steps=[Parallel(branches.sleeper("a"), branches.sleeper("b"), name="fan")])
    outer = Workflow("outer", steps=[inc, inner])
    stream = outer.run(stream=True)
    canceller, accepted = cancel_when_started(branches, stream.run_id)
    events = well_formed(list(stream))
    canceller.join(WAIT)
    assert accepted == [True] and events[-1].event == "workflow_cancelled"
    assert sorted(branches.cleaned) == ["a", "b"]
    assert "inner/fan/a" in paths(events)


def test_a_background_run_with_branches_cancels_from_its_handle() -> None:
    branches = Branches(3)
    wf = Workflow("bg", steps=[Parallel(*(branches.sleeper(f"b{i}") for i in range(3)), name="fan")])
    handle = wf.run(background=True)
    branches.started.wait()
    assert handle.cancel("bye")
    assert handle.wait(WAIT) and handle.status is RunStatus.cancelled
    well_formed(list(handle.events()))
    assert branches.all_exited()


def test_a_branch_ending_keeps_its_siblings_on_cancel_callbacks() -> None:
    branches = Branches(1)
    branches.started = threading.Barrier(2, timeout=WAIT)
    quick_done = threading.Event()

    def quick(si: StepInput) -> str:
        get_context().on_cancel(lambda: branches.note(branches.callbacks, "quick"))  # dropped when it ends
        return "done"

    wf = Workflow("keep", steps=[Parallel(branches.sleeper("slow"), Step("quick", executor=quick), name="fan")])
    stream = wf.run(stream=True)
    for event in stream:
        if event.event == "step_completed" and event.step_path == "fan/quick":  # type: ignore[attr-defined]
            quick_done.set()
            branches.started.wait()
            assert wf.cancel_run(stream.run_id)
    assert quick_done.is_set() and branches.callbacks == ["slow"] and branches.cleaned == ["slow"]


def test_async_branches_are_cancelled_at_their_await() -> None:
    started = threading.Barrier(3, timeout=WAIT)
    log: list[str] = []

    async def waiter(si: StepInput) -> None:
        started.wait()  # blocks this branch's own loop only: each branch has its own
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            log.append("waiter")
            raise

    async def streamer(si: StepInput) -> AsyncIterator[str]:
        try:
            yield "first"
            started.wait()
            while True:
                yield "more"
                await asyncio.sleep(0)
        finally:
            log.append("streamer")

    handle = Workflow("async", steps=[Parallel(waiter, streamer, name="fan")]).run(background=True)
    started.wait()
    assert handle.cancel("stop")
    assert handle.wait(WAIT) and handle.status is RunStatus.cancelled
    assert sorted(log) == ["streamer", "waiter"]


# -- 4. a failing branch cancels its siblings ----------------------------------------------


def test_a_failing_branch_stops_its_siblings_and_the_run_ends_error() -> None:
    branches = Branches(1)
    branches.started = threading.Barrier(2, timeout=WAIT)
    fast_done = threading.Event()

    def fast(si: StepInput) -> str:
        fast_done.set()
        return "kept"

    def failing(si: StepInput) -> None:
        assert fast_done.wait(WAIT)
        branches.started.wait()  # the sleeper is about to sleep
        raise ValueError("bad branch")

    fan = Parallel(Step("fast", executor=fast), Step("failing", executor=failing), branches.sleeper("slow"), name="fan")
    stream = Workflow("f", steps=[fan]).run(stream=True)
    events = well_formed(list(stream))
    assert branches.cleaned == ["slow"] and branches.callbacks == ["slow"]
    last = events[-1]
    assert last.event == "workflow_error" and last.error_type == "ValueError"  # type: ignore[attr-defined]
    assert [e.step_path for e in events if e.event == "step_completed"] == ["fan/fast"]  # type: ignore[attr-defined]
    assert stream.output is not None and stream.output.step_outputs["fan/fast"] == "kept"
    with pytest.raises(WorkflowError) as caught:
        Workflow("f2", steps=[Parallel(Step("failing", executor=lambda si: 1 / 0))]).run()
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_a_cancel_accepted_while_a_failure_stops_the_run_wins() -> None:
    """True means cancelled, even when a failing branch was already stopping the run."""
    outcome: list[bool] = []
    sleeping = threading.Event()

    def failing(si: StepInput) -> None:
        assert sleeping.wait(WAIT)
        raise ValueError("first")

    def cleanup_cancels(si: StepInput) -> None:
        ctx = get_context()
        try:
            sleeping.set()
            ctx.sleep(60)
        finally:
            outcome.append(threadflow.cancel_run(ctx.run_id, "late"))

    out = Workflow("w", steps=[Parallel(Step("cleaner", executor=cleanup_cancels), Step("failing", executor=failing))])
    result = out.run()
    assert outcome == [True] and result.status is RunStatus.cancelled and result.reason == "late"


# -- 5. threads are bounded ----------------------------------------------------------------


def test_a_parallel_of_a_thousand_branches_runs_on_the_bounded_pool(pool_bound: None) -> None:
    set_max_branch_threads(8)
    lock, running, most = threading.Lock(), [0], [0]

    def branch(si: StepInput) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        with lock:
            running[0] -= 1
        return 1

    out = Workflow("k", steps=[Parallel(*(Step(f"s{i}", executor=branch) for i in range(1000)))]).run()
    assert len(out.content) == 1000 and sum(out.content.values()) == 1000
    assert most[0] <= 8, f"{most[0]} branches ran at once"


def test_a_branch_not_started_when_the_run_is_cancelled_never_starts(pool_bound: None) -> None:
    set_max_branch_threads(1)
    branches = Branches(1)
    ran: list[str] = []
    handle = Workflow("queue", steps=[Parallel(branches.sleeper("first"), Step("queued", executor=ran.append))]).run(
        background=True
    )
    branches.started.wait()  # "first" holds the pool's only thread; "queued" waits for it
    assert handle.cancel("stop")
    assert handle.wait(WAIT) and handle.status is RunStatus.cancelled
    assert ran == [] and branches.cleaned == ["first"]
    assert "queued" not in {getattr(e, "step_name", None) for e in handle.events()}


def test_nested_parallels_cannot_deadlock_a_small_pool(pool_bound: None) -> None:
    set_max_branch_threads(2)

    def inner(i: int) -> Parallel:
        return Parallel(*(const(j, f"leaf{j}") for j in range(3)), name=f"inner{i}")

    out = Workflow("n", steps=[Parallel(*(inner(i) for i in range(3)), name="outer")]).run()
    assert out.content == {f"inner{i}": {"leaf0": 0, "leaf1": 1, "leaf2": 2} for i in range(3)}


# -- 6. records, the store and the CLI carry branch events unchanged -----------------------


def test_the_sqlite_log_and_the_cli_keep_branch_events(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store = SqliteStore(str(db))
    try:
        wf = Workflow("logged", steps=[Parallel(const(1, "a"), const(2, "b"), name="fan")], store=store)
        stream = wf.run(stream=True)
        events = well_formed(list(stream))
        assert list(store.events(stream.run_id)) == events
    finally:
        store.close()
    cli = [sys.executable, "-m", "threadflow", "--db", str(db), "runs", "logs", stream.run_id]
    text = subprocess.run(cli, capture_output=True, text=True, timeout=WAIT * 3, check=True).stdout
    assert "fan/a" in text and "fan/b" in text


def test_the_http_stream_carries_branch_events_unchanged() -> None:
    pytest.importorskip("fastapi")
    from threadflow.client import Client
    from threadflow.server import create_app, running_server

    wf = Workflow("served", steps=[Parallel(const(1, "a"), Steps(const(2, "b"), name="inner"), name="fan")])
    with running_server(create_app(wf)) as url, Client(url) as client, client.stream("served") as stream:
        events = well_formed(list(stream))
        replayed = list(client.events("served", events[0].run_id))
    assert replayed == events
    assert {"fan/a", "fan/inner/b"} <= set(paths(events))


# -- 8. the race between a cancel and the last branch completing ---------------------------


@pytest.mark.stress
def test_cancel_racing_the_last_branch(pool_bound: None) -> None:
    """10^4 runs: a cancel lands just as the last branch returns. True => cancelled, one terminal, no branch left."""
    set_max_branch_threads(4)
    lock = threading.Lock()
    running, finished = [0], [0]
    last_returning: SimpleQueue[str] = SimpleQueue()

    def branch(si: StepInput) -> int:
        with lock:
            running[0] += 1
        try:
            return 1
        finally:
            with lock:
                running[0] -= 1
                finished[0] += 1
                if finished[0] % 2 == 0:  # the second branch of this run: the cancel races its return
                    last_returning.put(si.run_id)

    wf = Workflow("race", steps=[Parallel(Step("a", executor=branch), Step("b", executor=branch))])
    answers: SimpleQueue[bool] = SimpleQueue()

    def canceller() -> None:
        while (run_id := last_returning.get()) != "stop":
            answers.put(threadflow.cancel_run(run_id))

    thread = threading.Thread(target=canceller)
    thread.start()
    outcomes = {True: 0, False: 0}
    try:
        for _ in range(10_000):
            events = list(wf.run(stream=True))
            accepted = answers.get(timeout=WAIT)
            outcomes[accepted] += 1
            assert running[0] == 0, "a branch outlived its run"
            well_formed(events)
            assert (events[-1].event == "workflow_cancelled") is accepted
    finally:
        last_returning.put("stop")
        thread.join(WAIT)
    assert outcomes[True] and outcomes[False], f"the race was never close: {outcomes}"
