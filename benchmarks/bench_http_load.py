"""HTTP benchmark: one server, 200 concurrent streaming clients, some of them cancelled mid-stream.

Every client (one asyncio load generator, raw sockets, bounded by
``--clients``) starts a streaming run at the same moment (``POST
/workflows/ticker/runs`` with ``"stream": true``) and reads its SSE stream to
the end. The run yields a token every ``--tick`` seconds (10 ms by default:
100 tokens a second, a fast LLM stream; 0 is a firehose) until ``--tokens`` tokens. One client in
``--cancel-every`` is cancelled by the generator, from its own connection
(``POST .../cancel``), after its first token, a random 10-50% of the run's
nominal length later (``tokens x tick``; 10 µs a token for a firehose). Measured:

- time to first event: the client starts connecting → its stream holds the
  first token (``run_content``), p50 / p99 / max;
- cancel: the ``POST .../cancel`` is sent → that client's stream holds
  ``workflow_cancelled``, p50 / p99 / max;
- tokens per second received by all clients together, and how many answers
  were 5xx (or streams cut before their terminal event).

The floor, measured in the same run (rounds interleaved): a bare Starlette
app on uvicorn that streams the same tokens, as SSE messages of the same
shape, from a thread per client (``threading.Event.wait(tick)`` between
tokens, cancelled by a ``POST``), through an ``asyncio`` wake-up per batch.
Each server runs in a child process of its own, for every round: the
threadflow app keeps the events of its last ``--keep-finished-runs`` runs
(create_app's default, 100), which the garbage collector walks on each full
collection: with 1000 kept its pauses grew to 0.3 s, round by round.

Run: ``python benchmarks/bench_http_load.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from threadflow import StepInput, Workflow, get_context
from threadflow.server import create_app, running_server


def ticker(step_input: StepInput) -> Iterator[str]:
    """``input = [tokens, seconds]``: that many tokens, a cancellable sleep of ``seconds`` after each."""
    tokens, seconds = step_input.input
    context = get_context()
    for _ in range(tokens):
        yield "t"
        if seconds:
            context.sleep(seconds)


# -- the floor: a bare Starlette SSE endpoint, a thread per client -------------------------


class _FloorRun:
    """A thread producing ``tokens`` SSE messages into a deque, waking the stream's task once per batch."""

    def __init__(self, run_id: str, tokens: int, tick: float, loop: asyncio.AbstractEventLoop) -> None:
        self.run_id, self.tokens, self.tick, self.loop = run_id, tokens, tick, loop
        self.cancelled = threading.Event()
        self.out: collections.deque[bytes] = collections.deque()
        self.ready = asyncio.Event()
        self.scheduled = False
        self.thread = threading.Thread(target=self.produce, daemon=True)

    def push(self, kind: str, seq: int, **fields: Any) -> None:
        data = {"type": kind, "run_id": self.run_id, "seq": seq, "created_at": time.time(), **fields}
        self.out.append(f"id: {seq}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon_threadsafe(self.ready.set)

    def produce(self) -> None:
        self.push("workflow_started", 1)
        seq = 1
        for _ in range(self.tokens):
            seq += 1
            self.push("run_content", seq, content="t", step_name="ticker")
            if self.cancelled.wait(self.tick) if self.tick else self.cancelled.is_set():
                self.push("workflow_cancelled", seq + 1)
                return
        self.push("workflow_completed", seq + 1)

    async def stream(self) -> AsyncIterator[bytes]:
        while True:
            self.scheduled = False
            self.ready.clear()
            batch = [self.out.popleft() for _ in range(len(self.out))]
            if batch:
                yield b"".join(batch)
                if b'"workflow_c' in batch[-1]:
                    return
            else:
                await self.ready.wait()


def floor_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    runs: dict[str, _FloorRun] = {}
    ids = itertools.count()

    async def start(request: Request) -> Response:
        tokens, tick = (await request.json())["input"]
        run = _FloorRun(f"floor-{next(ids)}", tokens, tick, asyncio.get_running_loop())
        runs[run.run_id] = run
        run.thread.start()
        headers = {"X-Threadflow-Run-Id": run.run_id, "Cache-Control": "no-store"}
        return StreamingResponse(run.stream(), media_type="text/event-stream", headers=headers)

    async def cancel(request: Request) -> Response:
        run = runs[request.path_params["run_id"]]
        run.cancelled.set()
        return JSONResponse({"run_id": run.run_id, "status": "cancelling"})

    routes = [
        Route("/workflows/ticker/runs", start, methods=["POST"]),
        Route("/workflows/ticker/runs/{run_id}/cancel", cancel, methods=["POST"]),
    ]
    return Starlette(routes=routes)


# -- the servers, each in a child process ---------------------------------------------------


def serve_until_stdin_closes(which: str, max_runs: int, keep: int) -> None:
    if which == "floor":
        app = floor_app()
    else:
        app = create_app(Workflow("ticker", steps=[ticker], max_concurrent_runs=max_runs), keep_finished_runs=keep)
    with running_server(app) as url:
        print(url, flush=True)
        sys.stdin.read()


@dataclass
class Server:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """The child's CPU time so far (user + system), from ``/proc``; 0.0 where there is none."""
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server(which: str, max_runs: int, keep: int) -> Iterator[Server]:
    command = [sys.executable, __file__, "--serve", which, "--max-concurrent-runs", str(max_runs)]
    command += ["--keep-finished-runs", str(keep)]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    try:
        yield Server(child.stdout.readline().decode().strip(), child.pid)
    finally:
        child.stdin.close()  # the child serves until its stdin closes
        child.wait(30)


# -- the load generator ------------------------------------------------------------------------


@dataclass
class Wave:
    """What one wave of clients saw."""

    first_token: list[float] = field(default_factory=list)  # ms
    cancel: list[float] = field(default_factory=list)  # ms
    tokens: int = 0
    errors: int = 0  # 5xx answers, and streams cut before their terminal event
    seconds: float = 0.0
    cpu: float = 0.0  # the server's CPU seconds meanwhile


async def post(host: str, port: int, path: str, body: bytes) -> tuple[int, asyncio.StreamReader, Any, str]:
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    headers = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    return int(headers.split(" ", 2)[1]), reader, writer, headers


async def cancel(host: str, port: int, run_id: str, wave: Wave) -> None:
    status, _, writer, _ = await post(host, port, f"/workflows/ticker/runs/{run_id}/cancel", b"{}")
    writer.close()
    if status >= 500:
        wave.errors += 1


async def one_client(host: str, port: int, run_input: list[Any], cancel_after: float | None, wave: Wave) -> None:
    started = time.perf_counter()
    body = json.dumps({"input": run_input, "stream": True}).encode()
    status, reader, writer, headers = await post(host, port, "/workflows/ticker/runs", body)
    if status != 200:
        wave.errors += status >= 500
        writer.close()
        return
    run_id = next(unquote(line.split(":", 1)[1].strip()) for line in headers.split("\r\n") if is_run_id(line))
    tail, first, asked, canceller = b"", False, 0.0, None
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            wave.errors += 1  # cut before its terminal event
            break
        seen = tail + chunk
        wave.tokens += chunk.count(b'"run_content"')
        now = time.perf_counter()
        if not first and b'"run_content"' in seen:
            first = True
            wave.first_token.append((now - started) * 1e3)
            if cancel_after is not None:
                canceller = asyncio.create_task(cancel_later(host, port, run_id, cancel_after, wave))
        if b'"workflow_cancelled"' in seen and canceller is not None:
            asked = await canceller
            wave.cancel.append((now - asked) * 1e3)
            break
        if b'"workflow_c' in seen:  # completed (or cancelled without being asked: counted as cut)
            wave.errors += b'"workflow_completed"' not in seen
            break
        tail = seen[-32:]
    writer.close()


async def cancel_later(host: str, port: int, run_id: str, delay: float, wave: Wave) -> float:
    await asyncio.sleep(delay)
    asked = time.perf_counter()
    await cancel(host, port, run_id, wave)
    return asked


def is_run_id(line: str) -> bool:
    return line.lower().startswith("x-threadflow-run-id:")


async def wave(url: str, clients: int, run_input: list[Any], cancel_every: int, seed: int) -> Wave:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    jitter = random.Random(seed)
    nominal = run_input[0] * (run_input[1] or 1e-5)
    delays = [nominal * (0.1 + 0.4 * jitter.random()) if n % cancel_every == 0 else None for n in range(clients)]
    seen = Wave()
    started = time.perf_counter()
    await asyncio.gather(*(one_client(host, port, run_input, delay, seen) for delay in delays))
    seen.seconds = time.perf_counter() - started
    return seen


# -- report -------------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values) or [float("nan")]
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def row(label: str, values: list[float]) -> str:
    p50, p99, top = percentile(values, 50), percentile(values, 99), max(values, default=float("nan"))
    return f"  {label:12} {p50:9.1f} {p99:9.1f} {top:9.1f}"


def report(round_no: int, floor: Wave, ours: Wave) -> None:
    print(f"round {round_no}")
    print(f"  {'':12} {'p50':>9} {'p99':>9} {'max':>9}   (ms)")
    for name, seen in (("floor", floor), ("threadflow", ours)):
        print(row(name, seen.first_token) + "   time to first event")
    for name, seen in (("floor", floor), ("threadflow", ours)):
        print(row(name, seen.cancel) + f"   cancel POST -> workflow_cancelled ({len(seen.cancel)} runs)")
    rates = [seen.tokens / seen.seconds for seen in (floor, ours)]
    print(f"  tokens/s received: floor {rates[0]:,.0f}, threadflow {rates[1]:,.0f} = {rates[1] / rates[0]:.2f}x")
    costs = [seen.cpu / max(seen.tokens, 1) * 1e6 for seen in (floor, ours)]
    print(f"  server CPU per token: floor {costs[0]:.0f} µs, threadflow {costs[1]:.0f} µs")
    print(f"  5xx answers or cut streams: floor {floor.errors}, threadflow {ours.errors}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 clients, one round")
    parser.add_argument("--clients", type=int, default=200, help="concurrent streaming clients (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, floor and threadflow interleaved (default 3)")
    parser.add_argument("--tick", type=float, default=0.01, help="seconds between a run's tokens (0: a firehose)")
    parser.add_argument("--tokens", type=int, default=300, help="tokens per run (default 300)")
    parser.add_argument("--cancel-every", type=int, default=4, help="cancel one client in N (default 4)")
    parser.add_argument("--max-concurrent-runs", type=int, default=256, help="the served workflow's (default 256)")
    parser.add_argument(
        "--keep-finished-runs", type=int, default=100, help="the app's, whose events stay in memory (default 100)"
    )
    parser.add_argument("--serve", choices=["floor", "threadflow"], help=argparse.SUPPRESS)  # a child's role
    args = parser.parse_args()
    if args.serve:
        serve_until_stdin_closes(args.serve, args.max_concurrent_runs, args.keep_finished_runs)
        return
    clients, rounds, tokens = (20, 1, 200) if args.quick else (args.clients, args.rounds, args.tokens)
    pace = f"a token every {args.tick * 1000:g} ms" if args.tick else "a firehose"
    print(f"{clients} concurrent streaming clients, {tokens} tokens each, {pace}; one in {args.cancel_every} cancelled")
    keep = args.keep_finished_runs
    print(f"served workflow: max_concurrent_runs={args.max_concurrent_runs}, keep_finished_runs={keep}\n")
    run_input = [tokens, args.tick]
    with server("floor", 1, keep) as floor_server, server("threadflow", args.max_concurrent_runs, keep) as our_server:
        for n in range(rounds):
            floor = measured(floor_server, clients, run_input, args.cancel_every, seed=n)
            ours = measured(our_server, clients, run_input, args.cancel_every, seed=n)
            report(n + 1, floor, ours)


def measured(server: Server, clients: int, run_input: list[Any], cancel_every: int, seed: int) -> Wave:
    cpu = server.cpu_seconds()
    seen = asyncio.run(wave(server.url, clients, run_input, cancel_every, seed))
    seen.cpu = server.cpu_seconds() - cpu
    return seen


if __name__ == "__main__":
    main()
