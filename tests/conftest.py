"""Fixtures and helpers shared by the test modules (import helpers with ``from conftest import ...``)."""

from __future__ import annotations

import os

# Before threadflow is imported (it reads this once): every event the suite makes is checked
# against pydantic's validation (threadflow._fastevents). Subprocesses the tests start inherit it.
# THREADFLOW_VALIDATE_EVENTS=0 in the environment runs the suite on the fast path alone.
os.environ.setdefault("THREADFLOW_VALIDATE_EVENTS", "1")

import threading
import time
import uuid
from collections.abc import Iterable, Iterator

import pytest

import threadflow
from threadflow import _background
from threadflow._background import WORKER_THREAD_PREFIX
from threadflow._registry import REGISTRY
from threadflow.events import BaseEvent

#: How long a test waits for something another thread does before it fails.
WAIT = 10.0


def names(events: Iterable[BaseEvent]) -> list[str]:
    """The events' names, in order: ``["workflow_started", "step_started", ...]``."""
    return [str(event.event) for event in events]


#: How long the leak check lets background runs that are on their way out (a gate just released,
#: a cancel just accepted) finish before it calls what is left a leak.
SETTLE = 3.0


def _let_background_runs_finish(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for handle in list(_background._active.values()):
        handle.wait(max(0.0, deadline - time.monotonic()))


def _threadflow_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("threadflow")}


@pytest.fixture(autouse=True)
def no_leaked_runs() -> Iterator[None]:
    """Every test: no run left active or registered, no threadflow thread left that should have gone.

    Runs are checked strictly. Of threadflow's threads, only the background
    workers must go (they exit once their queue is empty, so a bounded join
    waits out one that is returning); the timer and a SQLite store's threads
    linger while idle by design. None of threadflow's threads may be
    non-daemon: it would keep the interpreter alive.
    """
    before = _threadflow_threads()
    yield
    _let_background_runs_finish(SETTLE)
    leaked = threadflow.active_runs()
    registered = len(REGISTRY)
    if leaked or registered:
        threadflow.shutdown(WAIT)
        for info in threadflow.active_runs():  # runs shutdown() cannot see, e.g. streams
            threadflow.cancel_run(info.run_id, "leaked by a test")
        for state in REGISTRY.states():  # a stream nobody consumes stays registered: drop it, so
            REGISTRY.remove(state)  # that only the leaking test fails, not every test after it
    assert leaked == [], "a run was still active when the test ended"
    assert registered == 0, "the registry still holds an entry"
    new = _threadflow_threads() - before
    assert not [t.name for t in new if not t.daemon], "a non-daemon threadflow thread was left running"
    for worker in (t for t in new if t.name.startswith(WORKER_THREAD_PREFIX)):
        worker.join(WAIT)
        assert not worker.is_alive(), f"background worker {worker.name} outlived every run"


@pytest.fixture(scope="session")
def pg_server() -> str:
    """A real PostgreSQL server's DSN (see ``tests/_pg.py``); skipped without one — a failure under ``CI=true``."""
    import _pg

    dsn = _pg.pg_dsn()
    if dsn is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true needs a PostgreSQL server: {_pg.SKIP_REASON}")
        pytest.skip(_pg.SKIP_REASON)
    return dsn


@pytest.fixture
def pg_dsn(pg_server: str) -> str:
    """A DSN whose tables live in a schema of their own, empty for this test."""
    import _pg

    return _pg.schema_dsn(pg_server, f"t_{uuid.uuid4().hex[:12]}")
