"""Scale-out benchmarks: PostgresStore, the run queue and cross-host cancel, beside bare floors.

Every figure is printed beside a floor measured in the same run on the same server:

1. floors: a bare ``INSERT`` + ``FOR UPDATE SKIP LOCKED`` claim loop (psycopg
   only, one claim per transaction) with 1/2/4/8 threads, and a bare
   ``NOTIFY`` round-trip between two connections;
2. claim throughput: ``PostgresStore.claim`` (what ``Worker`` calls) with 1/2/4/8
   sessions, against the bare loop. Goal: at least 0.7x the bare claim loop;
   and, for reference, whole queued runs per second through ``Worker``s;
3. enqueue → first event: ``wf.enqueue()`` here, a worker in another process, the
   first event read back here through the store, p50/p99;
4. events/s: a token-streaming workflow with ``PostgresStore`` vs ``MemoryStore``;
5. cross-host cancel: a run on a worker process (another "host"); ``request_cancel``
   here → the owner accepted (p50/p99), and → the run recorded ``cancelled``.
   Goal: p99 ≤ 10 ms (bare NOTIFY across processes measured ≈ 6 ms p99 here);
6. resume delay: SIGKILL a worker mid-run; time until another worker has resumed
   it (``workflow_resumed`` stored), against ``lease_seconds``.

The server: ``$THREADFLOW_TEST_PG_DSN``, else a throwaway cluster started as the
tests do (``tests/_pg.py``). Run: ``python benchmarks/bench_postgres.py`` (``--quick``: a smoke run).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from threadflow import StepInput, Worker, Workflow
from threadflow.events import WorkflowResumedEvent
from threadflow.storage import MemoryStore, PostgresStore, RunStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import _pg  # noqa: E402 — the tests' helper that starts a throwaway cluster

WORKER_MODULE = textwrap.dedent(
    """
    import os
    from threadflow import Workflow, get_context

    def echo(step_input):
        return step_input.input

    def wait(step_input):
        if os.environ.get("BENCH_STALL") == "1" or step_input.input == "wait":
            get_context().sleep(120)
        return "done"

    ALL = [Workflow("echo", steps=[echo]), Workflow("wait", steps=[echo, wait])]
    """
)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f} ms"


def fresh(dsn: str) -> str:
    return _pg.schema_dsn(dsn, f"bench_{uuid.uuid4().hex[:10]}")


# -- floors --------------------------------------------------------------------------------


def bare_claims(dsn: str, threads: int, total: int) -> float:
    """Claims per second of a bare SKIP LOCKED loop, ``threads`` connections, one claim per transaction."""
    dsn = fresh(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE q (id serial PRIMARY KEY, status text NOT NULL, owner text)")
        conn.execute("CREATE INDEX q_pending ON q (id) WHERE status = 'pending'")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO q (status) VALUES ('pending')", [()] * total)
    start = threading.Barrier(threads + 1)

    def loop() -> None:
        with psycopg.connect(dsn) as conn:
            start.wait()
            while True:
                row = conn.execute(
                    "UPDATE q SET status = 'running', owner = 'me' WHERE id = (SELECT id FROM q"
                    " WHERE status = 'pending' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id"
                ).fetchone()
                conn.commit()
                if row is None:
                    return

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    return total / (time.perf_counter() - began)


def bare_notify(dsn: str, samples: int) -> list[float]:
    """Seconds from NOTIFY on one connection to its receipt on a listening one."""
    got: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as listen, psycopg.connect(dsn, autocommit=True) as send:
        listen.execute("LISTEN bench")
        for _ in range(samples):
            began = time.perf_counter()
            send.execute("NOTIFY bench, 'x'")
            for _note in listen.notifies(stop_after=1, timeout=5):
                got.append(time.perf_counter() - began)
    return got


# -- threadflow ------------------------------------------------------------------------------


def echo(step_input: StepInput) -> object:
    return step_input.input


def store_claims(dsn: str, sessions: int, total: int) -> float:
    """Claims per second through ``PostgresStore.claim`` (one per transaction), ``sessions`` stores."""
    dsn = fresh(dsn)
    front = PostgresStore(dsn)
    flow = Workflow("echo", steps=[echo], store=front)
    for n in range(total):
        flow.enqueue(n)
    stores = [PostgresStore(dsn) for _ in range(sessions)]
    start = threading.Barrier(sessions + 1)

    def loop(store: PostgresStore) -> None:
        start.wait()
        while True:
            claims = store.claim(["echo"], 1)
            if not claims:
                return
            store.release(claims[0].run_id)

    threads = [threading.Thread(target=loop, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    rate = total / (time.perf_counter() - began)
    for store in [front, *stores]:
        store.close()
    return rate


def worker_runs(dsn: str, workers: int, total: int) -> float:
    """Whole queued runs per second (claim, run, record) with ``workers`` in-process ``Worker``s."""
    dsn = fresh(dsn)
    front = PostgresStore(dsn)
    flow = Workflow("echo", steps=[echo], store=front)
    handles = [flow.enqueue(n) for n in range(total)]
    stores = [PostgresStore(dsn) for _ in range(workers)]
    began = time.perf_counter()
    pool = [Worker(Workflow("echo", steps=[echo], store=s), s, concurrency=4) for s in stores]
    for worker in pool:
        worker.start()
    for handle in handles:
        handle.wait(60)
    rate = total / (time.perf_counter() - began)
    for worker in pool:
        worker.stop()
    for store in [front, *stores]:
        store.close()
    return rate


def events_per_second(store: RunStore, tokens: int) -> float:
    def stream(step_input: StepInput) -> Iterator[str]:
        for _ in range(tokens):
            yield "tok "

    flow = Workflow("stream", steps=[stream], store=store)
    began = time.perf_counter()
    flow.run()
    return (tokens + 6) / (time.perf_counter() - began)


class WorkerProcess:
    """``threadflow worker`` in a subprocess, as another host."""

    def __init__(self, dsn: str, module_dir: str, host: str, *, stall: bool = False, lease: float = 15.0) -> None:
        env = {**os.environ, "THREADFLOW_HOSTNAME": host, "PYTHONPATH": module_dir, "BENCH_STALL": "1" if stall else ""}
        argv = [sys.executable, "-m", "threadflow", "--db", dsn, "worker", "bench_flows:ALL"]
        argv += ["--lease-seconds", str(lease), "--concurrency", "4"]
        self.proc = subprocess.Popen(argv, env=env, cwd=module_dir, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self.proc.stderr.readline()  # up
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # never block on a full pipe

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def cross_host(dsn: str, module_dir: str, samples: int) -> tuple[list[float], list[float], list[float]]:
    """(enqueue → first event, request_cancel → accepted, request_cancel → recorded cancelled), seconds."""
    dsn = fresh(dsn)
    worker = WorkerProcess(dsn, module_dir, "bench-host-1")
    front = PostgresStore(dsn)
    first, accepted, ended = [], [], []
    try:
        flow = Workflow("wait", steps=[echo], store=front)
        for _ in range(samples):
            began = time.perf_counter()
            handle = flow.enqueue("wait")
            events = handle.events()
            next(events)
            first.append(time.perf_counter() - began)
            for event in events:
                if str(event.event) == "step_started" and getattr(event, "step_name", "") == "wait":
                    break
            began = time.perf_counter()
            assert front.request_cancel(handle.run_id, "bench")
            accepted.append(time.perf_counter() - began)
            assert front.wait_ended(handle.run_id, 10)
            ended.append(time.perf_counter() - began)
    finally:
        front.close()
        worker.stop()
    return first, accepted, ended


def resume_delay(dsn: str, module_dir: str, lease: float) -> float:
    """Seconds from SIGKILL of a worker mid-run to ``workflow_resumed`` stored by another."""
    dsn = fresh(dsn)
    doomed = WorkerProcess(dsn, module_dir, "bench-doomed", stall=True, lease=lease)
    front = PostgresStore(dsn)
    rescuer = None
    try:
        handle = Workflow("wait", steps=[echo], store=front).enqueue("go")
        events = handle.events()
        for event in events:
            if str(event.event) == "step_started" and getattr(event, "step_name", "") == "wait":
                break
        rescuer = WorkerProcess(dsn, module_dir, "bench-rescuer", lease=lease)
        killed = time.perf_counter()
        doomed.proc.kill()
        for event in events:
            if isinstance(event, WorkflowResumedEvent):
                return time.perf_counter() - killed
        raise AssertionError("never resumed")
    finally:
        front.close()
        doomed.stop()
        if rescuer is not None:
            rescuer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few samples")
    quick = parser.parse_args().quick
    root = None
    dsn = os.environ.get(_pg.DSN_ENV)
    if not dsn:
        root = tempfile.mkdtemp(prefix="bench-pg-")
        dsn = _pg.start(root)
    module_dir = tempfile.mkdtemp(prefix="bench-flows-")
    Path(module_dir, "bench_flows.py").write_text(WORKER_MODULE)
    try:
        run(dsn, module_dir, quick)
    finally:
        if root is not None:
            _pg.stop(root)


def run(dsn: str, module_dir: str, quick: bool) -> None:
    claims = 100 if quick else 2000
    print("1. floors (same server, same run)")
    notify = bare_notify(dsn, 20 if quick else 500)
    print(f"   bare NOTIFY round-trip           p50 {ms(percentile(notify, 50))}  p99 {ms(percentile(notify, 99))}")
    bare = {k: bare_claims(dsn, k, claims) for k in (1, 2, 4, 8)}
    print("   bare SKIP LOCKED claim loop      " + "  ".join(f"{k}: {v:7.0f}/s" for k, v in bare.items()))
    print("2. claim throughput (PostgresStore.claim, one per transaction)")
    for k in (1, 2, 4, 8):
        rate = store_claims(dsn, k, claims)
        print(f"   {k} sessions: {rate:7.0f} claims/s = {rate / bare[k]:.2f}x the bare loop (goal >= 0.7x)")
    for k in (1, 4):
        print(f"   {k} Worker(s): {worker_runs(dsn, k, claims):7.0f} whole queued runs/s (claim + run + record)")
    print("3-5. across processes (a worker process as another host)")
    first, accepted, ended = cross_host(dsn, module_dir, 10 if quick else 200)
    print(f"   enqueue -> first event           p50 {ms(percentile(first, 50))}  p99 {ms(percentile(first, 99))}")
    print(f"   cross-host cancel -> accepted    p50 {ms(percentile(accepted, 50))}  p99 {ms(percentile(accepted, 99))}")
    print(f"   cross-host cancel -> recorded    p50 {ms(percentile(ended, 50))}  p99 {ms(percentile(ended, 99))}")
    tokens = 2000 if quick else 50_000
    memory = events_per_second(MemoryStore(), tokens)
    with PostgresStore(fresh(dsn)) as store:
        stored = events_per_second(store, tokens)
    print(f"4. events/s: MemoryStore {memory:9.0f}/s  PostgresStore {stored:9.0f}/s ({stored / memory:.2f}x)")
    lease = 1.0 if quick else 3.0
    delay = resume_delay(dsn, module_dir, lease)
    print(f"6. resume after SIGKILL: {delay:.2f} s with lease_seconds={lease} (bound: lease + claim sweep)")


if __name__ == "__main__":
    main()
