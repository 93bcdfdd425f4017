"""``SqliteStore`` beyond the shared contract: exact round trips, durability, bad files,
abandoned runs, the cancel watcher and concurrency (SPEC §5, §6; issue 4)."""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import threadflow
from threadflow import CancelCause, DuplicateRunError, RunInfo, RunStatus, Step, StepInput, Workflow, get_context
from threadflow.events import (
    RunContentEvent,
    StepCompletedEvent,
    WorkflowCompletedEvent,
    WorkflowErrorEvent,
    WorkflowStartedEvent,
)
from threadflow.storage import SqliteStore, StoreError
from threadflow.storage._process import (
    Nudge,
    RunOwner,
    nudge,
    open_inbox,
    owner_alive,
    start_identity,
    this_process,
    wait_for_nudge,
)
from threadflow.storage.sqlite import _WATCHER, OWNER_EXITED, SCHEMA_VERSION
from threadflow.testing import check_run_events, wait_until

pytestmark = pytest.mark.usefixtures("no_leaked_runs")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteStore]:
    with SqliteStore(db) as opened:
        yield opened


def within(predicate: Any, seconds: float = 10.0) -> None:
    """Assert that ``predicate()`` becomes true within ``seconds``."""
    assert wait_until(predicate, timeout=seconds), f"still false after {seconds}s"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def streaming(*chunks: str) -> Step:
    def stream(step_input: StepInput) -> Iterator[str]:
        yield from chunks

    return Step("stream", executor=stream)


def returning(value: Any, name: str = "result") -> Step:
    return Step(name, executor=lambda step_input: value)


class Parked:
    """A step that parks until released (or cancelled), for tests that need a run in flight."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, step_input: StepInput) -> Iterator[str]:
        yield "before "
        self.reached.set()
        get_context().wait(self.release, timeout=30)
        yield "after"


# -- the event log ----------------------------------------------------------------


def test_every_event_reads_back_exactly(store: SqliteStore) -> None:
    odd_tokens = ["plain ", "ünïcödé ", "emoji 🧵 ", 'quo"te\\ ', "new\nline\t", "\u2028sep\x00nul", "", "\x7f"]
    value = {"n": 2**70, "pi": 3.141592653589793, "none": None, "list": [1, "two", 3.0], "nested": {"k": [True]}}
    workflow = Workflow("odd", steps=[streaming(*odd_tokens), returning(value)], store=store)
    streamed = list(workflow.run(stream=True))
    stored = store.events(streamed[0].run_id)
    assert stored == streamed
    assert [event.content for event in stored if isinstance(event, RunContentEvent)] == odd_tokens
    assert isinstance(stored[-1], WorkflowCompletedEvent) and stored[-1].content == value


def test_a_lone_surrogate_is_kept_in_tokens_and_replaced_in_other_text(store: SqliteStore) -> None:
    workflow = Workflow("surrogate", steps=[streaming("ok ", "bad \ud800 token", " ok")], store=store)
    streamed = list(workflow.run(stream=True))
    stored = check_run_events(store.events(streamed[0].run_id))
    tokens = [event for event in stored if isinstance(event, RunContentEvent)]
    assert tokens == [event for event in streamed if isinstance(event, RunContentEvent)]
    assert stored[-1].content == "ok bad ? token ok"  # type: ignore[attr-defined]  # JSON text cannot hold it


def test_content_that_is_not_json_is_stored_as_text_and_the_run_is_unaffected(store: SqliteStore) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "<an opaque result>"

    result = Opaque()
    output = Workflow("opaque", steps=[returning(result, "opaque")], store=store).run()
    assert output.status is RunStatus.completed and output.content is result
    stored = store.events(output.run_id)
    check_run_events(stored)
    completed = [event for event in stored if isinstance(event, (StepCompletedEvent, WorkflowCompletedEvent))]
    assert [event.content for event in completed] == ["<an opaque result>", "<an opaque result>"]


def test_a_long_stream_is_stored_completely(store: SqliteStore) -> None:
    chunks = [f"t{i} " for i in range(30_000)]
    workflow = Workflow("long", steps=[streaming(*chunks)], store=store)
    streamed = list(workflow.run(stream=True))
    stored = check_run_events(store.events(streamed[0].run_id))
    assert len(stored) == len(streamed) == 30_006
    assert stored == streamed


def test_concurrent_runs_in_threads_each_keep_their_own_log(store: SqliteStore) -> None:
    workflow = Workflow("many", steps=[streaming(*[f"{i} " for i in range(2_000)])], store=store, max_concurrent_runs=8)
    handles = [workflow.run(background=True) for _ in range(8)]
    for handle in handles:
        assert handle.wait(30)
        assert store.events(handle.run_id) == list(handle.events())


# -- durability --------------------------------------------------------------------


def read_back(db: Path, run_id: str) -> tuple[RunInfo | None, list[Any]]:
    """What another process would see: a fresh connection through a second store."""
    with SqliteStore(db, create=False) as other:
        return other.get_run(run_id), list(other.events(run_id))


def test_the_end_of_a_run_is_on_disk_when_run_returns(store: SqliteStore, db: Path) -> None:
    output = Workflow("durable", steps=[streaming("a", "b")], store=store).run()
    info, events = read_back(db, output.run_id)
    assert info is not None and info.status is RunStatus.completed
    assert isinstance(events[-1], WorkflowCompletedEvent)


def test_the_end_of_a_run_is_on_disk_when_its_stream_ends(store: SqliteStore, db: Path) -> None:
    stream = Workflow("durable", steps=[streaming("a", "b", "c")], store=store).run(stream=True)
    for event in stream:
        if isinstance(event, RunContentEvent):
            break  # the consumer leaving: recorded as cancelled before close() returns
    stream.close()
    info, events = read_back(db, stream.run_id)
    assert info is not None and (info.status, info.cause) == (RunStatus.cancelled, CancelCause.stream_closed)
    check_run_events(events)


def test_the_end_of_a_background_run_is_on_disk_when_wait_returns(store: SqliteStore, db: Path) -> None:
    handle = Workflow("durable", steps=[streaming("a", "b")], store=store).run(background=True)
    assert handle.wait(10)
    info, events = read_back(db, handle.run_id)
    assert info is not None and info.status is RunStatus.completed
    assert events == list(handle.events())


def test_an_active_run_shows_its_progress(store: SqliteStore, db: Path) -> None:
    parked = Parked()
    workflow = Workflow("progress", steps=[returning(1, "first"), Step("parked", executor=parked)], store=store)
    handle = workflow.run(background=True)
    assert parked.reached.wait(10)
    store.flush()
    info, events = read_back(db, handle.run_id)
    assert info is not None and (info.status, info.step_name) == (RunStatus.running, "parked")
    assert info.started_at is not None
    assert [event.event.value for event in events][-2:] == ["run_started", "run_content"]
    parked.release.set()
    assert handle.wait(10)


def test_the_file_is_wal_with_a_schema_version(store: SqliteStore, db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    finally:
        conn.close()


def test_a_finished_run_id_can_be_reused(store: SqliteStore) -> None:
    workflow = Workflow("again", steps=[streaming("one")], store=store)
    workflow.run(run_id="same")
    second = Workflow("again", steps=[streaming("two", "three")], store=store)
    second.run(run_id="same")
    contents = [event.content for event in store.events("same") if isinstance(event, RunContentEvent)]
    assert contents == ["two", "three"]
    assert [info.run_id for info in store.list_runs()] == ["same"]


def test_close_is_idempotent_and_the_store_can_be_used_again(store: SqliteStore) -> None:
    store.close()
    store.close()
    output = Workflow("after close", steps=[streaming("x")], store=store).run()
    assert store.get_run(output.run_id) is not None


def test_threadflow_db_enables_the_store(monkeypatch: pytest.MonkeyPatch, db: Path) -> None:
    monkeypatch.setenv("THREADFLOW_DB", str(db))
    workflow = Workflow("from env", steps=[streaming("x")])
    assert isinstance(workflow.store, SqliteStore)
    run_id = workflow.run().run_id
    info, events = read_back(db, run_id)
    assert info is not None and info.status is RunStatus.completed
    check_run_events(events)


# -- bad files ---------------------------------------------------------------------


def test_a_missing_file_is_an_error_and_is_not_created(db: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        SqliteStore(db, create=False)
    assert not db.exists()


def test_a_file_that_is_not_a_database_is_refused_unchanged(db: Path) -> None:
    db.write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    before = digest(db)
    for create in (True, False):
        with pytest.raises(StoreError, match="not a threadflow run history"):
            SqliteStore(db, create=create)
    assert digest(db) == before


def test_another_programs_database_is_refused_unchanged(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    before = digest(db)
    with pytest.raises(StoreError, match="no threadflow tables"):
        SqliteStore(db)
    assert digest(db) == before


def test_a_newer_schema_is_refused_unchanged(db: Path) -> None:
    SqliteStore(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    before = digest(db)
    with pytest.raises(StoreError, match="newer threadflow"):
        SqliteStore(db)
    assert digest(db) == before


# -- owners --------------------------------------------------------------------------


def test_owner_liveness() -> None:
    me = this_process()
    assert me.pid == os.getpid() and me.host == socket.gethostname()
    assert owner_alive(me)
    assert owner_alive(RunOwner("another-host", 1, "whatever"))  # never judged
    if not sys.platform.startswith("linux"):
        pytest.skip("start identities come from /proc")
    assert not owner_alive(me._replace(start="another-boot:1"))  # this pid, but an earlier process


def test_an_exited_owner_is_dead_even_before_it_is_collected() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("start identities come from /proc")
    with subprocess.Popen([sys.executable, "-c", "input()"], stdin=subprocess.PIPE) as child:
        try:
            owner = RunOwner(socket.gethostname(), child.pid, start_identity(child.pid) or "")
            assert owner.start and owner_alive(owner)
            child.kill()
            within(lambda: start_identity(child.pid) is None)  # a zombie until it is wait()ed for
            assert not owner_alive(owner)
        finally:
            child.kill()


# -- nudges ---------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nudges use Linux abstract sockets")
def test_a_nudge_carries_the_request_and_garbage_is_ignored() -> None:
    within(lambda: not _WATCHER.running)  # it would own this process's inbox (it stops once runs have ended)
    inbox = open_inbox()
    assert inbox is not None
    try:
        request = Nudge(7, "run-1", "a reason")
        nudge(this_process(), request)
        assert wait_for_nudge(inbox, 5.0) == request
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"not json", inbox.getsockname())
            sender.sendto(b'["7", 8, 9]', inbox.getsockname())
        assert wait_for_nudge(inbox, 5.0) is None
        assert wait_for_nudge(inbox, 5.0) is None
        assert wait_for_nudge(inbox, 0.01) is None  # nothing left: the timeout
        nudge(RunOwner("another-host", os.getpid(), this_process().start), request)  # not sent across hosts
        assert wait_for_nudge(inbox, 0.01) is None
    finally:
        inbox.close()


def test_a_nudge_about_a_run_that_is_not_ours_changes_nothing(store: SqliteStore, db: Path) -> None:
    parked = Parked()
    handle = Workflow("watched", steps=[Step("parked", executor=parked)], store=store).run(background=True)
    assert parked.reached.wait(10)
    nudge(this_process(), Nudge(12345, "not-a-run-here", "wrong run"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"garbage", f"\0threadflow-cancel-{os.getpid()}-{this_process().start}")
    request = ask_as_another_process(db, handle.run_id, "the real one")
    assert handle.wait(10)
    info = store.get_run(handle.run_id)
    assert info is not None and (info.status, info.reason) == (RunStatus.cancelled, "the real one")
    within(lambda: answer(db, request) == "accepted")


# -- abandoned runs --------------------------------------------------------------------

_EXITS_MID_RUN = textwrap.dedent(
    """
    import os, sys
    from threadflow import Workflow, get_context
    from threadflow.storage import SqliteStore

    def endless(step_input):
        for i in range(10**9):
            yield f"{i} "
            get_context().sleep(0.001)

    store = SqliteStore(sys.argv[1])
    stream = Workflow("abandoned", steps=[endless], store=store).run(stream=True)
    if sys.argv[2] == "started":
        while next(stream).seq < 6:  # next(), not a for loop: leaving a for loop would cancel the run
            pass
        store.flush()
    print(stream.run_id, flush=True)
    os._exit(0)  # the process ends without ending its run
    """
)


@pytest.mark.parametrize("when", ["started", "pending"])
def test_a_run_whose_owner_exited_is_recorded_as_ended(store: SqliteStore, db: Path, when: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _EXITS_MID_RUN, str(db), when], capture_output=True, text=True, timeout=30, check=True
    )
    run_id = child.stdout.strip()
    info = store.get_run(run_id)
    assert info is not None
    assert (info.status, info.error, info.ended_at is not None) == (RunStatus.error, OWNER_EXITED, True)
    events = check_run_events(store.events(run_id))
    assert isinstance(events[-1], WorkflowErrorEvent) and events[-1].error == OWNER_EXITED
    assert len(events) == (7 if when == "started" else 2)
    assert store.get_run(run_id) == info  # recorded once; reading again changes nothing


@pytest.mark.stress
def test_two_readers_record_an_abandoned_run_once(db: Path) -> None:
    for _ in range(5):
        child = subprocess.run(
            [sys.executable, "-c", _EXITS_MID_RUN, str(db), "pending"], capture_output=True, text=True, check=True
        )
        run_id = child.stdout.strip()
        readers = [SqliteStore(db), SqliteStore(db)]
        barrier = threading.Barrier(len(readers))
        threads = [threading.Thread(target=read_together, args=(reader, barrier)) for reader in readers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        events = readers[0].events(run_id)
        for reader in readers:
            reader.close()
        assert [type(event) for event in events] == [WorkflowStartedEvent, WorkflowErrorEvent]


def read_together(reader: SqliteStore, barrier: threading.Barrier) -> None:
    barrier.wait()
    reader.list_runs()


def test_a_run_id_active_in_another_live_process_is_a_duplicate(store: SqliteStore, db: Path) -> None:
    parent = RunOwner(socket.gethostname(), os.getppid(), start_identity(os.getppid()) or "")
    insert_foreign_run(db, "taken", parent, status="running")
    with pytest.raises(DuplicateRunError):
        Workflow("dup", steps=[streaming("x")], store=store).run(run_id="taken")
    assert threadflow.get_run("taken") is not None  # the other process's record is untouched
    assert store.events("taken") == []


def insert_foreign_run(db: Path, run_id: str, owner: RunOwner, *, status: str) -> None:
    """A run record as another process would have written it."""
    conn = sqlite3.connect(db)
    conn.execute(
        "INSERT INTO runs (run_id, workflow_id, workflow_name, status, created_at, owner_host, owner_pid, owner_start)"
        " VALUES (?, 'foreign', 'foreign', ?, 1.0, ?, ?, ?)",
        (run_id, status, *owner),
    )
    conn.commit()
    conn.close()


# -- cancel requests ----------------------------------------------------------------------


def ask_as_another_process(db: Path, run_id: str, reason: str | None) -> int:
    """Write a cancel request addressed to this process, as ``threadflow runs cancel`` in another one would."""
    me = this_process()
    conn = sqlite3.connect(db)
    cursor = conn.execute(
        "INSERT INTO cancel_requests (run_id, reason, owner_host, owner_pid, owner_start, state, requested_at)"
        " VALUES (?, ?, ?, ?, ?, 'pending', 0)",
        (run_id, reason, me.host, me.pid, me.start),
    )
    conn.commit()
    conn.close()
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def answer(db: Path, request_id: int) -> str:
    conn = sqlite3.connect(db)
    try:
        (state,) = conn.execute("SELECT state FROM cancel_requests WHERE id = ?", (request_id,)).fetchone()
    finally:
        conn.close()
    return str(state)


def test_the_watcher_cancels_a_run_another_process_asked_for(store: SqliteStore, db: Path) -> None:
    parked = Parked()
    handle = Workflow("watched", steps=[Step("parked", executor=parked)], store=store).run(background=True)
    assert parked.reached.wait(10)
    request = ask_as_another_process(db, handle.run_id, "stop it from elsewhere")
    assert handle.wait(10)
    assert answer(db, request) == "accepted"
    info = store.get_run(handle.run_id)
    assert info is not None
    assert (info.status, info.cause, info.reason) == (
        RunStatus.cancelled,
        CancelCause.requested,
        "stop it from elsewhere",
    )


def test_the_watcher_refuses_a_run_that_has_ended(store: SqliteStore, db: Path) -> None:
    ended = Workflow("done", steps=[streaming("x")], store=store).run().run_id
    parked = Parked()  # keeps the watcher running
    handle = Workflow("watched", steps=[Step("parked", executor=parked)], store=store).run(background=True)
    assert parked.reached.wait(10)
    request = ask_as_another_process(db, ended, None)
    within(lambda: answer(db, request) == "refused")
    parked.release.set()
    assert handle.wait(10)


def test_the_watcher_runs_only_while_there_are_active_runs(store: SqliteStore) -> None:
    parked = Parked()
    handle = Workflow("watched", steps=[Step("parked", executor=parked)], store=store).run(background=True)
    assert parked.reached.wait(10)
    assert _WATCHER.running
    parked.release.set()
    assert handle.wait(10)
    within(lambda: not _WATCHER.running)


def test_an_owner_that_never_answers_gets_none_and_the_request_is_withdrawn(store: SqliteStore, db: Path) -> None:
    insert_foreign_run(db, "remote", RunOwner("a-host-far-away", 4242, ""), status="running")
    assert store.request_cancel("remote", "hello?", timeout=0.05) is None
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT state FROM cancel_requests WHERE run_id = 'remote'").fetchall() == [("expired",)]
    conn.close()
