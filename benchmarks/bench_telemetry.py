"""What telemetry costs: a streaming run and a one-step run, uninstrumented, with metrics, with OpenTelemetry.

Every figure is the best of several repeats, measured in one process in the
order off → metrics → metrics + traces, so "off" is the core with no observer
installed (its cost: one attribute read per run and per accepted cancel).
Traces go to an SDK ``TracerProvider`` with no exporter: the cost of making
the spans, not of shipping them.

Run: ``python benchmarks/bench_telemetry.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from typing import Any

from threadflow import Workflow, _observe, telemetry
from threadflow.storage import MemoryStore


def best_of(repeats: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(repeats))


def measure(chunks: int, runs: int, repeats: int) -> tuple[float, float]:
    """(µs per streamed event, µs per one-step run)."""

    def stream_step(step_input: Any) -> Iterator[str]:
        for _ in range(chunks):
            yield "tok"

    def plain(step_input: Any) -> int:
        return 1

    streaming = Workflow("bench-stream", steps=[stream_step], store=MemoryStore())
    one_step = Workflow("bench-run", steps=[plain], store=MemoryStore())

    def per_event() -> float:
        start = time.perf_counter()
        for _ in streaming.run(None, stream=True):
            pass
        return (time.perf_counter() - start) / chunks * 1e6

    def per_run() -> float:
        start = time.perf_counter()
        for _ in range(runs):
            one_step.run(None)
        return (time.perf_counter() - start) / runs * 1e6

    return best_of(repeats, per_event), best_of(repeats, per_run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args()
    chunks, runs, repeats = (2_000, 200, 2) if args.quick else (50_000, 5_000, 5)

    assert _observe.OBSERVER is None
    rows = [("off (no observer)", measure(chunks, runs, repeats))]
    telemetry.enable_metrics()
    rows.append(("metrics", measure(chunks, runs, repeats)))
    try:
        from opentelemetry.sdk.trace import TracerProvider
    except ModuleNotFoundError:
        print("opentelemetry-sdk not installed: traces not measured")
    else:
        telemetry.instrument(TracerProvider())
        rows.append(("metrics + traces", measure(chunks, runs, repeats)))
        telemetry.uninstrument()
    print(f"{'':20} {'µs/streamed event':>18} {'µs/one-step run':>16}")
    for name, (event_us, run_us) in rows:
        print(f"{name:20} {event_us:18.2f} {run_us:16.1f}")
    (off_event, off_run), (on_event, on_run) = rows[0][1], rows[1][1]
    # Metrics hear only each run's start and end: a plain run() stays quiet (builds no event).
    print(f"\nplain run() with metrics on: {on_run / off_run:.2f}x the run without")
    print(f"streamed event with metrics on: {on_event / off_event:.2f}x the event without")


if __name__ == "__main__":
    main()
