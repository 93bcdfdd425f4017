"""Concurrency benchmarks: many paced streams at once, and cancel latency under that load.

Each figure is printed beside a bare-threads floor measured in the same run,
rounds interleaved (floor, then threadflow), so the ratio survives a noisy machine:

- throughput, background: ``streams`` runs started with ``run(background=True)``,
  each followed by a consumer thread iterating ``handle.events()``; the step
  sleeps 1 ms (``time.sleep(0.001)``) before each chunk. Floor: the same number
  of bare producer threads doing the same sleep-and-yield loop, each handing
  its chunks to its own consumer thread through a ``queue.SimpleQueue``;
- throughput, streamed: ``streams`` threads each iterating ``run(stream=True)``.
  Floor: the same threads each iterating a bare generator with the same loop;
- cancel latency: ``cancel_run()`` from another thread until the run's consumer
  holds ``workflow_cancelled``, while ``others`` background runs stream at the
  1 ms pace, each followed by a consumer. Floor: the same with bare threads —
  a producer checking a flag between sleeps, handing "cancelled" to its consumer
  through a queue, beside ``others`` bare producer/consumer pairs.

Run: ``python benchmarks/bench_concurrency.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import functools
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from threadflow import RunStatus, Step, StepInput, Workflow, cancel_run
from threadflow._fastevents import make_exact, template
from threadflow._registry import REGISTRY
from threadflow.events import RunContentEvent

PACE = 0.001


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def paced(chunks: int) -> Callable[[StepInput | None], Iterator[str]]:
    """The step: ``chunks`` chunks, 1 ms of ``time.sleep`` before each (an LLM token stream)."""

    def step(si: StepInput | None) -> Iterator[str]:
        for _ in range(chunks):
            time.sleep(PACE)
            yield "x"

    return step


def endless(si: StepInput | None) -> Iterator[str]:
    while True:
        time.sleep(PACE)
        yield "x"


def building_events(chunks: int) -> Iterator[RunContentEvent]:
    """The step's loop, building each chunk's ``run_content`` event the fast way threadflow does."""
    fields = template(RunContentEvent, {"run_id": "r", "workflow_id": "w", "workflow_name": "w"})
    fields.update(step_name="s", step_index=0, step_path="s")
    for seq, chunk in enumerate(paced(chunks)(None), 1):
        event = fields.copy()
        event["seq"], event["created_at"], event["content"] = seq, time.time(), chunk
        yield make_exact(RunContentEvent, event)


def _timed(threads: list[threading.Thread]) -> float:
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


# -- throughput ---------------------------------------------------------------


def floor_background(streams: int, chunks: int) -> float:
    """Bare producer threads, each handing its chunks to its own consumer thread: chunks/s delivered."""
    return _bare_background(streams, chunks, lambda: paced(chunks)(None), keep=False)


def floor_background_events(streams: int, chunks: int) -> float:
    """``floor_background``, the producer building each chunk's event and keeping it (as a handle's log does)."""
    return _bare_background(streams, chunks, lambda: building_events(chunks), keep=True)


def _bare_background(streams: int, chunks: int, items: Callable[[], Iterable[object]], *, keep: bool) -> float:
    counts = [0] * streams
    done = object()

    def producer(q: queue.SimpleQueue[object]) -> None:
        log = []
        for item in items():
            if keep:
                log.append(item)
            q.put(item)
        q.put(done)

    def consumer(i: int, q: queue.SimpleQueue[object]) -> None:
        n = 0
        while q.get() is not done:
            n += 1
        counts[i] = n

    threads = []
    for i in range(streams):
        q: queue.SimpleQueue[object] = queue.SimpleQueue()
        threads += [threading.Thread(target=producer, args=(q,)), threading.Thread(target=consumer, args=(i, q))]
    wall = _timed(threads)
    assert sum(counts) == streams * chunks
    return sum(counts) / wall


def ours_background(wf: Workflow, streams: int, chunks: int) -> float:
    """``run(background=True)`` handles, each followed by a consumer thread: chunks/s delivered."""
    counts = [0] * streams

    def consumer(i: int) -> None:
        handle = wf.run(background=True)
        n = 0
        for event in handle.events():
            if event.event == "run_content":
                n += 1
        counts[i] = n

    wall = _timed([threading.Thread(target=consumer, args=(i,)) for i in range(streams)])
    assert sum(counts) == streams * chunks, (sum(counts), streams * chunks)
    return sum(counts) / wall


def floor_streamed(streams: int, chunks: int) -> float:
    """Bare threads each iterating the step's generator: chunks/s delivered."""
    return _bare_streamed(streams, chunks, lambda: paced(chunks)(None))


def floor_streamed_events(streams: int, chunks: int) -> float:
    """``floor_streamed``, the generator building each chunk's event."""
    return _bare_streamed(streams, chunks, lambda: building_events(chunks))


def _bare_streamed(streams: int, chunks: int, items: Callable[[], Iterable[object]]) -> float:
    counts = [0] * streams

    def consumer(i: int) -> None:
        n = 0
        for _ in items():
            n += 1
        counts[i] = n

    wall = _timed([threading.Thread(target=consumer, args=(i,)) for i in range(streams)])
    assert sum(counts) == streams * chunks
    return sum(counts) / wall


def ours_streamed(wf: Workflow, streams: int, chunks: int) -> float:
    """Threads each iterating ``run(stream=True)``: chunks/s delivered."""
    counts = [0] * streams

    def consumer(i: int) -> None:
        n = 0
        for event in wf.run(stream=True):
            if event.event == "run_content":
                n += 1
        counts[i] = n

    wall = _timed([threading.Thread(target=consumer, args=(i,)) for i in range(streams)])
    assert sum(counts) == streams * chunks
    return sum(counts) / wall


def throughput(streams: int, chunks: int, rounds: int) -> None:
    wf = Workflow("bench-conc", steps=[Step("s", executor=paced(chunks))], max_concurrent_runs=streams)
    print(f"\n## {streams} concurrent streams, {chunks} chunks each, 1 ms time.sleep before each ({rounds} rounds)")
    print("   floor: bare threads; +events: bare threads also building each chunk's event; CPU µs per chunk")
    cases = (
        ("background run + consumer thread", floor_background, floor_background_events, ours_background),
        ("run(stream=True) in its own thread", floor_streamed, floor_streamed_events, ours_streamed),
    )
    for label, floor_fn, events_fn, ours_fn in cases:
        ratios: list[float] = []
        bound: list[float] = []
        for _ in range(rounds):
            (floor, floor_cpu), (events, events_cpu), (ours, ours_cpu) = (
                _rate_and_cpu(floor_fn, streams, chunks),
                _rate_and_cpu(events_fn, streams, chunks),
                _rate_and_cpu(functools.partial(ours_fn, wf), streams, chunks),
            )
            ratios.append(ours / floor)
            bound.append(events / floor)
            print(
                f"  {label:36s} floor {floor:7,.0f}  +events {events:7,.0f}  threadflow {ours:7,.0f} chunks/s"
                f"  = {ours / floor:4.2f}x floor, {ours / events:4.2f}x +events"
                f"  (CPU {floor_cpu:4.1f} / {events_cpu:4.1f} / {ours_cpu:4.1f})"
            )
        print(
            f"  {label:36s} threadflow {min(ratios):4.2f}-{max(ratios):4.2f}x the floor (goal >= 0.85x); "
            f"+events {min(bound):4.2f}-{max(bound):4.2f}x"
        )
    assert len(REGISTRY) == 0


def _rate_and_cpu(fn: Callable[[int, int], float], streams: int, chunks: int) -> tuple[float, float]:
    """chunks/s, and the process's CPU time per chunk in µs."""
    cpu = time.process_time()
    rate = fn(streams, chunks)
    return rate, (time.process_time() - cpu) / (streams * chunks) * 1e6


# -- cancel latency under load --------------------------------------------------


class BareLoad:
    """``others`` bare producer threads streaming at the 1 ms pace into their consumers, until stopped."""

    def __init__(self, others: int) -> None:
        self.stop = False
        self.threads: list[threading.Thread] = []
        for _ in range(others):
            q: queue.SimpleQueue[object] = queue.SimpleQueue()
            self.threads += [
                threading.Thread(target=self._produce, args=(q,)),
                threading.Thread(target=_drain, args=(q,)),
            ]
        for thread in self.threads:
            thread.start()

    def _produce(self, q: queue.SimpleQueue[object]) -> None:
        while not self.stop:
            time.sleep(PACE)
            q.put("x")
        q.put(None)

    def close(self) -> None:
        self.stop = True
        for thread in self.threads:
            thread.join()


def _drain(q: queue.SimpleQueue[object]) -> None:
    while q.get() is not None:
        pass


def bare_cancel(trials: int) -> list[float]:
    """One bare producer checking a flag between 1 ms sleeps; from setting it to its consumer holding 'cancelled'."""
    latencies = []
    for _ in range(trials):
        q: queue.SimpleQueue[object] = queue.SimpleQueue()
        flag = [False]
        first = threading.Event()
        held: list[float] = []

        def producer(q: queue.SimpleQueue[object] = q, flag: list[bool] = flag) -> None:
            while not flag[0]:
                time.sleep(PACE)
                q.put("x")
            q.put("cancelled")

        def consumer(
            q: queue.SimpleQueue[object] = q, first: threading.Event = first, held: list[float] = held
        ) -> None:
            while q.get() != "cancelled":
                first.set()
            held.append(time.perf_counter())

        threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
        for thread in threads:
            thread.start()
        first.wait()
        time.sleep(random.uniform(0.0, 0.002))
        asked = time.perf_counter()
        flag[0] = True
        for thread in threads:
            thread.join()
        latencies.append(held[0] - asked)
    return latencies


class RunLoad:
    """``others`` background runs streaming at the 1 ms pace, each followed by a consumer thread."""

    def __init__(self, wf: Workflow, others: int) -> None:
        self.handles = [wf.run(background=True) for _ in range(others)]
        self.threads = [threading.Thread(target=_follow, args=(h,)) for h in self.handles]
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        for handle in self.handles:
            handle.cancel()
        for thread in self.threads:
            thread.join()


def _follow(handle: object) -> None:
    for _ in handle.events():  # type: ignore[attr-defined]
        pass


def ours_cancel(wf: Workflow, trials: int, background: bool) -> list[float]:
    """``cancel_run()`` from this thread until the target's consumer holds ``workflow_cancelled``."""
    latencies = []
    for _ in range(trials):
        first = threading.Event()
        held: list[float] = []
        run_ids: list[str] = []

        def consumer(first: threading.Event = first, held: list[float] = held, run_ids: list[str] = run_ids) -> None:
            if background:
                handle = wf.run(background=True)
                run_ids.append(handle.run_id)
                events = handle.events()
            else:
                stream = wf.run(stream=True)
                run_ids.append(stream.run_id)
                events = iter(stream)
            for event in events:
                if event.event == "run_content":
                    first.set()
                elif event.event == "workflow_cancelled":
                    held.append(time.perf_counter())

        thread = threading.Thread(target=consumer)
        thread.start()
        first.wait()
        time.sleep(random.uniform(0.0, 0.002))
        asked = time.perf_counter()
        assert cancel_run(run_ids[0])
        thread.join()
        latencies.append(held[0] - asked)
    return latencies


def cancel_under_load(others: int, trials: int, rounds: int) -> None:
    wf = Workflow("bench-conc-cancel", steps=[Step("s", executor=endless)], max_concurrent_runs=others + 1)
    print(f"\n## cancel_run -> consumer holds workflow_cancelled, while {others} other runs stream at 1 ms pace")
    print(f"   ({trials} cancels per round, {rounds} rounds)")
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        load = BareLoad(others)
        floor = bare_cancel(trials)
        load.close()
        run_load = RunLoad(wf, others)
        background = ours_cancel(wf, trials, background=True)
        streamed = ours_cancel(wf, trials, background=False)
        run_load.close()
        for label, values in (
            ("bare threads: flag between sleeps", floor),
            ("background run, consumer on events()", background),
            ("run(stream=True) in its own thread", streamed),
        ):
            results.setdefault(label, []).append(percentile(values, 99))
            print(
                f"  {label:38s} p50 {percentile(values, 50) * 1e3:6.3f} ms  p99 {percentile(values, 99) * 1e3:6.3f} ms"
            )
    for label, p99s in results.items():
        print(f"  {label:38s} p99 over rounds {min(p99s) * 1e3:6.3f}-{max(p99s) * 1e3:6.3f} ms (goal <= 1.5 ms)")
    assert all(h.status is RunStatus.cancelled for h in run_load.handles)
    assert len(REGISTRY) == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny sizes")
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=400)
    parser.add_argument("--others", type=int, default=64)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("throughput", "cancel"))
    args = parser.parse_args()
    if args.quick:
        args.streams, args.chunks, args.others, args.trials, args.rounds = 8, 20, 4, 5, 1
    if args.only != "cancel":
        throughput(args.streams, args.chunks, args.rounds)
    if args.only != "throughput":
        cancel_under_load(args.others, args.trials, args.rounds)


if __name__ == "__main__":
    main()
