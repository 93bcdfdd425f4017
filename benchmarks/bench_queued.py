"""Queued background runs at scale: the memory 10^4 of them hold, and the time to cancel them all.

A workflow with ``max_concurrent_runs=1`` whose one running run blocks (in
``ctx.wait`` on an Event) gets 10^4 ``run(x, background=True)`` calls: they all
wait in its queue as ``pending``. Each figure is measured in a fresh child
process (so that one scenario's freed memory cannot hide another's), the
scenarios interleaved round by round, beside floors measured the same way:

- memory beyond the idle process (RSS, and tracemalloc's traced bytes in a
  second child): 10^4 pending ``concurrent.futures`` futures (submitted to a
  one-thread ``ThreadPoolExecutor`` whose thread is blocked), and a ``deque``
  of 10^4 small objects;
- cancelling them all from one thread: ``threadflow.shutdown()``, and
  ``cancel_run()`` for each in submission order (then waiting for every
  handle: a worker may start a queued run before its turn comes, and it
  ends at its next checkpoint), until every handle is done and every run is
  recorded ``cancelled``; beside ``Future.cancel()`` for each pending future,
  and ``ThreadPoolExecutor.shutdown(cancel_futures=True)``.

Run: ``python benchmarks/bench_queued.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import deque
from collections.abc import Callable
from typing import Any

SCENARIOS = ("futures", "deque", "threadflow")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(build: Callable[[], Any], traced: bool) -> tuple[int, Any]:
    """Bytes held by what ``build`` returns: RSS growth, or (``traced``) tracemalloc's traced growth."""
    gc.collect()
    if traced:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes()
    held = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
    if traced:
        tracemalloc.stop()
    return after - before, held


def child_futures(n: int, traced: bool) -> dict[str, float]:
    gate = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    pool.submit(gate.wait)
    grown, futures = measure(lambda: [pool.submit(len, (i,)) for i in range(n)], traced)
    started = time.perf_counter()
    for future in futures:
        future.cancel()
    cancel_each = time.perf_counter() - started
    assert all(f.cancelled() for f in futures)
    more = [pool.submit(len, (i,)) for i in range(n)]
    started = time.perf_counter()
    pool.shutdown(wait=False, cancel_futures=True)
    shutdown = time.perf_counter() - started
    assert all(f.cancelled() for f in more)
    gate.set()
    return {"bytes": grown, "cancel_each": cancel_each, "shutdown": shutdown}


def child_deque(n: int, traced: bool) -> dict[str, float]:
    class Small:
        __slots__ = ("value",)

        def __init__(self, value: int) -> None:
            self.value = value

    grown, _ = measure(lambda: deque(Small(i) for i in range(n)), traced)
    return {"bytes": grown}


def child_threadflow(n: int, traced: bool) -> dict[str, float]:
    import threadflow
    from threadflow import RunStatus, Step, StepInput, Workflow, get_context

    gate = threading.Event()
    entered: list[object] = []

    def block(si: StepInput) -> str:
        entered.append(si.input)
        get_context().wait(gate)
        return "done"

    wf = Workflow("bench-queued", steps=[Step("block", executor=block)], max_concurrent_runs=1)
    running = wf.run(-1, background=True)
    grown, handles = measure(lambda: [wf.run(i, background=True) for i in range(n)], traced)
    assert wf._pool.queued == n
    entered.clear()
    started = time.perf_counter()
    threadflow.shutdown(timeout=5)  # the running run too: its ctx.wait is a checkpoint
    shutdown = time.perf_counter() - started
    check_cancelled(wf, [running, *handles], RunStatus)
    assert entered == [], "shutdown() let a queued run start"
    more = [wf.run(i, background=True) for i in range(n)]  # the queue's one run starts: let it block
    started = time.perf_counter()
    for handle in more:
        wf.cancel_run(handle.run_id)
    for handle in more:  # a worker may have started one meanwhile: it ends at its next checkpoint
        handle.wait()
    cancel_each = time.perf_counter() - started
    check_cancelled(wf, more, RunStatus)
    threadflow.shutdown(timeout=5)
    result = {"bytes": grown, "cancel_each": cancel_each, "shutdown": shutdown}
    return result | {"started_each": len(entered) - 1}  # more[0] took the free slot at once


def check_cancelled(wf: Any, handles: list[Any], status: Any) -> None:
    assert all(h.done() for h in handles), "a run did not end"
    assert all(h.output.status is status.cancelled for h in handles), "a run did not end cancelled"
    # the default store keeps the last 1000 records
    assert all(wf.get_run(h.run_id).status is status.cancelled for h in handles[-500:]), "not recorded cancelled"


def run_child(scenario: str, n: int, traced: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", scenario, "-n", str(n)] + (["--traced"] if traced else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1000 runs, one round")
    parser.add_argument("-n", type=int, default=None, help="queued runs (default 10000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
    parser.add_argument("--child", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.n or (1000 if args.quick else 10_000)
    if args.child:
        child = {"futures": child_futures, "deque": child_deque, "threadflow": child_threadflow}[args.child]
        print(json.dumps(child(n, args.traced)))
        return
    rounds = args.rounds or (1 if args.quick else 5)
    rss: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    traced: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for scenario in SCENARIOS:
            result = run_child(scenario, n, traced=False)
            rss[scenario].append(result["bytes"] / 2**20)
            for key in ("shutdown", "cancel_each", "started_each"):
                if key in result:
                    scale = 1 if key == "started_each" else 1e3
                    times.setdefault(f"{scenario} {key}", []).append(result[key] * scale)
            traced[scenario].append(run_child(scenario, n, traced=True)["bytes"] / 2**20)
    report(n, rounds, rss, traced, times)


def span(values: list[float]) -> str:
    return f"{min(values):7.2f} .. {max(values):7.2f}"


def report(
    n: int, rounds: int, rss: dict[str, list[float]], traced: dict[str, list[float]], times: dict[str, list[float]]
) -> None:
    labels = {
        "futures": f"{n} pending cf futures (floor)",
        "deque": f"deque of {n} small objects (floor)",
        "threadflow": f"{n} queued threadflow runs",
    }
    print(f"\n## memory held beyond the idle process, MiB (min .. max of {rounds} rounds)")
    print(f"  {'':42s}  {'RSS':>18s}  {'tracemalloc':>18s}")
    for scenario in SCENARIOS:
        print(f"  {labels[scenario]:42s}  {span(rss[scenario]):>18s}  {span(traced[scenario]):>18s}")
    print(f"\n## cancelling all {n} from one thread, ms (min .. max of {rounds} rounds)")
    names = {
        "futures cancel_each": "Future.cancel() each (floor)",
        "futures shutdown": "executor.shutdown(cancel_futures) (floor)",
        "threadflow shutdown": "threadflow.shutdown()",
        "threadflow cancel_each": "wf.cancel_run() each",
    }
    for key, label in names.items():
        print(f"  {label:42s}  {span(times[key])}")
    started = times["threadflow started_each"]
    print(
        f"\n  queued runs a worker started before cancel_run() reached them: {min(started):.0f} .. {max(started):.0f}"
    )
    print("  (cancelling in submission order frees the slot for the next one; shutdown() empties the queue first: 0)")
    print("\n  every threadflow run ended cancelled and recorded so: yes")


if __name__ == "__main__":
    main()
