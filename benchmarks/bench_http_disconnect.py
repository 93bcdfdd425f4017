"""HTTP benchmark: how fast a server notices that a streaming client has left.

Many clients at once (200 by default, on loopback) each start a streaming run
(``POST /workflows/ticker/runs`` with ``"stream": true``) of a step that
yields a token every ``--tick`` seconds (1 ms by default; 0 is a firehose) for ~4 s, read its first events, hold the
stream for a random moment, then close the socket. The run must then be
cancelled (cause ``stream_closed``). Measured, per run: the client closing
its socket → the run's recorded ``ended_at`` (both wall-clock, same host),
p50 / p99 / max; and how many runs *completed* after their client had left
(the disconnect was noticed too late to matter).

The server is a real uvicorn (``running_server``) in a child process; the
load generator is one asyncio loop of raw sockets in this process, bounded
by ``--streams``.

Run: ``python benchmarks/bench_http_disconnect.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from threadflow import StepInput, Workflow, get_context
from threadflow.server import create_app, running_server


def ticker(step_input: StepInput) -> Iterator[str]:
    """``input = [tokens, seconds]``: that many tokens, a cancellable sleep of ``seconds`` after each."""
    tokens, seconds = step_input.input
    for _ in range(tokens):
        yield "t"
        get_context().sleep(seconds)


TICKER = Workflow("ticker", steps=[ticker])


def serve_until_stdin_closes() -> None:
    with running_server(create_app(TICKER, keep_finished_runs=1000)) as url:
        print(url, flush=True)
        sys.stdin.read()


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


# -- the load generator ------------------------------------------------------------------


async def one_stream(host: str, port: int, run_input: list[Any], hold: float) -> tuple[str, float]:
    """Start a streaming run, read until its first token, hold it ``hold`` seconds, then leave.

    Returns the run id and the wall-clock time the socket was closed.
    """
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({"input": run_input, "stream": True}).encode()
    head = (
        f"POST /workflows/ticker/runs HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    headers = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    if not headers.startswith("HTTP/1.1 200"):
        raise RuntimeError(f"the server refused a stream: {headers.splitlines()[0]}")
    run_id = next(unquote(line.split(":", 1)[1].strip()) for line in headers.split("\r\n") if is_run_id(line))
    seen = b""
    while b'"run_content"' not in seen:  # the first token: the run is streaming
        chunk = await reader.read(65536)
        if not chunk:
            raise RuntimeError(f"run {run_id}'s stream ended before its first token")
        seen = seen[-64:] + chunk
    deadline = time.monotonic() + hold
    while (left := deadline - time.monotonic()) > 0:  # keep reading, as a live client does
        try:
            if not await asyncio.wait_for(reader.read(65536), left):
                break
        except TimeoutError:
            break
    closed_at = time.time()
    writer.transport.abort()  # the socket closes now: no lingering, no flush
    return run_id, closed_at


def is_run_id(line: str) -> bool:
    return line.lower().startswith("x-threadflow-run-id:")


async def wave(url: str, streams: int, run_input: list[Any], seed: int) -> list[tuple[str, float]]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    jitter = random.Random(seed)
    holds = [0.5 + jitter.random() for _ in range(streams)]  # every stream is open at once, then they leave
    return list(await asyncio.gather(*(one_stream(host, port, run_input, hold) for hold in holds)))


def outcomes(url: str, left: list[tuple[str, float]], timeout: float) -> tuple[list[float], int, int]:
    """Per run: the client left → run ended (ms); and how many completed, or never ended, after it left."""
    latencies, completed, stuck = [], 0, 0
    with httpx.Client(base_url=url, timeout=10) as http:
        for run_id, closed_at in left:
            info = wait_for_end(http, run_id, time.monotonic() + timeout)
            if info is None:
                stuck += 1
                continue
            completed += info["status"] == "completed"
            latencies.append(max(0.0, info["ended_at"] - closed_at) * 1e3)
    return latencies, completed, stuck


def wait_for_end(http: httpx.Client, run_id: str, deadline: float) -> dict[str, Any] | None:
    while time.monotonic() < deadline:
        info: dict[str, Any] = http.get(f"/workflows/ticker/runs/{run_id}").json()
        if info.get("ended_at") is not None:
            return info
        time.sleep(0.05)  # polling the server's record, not synchronising threads
    return None


# -- report -----------------------------------------------------------------------------


def report(workload: str, latencies: list[float], completed: int, stuck: int) -> None:
    runs = len(latencies) + stuck
    print(f"{workload}\n")
    print("client closed its socket → run ended (ms)")
    print(f"  {'p50':>8} {'p99':>8} {'max':>8}")
    if latencies:
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        print(f"  {p50:8.1f} {p99:8.1f} {max(latencies):8.1f}")
    print(f"\nruns completed after their client left: {completed} of {runs}")
    print(f"runs not ended at all: {stuck} of {runs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few streams")
    parser.add_argument("--streams", type=int, default=200, help="concurrent streams per wave (default 200)")
    parser.add_argument("--waves", type=int, default=2, help="rounds of --streams runs (default 2)")
    parser.add_argument("--tick", type=float, default=0.001, help="seconds between a run's tokens (default 0.001)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process's role
    args = parser.parse_args()
    if args.serve:
        serve_until_stdin_closes()
        return
    streams, waves = (20, 1) if args.quick else (args.streams, args.waves)
    tokens = int(4 / args.tick) if args.tick else 200_000  # ~4 s: still going when its client leaves
    workload = f"{streams} concurrent streams x {waves} waves; a token every {args.tick * 1000:g} ms for ~4 s"
    child = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    try:
        url = child.stdout.readline().decode().strip()
        left: list[tuple[str, float]] = []
        for n in range(waves):
            left += asyncio.run(wave(url, streams, [tokens, args.tick], seed=n))
        report(workload, *outcomes(url, left, timeout=30))
    finally:
        child.stdin.close()  # the child serves until its stdin closes
        child.wait(30)


if __name__ == "__main__":
    main()
