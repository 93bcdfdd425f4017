"""Model benchmarks: how fast a cancel stops an OpenAIChat run that is blocked on HTTP.

Against a local OpenAI-compatible server (``threadflow.testing.FakeOpenAIServer``)
that has stalled (it sends nothing more until the client leaves):

- mid-stream: the step has streamed one token and is blocked reading the next;
- waiting for headers: the request is sent, no answer has started.

Each trial measures ``cancel_run()`` → the consumer holds ``workflow_cancelled``
(p50/p99), checks no token was emitted after the cancel, counts the
connections the server saw closed, and starts the next trial on the same
model (the connection pool must still work).

Baseline, in the same run: what closing the httpx response from another
thread does instead (it waits for the next byte — here the server's token gap).

Run: ``python benchmarks/bench_models.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import threading
import time

import httpx

from threadflow import Agent, Workflow
from threadflow.models import OpenAIChat
from threadflow.testing import FakeOpenAIServer, FakeReply, wait_until


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def cancel_trial(wf: Workflow, server: FakeOpenAIServer, stalled: threading.Event, after_token: bool) -> float:
    """One run cancelled once the server stalls (and, mid-stream, once the consumer has the token)."""
    stalled.clear()
    consumer_ready = threading.Event()
    if not after_token:
        consumer_ready.set()
    stamps: list[float] = []
    stream = wf.run("benchmark", stream=True)

    def cancel() -> None:
        stalled.wait()
        consumer_ready.wait()
        stamps.append(time.perf_counter())
        wf.cancel_run(stream.run_id)

    canceller = threading.Thread(target=cancel)
    canceller.start()
    tokens_after_cancel = 0
    for event in stream:
        if event.event == "run_content":
            consumer_ready.set()
            tokens_after_cancel += bool(stamps)
        if event.event == "workflow_cancelled":
            ended = time.perf_counter()
    canceller.join()
    assert tokens_after_cancel == 0, "a token was emitted after the cancel"
    return ended - stamps[0]


def bench_cancel(trials: int) -> None:
    print(f"\n## OpenAIChat: cancel_run -> workflow_cancelled, server stalled ({trials} trials per phase)")
    phases = (
        ("mid-stream (1 token read, next never comes)", FakeReply(tokens=["a", "b"], hang_after=1), True),
        ("waiting for headers (request sent, no answer)", FakeReply(header_delay=3600), False),
    )
    for label, reply, after_token in phases:
        with FakeOpenAIServer(default=reply) as server, OpenAIChat("bench", base_url=server.base_url) as model:
            stalled = server.hanging if after_token else server.request_received
            wf = Workflow("bench-models", steps=[Agent(model=model)])
            cancel_trial(wf, server, stalled, after_token)  # warm-up: the first connection
            latencies = [cancel_trial(wf, server, stalled, after_token) for _ in range(trials)]
            wait_until(lambda: server.disconnects >= trials + 1, timeout=2.0)  # the last one is noticed async
            closed = server.disconnects
        p50, p99 = percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3
        print(f"{label:52s} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   max {max(latencies) * 1e3:6.2f} ms")
        print(f"{'':52s} server saw {closed}/{trials + 1} connections closed; no token after a cancel")


def bench_close_baseline(gap: float) -> None:
    """httpx, closing the response from another thread while the reader waits for a token ``gap`` s away."""
    print(f"\n## baseline: httpx response.close() from another thread (token gap {gap:g} s)")
    reply = FakeReply(tokens=["a", "b"], pace=gap)
    with FakeOpenAIServer(default=reply) as server, httpx.Client() as client:
        body = {"model": "m", "messages": [], "stream": True}
        with client.stream("POST", f"{server.base_url}/chat/completions", json=body) as response:
            lines = response.iter_lines()
            closed_at: list[float] = []

            def close() -> None:
                server.body_started.wait()
                closed_at.append(time.perf_counter())
                response.close()

            closer = threading.Thread(target=close)
            closer.start()
            try:
                for _ in lines:
                    if closed_at:
                        break
            except (httpx.HTTPError, RuntimeError):
                pass  # the reader noticed the close, at the next byte
            returned = time.perf_counter()
            closer.join()
    print(f"{'response.close() -> blocked read returns':52s} {(returned - closed_at[0]) * 1e3:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few trials")
    args = parser.parse_args()
    bench_cancel(20 if args.quick else 300)
    bench_close_baseline(0.5 if args.quick else 3.0)


if __name__ == "__main__":
    main()
