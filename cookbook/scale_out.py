"""Scale out: three worker processes share one PostgreSQL; cancel from a fourth; kill a worker mid-run.

What it shows, end to end:

1. three ``threadflow worker`` processes start, each acting as its own host
   (``THREADFLOW_HOSTNAME`` = alpha, beta, gamma), all on one database;
2. this process enqueues 20 runs (``wf.enqueue``) and returns at once;
3. worker ``beta`` is killed (SIGKILL) while it runs; after its lease
   (2 s here) lapses the others resume its runs after their last completed step;
4. a fourth process (``threadflow runs cancel``) cancels the last three runs,
   wherever they are — still queued, or running on some host;
5. it prints where each run ran and how it ended: every run has exactly one
   terminal event, and ``seq`` numbers without gaps.

Needs a PostgreSQL server: ``THREADFLOW_DB=postgresql://...`` names one;
without it the script starts a throwaway local cluster with the system's
``initdb``/``pg_ctl`` (the Debian ``postgresql`` package), as the tests do.

Run it (about fifteen seconds)::

    python cookbook/scale_out.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from threadflow import RunStatus, StepInput, Workflow, get_context
from threadflow.events import WorkflowResumedEvent

HERE = Path(__file__).resolve().parent
LEASE = 2.0


def gather(step_input: StepInput) -> dict[str, object]:
    get_context().sleep(0.3)
    return {"topic": step_input.input, "gathered_on": os.environ.get("THREADFLOW_HOSTNAME", "?")}


def write(step_input: StepInput) -> Iterator[str]:
    for word in ("a", "short", "report", "on", str(step_input.previous_step_content["topic"]), "-", "the", "end"):
        get_context().sleep(0.2)
        yield word + " "


report = Workflow("report", steps=[gather, write])


def start_worker(dsn: str, host: str) -> subprocess.Popen[str]:
    env = {**os.environ, "THREADFLOW_HOSTNAME": host, "PYTHONPATH": str(HERE)}
    argv = [sys.executable, "-m", "threadflow", "--db", dsn, "worker", "scale_out:report"]
    argv += ["--concurrency", "3", "--lease-seconds", str(LEASE)]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    proc.stderr.readline()  # "threadflow worker ...": it is claiming
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
    return proc


def main(dsn: str) -> None:
    from threadflow.storage import PostgresStore

    store = PostgresStore(dsn)
    queued = Workflow("report", steps=[gather, write], store=store)  # this process only enqueues and watches
    workers = {host: start_worker(dsn, host) for host in ("alpha", "beta", "gamma")}
    try:
        handles = [queued.enqueue(f"topic {n}") for n in range(20)]
        print(f"enqueued {len(handles)} runs; 3 workers: {', '.join(workers)}")
        doomed = _running_on(store, "beta")
        workers["beta"].kill()
        workers["beta"].wait()
        print(f"killed worker beta (SIGKILL) while it ran {doomed[:8]}")
        cancels = [  # a fourth process (three, at once) cancels the last three runs, wherever they are
            subprocess.Popen(
                [sys.executable, "-m", "threadflow", "--db", dsn, "runs", "cancel", h.run_id, "--reason", "not needed"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for h in handles[-3:]
        ]
        for handle, cancel in zip(handles[-3:], cancels, strict=True):
            print(f"threadflow runs cancel {handle.run_id[:8]} -> exit {cancel.wait()}")
        for handle in handles:
            handle.wait(60)
        _report(store, handles)
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers.values():
            proc.wait(30)
        store.close()


def _running_on(store: Any, host: str) -> str:
    """The id of a run ``host`` is running right now (looks until one is)."""
    pause = threading.Event()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for info in store.list_runs(status=RunStatus.running):
            if (info.owner or "").startswith(host + ":"):
                return str(info.run_id)
        pause.wait(0.02)
    raise RuntimeError(f"no run started on {host}")


def _report(store: Any, handles: list[Any]) -> None:
    ended: dict[str, int] = {}
    print(f"{'run':8}  {'status':9}  {'attempt':7}  ran on")
    for handle in handles:
        info = handle.info()
        events = list(store.events(handle.run_id))
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), "seq has a gap"
        assert sum(1 for e in events if e.terminal) == 1, "not exactly one terminal event"
        hosts = [e.previous_owner.split(":")[0] for e in events if isinstance(e, WorkflowResumedEvent)]
        hosts += [info.owner.split(":")[0]] if info.owner else ["(never started)"]
        print(f"{handle.run_id[:8]}  {info.status.value:9}  {info.attempt:<7}  {' -> '.join(hosts)}")
        ended[info.status.value] = ended.get(info.status.value, 0) + 1
    resumed = sum(1 for h in handles if h.info().attempt > 1)
    print(", ".join(f"{n} {status}" for status, n in sorted(ended.items())) + f"; {resumed} resumed after beta died")
    assert ended.get(RunStatus.cancelled.value) == 3
    print("every run: exactly one terminal event, seq without gaps")


if __name__ == "__main__":
    dsn = os.environ.get("THREADFLOW_DB", "")
    if dsn.startswith(("postgresql://", "postgres://")):
        main(dsn)
    else:
        sys.path.insert(0, str(HERE.parent / "tests"))
        import _pg  # the tests' helper: a throwaway cluster as the postgres OS user

        root = tempfile.mkdtemp(prefix="threadflow-scale-out-")
        try:
            main(_pg.start(root))
        finally:
            _pg.stop(root)
