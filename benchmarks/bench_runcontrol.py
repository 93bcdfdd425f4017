"""Run-control benchmarks: background start latency, 1000 concurrent runs, timeouts.

Each figure is printed beside a baseline measured in the same run:

- start → first event: ``run(background=True)`` until a subscriber holds
  ``workflow_started``, beside starting a bare ``threading.Thread`` that sets
  an ``Event`` (the floor for handing work to another thread);
- 1000 concurrent background runs (``max_concurrent_runs`` workers) with random
  cancels from 4 threads: wall time beside the same 1000 runs never cancelled,
  p99 cancel latency (``cancel()`` → the run has ended), peak threads, RSS;
- timeout accuracy: how late after its budget a run ends, for a streaming step
  and for a step blocked in a read that ``on_cancel`` unblocks.

Run: ``python benchmarks/bench_runcontrol.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Iterator

from threadflow import RunHandle, RunStatus, Step, StepInput, Workflow, get_context
from threadflow._registry import REGISTRY


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def start_latency(trials: int) -> None:
    wf = Workflow("bench-start", steps=[Step("s", executor=lambda si: "x")])
    ours, floor = [], []
    for _ in range(trials):
        started = time.perf_counter()
        handle = wf.run(background=True)
        next(iter(handle.events()))
        ours.append(time.perf_counter() - started)
        handle.wait()
        ready = threading.Event()
        started = time.perf_counter()
        thread = threading.Thread(target=ready.set)
        thread.start()
        ready.wait()
        floor.append(time.perf_counter() - started)
        thread.join()
    print(f"\n## background start -> first event ({trials} trials)")
    for label, values in (("bare Thread start + Event", floor), ("threadflow", ours)):
        p50, p99 = percentile(values, 50) * 1e6, percentile(values, 99) * 1e6
        print(f"  {label:26s}: p50 {p50:7.1f} µs  p99 {p99:7.1f} µs")


def concurrent(total: int) -> None:
    def work(si: StepInput) -> Iterator[str]:
        ctx = get_context()
        for _ in range(20):
            ctx.sleep(0.002)
            yield "x"

    wf = Workflow("bench-many", steps=[Step("work", executor=work)], max_concurrent_runs=64)

    def batch(cancel: bool) -> tuple[float, list[float], int]:
        peak = threading.active_count()
        latencies: list[float] = []
        accepted: list[RunHandle] = []
        lock = threading.Lock()
        chosen: queue.SimpleQueue[RunHandle | None] = queue.SimpleQueue()

        def canceller() -> None:
            while (handle := chosen.get()) is not None:
                time.sleep(random.uniform(0.0, 0.002))  # cancels land on runs in every state
                asked = time.perf_counter()
                if handle.cancel("benchmark"):
                    accepted.append(handle)

                    def ended(asked: float = asked) -> None:
                        with lock:
                            latencies.append(time.perf_counter() - asked)

                    handle.add_done_callback(ended)

        threads = [threading.Thread(target=canceller) for _ in range(4 if cancel else 0)]
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        handles = []
        for _ in range(total):
            handles.append(wf.run(background=True))
            if cancel and random.random() < 0.5:
                chosen.put(handles[-1])
        for _ in threads:
            chosen.put(None)
        for handle in handles:
            handle.wait()
            peak = max(peak, threading.active_count())
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        assert all(h.status.is_terminal for h in handles)
        assert all(h.status is RunStatus.cancelled for h in accepted), "True must mean cancelled"
        return wall, latencies, peak

    base_wall, _, base_peak = batch(cancel=False)
    wall, latencies, peak = batch(cancel=True)
    cancelled = len(latencies)  # one per accepted cancel, taken when the run ended
    print(f"\n## {total} concurrent background runs, max_concurrent_runs=64, ~half cancelled from 4 threads")
    print(f"  never cancelled (baseline): wall {base_wall:6.2f} s, peak threads {base_peak}")
    print(f"  with random cancels       : wall {wall:6.2f} s, peak threads {peak}, cancels accepted {cancelled}")
    if latencies:
        print(
            f"  cancel() -> run ended: p50 {percentile(latencies, 50) * 1e3:6.2f} ms, "
            f"p99 {percentile(latencies, 99) * 1e3:6.2f} ms "
            "(queued runs end at once; running ones at the next checkpoint)"
        )
    print(f"  RSS {rss_mib():6.1f} MiB, registry after: {len(REGISTRY)}")


def timeout_accuracy(trials: int) -> None:
    budget = 0.05

    def streaming(si: StepInput) -> Iterator[str]:
        while True:
            time.sleep(0.001)
            yield "x"

    def blocked(si: StepInput) -> bytes:
        a, b = socket.socketpair()
        try:
            get_context().on_cancel(lambda: a.shutdown(socket.SHUT_RDWR))
            return a.recv(1)
        finally:
            a.close()
            b.close()

    print(f"\n## timeout accuracy: run_timeout={budget}s, how late the run ends ({trials} trials)")
    for label, fn in (("streaming step (yields every 1 ms)", streaming), ("step blocked in recv()", blocked)):
        wf = Workflow("bench-timeout", steps=[Step("s", executor=fn)], run_timeout=budget)
        late = []
        for _ in range(trials):
            started = time.perf_counter()
            out = wf.run()
            late.append(time.perf_counter() - started - budget)
            assert out.status is RunStatus.cancelled and out.cause == "timeout"
        print(
            f"  {label:36s} p50 {percentile(late, 50) * 1e3:6.2f} ms late, "
            f"p99 {percentile(late, 99) * 1e3:6.2f} ms late"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    quick = parser.parse_args().quick
    start_latency(trials=20 if quick else 500)
    concurrent(total=60 if quick else 1000)
    timeout_accuracy(trials=3 if quick else 50)


if __name__ == "__main__":
    main()
