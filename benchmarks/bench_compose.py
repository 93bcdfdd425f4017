"""Composition benchmarks: Parallel's cost per branch, cancel latency, branch streaming throughput.

Every figure is printed beside a bare-threads floor measured in the same run:

- cost per branch: a ``Parallel`` of N trivial branches, against N tasks on a
  bare ``ThreadPoolExecutor`` of the same size and against a bare
  ``threading.Thread`` per task;
- cancel latency: 64 branches asleep in ``ctx.sleep``; from the
  ``cancel_run`` call to the consumer holding ``workflow_cancelled`` (goal
  p99 <= 2 ms), against 64 bare threads waiting on an Event, from ``set()`` to
  the last of them joined;
- throughput: 8 streaming branches, against 8 bare threads putting the same
  fast-built events on a queue that one consumer drains (goal >= 0.8x).

Run: ``python benchmarks/bench_compose.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from queue import SimpleQueue

from threadflow import Parallel, Step, StepInput, Workflow, get_context
from threadflow._fastevents import make_event
from threadflow.compose import set_max_branch_threads
from threadflow.events import RunContentEvent


def best_of(repeats: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(repeats))


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


# -- 1. cost per branch ---------------------------------------------------------


def per_branch(n: int, repeats: int) -> None:
    def one(si: StepInput) -> int:
        return 1

    wf = Workflow("bench-parallel", steps=[Parallel(*(Step(f"b{i}", executor=one) for i in range(n)), name="fan")])
    empty = Workflow("bench-one", steps=[Step("one", executor=one)])

    def threadflow_run() -> float:
        start = time.perf_counter()
        wf.run()
        return time.perf_counter() - start

    def one_step_run() -> float:
        start = time.perf_counter()
        empty.run()
        return time.perf_counter() - start

    def pool_floor() -> float:
        with ThreadPoolExecutor(32) as pool:
            pool.submit(int).result()  # threads warm, as threadflow's pool is after the first run
            start = time.perf_counter()
            for future in [pool.submit(one, StepInput()) for _ in range(n)]:
                future.result()
            return time.perf_counter() - start

    def thread_floor() -> float:
        start = time.perf_counter()
        threads = [threading.Thread(target=one, args=(StepInput(),)) for _ in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - start

    threadflow_run()  # warm the branch pool
    base = best_of(repeats, one_step_run)
    ours = (best_of(repeats, threadflow_run) - base) / n
    pool = best_of(repeats, pool_floor) / n
    bare = best_of(repeats, thread_floor) / n
    print(f"## cost per branch: Parallel of {n} trivial branches (best of {repeats})")
    print(f"  bare threads: ThreadPoolExecutor(32) {pool * 1e6:7.2f} µs/task (baseline)")
    print(f"  bare threads: one Thread per task    {bare * 1e6:7.2f} µs/task")
    print(f"  threadflow Parallel                  {ours * 1e6:7.2f} µs/branch  ({ours / pool:.1f}x the pool floor)")
    print("  (a branch also emits step_started + step_completed, numbered and recorded by the consumer)")


# -- 2. cancel latency with 64 branches asleep ---------------------------------------


def cancel_latency(branches: int, trials: int) -> None:
    set_max_branch_threads(branches)
    asleep = threading.Barrier(branches + 1)

    def sleeper(si: StepInput) -> None:
        ctx = get_context()
        asleep.wait()
        ctx.sleep(60)

    wf = Workflow("bench-cancel", steps=[Parallel(*(Step(f"s{i}", executor=sleeper) for i in range(branches)))])
    ours = [_one_cancel(wf, asleep) for _ in range(trials)]
    floor = [_bare_cancel(branches) for _ in range(trials)]
    print(f"## cancel latency, {branches} branches asleep: cancel_run() -> consumer holds workflow_cancelled")
    print(f"  bare threads: Event.set() -> {branches} woken    p50 {percentile(floor, 50) * 1e3:6.3f} ms"
          f"  p99 {percentile(floor, 99) * 1e3:6.3f} ms  (baseline)")  # fmt: skip
    print(f"  threadflow Parallel                    p50 {percentile(ours, 50) * 1e3:6.3f} ms"
          f"  p99 {percentile(ours, 99) * 1e3:6.3f} ms  (goal p99 <= 2 ms; {trials} trials)")  # fmt: skip


def _one_cancel(wf: Workflow, asleep: threading.Barrier) -> float:
    stream = wf.run(stream=True)
    ended: list[float] = []

    def consume() -> None:
        for event in stream:
            if event.terminal:
                ended.append(time.perf_counter())

    consumer = threading.Thread(target=consume)
    consumer.start()
    asleep.wait()
    time.sleep(0.005)  # let the last branch past the barrier into ctx.sleep (the benchmark, not a test)
    start = time.perf_counter()
    wf.cancel_run(stream.run_id)
    consumer.join()
    return ended[0] - start


def _bare_cancel(n: int) -> float:
    """n bare threads waiting on one Event: from set() to the last of them reporting it has woken."""
    stop = threading.Event()
    ready = threading.Barrier(n + 1)
    woke = threading.Condition()
    left = [n]

    def wait() -> None:
        ready.wait()
        stop.wait(60)
        with woke:
            left[0] -= 1
            woke.notify()

    threads = [threading.Thread(target=wait) for _ in range(n)]
    for thread in threads:
        thread.start()
    ready.wait()
    time.sleep(0.005)
    start = time.perf_counter()
    stop.set()
    with woke:
        woke.wait_for(lambda: not left[0])
    elapsed = time.perf_counter() - start
    for thread in threads:
        thread.join()
    return elapsed


# -- 3. throughput: 8 streaming branches ------------------------------------------


def throughput(branches: int, tokens: int, repeats: int) -> None:
    def streamer(si: StepInput) -> Iterator[str]:
        for _ in range(tokens):
            yield "tok"

    wf = Workflow("bench-stream", steps=[Parallel(*(Step(f"s{i}", executor=streamer) for i in range(branches)))])

    def ours() -> float:
        start = time.perf_counter()
        count = sum(1 for event in wf.run(stream=True) if event.event == "run_content")
        assert count == branches * tokens
        return time.perf_counter() - start

    def bare() -> float:
        queue: SimpleQueue[RunContentEvent | None] = SimpleQueue()
        template = {"run_id": "r" * 36, "workflow_id": "w", "workflow_name": "w", "step_index": 0,
                    "agent_name": None, "content": "tok"}  # fmt: skip

        def produce(name: str) -> None:
            fields = {**template, "step_name": name, "step_path": f"fan/{name}"}
            for seq in range(tokens):
                queue.put(make_event(RunContentEvent, {**fields, "seq": seq, "created_at": time.time()}))
            queue.put(None)

        start = time.perf_counter()
        threads = [threading.Thread(target=produce, args=(f"s{i}",)) for i in range(branches)]
        for thread in threads:
            thread.start()
        done = count = 0
        while done < branches:
            event = queue.get()
            if event is None:
                done += 1
            elif event.event == "run_content":  # the check the other consumer makes
                count += 1
        for thread in threads:
            thread.join()
        assert count == branches * tokens
        return time.perf_counter() - start

    total = branches * tokens
    ours_rate = total / best_of(repeats, ours)
    bare_rate = total / best_of(repeats, bare)
    print(f"## throughput: {branches} streaming branches x {tokens} tokens (best of {repeats})")
    print(f"  bare threads putting the same events on a queue: {bare_rate:10,.0f} events per second (baseline)")
    print(f"  threadflow Parallel, consumer iterating         : {ours_rate:10,.0f} events per second"
          f"  ({ours_rate / bare_rate:.2f}x, goal >= 0.8x)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, few repeats")
    quick = parser.parse_args().quick
    per_branch(64 if quick else 1000, 2 if quick else 7)
    cancel_latency(64, 5 if quick else 200)
    throughput(8, 500 if quick else 20_000, 1 if quick else 5)


if __name__ == "__main__":
    main()
