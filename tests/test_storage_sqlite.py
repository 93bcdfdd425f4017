"""``SqliteStore`` beyond the shared contract: exact round trips, durability, bad files,
abandoned runs, the cancel watcher and concurrency (SPEC §5, §6; issue 4)."""

from __future__ import annotations

import ast
import gc
import hashlib
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import weakref
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
from threadflow.storage.sqlite import OWNER_EXITED, SCHEMA_VERSION, RunOwner
from threadflow.storage.sqlite._layout import decode_chunk
from threadflow.storage.sqlite._liveness import owner_alive, start_identity, this_process
from threadflow.storage.sqlite._nudges import Nudge, _inbox_address, nudge, open_inbox, wait_for_nudge
from threadflow.storage.sqlite._remote_cancel import WATCHER
from threadflow.storage.sqlite._rows import record_abandoned
from threadflow.storage.sqlite._schema import transaction
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


def inbox_address(owner: RunOwner) -> str:
    """Where the owner's cancel watcher listens (Linux)."""
    return _inbox_address(owner.pid, owner.inbox)


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


def test_a_finished_run_id_can_be_reused_and_the_earlier_run_is_kept(store: SqliteStore, db: Path) -> None:
    def fail(step_input: StepInput) -> str:
        raise RuntimeError("monday's failure")

    with pytest.raises(threadflow.WorkflowError):
        Workflow("a", steps=[fail], store=store).run(run_id="nightly")
    first_events = store.events("nightly")
    second = Workflow("b", steps=[streaming("two", "three")], store=store).run(run_id="nightly")
    info = store.get_run("nightly")  # the newest run with that id answers lookups
    assert info is not None and (info.workflow_id, info.status) == ("b", RunStatus.completed)
    contents = [event.content for event in store.events("nightly") if isinstance(event, RunContentEvent)]
    assert contents == ["two", "three"]
    assert [(run.run_id, run.workflow_id, run.status) for run in store.list_runs()] == [
        ("nightly", "b", RunStatus.completed),
        ("nightly", "a", RunStatus.error),
    ]
    conn = sqlite3.connect(db)  # the earlier run's whole log is still in the file
    try:
        keys = [key for (key,) in conn.execute("SELECT run_key FROM runs WHERE run_id = 'nightly' ORDER BY run_key")]
        rows = conn.execute("SELECT first_seq, data, header, times FROM events WHERE run_key = ?", (keys[0],))
        assert [event for row in rows for event in decode_chunk(*row)] == first_events
    finally:
        conn.close()
    assert len(first_events) == 3 and second.status is RunStatus.completed


def test_close_is_idempotent_and_the_store_can_be_used_again(store: SqliteStore) -> None:
    store.close()
    store.close()
    output = Workflow("after close", steps=[streaming("x")], store=store).run()
    info = store.get_run(output.run_id)
    assert info is not None and info.status is RunStatus.completed
    assert len(check_run_events(store.events(output.run_id))) == 7  # written to the reopened file, not just kept


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
            owner = this_process()._replace(pid=child.pid, start=start_identity(child.pid) or "")
            assert owner.start and owner_alive(owner)
            child.kill()
            within(lambda: start_identity(child.pid) is None)  # a zombie until it is wait()ed for
            assert not owner_alive(owner)
        finally:
            child.kill()


# -- nudges ---------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nudges use Linux abstract sockets")
def test_a_nudge_carries_the_request_and_garbage_is_ignored() -> None:
    assert WATCHER.wait_stopped(10)  # it would own this process's inbox (it stops once runs have ended)
    opened = open_inbox()
    assert opened is not None
    inbox, token = opened
    me = this_process()._replace(inbox=token)
    try:
        request = Nudge(7, "run-1", "a reason")
        nudge(me, request)
        assert wait_for_nudge(inbox, 5.0) == request
        garbage = [
            b"not json",
            b'["7", 8, 9]',
            b"1",
            b"[1, 2]",
            b'{"a": 1}',
            b"\xff\xfe",
            b"[" * 50_000,
            b"[true, 1, null]",  # a bool is not a request id
        ]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            for datagram in garbage:
                sender.sendto(datagram, inbox.getsockname())
        assert [wait_for_nudge(inbox, 5.0) for _ in garbage] == [None] * len(garbage)
        assert wait_for_nudge(inbox, 0.01) is None  # nothing left: the timeout
        nudge(me._replace(host="another-host"), request)  # not sent across hosts
        nudge(me._replace(inbox=""), request)  # nor to an owner that records no inbox
        assert wait_for_nudge(inbox, 0.01) is None
    finally:
        inbox.close()


def test_a_nudge_about_a_run_that_is_not_ours_changes_nothing(store: SqliteStore, db: Path) -> None:
    parked = Parked()
    handle = Workflow("watched", steps=[Step("parked", executor=parked)], store=store).run(background=True)
    assert parked.reached.wait(10)
    owner = store.owner(handle.run_id)
    assert owner is not None
    nudge(owner, Nudge(12345, "not-a-run-here", "wrong run"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"garbage", inbox_address(owner))
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
    parent = this_process()._replace(pid=os.getppid(), start=start_identity(os.getppid()) or "")
    insert_foreign_run(db, "taken", parent, status="running")
    with pytest.raises(DuplicateRunError):
        Workflow("dup", steps=[streaming("x")], store=store).run(run_id="taken")
    assert threadflow.get_run("taken") is not None  # the other process's record is untouched
    assert store.events("taken") == []


def insert_foreign_run(db: Path, run_id: str, owner: RunOwner, *, status: str) -> None:
    """A run record as another process would have written it."""
    conn = sqlite3.connect(db)
    conn.execute(
        "INSERT INTO runs (run_id, workflow_id, workflow_name, status, created_at,"
        " owner_host, owner_pid, owner_start, owner_ns, owner_inbox)"
        " VALUES (?, 'foreign', 'foreign', ?, 1.0, ?, ?, ?, ?, ?)",
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
        "INSERT INTO cancel_requests"
        " (run_id, reason, owner_host, owner_pid, owner_start, owner_ns, state, requested_at)"
        " VALUES (?, ?, ?, ?, ?, ?, 'pending', 0)",
        (run_id, reason, me.host, me.pid, me.start, me.ns),
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


class RefusingRuns:
    """A ``LocalRuns`` that refuses every cancel and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []

    def cancel(self, run_id: str, reason: str | None, *, callbacks_elsewhere: bool = False) -> bool:
        self.asked.append((run_id, reason))
        return False

    def info(self, run_id: str) -> RunInfo | None:
        return None


def test_the_store_acts_on_local_runs_only_through_what_it_was_lent(store: SqliteStore, db: Path) -> None:
    parked = Parked()
    handle = Workflow("lent", steps=[Step("parked", executor=parked)], store=store).run(background=True)
    assert parked.reached.wait(10)
    lent = RefusingRuns()
    store.bind_local_runs(lent)  # the store must not reach past it to the registry
    assert store.request_cancel(handle.run_id, "in this process") is False
    request = ask_as_another_process(db, handle.run_id, "from elsewhere")
    within(lambda: answer(db, request) == "refused")
    assert lent.asked == [(handle.run_id, "in this process"), (handle.run_id, "from elsewhere")]
    parked.release.set()
    assert handle.wait(10) and handle.result().status is RunStatus.completed


def test_the_sqlite_store_does_not_import_the_core_registry() -> None:
    package = Path(threadflow.__file__).parent / "storage" / "sqlite"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            assert not any("registry" in name for name in names), f"{path.name} reaches into the core"


def test_the_watcher_refuses_a_run_that_has_ended(store: SqliteStore, db: Path) -> None:
    ended = Workflow("done", steps=[streaming("x")], store=store).run().run_id
    parked = Parked()  # keeps the watcher running
    handle = Workflow("watched", steps=[Step("parked", executor=parked)], store=store).run(background=True)
    assert parked.reached.wait(10)
    request = ask_as_another_process(db, ended, None)
    within(lambda: answer(db, request) == "refused")
    parked.release.set()
    assert handle.wait(10)


def listening(owner: RunOwner) -> bool:
    """Whether a cancel watcher receives at the owner's inbox (a datagram it ignores: not a request)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.sendto(b"ping", inbox_address(owner))
        except OSError:  # ConnectionRefusedError: nobody is bound there
            return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nudges use Linux abstract sockets")
def test_the_watcher_listens_only_while_there_are_active_runs(store: SqliteStore) -> None:
    parked = Parked()
    handle = Workflow("watched", steps=[Step("parked", executor=parked)], store=store).run(background=True)
    assert parked.reached.wait(10)
    owner = store.owner(handle.run_id)
    assert owner is not None and listening(owner)
    parked.release.set()
    assert handle.wait(10)
    within(lambda: not listening(owner))  # its runs have ended: the inbox is closed, nobody can read it


def test_an_owner_that_never_answers_gets_none_and_the_request_is_withdrawn(store: SqliteStore, db: Path) -> None:
    insert_foreign_run(db, "remote", RunOwner("a-host-far-away", 4242, ""), status="running")
    assert store.request_cancel("remote", "hello?", timeout=0.05) is None
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT state FROM cancel_requests WHERE run_id = 'remote'").fetchall() == [("expired",)]
    conn.close()


# -- regressions from the review of the store (each failed before its fix) ---------------


def set_schema_version(db: Path, version: int | str) -> None:
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    conn.commit()
    conn.close()


def run_in_thread(work: Any, seconds: float = 10.0) -> dict[str, Any]:
    """Call ``work()`` in a daemon thread; its result or exception, asserting it ends within ``seconds``."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["result"] = work()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds}s"
    return outcome


def test_a_writer_that_cannot_open_the_file_fails_the_run_instead_of_hanging(db: Path) -> None:
    store = SqliteStore(db)  # not closed if the test fails: close() would hang the same way
    set_schema_version(db, SCHEMA_VERSION + 1)  # another process upgraded the file after this store opened it
    workflow = Workflow("hang", steps=[returning("ok")], store=store)
    outcome = run_in_thread(workflow.run)
    assert isinstance(outcome.get("error"), StoreError) and "newer threadflow" in str(outcome["error"])
    set_schema_version(db, SCHEMA_VERSION)
    output = run_in_thread(workflow.run)["result"]  # the writer recovers once the file is usable again
    assert output.status is RunStatus.completed
    check_run_events(store.events(output.run_id))
    store.close()


def locked(db: Path) -> sqlite3.Connection:
    """Another connection holding the file's write lock (until it rolls back)."""
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_a_write_that_fails_on_a_locked_file_loses_no_events(db: Path) -> None:
    with SqliteStore(db, timeout=0.05) as store:
        failures: list[Exception] = []

        def tokens(step_input: StepInput) -> Iterator[str]:
            yield from (f"a{i} " for i in range(10))
            holder = locked(db)
            try:
                store.flush()  # its batch takes the buffered events, then fails on the lock
            except StoreError as error:
                failures.append(error)
            finally:
                holder.rollback()
                holder.close()
            yield from (f"b{i} " for i in range(10))

        streamed = list(Workflow("locked", steps=[tokens], store=store).run(stream=True))
        assert failures and "locked" in str(failures[0])
        stored = check_run_events(store.events(streamed[0].run_id))
        assert stored == streamed


class Signal(logging.Handler):
    """Sets ``seen`` when a ``threadflow`` log record contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


@pytest.fixture
def write_failures() -> Iterator[Signal]:
    signal = Signal("could not write")
    logger = logging.getLogger("threadflow")
    logger.addHandler(signal)
    try:
        yield signal
    finally:
        logger.removeHandler(signal)


def test_the_end_of_a_run_is_retried_when_the_file_is_locked(db: Path, write_failures: Signal) -> None:
    with SqliteStore(db, timeout=0.05) as store:

        def release_after_a_failed_write(holder: sqlite3.Connection) -> None:
            write_failures.seen.wait(10)
            holder.rollback()
            holder.close()

        def ends_while_locked(step_input: StepInput) -> Iterator[str]:
            yield "before the lock "
            store.flush()
            threading.Thread(target=release_after_a_failed_write, args=(locked(db),), daemon=True).start()
            yield "locked "  # the run ends while the file is locked: its end is written once it is free

        output = Workflow("retried", steps=[ends_while_locked], store=store).run()
        assert write_failures.seen.is_set()
        info = store.get_run(output.run_id)
        assert info is not None and info.status is RunStatus.completed
        assert len(check_run_events(store.events(output.run_id))) == 8


def stored_status(db: Path, run_id: str) -> str:
    """The status on disk, read by a connection of its own (not this process's store)."""
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0])
    finally:
        conn.close()


def ends_while_locked(store: SqliteStore, db: Path, holders: list[sqlite3.Connection]) -> Step:
    def tokens(step_input: StepInput) -> Iterator[str]:
        yield "token "
        store.flush()
        holders.append(locked(db))
        yield "written later "

    return Step("locked", executor=tokens)


def test_a_run_whose_end_cannot_be_written_keeps_its_outcome_and_is_recorded_later(db: Path) -> None:
    with SqliteStore(db, timeout=0.02) as store:
        store.write_attempts = 2
        holders: list[sqlite3.Connection] = []
        output = Workflow("stuck", steps=[ends_while_locked(store, db, holders)], store=store).run(run_id="stuck")
        assert output.status is RunStatus.completed  # the run's outcome is not the store's to change
        assert isinstance(store.last_error, StoreError) and "locked" in str(store.last_error)
        info = store.get_run("stuck")
        assert info is not None and info.status is RunStatus.completed  # this process never shows it running
        assert [run.status for run in store.list_runs()] == [RunStatus.completed]
        assert stored_status(db, "stuck") == "running"  # on disk: not completed with events missing
        with pytest.raises(StoreError, match="locked"):
            store.flush()  # the failure is surfaced on the store's next flush
        holders[0].rollback()
        holders[0].close()
        store.flush()  # the store can take it again: the end is written
        assert stored_status(db, "stuck") == "completed" and store.last_error is None
        assert len(check_run_events(store.events("stuck"))) == 8


def test_an_end_still_unwritten_at_close_is_closed_as_an_error_when_its_id_is_reused(db: Path) -> None:
    store = SqliteStore(db, timeout=0.02)
    store.write_attempts = 1
    holders: list[sqlite3.Connection] = []
    Workflow("stuck", steps=[ends_while_locked(store, db, holders)], store=store).run(run_id="stuck")
    with pytest.raises(StoreError, match="locked"):
        store.close()
    holders[0].rollback()
    holders[0].close()
    with SqliteStore(db) as reopened:
        assert stored_status(db, "stuck") == "running"  # this process is alive: its run is not judged abandoned
        Workflow("stuck", steps=[streaming("again")], store=reopened).run(run_id="stuck")
        earlier = [run for run in reopened.list_runs() if run.status is RunStatus.error]
        assert [(run.run_id, run.error_type) for run in earlier] == [("stuck", "RunEndNotRecorded")]


def test_owners_in_another_pid_namespace_are_never_judged() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("pid namespaces are Linux's")
    me = this_process()
    assert me.ns  # this process's pid namespace is recorded with its runs
    gone = exited_pid()
    assert not owner_alive(me._replace(pid=gone, start="boot:1"))
    assert owner_alive(me._replace(pid=gone, start="boot:1", ns="another-namespace"))  # its pid means nothing here
    assert owner_alive(me._replace(pid=gone, start="boot:1", ns=""))  # not known: presumed alive


def exited_pid() -> int:
    """The pid of a process that has exited and been collected."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(child.stdout)


def test_an_owner_hidden_from_proc_is_asked_about_with_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("/proc is Linux's")
    from threadflow.storage.sqlite import _liveness

    me = this_process()
    parent = me._replace(pid=os.getppid(), start=start_identity(os.getppid()) or "")
    monkeypatch.setattr(_liveness, "_stat", lambda pid: ("missing", ""))  # /proc mounted with hidepid=2
    assert owner_alive(parent)  # os.kill(pid, 0) says it exists
    assert not owner_alive(me._replace(pid=exited_pid()))  # ProcessLookupError: really gone

    def not_permitted(pid: int, sig: int) -> None:
        raise PermissionError("another user's process")

    monkeypatch.setattr(_liveness.os, "kill", not_permitted)
    assert owner_alive(me._replace(pid=exited_pid()))  # exists, owned by another user


def test_a_run_recorded_as_abandoned_keeps_one_end_even_if_its_owner_carries_on(
    store: SqliteStore, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parked = Parked()
    handle = Workflow("misjudged", steps=[Step("parked", executor=parked)], store=store).run(background=True)
    assert parked.reached.wait(10)
    store.flush()
    conn = sqlite3.connect(db, isolation_level=None)  # a reader elsewhere that wrongly judged this process gone
    try:
        (key,) = conn.execute("SELECT run_key FROM runs WHERE run_id = ?", (handle.run_id,)).fetchone()
        with transaction(conn):
            record_abandoned(conn, key=key)
    finally:
        conn.close()
    parked.release.set()
    assert handle.wait(10)
    assert handle.result().status is RunStatus.completed  # the run itself is unaffected
    events = check_run_events(store.events(handle.run_id))  # one terminal event, no gap: the recorded end stands
    assert isinstance(events[-1], WorkflowErrorEvent) and events[-1].error == OWNER_EXITED
    info = store.get_run(handle.run_id)
    assert info is not None and (info.status, info.error) == (RunStatus.error, OWNER_EXITED)
    assert "had already ended" in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nudges use Linux abstract sockets")
@pytest.mark.parametrize("datagram", [b"1", b"[1]", b"null", b'{"run": 1}', b"[" * 50_000, b"\xff", b"[1, 2, 3, 4]"])
def test_wait_for_nudge_ignores_a_malformed_datagram(datagram: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as inbox:
        inbox.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        inbox.bind(f"\0threadflow-test-{os.getpid()}-{threading.get_ident()}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(datagram, inbox.getsockname())
        assert wait_for_nudge(inbox, 5.0) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nudges use Linux abstract sockets")
def test_malformed_datagrams_do_not_stop_the_cancel_watcher(store: SqliteStore, db: Path) -> None:
    parked = Parked()
    handle = Workflow("watched", steps=[Step("parked", executor=parked)], store=store).run(background=True)
    assert parked.reached.wait(10)
    owner = store.owner(handle.run_id)
    assert owner is not None and owner.inbox
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        for datagram in (b"1", b"[1]", b"null", b'{"run": 1}', b"[" * 50_000, b"\xff"):
            sender.sendto(datagram, inbox_address(owner))
    request = ask_as_another_process(db, handle.run_id, "after the garbage")
    nudge(owner, Nudge(request, handle.run_id, "after the garbage"))
    assert handle.wait(10)
    assert answer(db, request) == "accepted"
    info = store.get_run(handle.run_id)
    assert info is not None and (info.status, info.reason) == (RunStatus.cancelled, "after the garbage")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nudges use Linux abstract sockets")
def test_nobody_can_bind_the_cancel_inbox_first_and_read_requests(store: SqliteStore, db: Path) -> None:
    assert WATCHER.wait_stopped(10)  # the next run starts a watcher, which binds a new inbox
    me = this_process()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as squatter:
        squatter.bind(f"\0threadflow-cancel-{me.pid}-{me.start}")  # where the inbox used to be: pid and start time
        squatter.setblocking(False)
        parked = Parked()
        handle = Workflow("private", steps=[Step("parked", executor=parked)], store=store).run(background=True)
        assert parked.reached.wait(10)
        owner = store.owner(handle.run_id)
        assert owner is not None and len(owner.inbox) >= 32  # a random token, recorded only in the database
        cancel = subprocess.run(
            [
                sys.executable,
                "-m",
                "threadflow",
                "--db",
                str(db),
                "runs",
                "cancel",
                handle.run_id,
                "--reason",
                "secret",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert cancel.returncode == 0, cancel.stderr
        assert handle.wait(10)
        with pytest.raises(BlockingIOError):
            squatter.recv(65536)  # it heard nothing


def test_lone_surrogates_in_text_are_stored_as_question_marks(store: SqliteStore) -> None:
    def fails(step_input: StepInput) -> str:
        raise OSError(os.fsdecode(b"cannot open \xff"))

    with pytest.raises(threadflow.WorkflowError):  # not a StoreError: recording the end worked
        Workflow("fails", steps=[fails], store=store).run(run_id="bad-\udcfe-id")
    info = store.get_run("bad-\udcfe-id")
    assert info is not None and (info.run_id, info.status, info.error) == ("bad-?-id", RunStatus.error, "cannot open ?")
    assert check_run_events(store.events("bad-\udcfe-id"))[-1].error == "cannot open ?"  # type: ignore[attr-defined]

    parked = Parked()
    workflow = Workflow("cancelled", steps=[Step("park\udcffed", executor=parked)], store=store)
    handle = workflow.run(background=True)
    assert parked.reached.wait(10)
    assert workflow.cancel_run(handle.run_id, reason=os.fsdecode(b"stop \xfe"))
    assert handle.wait(10) and handle.result().status is RunStatus.cancelled
    info = store.get_run(handle.run_id)
    assert info is not None and (info.status, info.reason, info.step_name) == (RunStatus.cancelled, "stop ?", "park?ed")
    events = check_run_events(store.events(handle.run_id))
    assert events[-1].reason == "stop ?"  # type: ignore[attr-defined]


def test_request_cancel_with_a_lone_surrogate_in_the_reason(store: SqliteStore, db: Path) -> None:
    insert_foreign_run(db, "remote", RunOwner("a-host-far-away", 4242, ""), status="running")
    assert store.request_cancel("remote", "stop \udcff", timeout=0.01) is None
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT reason FROM cancel_requests").fetchall() == [("stop ?",)]
    finally:
        conn.close()


def threads_started_since(before: set[threading.Thread]) -> list[threading.Thread]:
    """The threads alive now that were not before: what the code under test started and still runs."""
    return [thread for thread in threading.enumerate() if thread not in before]


def open_files(db: Path) -> list[str]:
    """This process's file descriptors on ``db`` (and its -wal and -shm files)."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    return [link for link in links if link.startswith(str(db))]


def test_a_dropped_store_releases_its_thread_and_connections(db: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("counts open files through /proc")
    before = set(threading.enumerate())
    stores = [SqliteStore(db) for _ in range(3)]
    for store in stores:
        Workflow("dropped", steps=[streaming("x")], store=store).run()
    threads = threads_started_since(before)
    assert len(threads) >= 3 and open_files(db)  # a writer per store (and the cancel watcher, while it runs)
    refs = [weakref.ref(store) for store in stores]
    del stores, store

    def all_released() -> bool:
        gc.collect()
        return all(ref() is None for ref in refs) and not any(thread.is_alive() for thread in threads)

    within(all_released, seconds=5)
    within(lambda: not open_files(db), seconds=5)


def test_an_idle_writer_exits_and_the_store_still_works(store: SqliteStore) -> None:
    before = set(threading.enumerate())
    store.writer_idle_timeout = 0.01
    Workflow("idle", steps=[streaming("one")], store=store).run()
    assert threads_started_since(before)
    within(lambda: not threads_started_since(before), seconds=5)  # no thread left behind while idle
    output = Workflow("idle", steps=[streaming("two")], store=store).run()
    assert store.get_run(output.run_id) is not None
    assert len(check_run_events(store.events(output.run_id))) == 7


def test_a_file_holding_only_a_view_is_refused_unchanged(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE VIEW v AS SELECT 1 AS one")  # another program's database, with no table
    conn.commit()
    conn.close()
    before = digest(db)
    with pytest.raises(StoreError, match="no threadflow tables"):
        SqliteStore(db)
    assert digest(db) == before


def test_an_empty_file_gets_the_schema(db: Path) -> None:
    db.write_bytes(b"")
    with SqliteStore(db) as store:
        assert Workflow("empty", steps=[streaming("x")], store=store).run().status is RunStatus.completed


@pytest.mark.parametrize("version", ["0", "-1", "1.5"])
def test_an_unknown_schema_version_is_refused_unchanged(db: Path, version: str) -> None:
    SqliteStore(db).close()
    set_schema_version(db, version)
    before = digest(db)
    with pytest.raises(StoreError, match="not a threadflow run history"):
        SqliteStore(db)
    assert digest(db) == before


_SCHEMA_V1 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE runs (run_key INTEGER PRIMARY KEY, run_id TEXT NOT NULL UNIQUE, workflow_id TEXT NOT NULL,"
    " workflow_name TEXT NOT NULL, status TEXT NOT NULL, cause TEXT, reason TEXT, step_name TEXT, error TEXT,"
    " error_type TEXT, created_at REAL NOT NULL, started_at REAL, ended_at REAL, owner_host TEXT NOT NULL,"
    " owner_pid INTEGER NOT NULL, owner_start TEXT NOT NULL)",
    "CREATE INDEX runs_by_created ON runs (created_at)",
    "CREATE INDEX runs_by_status ON runs (status, created_at)",
    "CREATE INDEX runs_by_workflow ON runs (workflow_id, created_at)",
    "CREATE TABLE events (run_key INTEGER NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,"
    " data TEXT NOT NULL, header TEXT, times BLOB, PRIMARY KEY (run_key, first_seq))",
    "CREATE TABLE cancel_requests (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, reason TEXT,"
    " owner_host TEXT NOT NULL, owner_pid INTEGER NOT NULL, owner_start TEXT NOT NULL, state TEXT NOT NULL,"
    " requested_at REAL NOT NULL, answered_at REAL)",
    "CREATE INDEX cancel_requests_pending ON cancel_requests (owner_pid) WHERE state = 'pending'",
    "INSERT INTO meta VALUES ('schema_version', '1')",
)


def test_a_version_1_file_is_migrated_and_keeps_its_runs(db: Path) -> None:
    conn = sqlite3.connect(db)
    for statement in _SCHEMA_V1:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO runs (run_id, workflow_id, workflow_name, status, created_at, owner_host, owner_pid, owner_start)"
        " VALUES ('old', 'w', 'w', 'completed', 1.0, 'a-host', 1, '')"
    )
    started = WorkflowStartedEvent(run_id="old", workflow_id="w", workflow_name="w", seq=1, created_at=1.0)
    conn.execute(
        "INSERT INTO events (run_key, first_seq, last_seq, data) VALUES (1, 1, 1, ?)", (started.model_dump_json(),)
    )
    conn.commit()
    conn.close()
    with SqliteStore(db, create=False) as store:
        info = store.get_run("old")
        assert info is not None and info.status is RunStatus.completed
        assert store.events("old") == [started]
        output = Workflow("w", steps=[streaming("new")], store=store).run(run_id="old")  # ids may be reused now
        assert [run.run_id for run in store.list_runs()] == ["old", "old"]
        check_run_events(store.events("old"))
        assert store.events("old")[-1].run_id == output.run_id
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    finally:
        conn.close()


def test_a_blocking_on_cancel_callback_does_not_stall_the_watcher_for_other_runs(store: SqliteStore, db: Path) -> None:
    """A slow or raising callback may delay only its own run: the watcher answers every run's requests."""
    release, entered = threading.Event(), threading.Event()

    def stuck(step_input: StepInput) -> None:
        ctx = get_context()
        ctx.on_cancel(lambda: (entered.set(), release.wait(30)))
        release.wait(30)  # blocked in "foreign" code: only the callback could unblock it

    first = Workflow("stuck callback", steps=[stuck], store=store).run(background=True)
    parked = Parked()
    second = Workflow("other", steps=[Step("parked", executor=parked)], store=store).run(background=True)
    assert parked.reached.wait(10)
    try:
        for handle in (first, second):  # from another process, through the store and its watcher
            cancel = subprocess.run(
                [sys.executable, "-m", "threadflow", "--db", str(db), "runs", "cancel", handle.run_id],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert cancel.returncode == 0, cancel.stderr
        assert entered.is_set()
        assert second.wait(10), "the second run's cancel waited for the first run's blocked callback"
        assert second.status is RunStatus.cancelled
    finally:
        release.set()
        assert first.wait(10)
