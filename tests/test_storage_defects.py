"""Regressions for the storage defects of issue 8 (#11 disk full, #12 a closed store reopening itself,
#13 a read-only history); each failed before its fix."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from threadflow import RunStatus, StepInput, Workflow
from threadflow.events import WorkflowCompletedEvent
from threadflow.storage import SqliteStore, StoreError
from threadflow.storage.sqlite import _writer
from threadflow.testing import check_run_events, wait_until

pytestmark = pytest.mark.usefixtures("no_leaked_runs")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


def within(predicate: Any, seconds: float = 10.0) -> None:
    assert wait_until(predicate, timeout=seconds), f"still false after {seconds}s"


def stored_status(db: Path, run_id: str) -> str:
    """The status on disk, read by a connection of its own."""
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0])
    finally:
        conn.close()


def streaming(*chunks: str) -> Any:
    def stream(step_input: StepInput) -> Iterator[str]:
        yield from chunks

    return stream


# -- #11: a full disk ------------------------------------------------------------------


class FullDisk:
    """The store's writer sees a disk that is full until ``free()``: its connection may not grow the file.

    SQLite's ``max_page_count`` caps the file at the pages it has when the
    writer opens it, which fails inserts with SQLITE_FULL exactly as a full
    disk does; ``free()`` lifts the cap.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.conns: list[sqlite3.Connection] = []
        opener = _writer.open_history

        def open_full(*args: Any, **kwargs: Any) -> tuple[sqlite3.Connection, bool]:
            conn, readonly = opener(*args, **kwargs)
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            conn.execute(f"PRAGMA max_page_count = {pages + 1}")
            self.conns.append(conn)
            return conn, readonly

        monkeypatch.setattr(_writer, "open_history", open_full)

    def free(self) -> None:
        for conn in self.conns:
            conn.execute("PRAGMA max_page_count = 1000000000")


def test_a_full_disk_keeps_memory_bounded_and_the_run_outcome_unchanged(
    db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    SqliteStore(db).close()  # the schema exists before the disk is full
    disk = FullDisk(monkeypatch)
    with SqliteStore(db) as store:
        store.max_buffered_events = 1_000
        store.write_attempts = 1
        buffered: list[int] = []

        def many_tokens(step_input: StepInput) -> Iterator[str]:
            for i in range(60_000):
                yield f"token {i} {'x' * 40} "
                if i % 500 == 0:
                    buffered.append(store.buffered_events())

        output = Workflow("full", steps=[many_tokens], store=store).run(run_id="full")
        assert output.status is RunStatus.completed  # the run's own outcome is unchanged
        # bounded: the bound, plus a stretch the run's thread appends before it looks (8,192), never all 60,000
        assert max(buffered) <= store.max_buffered_events + 8_192 + 1
        assert "its later events are not recorded" in caplog.text  # surfaced at once, not at the run's end
        info = store.get_run("full")
        assert info is not None and info.status is RunStatus.completed  # never shown as running
        disk.free()
        store.flush()
        assert stored_status(db, "full") == "completed" and store.buffered_events() == 0


def test_a_run_end_the_full_disk_refuses_is_recorded_once_space_is_freed(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    SqliteStore(db).close()
    disk = FullDisk(monkeypatch)
    with SqliteStore(db) as store:
        store.write_attempts = 1
        chunks = [f"t{i} {'y' * 60}" for i in range(300)]
        output = Workflow("full", steps=[streaming(*chunks)], store=store).run(run_id="fits")
        assert output.status is RunStatus.completed  # run() is not failed by the store
        assert isinstance(store.last_error, StoreError) and "full" in str(store.last_error)
        info = store.get_run("fits")
        assert info is not None and info.status is RunStatus.completed  # this process never shows it running
        assert stored_status(db, "fits") in ("pending", "running")  # not completed with its events missing
        with pytest.raises(StoreError, match="full"):
            store.flush()  # surfaced on the store's next call
        disk.free()
        store.flush()  # the store can take it again: the end and every event are written
        assert stored_status(db, "fits") == "completed" and store.last_error is None
        assert len(check_run_events(store.events("fits"))) == 300 + 6


# -- #12: a closed store reopening itself ------------------------------------------------


def threads_started_since(before: set[threading.Thread]) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread not in before]


def test_a_closed_store_never_touches_its_file_again(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    closed, other = SqliteStore(tmp_path / "closed.db"), SqliteStore(tmp_path / "other.db")
    try:
        for store in (closed, other):
            store.nudged_watch_interval = store.watch_interval = 0.5  # the watcher's looks come well after close()
            store.writer_idle_timeout = 0.01
        parked, release = threading.Event(), threading.Event()

        def park(step_input: StepInput) -> str:
            parked.set()
            release.wait(30)
            return "done"

        handle = Workflow("keeps-the-watcher", steps=[park], store=other).run(background=True)
        assert parked.wait(10)
        Workflow("closed", steps=[streaming("x")], store=closed).run()
        closed.close()
        for name in ("closed.db", "closed.db-wal", "closed.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        release.set()
        assert handle.wait(10)
        within(lambda: not threads_started_since(before))  # the watcher (and every writer) has finished
        assert not (tmp_path / "closed.db").exists()
    finally:
        other.close()


# -- #13: a read-only history ------------------------------------------------------------


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def history(db: Path) -> str:
    """A closed WAL history with one finished run; its id."""
    with SqliteStore(db) as store:
        run_id = Workflow("kept", steps=[streaming("a ", "b")], store=store).run().run_id
    assert not Path(f"{db}-shm").exists()  # the last connection closed removes it
    return run_id


@pytest.mark.parametrize("create", [False, True])
def test_a_wal_history_whose_index_cannot_be_created_is_read(db: Path, history: str, create: bool) -> None:
    # A read-only file system: SQLite can create neither the -wal nor the -shm beside the file. Tests run as
    # root, whom chmod does not stop; links to a directory that does not exist fail their creation the same way.
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").symlink_to(db.parent / "no-such-directory" / suffix)
    before = digest(db)
    with SqliteStore(db, create=create) as store:
        assert store.readonly
        info = store.get_run(history)
        assert info is not None and info.status is RunStatus.completed
        assert [run.run_id for run in store.list_runs()] == [history]
        assert isinstance(check_run_events(store.events(history))[-1], WorkflowCompletedEvent)
    assert digest(db) == before


def test_a_read_only_store_reads_and_refuses_writes(db: Path, history: str) -> None:
    conn = sqlite3.connect(db)  # a run active in a process on another host
    conn.execute(
        "INSERT INTO runs (run_id, workflow_id, workflow_name, status, created_at, owner_host, owner_pid, owner_start)"
        " VALUES ('remote', 'w', 'w', 'running', 1.0, 'a-host-far-away', 4242, '')"
    )
    conn.commit()
    conn.close()
    before = digest(db)
    with SqliteStore(db, readonly=True) as store:
        assert store.readonly and [run.run_id for run in store.list_runs()] == [history, "remote"]
        assert store.run_ids_with_prefix(history[:4], limit=2) == [history]
        with pytest.raises(StoreError, match="read-only"):
            Workflow("refused", steps=[streaming("x")], store=store).run()
        assert store.request_cancel(history) is False  # ended: answered without writing
        with pytest.raises(StoreError, match="read-only"):
            store.request_cancel("remote")  # would write a request
    assert digest(db) == before


def test_a_missing_file_is_not_created_read_only(db: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        SqliteStore(db, readonly=True)
    assert not db.exists()
