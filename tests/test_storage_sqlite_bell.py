"""SqliteStore on a streaming run's own thread: the cancel doorbell, its checkpoints, and its stretches of tokens."""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_storage_sqlite import answer, ask_as_another_process

from threadflow import CancelCause, Parallel, RunInfo, RunStatus, Step, StepInput, Workflow, get_context
from threadflow.events import RunContentEvent
from threadflow.storage import SqliteStore, StoreError
from threadflow.storage.base import LocalRuns
from threadflow.storage.sqlite._bell import open_bell, ring
from threadflow.storage.sqlite._liveness import this_process
from threadflow.storage.sqlite._remote_cancel import WATCHER
from threadflow.testing import check_run_events

linux_only = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and Path("/dev/shm").is_dir()), reason="the doorbell lives in /dev/shm"
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "runs.db") as opened:
        yield opened


class FlatOut:
    """A step that streams as fast as it can until cancelled; ``reached`` once it has streamed a while."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.thread: threading.Thread | None = None

    def __call__(self, step_input: StepInput) -> Iterator[str]:
        self.thread = threading.current_thread()
        for count in range(10**9):
            yield "tok "
            if count == 1000:
                self.reached.set()


class ThreadOfCancel:
    """The core's ``LocalRuns``, noting the thread each cancel comes from."""

    def __init__(self, runs: LocalRuns) -> None:
        self.runs = runs
        self.threads: list[threading.Thread] = []

    def cancel(self, run_id: str, reason: str | None, *, callbacks_elsewhere: bool = False) -> bool:
        self.threads.append(threading.current_thread())
        return self.runs.cancel(run_id, reason, callbacks_elsewhere=callbacks_elsewhere)

    def info(self, run_id: str) -> object:
        return self.runs.info(run_id)


@linux_only
def test_a_ring_is_seen_once_and_a_ring_after_the_look_at_the_next_look() -> None:
    token = secrets.token_hex(16)
    bell = open_bell(token)
    assert bell is not None
    owner = this_process()._replace(inbox=token)
    try:
        assert not bell.rung()
        ring(owner)
        assert bell.rung()
        assert not bell.rung()  # cleared by the look that saw it
        ring(owner)  # a request that arrives after that look (its reader already read the table)...
        ring(owner)
        assert bell.rung()  # ...is seen at the next one: never lost
        assert not bell.rung()
        ring(owner._replace(host="another-host"))  # never across hosts
        assert not bell.rung()
    finally:
        bell.remove()
    assert not bell.path.exists()
    ring(owner)  # no bell any more: nothing happens, nothing raises


@linux_only
def test_a_cross_process_cancel_lands_on_a_cpu_bound_stream_from_its_own_thread(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The watcher cannot answer here (no datagram is sent and its looks are turned off): only the run's thread can.
    monkeypatch.setattr(type(WATCHER), "_round", lambda self: 0.05)  # the watcher looks nowhere
    step = FlatOut()
    handle = Workflow("flat-out", steps=[Step("stream", executor=step)], store=store).run(background=True)
    assert step.reached.wait(10)
    assert store._local_runs is not None
    noted = ThreadOfCancel(store._local_runs)
    store.bind_local_runs(noted)
    request = ask_as_another_process(store.path, handle.run_id, "from elsewhere")
    owner = store.owner(handle.run_id)
    assert owner is not None and owner.inbox
    ring(owner)
    assert handle.wait(10)
    assert noted.threads == [step.thread]
    assert answer(store.path, request) == "accepted"
    info = store.get_run(handle.run_id)
    assert info is not None
    assert (info.status, info.cause, info.reason) == (RunStatus.cancelled, CancelCause.requested, "from elsewhere")
    check_run_events(store.events(handle.run_id))


def _ringing(
    store: SqliteStore, tokens: int, rang: threading.Event | None = None
) -> Callable[[StepInput], Iterator[str]]:
    """A step streaming ``tokens`` tokens that rings its own run's bell after the 101st (then sets ``rang``)."""

    def stream(step_input: StepInput) -> Iterator[str]:
        for count in range(tokens):
            yield f"t{count} "
            if count == 100:
                owner = store.owner(get_context().run_id)
                assert owner is not None
                ring(owner)
                if rang is not None:
                    rang.set()

    return stream


@linux_only
def test_a_ring_without_a_request_is_only_a_look(store: SqliteStore) -> None:
    rang = threading.Event()

    workflow = Workflow("rung", steps=[Step("stream", executor=_ringing(store, 5000, rang))], store=store)
    streamed = list(workflow.run(stream=True))
    assert rang.is_set()
    assert streamed[-1].event == "workflow_completed"
    assert check_run_events(store.events(streamed[0].run_id)) == streamed


def test_interleaved_branch_tokens_keep_their_own_step(store: SqliteStore) -> None:
    """Regression: a stretch of tokens took its step fields from its first token, so a sibling's were misfiled."""
    turns = {"a": threading.Event(), "b": threading.Event()}

    def branch(name: str, other: str) -> Step:
        def stream(step_input: StepInput) -> Iterator[str]:
            for count in range(20):
                if name == "b" or count:
                    assert get_context().wait(turns[name], timeout=10)
                    turns[name].clear()
                yield f"{name}{count} "
                turns[other].set()  # runs once the token is handed over: the sibling's comes next

        return Step(name, executor=stream)

    workflow = Workflow("branches", steps=[Parallel(branch("a", "b"), branch("b", "a"), name="both")], store=store)
    streamed = list(workflow.run(stream=True))
    steps = [event.step_name for event in streamed if event.event == "run_content"]
    assert steps[:4] == ["a", "b", "a", "b"]  # they did interleave
    assert check_run_events(store.events(streamed[0].run_id)) == streamed


def test_a_run_that_outruns_the_writer_stays_within_its_buffer(store: SqliteStore) -> None:
    """With ``max_buffered_events`` below the size that wakes the writer, the run waits for the writer there."""
    store.max_buffered_events = 500
    seen: list[int] = []

    def stream(step_input: StepInput) -> Iterator[str]:
        for count in range(20_000):
            yield f"t{count} "
            if count % 100 == 0:
                seen.append(store.buffered_events())

    workflow = Workflow("bounded", steps=[Step("stream", executor=stream)], store=store)
    streamed = list(workflow.run(stream=True))
    assert max(seen) <= 500 + 64  # one checkpoint's worth past the bound, at most
    assert check_run_events(store.events(streamed[0].run_id)) == streamed


@linux_only
def test_a_bell_left_by_a_killed_process_is_removed_by_the_next_one() -> None:
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    dead = int(exited.stdout)
    left = Path(f"/dev/shm/threadflow-cancel-{dead}-{secrets.token_hex(16)}")
    left.write_bytes(b"\0")
    mine = Path(f"/dev/shm/threadflow-cancel-{os.getpid()}-{secrets.token_hex(16)}")  # alive: kept
    mine.write_bytes(b"\0")
    bell = open_bell(secrets.token_hex(16))
    try:
        assert bell is not None
        assert not left.exists()
        assert mine.exists()
    finally:
        mine.unlink()
        left.unlink(missing_ok=True)
        if bell is not None:
            bell.remove()


@linux_only
def test_a_failing_look_from_the_run_thread_is_logged_and_the_run_goes_on(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail() -> None:
        raise StoreError("the file is locked")

    monkeypatch.setattr(store, "_answer_pending", fail)

    failing = Workflow("failing", steps=[Step("stream", executor=_ringing(store, 500))], store=store)
    streamed = list(failing.run(stream=True))
    assert streamed[-1].event == "workflow_completed"
    assert "looking for cancel requests" in caplog.text


def test_tokens_appended_with_equal_fields_share_one_row(store: SqliteStore) -> None:
    """Tokens built outside the runner (equal fields, distinct objects) still go into one stretch, one row."""
    info = RunInfo(run_id="by-hand", workflow_id="w", workflow_name="w", status=RunStatus.running, created_at=1.0)
    store.run_created(info)
    events = [
        RunContentEvent(run_id="by-hand", workflow_id="w", workflow_name="w", seq=seq, created_at=float(seq),
                        step_name="s", step_index=0, step_path="/".join(["p", "s"]), content=f"t{seq}")
        for seq in range(1, 101)
    ]  # fmt: skip
    for event in events:
        store.append(event)
    store.flush()
    assert store.events("by-hand") == events
    with sqlite3.connect(store.path) as conn:
        (rows,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
    conn.close()
    assert rows == 1
    store.run_ended(info.model_copy(update={"status": RunStatus.completed, "ended_at": 2.0}))
