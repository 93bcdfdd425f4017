"""Several worker processes, each its own "host" (``THREADFLOW_HOSTNAME``), sharing one PostgreSQL (SPEC §10).

Workers are ``python -m threadflow worker pg_flows:ALL`` subprocesses; this
process enqueues and follows; cancels also come from a third process (the CLI).
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

import pytest
from conftest import WAIT, names

from threadflow import RunStatus, Workflow
from threadflow.events import WorkflowResumedEvent

psycopg = pytest.importorskip("psycopg")
from threadflow.storage import PostgresStore  # noqa: E402 — after the skip

TESTS = Path(__file__).parent
LEASE = 1.0


class Workers:
    """Worker subprocesses this test started; every one is stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.drains: list[threading.Thread] = []

    def start(self, host: str, *, stall: bool = False, concurrency: int = 4) -> subprocess.Popen[str]:
        env = {
            **os.environ,
            "THREADFLOW_HOSTNAME": host,
            "PYTHONPATH": str(TESTS),
            "PG_FLOWS_STALL": "1" if stall else "",
        }
        argv = [sys.executable, "-m", "threadflow", "--db", self.dsn, "worker", "pg_flows:ALL"]
        argv += ["--concurrency", str(concurrency), "--lease-seconds", str(LEASE), "--grace", "5"]
        proc = subprocess.Popen(argv, env=env, cwd=TESTS, stderr=subprocess.PIPE, text=True)
        self.procs[host] = proc
        up = threading.Event()
        lines: list[str] = []
        drain = threading.Thread(target=_drain, args=(proc, up, lines), daemon=True)
        drain.start()
        self.drains.append(drain)
        assert up.wait(WAIT), "".join(lines)  # the worker says it is up once it claims
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for drain in self.drains:
            drain.join(WAIT)  # it ends at the pipe's end, once the process has exited
        for proc in self.procs.values():
            if proc.stderr is not None:
                proc.stderr.close()


def _drain(proc: subprocess.Popen[str], up: threading.Event, lines: list[str]) -> None:
    """Read the worker's stderr (so that it never blocks on a full pipe); set ``up`` at its first line."""
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if "threadflow worker" in line:
            up.set()


@pytest.fixture
def workers(pg_dsn: str) -> Iterator[Workers]:
    running = Workers(pg_dsn)
    yield running
    running.stop_all()


@pytest.fixture
def front(pg_dsn: str) -> Iterator[PostgresStore]:
    store = PostgresStore(pg_dsn)
    yield store
    store.close()


def flow(store: PostgresStore, name: str) -> Workflow:
    """The workflow ``name`` of ``pg_flows``, recording into ``store`` (this process enqueues and follows)."""
    import pg_flows

    template = {w.id: w for w in pg_flows.ALL}[name]
    return Workflow(name, steps=list(template.steps), store=store)


def test_runs_spread_across_hosts_and_a_cancel_from_a_third_process_lands(workers: Workers, front: Any) -> None:
    for host in ("h1", "h2", "h3"):
        workers.start(host, concurrency=2)
    naps = flow(front, "naps")
    handles = [naps.enqueue(0.3) for _ in range(12)]
    victim = flow(front, "forever").enqueue(None)
    events = victim.events()
    assert names([next(events), next(events)]) == ["workflow_started", "step_started"]
    cli = [sys.executable, "-m", "threadflow", "--db", workers.dsn, "runs", "cancel", victim.run_id, "--reason", "cli"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=WAIT, check=False)
    assert done.returncode == 0, done.stderr
    assert victim.result(WAIT).status is RunStatus.cancelled and victim.info().reason == "cli"
    hosts = {handle.result(WAIT).content for handle in handles}
    assert len(hosts) >= 2 and hosts <= {"h1", "h2", "h3"}
    owners = {handle.info().owner.split(":")[0] for handle in handles}  # type: ignore[union-attr]
    assert owners == hosts


def test_a_killed_worker_s_runs_resume_elsewhere_and_end_once(workers: Workers, front: Any) -> None:
    doomed = workers.start("h1", stall=True)
    resumable = flow(front, "resumable")
    handles = [resumable.enqueue(n) for n in range(3)]
    for handle in handles:  # all three are in their second step on h1
        events = handle.events()
        assert names(next(events) for _ in range(4))[-1] == "step_started"
    workers.start("h2")
    killed_at = time.monotonic()
    doomed.kill()
    for handle in handles:
        output = handle.result(WAIT)
        assert output.status is RunStatus.completed
        assert output.content["second_on"] == "h2" and output.content["first"]["first_on"] == "h1"
    assert time.monotonic() - killed_at < LEASE + 5.0
    for handle in handles:
        events = list(front.events(handle.run_id))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert sum(1 for e in events if e.terminal) == 1
        assert names(events).count("step_completed") == 2  # the first step's output came from the log
        [resumed] = [e for e in events if isinstance(e, WorkflowResumedEvent)]
        assert resumed.attempt == 2 and (resumed.previous_owner or "").startswith("h1:")
        assert handle.info().attempt == 2


def test_a_run_with_output_that_is_not_json_ends_error_when_its_worker_dies(workers: Workers, front: Any) -> None:
    doomed = workers.start("h1", stall=True)
    handle = flow(front, "unresumable").enqueue(None)
    events = handle.events()
    assert names(next(events) for _ in range(4))[-1] == "step_started"
    workers.start("h2")
    doomed.kill()
    assert handle.wait(WAIT)
    info = handle.info()
    assert info.status is RunStatus.error and "not JSON" in (info.error or "")


def test_sigterm_lets_runs_finish(workers: Workers, front: Any) -> None:
    proc = workers.start("h1")
    handle = flow(front, "naps").enqueue(0.5)
    events = handle.events()
    assert names([next(events), next(events)]) == ["workflow_started", "step_started"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(WAIT) == 0
    assert handle.result(WAIT).status is RunStatus.completed


def test_a_database_restart_mid_run_loses_and_duplicates_nothing(pg_server: str) -> None:
    """Needs a cluster of its own to restart: started here, like tests/_pg.py does."""
    import _pg

    root = tempfile.mkdtemp(prefix="threadflow-pg-restart-")
    try:
        dsn = _pg.start(root)
    except Exception as error:
        if os.environ.get(_pg.DSN_ENV) and os.environ.get("CI") != "true":
            pytest.skip(f"cannot start a private cluster to restart: {error}")
        raise
    running = Workers(dsn)
    store = PostgresStore(dsn)
    try:
        running.start("h1")
        naps = flow(store, "naps")
        handles = [naps.enqueue(1.5) for _ in range(3)]
        for handle in handles:
            events = handle.events()
            assert names([next(events), next(events)]) == ["workflow_started", "step_started"]
        _pg.restart(root)
        for handle in handles:
            assert handle.result(WAIT * 3).status is RunStatus.completed
            events = list(store.events(handle.run_id))
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert names(events)[-1] == "workflow_completed" and sum(e.terminal for e in events) == 1
    finally:
        store.close()
        running.stop_all()
        _pg.stop(root)


@pytest.mark.timeout(120)
def test_the_scale_out_cookbook_tells_its_story(pg_dsn: str) -> None:
    script = TESTS.parent / "cookbook" / "scale_out.py"
    env = {**os.environ, "THREADFLOW_DB": pg_dsn}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, check=False, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "enqueued 20 runs; 3 workers: alpha, beta, gamma" in out
    assert out.count("-> exit 0") == 3 and "killed worker beta (SIGKILL)" in out
    assert "3 cancelled, 17 completed" in out and "beta -> " in out
    assert "every run: exactly one terminal event, seq without gaps" in out
