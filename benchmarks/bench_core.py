"""Core benchmarks: streaming overhead, per-run overhead, cancel latency, memory.

Every figure is printed beside a baseline measured in the same process, so
the ratios survive a noisy machine:

- streaming: a bare generator that builds the same pydantic event, once with
  pydantic's validating constructor (what hand-written code does) and once
  with the trusted fast construction threadflow uses;
- per-run: a bare loop calling the same step functions;
- cancel latency: the cancel_run call → the consumer holding ``workflow_cancelled``;
- memory: RSS and registry size after 10^5 runs of four kinds.

Run: ``python benchmarks/bench_core.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from threadflow import Step, StepInput, Workflow, get_context
from threadflow._fastevents import make_event
from threadflow._registry import REGISTRY
from threadflow.events import RunContentEvent, RunEvent, WorkflowCancelledEvent

# -- helpers ----------------------------------------------------------------


def best_of(repeats: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(repeats))


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- 1. streaming overhead per content event ----------------------------------


def streaming(n: int, repeats: int) -> None:
    fields = {"run_id": "r" * 36, "workflow_id": "wf", "workflow_name": "wf", "step_name": "s", "step_index": 0}

    def bare_validated() -> Iterator[RunContentEvent]:
        for i in range(n):
            yield RunContentEvent(**fields, agent_name=None, seq=i + 1, created_at=time.time(), content="tok")

    def bare_fast() -> Iterator[RunContentEvent]:
        for i in range(n):
            yield make_event(
                RunContentEvent,
                {**fields, "agent_name": None, "seq": i + 1, "created_at": time.time(), "content": "tok"},
            )

    def tokens(si: StepInput) -> Iterator[str]:
        for _ in range(n):
            yield "tok"

    wf = Workflow("bench-stream", steps=[Step("s", executor=tokens)])

    def timed(make: Callable[[], Any]) -> Callable[[], float]:
        def run() -> float:
            started = time.perf_counter()
            for _ in make():
                pass
            return (time.perf_counter() - started) / n * 1e6

        return run

    validated = best_of(repeats, timed(bare_validated))
    fast = best_of(repeats, timed(bare_fast))
    ours = best_of(repeats, timed(lambda: wf.run(stream=True)))
    print(f"\n## streaming overhead per content event ({n:,} events, best of {repeats})")
    print(f"  bare generator, validated pydantic event : {validated:6.3f} µs/event  (baseline A)")
    print(f"  bare generator, fast-built pydantic event: {fast:6.3f} µs/event  (baseline B)")
    print(f"  threadflow stream                        : {ours:6.3f} µs/event")
    print(f"  ratio vs A: {ours / validated:4.2f}x   ratio vs B: {ours / fast:4.2f}x   (goal <= 1.3x the floor)")
    print(f"  threadflow's own work per event: {ours - fast:5.3f} µs")


# -- 2. per-run overhead ----------------------------------------------------------


def per_run(runs: int, repeats: int) -> None:
    def trivial(si: StepInput) -> int:
        return 1

    print(f"\n## per-run overhead, non-streaming ({runs:,} runs, best of {repeats})")
    for count in (1, 10):
        steps = [Step(f"s{i}", executor=trivial) for i in range(count)]
        wf = Workflow(f"bench-{count}", steps=steps)
        step_input = StepInput(None, None, "r", "w", "s", 0)

        def bare(steps: list[Step] = steps, step_input: StepInput = step_input) -> float:
            started = time.perf_counter()
            for _ in range(runs):
                for step in steps:
                    assert step.executor is not None
                    step.executor(step_input)
            return (time.perf_counter() - started) / runs * 1e6

        def ours(wf: Workflow = wf) -> float:
            started = time.perf_counter()
            for _ in range(runs):
                wf.run()
            return (time.perf_counter() - started) / runs * 1e6

        floor, total = best_of(repeats, bare), best_of(repeats, ours)
        goal = 25 if count == 1 else 150
        print(
            f"  {count:2d} step(s): bare loop {floor:6.2f} µs/run, threadflow {total:6.2f} µs/run, "
            f"overhead {total - floor:6.2f} µs (goal <= {goal} µs)"
        )


# -- 3. cross-thread cancel latency ------------------------------------------------


def cancel_latency(trials: int) -> None:
    print(f"\n## cancel latency: cancel_run() call -> consumer receives workflow_cancelled ({trials} trials)")

    def yielding(si: StepInput) -> Iterator[str]:
        get_context()
        while True:
            time.sleep(0.001)
            yield "tick"

    def sleeping(si: StepInput) -> Iterator[str]:
        yield "ready"
        get_context().sleep(60)
        yield "unreachable"

    def socket_read(si: StepInput) -> Iterator[str]:
        a, b = socket.socketpair()
        try:
            get_context().on_cancel(lambda: a.shutdown(socket.SHUT_RDWR))
            yield "ready"
            a.recv(1)
            yield "unreachable"
        finally:
            a.close()
            b.close()

    cases = [
        ("step yielding every 1 ms", yielding, 1.1, True),
        ("step in ctx.sleep(60)", sleeping, 0.5, False),
        ("step blocked on a socket read, on_cancel shuts it", socket_read, 2.0, False),
    ]
    floor = [bare_paced_loop_latency() for _ in range(trials)]
    print(
        f"  {'baseline: bare loop sleeping 1 ms, stopped by a flag':52s} "
        f"p50 {percentile(floor, 50) * 1e3:6.3f} ms  p99 {percentile(floor, 99) * 1e3:6.3f} ms"
    )
    for label, fn, goal_ms, random_delay in cases:
        wf = Workflow("bench-cancel", steps=[Step("s", executor=fn)])
        latencies = [one_cancel(wf, random_delay) for _ in range(trials)]
        p50, p99 = percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3
        print(f"  {label:52s} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  (goal p99 <= {goal_ms} ms)")


def bare_paced_loop_latency() -> float:
    """The floor for a step that yields every 1 ms: a plain thread noticing a flag between sleeps."""
    stop = threading.Event()
    noticed: list[float] = []

    def loop() -> None:
        while not stop.is_set():
            time.sleep(0.001)
        noticed.append(time.perf_counter())

    thread = threading.Thread(target=loop)
    thread.start()
    time.sleep(random.uniform(0.0, 0.005))
    asked = time.perf_counter()
    stop.set()
    thread.join()
    return noticed[0] - asked


def one_cancel(wf: Workflow, random_delay: bool) -> float:
    stream = wf.run(stream=True)
    ready = threading.Event()
    asked: list[float] = []

    def canceller() -> None:
        ready.wait()
        if random_delay:
            time.sleep(random.uniform(0.0, 0.005))
        else:
            time.sleep(0.0005)  # let the step block (it is in recv/sleep right after "ready")
        asked.append(time.perf_counter())
        wf.cancel_run(stream.run_id)

    thread = threading.Thread(target=canceller)
    thread.start()
    landed = 0.0
    for event in stream:
        if event.event == RunEvent.run_content:
            ready.set()
        elif isinstance(event, WorkflowCancelledEvent):
            landed = time.perf_counter()
    thread.join()
    return landed - asked[0]


# -- 4. memory ----------------------------------------------------------------------


def memory(total: int) -> None:
    print(f"\n## memory after {total:,} runs (complete / fail / cancelled / abandoned with break)")

    def ok(si: StepInput) -> str:
        return "ok"

    def fail(si: StepInput) -> None:
        raise ValueError("fails")

    def stream_step(si: StepInput) -> Iterator[str]:
        yield "a"
        yield "b"

    completing = Workflow("mem-ok", steps=[ok])
    failing = Workflow("mem-fail", steps=[fail])
    streaming_wf = Workflow("mem-stream", steps=[stream_step])
    checkpoints = {total // 10, total // 2, total}
    gc.collect()
    print(f"  start: RSS {rss_mib():7.1f} MiB, registry {len(REGISTRY)}")
    for i in range(1, total + 1):
        kind = i % 4
        if kind == 0:
            completing.run()
        elif kind == 1:
            try:
                failing.run()
            except Exception:
                pass  # the failure is the point of this kind
        elif kind == 2:
            stream = streaming_wf.run(stream=True)
            streaming_wf.cancel_run(stream.run_id)
            for _ in stream:
                pass
        else:
            for _ in streaming_wf.run(stream=True):
                break
        if i in checkpoints:
            gc.collect()
            print(f"  after {i:>7,} runs: RSS {rss_mib():7.1f} MiB, registry {len(REGISTRY)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    args = parser.parse_args()
    quick = args.quick
    streaming(n=2_000 if quick else 200_000, repeats=1 if quick else 5)
    per_run(runs=200 if quick else 20_000, repeats=1 if quick else 5)
    cancel_latency(trials=5 if quick else 200)
    memory(total=400 if quick else 100_000)


if __name__ == "__main__":
    main()
