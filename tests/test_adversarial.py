"""Fault injection against the hardened paths: each test here reproduces a defect found by attacking them.

Each test failed on the code before its fix (or is marked ``xfail(strict=True)``
with the reason, when the fix is not local).
"""

from __future__ import annotations

import asyncio
import gc
import linecache
import logging
import os
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import pytest

import threadflow
from threadflow import RunStatus, Step, Workflow, _aio, _lane, _runner, _timer, get_context
from threadflow._registry import REGISTRY
from threadflow.events import WorkflowCompletedEvent, parse_event
from threadflow.server import create_app, running_server
from threadflow.status import RunInfo
from threadflow.storage import MemoryStore, SqliteStore

WAIT = 10.0


class Unprintable:
    """Content JSON cannot carry, whose ``repr`` and ``str`` both raise."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")

    __str__ = __repr__


def unprintable(step_input: Any) -> Any:
    return Unprintable()


def unprintable_inside(step_input: Any) -> Any:
    return {"ok": 1, "bad": [Unprintable()]}


def self_containing(step_input: Any) -> Any:
    loop: list[Any] = [object()]  # an unknown type sends the dump to the fallback, which meets the cycle
    loop.append(loop)
    return loop


ODD_OUTPUTS = [
    Workflow("unprintable", steps=[unprintable]),
    Workflow("unprintable-inside", steps=[unprintable_inside]),
    Workflow("self-containing", steps=[self_containing]),
]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server(create_app(ODD_OUTPUTS)) as url:
        yield url


def _data(text: str) -> list[Any]:
    return [parse_event(line[len("data: ") :]) for line in text.split("\n") if line.startswith("data: ")]


@pytest.mark.parametrize("workflow_id", [wf.id for wf in ODD_OUTPUTS])
def test_an_unserialisable_unprintable_output_never_cuts_the_stream_or_its_replay(
    server: str, workflow_id: str
) -> None:
    # Logging and serialising never fail a run or cut a stream: the SSE fallback used to call
    # repr() unguarded (and json.dumps gave up on a cycle), so the response died mid-body.
    run_id = f"odd-{uuid.uuid4().hex}"
    with httpx.Client(base_url=server, timeout=WAIT) as http:
        streamed = http.post(f"/workflows/{workflow_id}/runs", json={"stream": True, "run_id": run_id})
        replayed = http.get(f"/workflows/{workflow_id}/runs/{run_id}/events")
    for response in (streamed, replayed):
        assert response.status_code == 200
        events = _data(response.text)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert isinstance(events[-1], WorkflowCompletedEvent)
        assert events[-1].content is not None


def test_debug_mode_logs_an_output_that_contains_itself_without_failing_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # debug_mode's event logger dumped every event as JSON unguarded: a cycle in a step's
    # output raised inside the sink, so the run crashed and run() raised.
    def cycle(step_input: Any) -> Any:
        loop: list[Any] = [1]
        loop.append(loop)
        return loop

    with caplog.at_level(logging.DEBUG, logger="threadflow.events"):
        output = Workflow("debug-cycle", steps=[cycle], debug_mode=True).run(None)
    assert output.status is RunStatus.completed
    assert any("workflow_completed" in record.getMessage() for record in caplog.records)


# -- Ctrl+C inside an async step --------------------------------------------------------------


def _ctrl_c_soon() -> None:
    """What Ctrl+C does to a thread inside an event loop: KeyboardInterrupt out of the loop, task suspended."""

    def interrupt() -> None:
        raise KeyboardInterrupt

    asyncio.get_running_loop().call_soon(interrupt)


async def _awaits_then_cleans_up(cleaned: list[str]) -> None:
    try:
        _ctrl_c_soon()
        await asyncio.Event().wait()  # never set: only the interrupt ends this
    finally:
        await asyncio.sleep(0)  # cleanup that awaits (closing a client, say)
        cleaned.append("finally")


@pytest.mark.parametrize("kind", ["coroutine", "async generator"])
def test_ctrl_c_at_an_await_runs_the_async_steps_cleanup_on_its_loop(kind: str) -> None:
    # The step's task was left pending on the run's loop, which was then closed: asyncio logged
    # "Task was destroyed but it is pending!", and the step's finally ran only when the
    # collector got to it, outside any loop, where its await could not run.
    cleaned: list[str] = []

    async def coroutine(_: object) -> None:
        await _awaits_then_cleans_up(cleaned)

    async def generator(_: object) -> AsyncIterator[str]:
        yield "a"
        await _awaits_then_cleans_up(cleaned)
        yield "never"

    step = coroutine if kind == "coroutine" else generator
    run_id = f"async-ctrl-c-{uuid.uuid4().hex}"
    with pytest.raises(KeyboardInterrupt):
        Workflow("async ctrl c", steps=[step]).run(run_id=run_id)
    assert cleaned == ["finally"], "the step's cleanup did not run before run() raised"
    info = threadflow.get_run(run_id)
    assert info is not None
    assert (info.status, info.cause) == (RunStatus.cancelled, threadflow.CancelCause.shutdown)


# -- at the process's thread limit ----------------------------------------------------------------


def _refuse_threads_named(monkeypatch: pytest.MonkeyPatch, name: str, times: int) -> None:
    """``Thread.start`` raises as at the process's thread limit, for the first ``times`` threads called ``name``."""
    real_start = threading.Thread.start
    left = [times]

    def start(thread: threading.Thread) -> None:
        if thread.name == name and left[0] > 0:
            left[0] -= 1
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)


def test_a_timeout_whose_on_cancel_thread_cannot_start_still_cancels_the_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The timer accepted the cancel, then failed to start the thread for the on_cancel callbacks:
    # they never ran (an async step blocked at an await was never cancelled, the run hung) and
    # every later cancel() waited for ever on callbacks that nobody was running.
    _refuse_threads_named(monkeypatch, "threadflow-on-cancel", times=1)

    async def blocked(_: object) -> None:
        await asyncio.Event().wait()

    handle = Workflow("no threads", steps=[Step("blocked", executor=blocked, timeout=0.01)]).run(background=True)
    assert handle.wait(WAIT), "the timed-out run never ended"
    assert handle.cancel() is False
    output = handle.result(0)
    assert (output.status, output.cause) == (RunStatus.cancelled, threadflow.CancelCause.timeout)


def test_a_timer_thread_that_could_not_start_does_not_disable_every_later_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # _arm recorded the timer thread before starting it; when start() failed the process kept a
    # thread that never ran, and no deadline fired again (only noticed when a step returned).
    timer = _timer._Timer()  # a fresh one, whose thread has not started yet; it exits by itself once idle
    for module in (_timer, _lane, _runner, threadflow.context):
        monkeypatch.setattr(module, "TIMER", timer)
    _refuse_threads_named(monkeypatch, "threadflow-timer", times=1)
    woken_by_cancel: list[bool] = []

    def blocked(_: object) -> None:
        released = threading.Event()
        get_context().on_cancel(released.set)
        woken_by_cancel.append(released.wait(WAIT))

    wf = Workflow("no timer", steps=[Step("blocked", executor=blocked, timeout=0.01)])
    with pytest.raises(RuntimeError, match="can't start new thread"):
        wf.run()  # this run's deadline cannot be enforced: it fails rather than run unbounded
    output = wf.run()
    assert (output.status, output.cause) == (RunStatus.cancelled, threadflow.CancelCause.timeout)
    assert woken_by_cancel[-1], "the deadline did not fire while the step was blocked"


def test_a_background_run_whose_worker_cannot_start_is_not_left_queued_for_ever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # submit() took a worker slot, queued the run, then Thread.start() raised: the run stayed
    # registered and queued with no worker, and the slot was never given back, so once
    # max_concurrent_runs starts had failed, no background run of the workflow ever ran again.
    wf = Workflow("no workers", steps=[lambda _: "done"], max_concurrent_runs=1)
    _refuse_threads_named(monkeypatch, f"threadflow-worker-{wf.id}", times=1)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        wf.run(run_id="never-started", background=True)
    info = threadflow.get_run("never-started")
    assert info is not None and info.status is RunStatus.cancelled, "the run was left queued"
    assert wf.run(background=True).result(WAIT).content == "done", "the worker slot was lost"


def _async_step_machinery() -> set[Any]:
    names = ["settle", "run", "_drive", "_close_agen", "_reap"]
    methods = [getattr(_aio.AsyncSteps, name) for name in names if hasattr(_aio.AsyncSteps, name)]
    functions = [_aio._run_until_complete, _aio._anext, _aio._athrow, _aio._await]
    return {f.__code__ for f in methods + functions}


def _raise_at_line(targets: set[Any], k: int) -> Callable[..., Any]:
    """A tracer raising KeyboardInterrupt at the k-th line run in ``targets``; ``.hit`` says whether it did."""
    lines = 0

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal lines
        if event == "line" and not linecache.getline(frame.f_code.co_filename, frame.f_lineno).lstrip().startswith(
            "with "  # CPython's own gap at a with header (bpo-29988), as in test_hardening_core
        ):
            lines += 1
            if lines == k:
                tracer.hit = True  # type: ignore[attr-defined]
                raise KeyboardInterrupt
        return local

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code in targets else None

    tracer.hit = False  # type: ignore[attr-defined]
    return tracer


@pytest.mark.stress
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # see the note at the end
@pytest.mark.parametrize("stream", [False, True])
def test_ctrl_c_at_any_line_of_the_async_step_machinery_reaches_the_caller(stream: bool) -> None:
    # Ctrl+C between creating a step's task and the try that owns it left the task scheduled
    # and unowned: the async generator's aclose() then met it running, and that RuntimeError
    # replaced the KeyboardInterrupt: the run was recorded "error" and run() raised WorkflowError.
    entered: list[str] = []
    cleaned: list[str] = []

    async def coroutine(_: object) -> str:
        await asyncio.sleep(0)
        return "a"

    async def generator(_: object) -> AsyncIterator[str]:
        entered.append("g")
        try:
            for _ in range(2):
                await asyncio.sleep(0)
                yield "x"
        finally:
            cleaned.append("g")

    wf = Workflow("async interrupted", steps=[Step("a", executor=coroutine), Step("g", executor=generator)])
    targets = _async_step_machinery()
    for k in range(1, 400):
        entered.clear()
        cleaned.clear()
        tracer = _raise_at_line(targets, k)
        sys.settrace(tracer)
        try:
            if stream:
                list(wf.run(stream=True, run_id="async-interrupted"))
            else:
                wf.run(run_id="async-interrupted")
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
            gc.collect()  # what the interrupt left for the collector is reported here, inside this test
        if not tracer.hit:  # type: ignore[attr-defined]
            return  # k ran past the last line: every line has been tried
        info = threadflow.get_run("async-interrupted")
        assert info is not None and info.status is not RunStatus.error, f"line {k}: {info}"
        assert REGISTRY.get("async-interrupted") is None, f"line {k} left a registry entry"
        assert cleaned == entered, f"line {k}: the async generator's cleanup did not run"
    raise AssertionError("more lines than expected")
    # Not covered, and so not asserted: an interrupt in the few lines between a coroutine being
    # made and handed to run()'s try ("coroutine ... was never awaited"), and inside
    # AsyncSteps.close() once the run is recorded (the loop is then closed by the collector).


# -- SQLite store -------------------------------------------------------------------------------


def test_a_closed_sqlite_store_is_not_written_to_by_a_run_still_active_on_it(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "history.db")
    inside, release = threading.Event(), threading.Event()

    def step(_: object) -> Iterator[str]:
        yield "before close"
        inside.set()
        release.wait(WAIT)
        yield "after close"

    handle = Workflow("outlives its store", steps=[step], store=store).run(background=True)
    try:
        assert inside.wait(WAIT)
        store.close()
        for name in os.listdir(tmp_path):
            os.remove(tmp_path / name)  # the store is closed: its files may go
    finally:
        release.set()
        handle.wait(WAIT)
    assert os.listdir(tmp_path) == [], "the closed store's file was written again"
    assert handle.result(WAIT).content == "before closeafter close"  # the run's own outcome is unchanged


def test_a_run_outliving_its_closed_sqlite_store_warns_once_and_its_record_stays_as_at_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "history.db"
    store = SqliteStore(db)
    inside, release = threading.Event(), threading.Event()

    def step(_: object) -> Iterator[str]:
        yield "before close"
        inside.set()
        release.wait(WAIT)
        yield from ("after", "close")

    handle = Workflow("outlives its store", steps=[step], store=store).run(background=True)
    try:
        assert inside.wait(WAIT)
        store.close()
    finally:
        release.set()
    with caplog.at_level(logging.WARNING, logger="threadflow"):
        assert handle.result(WAIT).status is RunStatus.completed
    warned = [r for r in caplog.records if handle.run_id in r.getMessage()]
    assert len(warned) == 1 and "after the store was closed" in warned[0].getMessage()
    with SqliteStore(db) as reader:  # another store on the file: the record as it was at close
        conn = sqlite3.connect(db)
        try:
            (status,) = conn.execute("SELECT status FROM runs WHERE run_id = ?", (handle.run_id,)).fetchone()
        finally:
            conn.close()
        assert status == "running"
        assert store.get_run(handle.run_id).status is RunStatus.completed  # type: ignore[union-attr]  # from memory
        contents = [getattr(e, "content", None) for e in reader.events(handle.run_id) if e.event == "run_content"]
        assert contents == ["before close"]


# -- HTTP -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["9" * 5000, "0" * 5000 + "1", "1" + "0" * 19])
def test_a_last_event_id_of_thousands_of_digits_is_ignored_not_a_500(server: str, header: str) -> None:
    # The header was checked with int(text) <= 2**63 - 1: past 4300 digits Python's int() raises
    # ValueError, so the server answered 500 (a reset connection) instead of ignoring the value.
    run_id = f"lei-{uuid.uuid4().hex}"
    with httpx.Client(base_url=server, timeout=WAIT) as http:
        http.post("/workflows/unprintable/runs", json={"stream": True, "run_id": run_id})
        replayed = http.get(f"/workflows/unprintable/runs/{run_id}/events", headers={"Last-Event-ID": header})
    assert replayed.status_code == 200
    expected_first = 2 if header.endswith("1") and header.startswith("0") else 1
    assert _data(replayed.text)[0].seq == expected_first


# -- RunHandle --------------------------------------------------------------------------------------


class _SlowDiskStore(MemoryStore):
    """Records a run's end as a disk would: it takes a moment (a SqliteStore waits for the commit)."""

    def run_ended(self, info: RunInfo) -> None:
        time.sleep(0.2)  # inside the code under test: the window between the terminal event and the run's end
        super().run_ended(info)


def test_when_a_handles_events_end_the_handle_is_done() -> None:
    # events() ended at the terminal event, which is logged before the run has finished ending
    # (its store write, leaving the registry): right after the loop, done() was False and
    # result(timeout=0) raised TimeoutError. With a SqliteStore that was most runs.
    handle = Workflow("slow end", steps=[lambda _: "x"], store=_SlowDiskStore()).run(background=True)
    events = list(handle.events())
    assert events[-1].terminal
    assert handle.done(), "the events ended before the run did"
    assert handle.result(timeout=0).content == "x"
