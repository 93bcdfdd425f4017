"""Run-history benchmarks: streaming with ``SqliteStore``, and cross-process cancel latency.

Every figure is printed beside a baseline measured in the same run:

1. streaming throughput: the same token-streaming workflow with the default
   ``MemoryStore`` and with a ``SqliteStore`` (every event written, the
   terminal one durable before the stream ends), interleaved, the ratio of
   each round reported. Goal: the store keeps at least 70% of the in-memory
   throughput in every round. The floor beside it: a store that is called
   for every event and does nothing (what the run pays before writing
   anything);
2. cross-process cancel latency: a worker process streams a stored run; this
   process calls ``store.request_cancel`` (what ``threadflow runs cancel``
   does once Python has started) and the worker stamps the moment it holds
   ``workflow_cancelled``. Reported p50/p99 for a worker that waits between
   tokens (an LLM stream) and one that streams flat out (GIL contention);
   the baseline is an in-process ``cancel_run`` on the same kind of run.
   Goal: p99 ≤ 20 ms. For reference it also times the whole
   ``threadflow runs cancel`` command, Python start-up included.

Run: ``python benchmarks/bench_store.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from array import array
from collections.abc import Iterator
from pathlib import Path

from threadflow import RunInfo, Step, StepInput, Workflow
from threadflow.events import RunContentEvent, WorkflowCancelledEvent
from threadflow.storage import MemoryStore, RunStore, SqliteStore
from threadflow.storage.sqlite._bell import ring


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


# -- 1. streaming throughput ------------------------------------------------------


class _Called(MemoryStore):
    """The floor of any recording store: ``append`` is called for every event, and does nothing."""

    records_events = True

    def append(self, event: object) -> None:
        pass


class _Kept(MemoryStore):
    """An upper bound for any store that records tokens: each is kept in memory (two appends), none is written."""

    records_events = True

    def __init__(self) -> None:
        super().__init__()
        self.times = array("d")
        self.contents: list[str] = []

    def append(self, event: object) -> None:
        if type(event) is RunContentEvent:
            self.times.append(event.created_at)
            self.contents.append(event.content)

    def run_ended(self, info: RunInfo) -> None:
        super().run_ended(info)
        self.times, self.contents = array("d"), []


def _tokens_db(path: Path) -> sqlite3.Connection:
    """A bare sqlite3 file with one table of token rows, set up as ``SqliteStore`` sets up its own."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS tokens (times BLOB, data TEXT)")
    return conn


class _Writer(_Kept):
    """The floor of an in-process recording store: the run's thread keeps each token (two appends); a
    writer thread inserts what was kept every 20 ms (one ``json.dumps``, one bare sqlite3 insert, committed);
    the run's end waits until the rest is committed, as ``SqliteStore.run_ended`` does."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.conn = _tokens_db(path)
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopped.wait(0.02):
            self._write()

    def _write(self) -> None:
        with self.lock:  # taken by the writer and by run_ended, never by the run's appends
            # The run's thread only appends (times first): take the prefix both columns have, as SqliteStore does.
            times, contents = self.times, self.contents
            count = min(len(times), len(contents))
            if count:
                rows = (times[:count].tobytes(), json.dumps(contents[:count]))
                del times[:count], contents[:count]
                self.conn.execute("INSERT INTO tokens VALUES (?, ?)", rows)

    def run_ended(self, info: RunInfo) -> None:
        self._write()
        super().run_ended(info)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.conn.close()


class _Bare(_Kept):
    """The floor of recording tokens in process: two appends per token on the run's thread, nothing else;
    at the run's end one ``json.dumps`` and one bare sqlite3 insert of both columns."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.conn = _tokens_db(path)

    def run_ended(self, info: RunInfo) -> None:
        self.conn.execute("INSERT INTO tokens VALUES (?, ?)", (self.times.tobytes(), json.dumps(self.contents)))
        super().run_ended(info)

    def close(self) -> None:
        super().close()
        self.conn.close()


def throughput(directory: Path, tokens: int, repeats: int) -> None:
    def stream(step_input: StepInput) -> Iterator[str]:
        for _ in range(tokens):
            yield "tok "

    stores: dict[str, RunStore] = {
        "MemoryStore": MemoryStore(),
        "SqliteStore": SqliteStore(directory / "bench.db"),
        "called": _Called(),
        "kept": _Kept(),
        "writer": _Writer(directory / "writer.db"),
        "bare": _Bare(directory / "bare.db"),
    }
    rates: dict[str, list[float]] = {name: [] for name in stores}
    for _ in range(repeats):  # interleaved: each round's ratio compares runs made moments apart
        for name, store in stores.items():
            workflow = Workflow("bench", steps=[Step("stream", executor=stream)], store=store)
            started = time.perf_counter()
            count = sum(1 for _ in workflow.run(stream=True))
            rates[name].append(count / (time.perf_counter() - started))
    for store in stores.values():
        store.close()
    memory = rates["MemoryStore"]
    ratios = {name: [rate / base for rate, base in zip(rates[name], memory, strict=True)] for name in rates}
    print(f"streaming {tokens:,} tokens per run, {repeats} interleaved rounds (events/s):")
    print(f"  MemoryStore (baseline)       {_rates(memory)}")
    print(f"  SqliteStore                  {_rates(rates['SqliteStore'])}")
    print(f"  SqliteStore / MemoryStore    {_percentages(ratios['SqliteStore'])}")
    met = sum(ratio >= 0.70 for ratio in ratios["SqliteStore"])
    print(f"  goal ≥ 70% in every round: {met}/{repeats} rounds")
    print("  floors, / MemoryStore in the same round:")
    print(f"    a store that is called for every event and does nothing       {_percentages(ratios['called'])}")
    print(f"    each token kept in memory (two appends), nothing written      {_percentages(ratios['kept'])}")
    print(f"    kept, and a writer thread inserting them every 20 ms          {_percentages(ratios['writer'])}")
    print(f"    two bare appends per token, one json.dumps + sqlite3 insert   {_percentages(ratios['bare'])}")


def _rates(values: list[float]) -> str:
    return "  ".join(f"{value / 1000:6,.0f}k" for value in values)


def _percentages(values: list[float]) -> str:
    return "  ".join(f"{value:6.1%}" for value in values)


# -- 2. cross-process cancel latency -------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import sys, time
    from threadflow import Step, Workflow, get_context
    from threadflow.storage import SqliteStore

    pace = float(sys.argv[2])

    def stream(step_input):
        ctx = get_context()
        while True:
            yield "tok "
            if pace:
                ctx.sleep(pace)

    workflow = Workflow("cancel-me", steps=[Step("stream", executor=stream)], store=SqliteStore(sys.argv[1]))
    for line in sys.stdin:  # one run per line read
        stream = workflow.run(stream=True)
        for event in stream:
            if event.seq == 10:
                print("ready", stream.run_id, flush=True)
            if event.terminal:
                print("ended", repr(time.time()), flush=True)
    """
)


def cross_process(directory: Path, rounds: int, pace: float) -> list[float]:
    """Seconds from ``request_cancel`` to the worker holding ``workflow_cancelled``, per round."""
    path = directory / f"cancel-{pace}.db"
    store = SqliteStore(path)
    command = [sys.executable, "-c", _WORKER, str(path), str(pace)]
    latencies = []
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as worker:
        assert worker.stdin is not None and worker.stdout is not None
        for _ in range(rounds):
            worker.stdin.write("go\n")
            worker.stdin.flush()
            run_id = worker.stdout.readline().split()[1]
            time.sleep(0.005)  # let it stream for a moment
            asked = time.time()
            assert store.request_cancel(run_id, "benchmark") is True
            ended = float(worker.stdout.readline().split()[1])
            latencies.append(ended - asked)
        worker.stdin.close()
        worker.wait(30)
    store.close()
    return latencies


_FLOOR_WORKER = textwrap.dedent(
    """
    import sys, time
    from threadflow.storage.sqlite._bell import open_bell

    bell = open_bell(sys.argv[1])
    print("ready", flush=True)
    for line in sys.stdin:  # one round per line read: a bare loop that looks at the bell every 64 passes
        count = 0
        while True:
            count += 1
            if count % 64 == 0 and bell.rung():
                break
        print("noticed", repr(time.time()), flush=True)
    bell.remove()
    """
)


def signal_floor(directory: Path, rounds: int) -> list[float] | None:
    """The floor: a bare Python loop in another process looking at the doorbell, one bare sqlite3 write here.

    Seconds from before the write (an insert, committed) to the loop noticing the ring that follows it.
    """
    from threadflow.storage.sqlite._bell import _bell_path, open_bell
    from threadflow.storage.sqlite._liveness import this_process

    token = uuid.uuid4().hex
    probe = open_bell(token + "-probe")
    if probe is None:
        return None  # no doorbell on this platform
    probe.remove()
    conn = sqlite3.connect(directory / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, run_id TEXT)")
    command = [sys.executable, "-c", _FLOOR_WORKER, token]
    latencies = []
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as worker:
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdout.readline()
        owner = this_process()._replace(pid=worker.pid, inbox=token)
        for _ in range(rounds):
            worker.stdin.write("go\n")
            worker.stdin.flush()
            time.sleep(0.005)  # let it loop for a moment
            asked = time.time()
            conn.execute("INSERT INTO requests (run_id) VALUES ('r')")
            ring(owner)
            latencies.append(float(worker.stdout.readline().split()[1]) - asked)
        worker.stdin.close()
        worker.wait(30)
    conn.close()
    assert not _bell_path(worker.pid, token).exists()
    return latencies


def in_process(rounds: int, pace: float) -> list[float]:
    """The baseline: ``cancel_run`` from another thread of the run's own process."""

    def stream(step_input: StepInput) -> Iterator[str]:
        while True:
            yield "tok "
            if pace:
                time.sleep(pace)

    workflow = Workflow("cancel-me", steps=[Step("stream", executor=stream)])
    return [in_process_once(workflow) for _ in range(rounds)]


def in_process_once(workflow: Workflow) -> float:
    ready, asked = threading.Event(), [0.0]
    stream = workflow.run(stream=True)

    def cancel() -> None:
        ready.wait()
        time.sleep(0.005)  # let it stream for a moment
        asked[0] = time.time()
        workflow.cancel_run(stream.run_id, "benchmark")

    canceller = threading.Thread(target=cancel)
    canceller.start()
    landed = 0.0
    for event in stream:
        if isinstance(event, RunContentEvent) and event.seq == 10:
            ready.set()
        if isinstance(event, WorkflowCancelledEvent):
            landed = time.time()
    canceller.join()
    return landed - asked[0]


def cli_round_trip(directory: Path, rounds: int) -> list[float]:
    """Seconds for the whole ``threadflow runs cancel`` command, Python start-up included."""
    path = directory / "cli.db"
    SqliteStore(path).close()
    command = [sys.executable, "-c", _WORKER, str(path), "0.001"]
    took = []
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as worker:
        assert worker.stdin is not None and worker.stdout is not None
        for _ in range(rounds):
            worker.stdin.write("go\n")
            worker.stdin.flush()
            run_id = worker.stdout.readline().split()[1]
            started = time.perf_counter()
            cancel = [sys.executable, "-m", "threadflow", "--db", str(path), "runs", "cancel", run_id]
            subprocess.run(cancel, check=True, capture_output=True)
            took.append(time.perf_counter() - started)
            worker.stdout.readline()
        worker.stdin.close()
        worker.wait(30)
    return took


def report(label: str, latencies: list[float]) -> None:
    ms = [latency * 1000 for latency in latencies]
    p50, p99, worst = percentile(ms, 50), percentile(ms, 99), max(ms)
    print(f"  {label:<44} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   max {worst:7.2f} ms   (n={len(ms)})")


def latency(directory: Path, rounds: int) -> None:
    print(f"\ncancel latency, request → the run's workflow_cancelled ({rounds} runs each):")
    for pace, kind in ((0.001, "a stream that waits 1 ms between tokens"), (0.0, "a stream running flat out")):
        report(f"in-process cancel_run, {kind} (baseline)", in_process(rounds, pace))
        report(f"other process, request_cancel, {kind}", cross_process(directory, rounds, pace))
    floor = signal_floor(directory, rounds)
    if floor is not None:
        report("floor: bare loop in another process, doorbell after a bare sqlite3 write", floor)
    report("`threadflow runs cancel`, whole command", cli_round_trip(directory, max(3, rounds // 20)))
    print("  goal: p99 ≤ 20 ms from the request (the command adds Python's start-up)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        throughput(directory, tokens=20_000 if args.quick else 200_000, repeats=2 if args.quick else 5)
        latency(directory, rounds=10 if args.quick else 200)


if __name__ == "__main__":
    main()
