"""Race reproducers for background runs (issue 3): many runs, cancels from many threads, the SPEC's invariants.

Invariants checked for every run, whatever the interleaving:

- its events start with one ``workflow_started`` and end with exactly one
  terminal event, ``seq`` 1..n without gaps (SPEC §2);
- a ``cancel`` that returned True means the run ended ``cancelled``, with the
  reason of one of the accepted requests (§3 rules 1, 2);
- a run only ever cancelled on request ended ``cancelled`` only if a request
  was accepted;
- when everything has ended, the registry is empty (§3 rule 11).

The random choices are seeded; the thread interleavings are not, which is
the point. The whole module runs in well under a minute on two cores.
"""

from __future__ import annotations

import queue
import random
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import names

import threadflow
from threadflow import (
    CancelCause,
    RunHandle,
    RunStatus,
    Step,
    StepInput,
    Workflow,
    get_context,
    shield,
)
from threadflow._registry import REGISTRY
from threadflow.events import BaseEvent
from threadflow.testing import check_run_events

pytestmark = pytest.mark.stress

WAIT = 30.0
KINDS = ("plain", "sleepy", "stream", "failing", "stubborn", "shielded", "retried")


# -- the workload ------------------------------------------------------------------------


def prepare(si: StepInput) -> dict[str, Any]:
    get_context().check_cancellation()
    return dict(si.input)


def body(si: StepInput) -> Any:
    job = si.previous_step_content
    ctx = get_context()
    kind = job["kind"]
    if kind == "sleepy":
        ctx.sleep(job["pause"])
    elif kind == "stream":
        return stream_body(job)
    elif kind == "failing":
        raise ValueError(f"job {job['index']} fails")
    elif kind == "stubborn":
        time.sleep(job["pause"])  # no checkpoint: a cancel lands when it returns
    elif kind == "shielded":
        with shield():
            ctx.sleep(job["pause"])
    elif kind == "retried" and ctx.attempt == 1:
        raise RuntimeError("transient")
    return f"body {job['index']}"


def stream_body(job: dict[str, Any]) -> Generator[str, None, str]:
    for i in range(job["chunks"]):
        yield f"{i} "
        get_context().sleep(job["pause"] / job["chunks"])
    return f"body {job['index']}"


def finish(si: StepInput) -> Iterator[str]:
    yield "finished "
    yield str(si.previous_step_content)


def make_workflows() -> list[Workflow]:
    steps = [prepare, Step("body", executor=body, max_retries=1, retry_delay=0.001), Step("finish", executor=finish)]
    return [Workflow(f"stress-{i}", steps=steps, max_concurrent_runs=4**i) for i in range(4)]


@dataclass(frozen=True)
class Cancel:
    run_id: str
    reason: str
    accepted: bool


# -- 1000 runs, four cancelling threads --------------------------------------------------


@pytest.mark.parametrize("switch_interval", [None, 1e-5], ids=["default-switching", "fine-switching"])
@pytest.mark.parametrize("seed", [20240601, 7])
def test_a_thousand_background_runs_with_random_cancels_from_several_threads(
    seed: int, switch_interval: float | None
) -> None:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval or interval)
    try:
        run_a_thousand(random.Random(seed))
    finally:
        sys.setswitchinterval(interval)


def run_a_thousand(rng: random.Random) -> None:
    runs, cancellers = 1000, 4
    workflows = make_workflows()
    inboxes: list[queue.SimpleQueue[tuple[Workflow, RunHandle, str, bool] | None]] = [
        queue.SimpleQueue() for _ in range(cancellers)
    ]
    later: list[list[tuple[Workflow, RunHandle, str, bool]]] = [[] for _ in range(cancellers)]
    submitted = threading.Event()
    go = threading.Barrier(cancellers + 1)
    results: list[list[Cancel]] = [[] for _ in range(cancellers)]

    def cancel(wf: Workflow, handle: RunHandle, how: str, reason: str) -> bool:
        if how == "handle":
            return handle.cancel(reason)
        if how == "workflow":
            return wf.cancel_run(handle.run_id, reason)
        return threadflow.cancel_run(handle.run_id, reason)

    def canceller(index: int) -> None:
        go.wait(WAIT)
        # Some cancels land at once (mostly on queued runs), the rest after every run was submitted.
        while (item := inboxes[index].get()) is not None:
            wf, handle, how, now = item
            if not now:
                later[index].append(item)
                continue
            reason = f"canceller {index}"
            results[index].append(Cancel(handle.run_id, reason, cancel(wf, handle, how, reason)))
        submitted.wait(WAIT)
        for wf, handle, how, _ in later[index]:
            reason = f"canceller {index} later"
            results[index].append(Cancel(handle.run_id, reason, cancel(wf, handle, how, reason)))

    threads = [threading.Thread(target=canceller, args=(i,)) for i in range(cancellers)]
    for thread in threads:
        thread.start()
    go.wait(WAIT)

    jobs: dict[str, dict[str, Any]] = {}
    handles: list[RunHandle] = []
    for index in range(runs):
        wf = workflows[index % len(workflows)]
        job = {"index": index, "kind": rng.choice(KINDS), "pause": rng.uniform(0, 0.003), "chunks": rng.randint(1, 8)}
        handle = wf.run(job, background=True)
        jobs[handle.run_id] = job
        handles.append(handle)
        for who in rng.sample(range(cancellers), k=rng.choice((0, 0, 1, 1, 2))):
            how = rng.choice(("handle", "workflow", "process"))
            inboxes[who].put((wf, handle, how, rng.random() < 0.5))
    submitted.set()
    for inbox in inboxes:
        inbox.put(None)
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()

    assert all(handle.wait(WAIT) for handle in handles)
    by_run: dict[str, list[Cancel]] = defaultdict(list)
    for cancel_results in results:
        for result in cancel_results:
            by_run[result.run_id].append(result)

    statuses: dict[RunStatus, int] = defaultdict(int)
    for handle in handles:
        check_one_run(handle, jobs[handle.run_id], by_run[handle.run_id])
        statuses[handle.status] += 1

    assert threadflow.active_runs() == []
    assert len(REGISTRY) == 0
    assert threadflow.shutdown(0) is True
    # the workload really exercised every ending
    assert statuses[RunStatus.cancelled] > 50
    assert statuses[RunStatus.completed] > 50
    assert statuses[RunStatus.error] > 10
    assert sum(statuses.values()) == runs


def check_one_run(handle: RunHandle, job: dict[str, Any], cancels: list[Cancel]) -> None:
    events = check_run_events(handle.events())
    output = handle.result(0) if job["kind"] != "failing" or handle.status is not RunStatus.error else None
    terminal = events[-1]
    status = handle.status
    assert terminal.status is status  # type: ignore[attr-defined]
    accepted = [c for c in cancels if c.accepted]
    context = f"run {handle.run_id} job {job} cancels {cancels} events {names(events)}"
    if accepted:
        assert status is RunStatus.cancelled, context
    if status is RunStatus.cancelled:
        assert accepted, context
        assert output is not None
        assert output.cause is CancelCause.requested
        assert output.reason in {c.reason for c in accepted}, context
        assert output.content is None
    elif status is RunStatus.error:
        assert job["kind"] == "failing", context
    else:
        assert status is RunStatus.completed, context
        assert job["kind"] != "failing", context
        assert output is not None
        assert output.content == f"finished body {job['index']}"


# -- a cancel racing the run's last instruction ------------------------------------------


@pytest.fixture
def fine_grained_switching() -> Iterator[random.Random]:
    """Switch threads far more often than CPython's 5 ms, so that both sides of each race get to win.

    Yields the seeded source of the busy-loop jitter that shifts the cancelling
    side by a few microseconds from one iteration to the next.
    """
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield random.Random(7)
    finally:
        sys.setswitchinterval(interval)


def jitter(rng: random.Random) -> None:
    for _ in range(rng.randrange(3000)):
        pass


def test_a_cancel_racing_the_end_of_a_background_run_true_means_cancelled(
    fine_grained_switching: random.Random,
) -> None:
    barrier = threading.Barrier(2)

    def last_step(si: StepInput) -> str:
        barrier.wait(WAIT)
        return "done"

    wf = Workflow("race", steps=[last_step])
    outcomes: dict[bool, int] = defaultdict(int)
    for _ in range(500):
        handle = wf.run(background=True)
        barrier.wait(WAIT)
        jitter(fine_grained_switching)
        accepted = handle.cancel("race")
        output = handle.result(WAIT)
        assert output.status is (RunStatus.cancelled if accepted else RunStatus.completed)
        assert str(check_run_events(handle.events())[-1].event) == f"workflow_{output.status.value}"
        outcomes[accepted] += 1
    assert outcomes[True] > 0


def test_a_cancel_racing_the_end_of_a_foreground_run_true_means_cancelled(
    fine_grained_switching: random.Random,
) -> None:
    barrier = threading.Barrier(2)
    accepted: list[bool] = []
    delays = [fine_grained_switching.randrange(3000) for _ in range(500)]

    def last_step(si: StepInput) -> str:
        barrier.wait(WAIT)
        return "done"

    def canceller(run_id: str, spins: int) -> None:
        barrier.wait(WAIT)
        for _ in range(spins):
            pass
        accepted.append(threadflow.cancel_run(run_id, "race"))

    wf = Workflow("race", steps=[last_step])
    for i, spins in enumerate(delays):
        thread = threading.Thread(target=canceller, args=(f"fg-{i}", spins))
        thread.start()
        stream = wf.run(run_id=f"fg-{i}", stream=True)
        events = check_run_events(stream)
        thread.join(WAIT)
        assert stream.output is not None
        assert stream.output.status is (RunStatus.cancelled if accepted[-1] else RunStatus.completed)
        assert str(events[-1].event) == f"workflow_{stream.output.status.value}"


# -- a cancel racing the worker that takes a queued run --------------------------------


def test_a_cancel_racing_the_pickup_of_a_queued_run_never_runs_it_twice_or_after_it_ended(
    fine_grained_switching: random.Random,
) -> None:
    gate = threading.Event()
    slot_free = threading.Barrier(2)
    calls: dict[str, list[bool]] = defaultdict(list)
    handles: dict[str, RunHandle] = {}

    def step(si: StepInput) -> str:
        if si.input == "blocker":
            gate.wait(WAIT)
            return "ok"
        calls[si.run_id].append(handles[si.run_id].done())
        get_context().sleep(0.0005)
        return "ok"

    def meet_the_worker() -> None:
        slot_free.wait(WAIT)

    wf = Workflow("race", steps=[step], max_concurrent_runs=1)
    for _ in range(500):
        gate.clear()
        blocker = wf.run("blocker", background=True)
        queued = wf.run("queued", background=True)
        handles[queued.run_id] = queued
        # Runs in the worker right before it takes the next queued run: that is the race.
        blocker.add_done_callback(meet_the_worker)
        gate.set()
        slot_free.wait(WAIT)
        jitter(fine_grained_switching)
        accepted = queued.cancel("race")
        output = queued.result(WAIT)
        assert blocker.result(WAIT).status is RunStatus.completed
        events = check_run_events(queued.events())
        assert output.status is (RunStatus.cancelled if accepted else RunStatus.completed)
        ran = calls.get(queued.run_id, [])
        assert ran in ([], [False]), "the queued run's step ran twice or after the run had ended"
        if names(events) == ["workflow_started", "workflow_cancelled"]:
            assert ran == [], "a run recorded as cancelled while queued ran its step"
        if ran:
            assert "step_started" in names(events)


# -- timeouts, cancels and live subscribers together -------------------------------------


def test_timeouts_and_cancels_racing_with_live_subscribers() -> None:
    rng = random.Random(99)
    runs = 400

    hold = threading.Event()

    def work(si: StepInput) -> Iterator[str]:
        ctx = get_context()
        if si.input["hold"]:
            ctx.wait(hold)  # waiting spends no budget: only the cancel by hand can end these
        for i in range(si.input["chunks"]):
            # Blocked without a checkpoint: budget spent. (A busy loop here would starve the
            # timer thread of the GIL, and runs would end before it could fire.)
            time.sleep(si.input["busy"])
            ctx.sleep(si.input["busy"])  # budget not spent
            yield f"{i} "

    wf = Workflow("timeouts", steps=[Step("work", executor=work)], max_concurrent_runs=64)
    handles: list[RunHandle] = []
    held = set(rng.sample(range(runs), 20))  # a few that are surely active when cancelled
    for index in range(runs):
        job = {"chunks": rng.randint(1, 6), "busy": rng.uniform(0, 0.002), "hold": index in held}
        budget = 60.0 if index in held else rng.uniform(0.001, 0.01)
        handles.append(wf.run(job, background=True, run_timeout=budget))

    followed: dict[str, list[BaseEvent]] = {}

    def subscriber(picked: list[RunHandle]) -> None:
        for handle in picked:
            followed[handle.run_id] = list(handle.events())

    subscribers = [threading.Thread(target=subscriber, args=(rng.sample(handles, 50),)) for _ in range(3)]
    for thread in subscribers:
        thread.start()
    accepted: dict[str, bool] = {}
    to_cancel = [handles[i] for i in sorted(held)] + rng.sample(handles, runs // 3)
    for handle in to_cancel:
        if handle.run_id not in accepted:
            accepted[handle.run_id] = handle.cancel("by hand")
    hold.set()
    for thread in subscribers:
        thread.join(WAIT)
        assert not thread.is_alive()
    assert all(handle.wait(WAIT) for handle in handles)

    causes: dict[CancelCause | None, int] = defaultdict(int)
    for handle in handles:
        events = check_run_events(handle.events())
        output = handle.result(0)
        causes[output.cause] += 1
        if accepted.get(handle.run_id):
            assert output.status is RunStatus.cancelled
        if output.cause is CancelCause.timeout:
            assert output.reason is not None and output.reason.startswith("run_timeout of")
        elif output.cause is CancelCause.requested:
            assert accepted.get(handle.run_id) is True
            assert output.reason == "by hand"
        else:
            assert output.status is RunStatus.completed
        if handle.run_id in followed:
            assert followed[handle.run_id] == events
    assert threadflow.active_runs() == []
    assert len(REGISTRY) == 0
    assert causes[CancelCause.timeout] > 0, dict(causes)
    assert causes[CancelCause.requested] > 0, dict(causes)
    assert causes[None] > 0, dict(causes)
    assert len([t for t in threading.enumerate() if t.name == "threadflow-timer"]) <= 1
