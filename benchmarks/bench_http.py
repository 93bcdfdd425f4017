"""HTTP benchmarks: cancel latency over HTTP, and events per second through SSE.

Each figure is printed beside a baseline measured in the same process, on
the same workflow, without HTTP:

- cancel latency: ``POST .../cancel`` sent (``Client.cancel_run``) → the
  streaming client (``Client.stream``, in another thread) holds
  ``workflow_cancelled``; baseline: ``Workflow.cancel_run`` → the thread
  iterating the ``RunStream`` holds it. p50 / p99 / max over many runs.
- throughput: events per second a client receives and parses from a
  streaming run that yields tokens as fast as it can; baselines: iterating a
  ``RunStream`` in-process, and following a background run's
  ``RunHandle.events()``.

The server is a real uvicorn on 127.0.0.1 (``threadflow.server.running_server``)
in a child process, as a real client's server would be (``--same-process``
runs it on a thread of this process instead, sharing the GIL with the client).

Run: ``python benchmarks/bench_http.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx

from threadflow import StepInput, Workflow, get_context
from threadflow.client import Client
from threadflow.events import RunContentEvent, WorkflowCancelledEvent
from threadflow.server import create_app, running_server


def parked(step_input: StepInput) -> Iterator[str]:
    """Streams one token, then waits until the run is cancelled."""
    yield "ready"
    get_context().wait()


def firehose(step_input: StepInput) -> Iterator[str]:
    for _ in range(step_input.input):
        yield "tok "


PARKED = Workflow("parked", steps=[parked])
FIREHOSE = Workflow("firehose", steps=[firehose])


def served() -> Any:
    return create_app([PARKED, FIREHOSE])


@contextlib.contextmanager
def server(same_process: bool) -> Iterator[str]:
    """The base URL of a server of PARKED and FIREHOSE, in a child process unless ``same_process``."""
    if same_process:
        with running_server(served()) as url:
            yield url
        return
    child = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    try:
        yield child.stdout.readline().decode().strip()
    finally:
        child.stdin.close()  # the child serves until its stdin closes
        child.wait(10)


def serve_until_stdin_closes() -> None:
    with running_server(served()) as url:
        print(url, flush=True)
        sys.stdin.read()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


# -- cancel latency -------------------------------------------------------------


def one_cancel(events: Callable[[], Iterable[Any]], cancel: Callable[[str], bool], run_id: str) -> float:
    """Consume ``events()`` in a thread; once it is parked, ``cancel`` and time until workflow_cancelled."""
    ready, landed = threading.Event(), [0.0]

    def consume() -> None:
        for event in events():
            if isinstance(event, RunContentEvent):
                ready.set()
            elif isinstance(event, WorkflowCancelledEvent):
                landed[0] = time.perf_counter()

    consumer = threading.Thread(target=consume)
    consumer.start()
    if not ready.wait(10):
        raise RuntimeError("the run never started streaming")
    asked = time.perf_counter()
    if not cancel(run_id):
        raise RuntimeError(f"cancel of {run_id} was refused")
    consumer.join(10)
    return (landed[0] - asked) * 1e3


def cancel_latency(client: Client, canceller: Client, iterations: int) -> tuple[list[float], list[float]]:
    over_http, in_process = [], []
    for n in range(iterations):
        run_id = f"http-{n}"

        def http_stream(run_id: str = run_id) -> Iterable[Any]:
            with client.stream("parked", run_id=run_id) as stream:
                yield from stream

        over_http.append(one_cancel(http_stream, lambda r: canceller.cancel_run("parked", r), run_id))
        stream = PARKED.run(stream=True)
        in_process.append(one_cancel(lambda stream=stream: stream, PARKED.cancel_run, stream.run_id))
    return over_http, in_process


# -- throughput -------------------------------------------------------------------


def rate(events: Iterable[Any]) -> float:
    started = time.perf_counter()
    count = sum(1 for _ in events)
    return count / (time.perf_counter() - started)


def sse_bytes(url: str, tokens: int) -> Iterator[None]:
    """One item per SSE message received, without parsing it: what the server delivers."""
    body = {"input": tokens, "stream": True}
    with httpx.stream("POST", f"{url}/workflows/firehose/runs", json=body, timeout=60) as response:
        for chunk in response.iter_bytes():
            yield from [None] * chunk.count(b"\n\n")


def throughput(url: str, client: Client, tokens: int, repeats: int) -> dict[str, float]:
    figures = {
        "SSE → Client.stream (parsed events)": max(rate(client.stream("firehose", tokens)) for _ in range(repeats)),
        "SSE messages received (not parsed)": max(rate(sse_bytes(url, tokens)) for _ in range(repeats)),
        "in-process RunStream": max(rate(FIREHOSE.run(tokens, stream=True)) for _ in range(repeats)),
        "in-process RunHandle.events()": max(
            rate(FIREHOSE.run(tokens, background=True).events()) for _ in range(repeats)
        ),
    }
    return figures


# -- report ---------------------------------------------------------------------------


def report_latency(over_http: list[float], in_process: list[float]) -> None:
    print(f"cancel → workflow_cancelled at the consumer, {len(over_http)} runs each (ms)")
    print(f"  {'':34} {'p50':>8} {'p99':>8} {'max':>8}")
    for label, values in [("over HTTP (POST .../cancel → SSE)", over_http), ("in-process (cancel_run)", in_process)]:
        p50, p99 = percentile(values, 50), percentile(values, 99)
        print(f"  {label:34} {p50:8.3f} {p99:8.3f} {max(values):8.3f}")


def report_throughput(figures: dict[str, float], tokens: int, repeats: int) -> None:
    print(f"\nevents per second, a run of {tokens:,} tokens ({tokens + 6:,} events), best of {repeats}")
    for label, value in figures.items():
        print(f"  {label:38} {value:12,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few iterations")
    parser.add_argument("--same-process", action="store_true", help="run the server on a thread of this process")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process's role
    args = parser.parse_args()
    if args.serve:
        serve_until_stdin_closes()
        return
    iterations, tokens, repeats = (20, 5_000, 1) if args.quick else (300, 50_000, 3)
    with server(args.same_process) as url, Client(url) as client, Client(url) as canceller:
        where = "a thread of this process" if args.same_process else "a child process"
        print(f"server: uvicorn on {url}, in {where}\n")
        report_latency(*cancel_latency(client, canceller, iterations))
        report_throughput(throughput(url, client, tokens, repeats), tokens, repeats)


if __name__ == "__main__":
    main()
