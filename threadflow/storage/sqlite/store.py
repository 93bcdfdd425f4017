"""``SqliteStore``: the store's API; its machinery is in the modules beside it."""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...events import BaseEvent, Event, RunContentEvent, StepCompletedEvent
from ...status import RunInfo, RunStatus
from .._text import check_reason, clean_text
from ..base import LocalRuns
from ..errors import StoreError
from ._connection import SharedConnection
from ._layout import RunBuffer, Tokens, decode_chunk
from ._liveness import RunOwner, dead_owner_keys, this_process
from ._nudges import Nudge
from ._queue import QueueSide, cancel_unowned
from ._remote_cancel import WATCHER, Answers, request_cancel
from ._rows import SELECT_NEWEST, SELECT_RUNS, end_run, info_of, insert_run, record_abandoned
from ._schema import ACTIVE, ACTIVE_SQL, OWNER_COLUMNS
from ._writer import Op, WriteQueue

__all__ = ["SqliteStore"]

logger = logging.getLogger("threadflow")

#: Tokens between a streaming run's checkpoints (``SqliteStore._checkpoint``): about 50 µs of a flat-out stream.
_CHECK_EVERY = 64


class SqliteStore(QueueSide):
    """Run records, full event logs and cross-process cancels in the SQLite file ``path``.

    ``create=False`` opens an existing history only (``StoreError`` if there is
    none) — what read-only tools want. ``readonly=True`` never writes to the
    file (reads work on a read-only file system; starting a run or asking for
    a cancel raises ``StoreError``); an existing history that cannot be
    written is opened read-only by itself. The file is opened and checked at
    once, so a bad path fails here. Safe to share between threads; any number
    of processes may open the same file. ``close()`` (or ``with``) flushes and
    releases it; nothing touches the file after that unless the store is used
    again, which opens it again. A store that is dropped without ``close()``
    releases its thread and connections by itself.
    """

    records_events = True
    #: Seconds between commits of buffered events while runs stream.
    flush_interval: float = 0.02
    #: Seconds without anything to write after which the writer thread exits (the next write starts another).
    writer_idle_timeout: float = 1.0
    #: Tries at writing a run's start when the file is busy or locked, before ``StoreError``; and at its end
    #: before the end is kept to be written later (see ``last_error``).
    write_attempts: int = 3
    #: Seconds between the cancel watcher's looks for requests from other processes...
    watch_interval: float = 0.002
    #: ...and where requesters wake it at once (Linux: see ``_nudges.py``), the fallback poll.
    nudged_watch_interval: float = 0.05
    #: Events a run may hold in memory unwritten: a run that outruns the disk waits for the writer; one whose
    #: writes keep failing past this many stops being recorded (its end still is).
    max_buffered_events: int = 100_000
    #: Tokens one run may pile up before its thread wakes the writer ahead of ``flush_interval``.
    _WAKE_AT = 32_768

    def __init__(
        self, path: str | os.PathLike[str], *, create: bool = True, timeout: float = 10.0, readonly: bool = False
    ) -> None:
        self.path = Path(os.fspath(path))
        self._timeout = timeout
        self._shared = SharedConnection(self.path, create=create and not readonly, timeout=timeout, readonly=readonly)
        self._writes = WriteQueue(self, self.path, timeout)
        self._buffers = self._writes.buffers  # read by append() on the hot path
        self._answers = Answers()
        self._local_runs: LocalRuns | None = None
        self._queued: set[str] = set()  # the queued runs this process runs (``adopt``)
        # Runs still active when close() was called: nothing more of theirs is written (see close()).
        self._cut: set[str] = set()
        self._unwritten: dict[str, RunInfo] = {}  # ...and the ends of theirs dropped: this process answers with them
        # Dropped without close(): wake the writer (it sees the store gone and exits), close the connection.
        finalizer = weakref.finalize(self, _release, self._writes.wake, self._shared)
        finalizer.atexit = False  # at exit, daemon threads may still be using them
        self._shared.open()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def readonly(self) -> bool:
        """Whether the file is opened read-only (asked for, or found unwritable)."""
        return self._shared.readonly

    @property
    def last_error(self) -> StoreError | None:
        """Why the latest write failed, while writes are failing; None once one succeeds."""
        return self._writes.last_error

    def bind_local_runs(self, runs: LocalRuns) -> None:
        """Lend the store this process's runs, to cancel them as other processes ask (the core calls it)."""
        self._local_runs = runs

    # -- the runner's side ----------------------------------------------------

    def run_created(self, info: RunInfo) -> None:
        """Write the new run's record (this process as its owner) before it can emit anything.

        ``DuplicateRunError`` if the id belongs to a run still active in
        another live process; ``StoreError`` if it cannot be written.
        """
        if self.readonly:
            raise StoreError(f"{self.path}: the run history is opened read-only")
        self._unwritten.pop(info.run_id, None)  # a new run with that id: the file's record is the newer
        buffer = RunBuffer(info.run_id)
        with self._writes.lock:  # registered first: the writer flushes on a timer while runs are active
            self._buffers[info.run_id] = buffer
        try:
            inbox = WATCHER.watch(self)  # before the record, which names the watcher's inbox
            insert = functools.partial(insert_run, info=info, inbox=inbox)
            self._writes.submit(Op(insert, buffer, drain=False, creates=True), attempts=self.write_attempts)
        except BaseException:
            self._writes.forget(info.run_id, buffer)
            raise

    def append(self, event: BaseEvent) -> None:
        """Buffer one event of an active run for the writer thread; never touches the disk."""
        fields = event.__dict__  # read as a dict: a model's attributes cost twice as much, per token
        buffer = self._buffers.get(fields["run_id"])
        if buffer is None:
            return
        if type(event) is RunContentEvent:  # inlined: this is most of the events of a stream
            tokens = buffer.tokens
            if tokens is None or tokens.path is not fields["step_path"]:
                tokens = buffer.open_tokens(event)
            tokens.times.append(fields["created_at"])
            contents = tokens.contents
            contents.append(fields["content"])
            if len(contents) >= tokens.check_at:  # one compare per token; the rest every _CHECK_EVERY tokens
                self._checkpoint(buffer, tokens)
        else:
            buffer.add_line(event)
            if type(event) is StepCompletedEvent and event.run_id in self._queued and not _is_json(event.content):
                self._mark_unresumable(buffer, event.step_name)
            self._look_for_cancels()

    def _checkpoint(self, buffer: RunBuffer, tokens: Tokens) -> None:
        """A streaming run's thread looks up: wakes the writer once its tokens pile up, answers cancel requests.

        Every ``_CHECK_EVERY`` tokens, not on each one: the writer is woken by
        size only past ``_WAKE_AT`` tokens (else by its timer), once per
        checkpoint, and the doorbell costs one read of shared memory.
        """
        buffered = len(tokens.contents)
        tokens.check_at = buffered + _CHECK_EVERY
        if buffered >= self._WAKE_AT or buffered >= self.max_buffered_events:
            self._writes.backpressure(buffer, tokens)
        self._look_for_cancels()

    def _look_for_cancels(self) -> None:
        """Answer other processes' cancel requests from the run's own thread, if the doorbell rang (see ``_bell.py``).

        A run streaming flat out holds the GIL; the watcher thread would wait a
        switch interval for it at each step of its answer. Here the answer
        costs none: the request is read, the run cancelled (exactly as the
        watcher would, ``on_cancel`` callbacks elsewhere) and the answer
        written, before the run's next event.
        """
        bell = WATCHER.bell
        if bell is not None and bell.rung():
            # The bell is the process's, not this store's: a request for a run of another store rang it too,
            # and this look cleared it for them all.
            # A failing look is logged, never the run's problem: the watcher's nudge and poll still answer.
            for store in [self, *(other for other in WATCHER.stores() if other is not self)]:
                WATCHER.look(store)

    def run_ended(self, info: RunInfo) -> None:
        """Write the final record; on return it and every event before it are committed.

        Unless the store cannot take it (``write_attempts`` tries on a locked
        or full file): the run's outcome is not the store's to change, so the
        end is then kept and written once the store can take it again, this
        process's reads answer with it meanwhile, ``last_error`` says why, and
        ``flush()`` raises ``StoreError`` until it is written.
        """
        if self._cut and info.run_id in self._cut:
            self._drop_end(info)
            return
        buffer = self._buffers.get(info.run_id) or RunBuffer(info.run_id)
        end = functools.partial(end_run, info=info)
        try:
            self._writes.submit(Op(end, buffer, drain=True), attempts=self.write_attempts)
        except StoreError:
            self._writes.owe(info.run_id, end, buffer, info)
        finally:
            self._writes.forget(info.run_id, buffer)
            self._answers.wait(info.run_id, self._timeout)

    @property
    def identity(self) -> str:
        """What ``RunInfo.owner`` says of the runs this process records here: ``"host:pid"``."""
        me = this_process()
        return f"{me.host}:{me.pid}"

    def flush(self) -> None:
        """Return once every event appended so far, and every end owed, is committed (``StoreError`` if not)."""
        if self._writes.has_work():
            self._writes.submit(Op(None, None, drain=False))
            if self._writes.owed:
                raise self.last_error or StoreError(f"{self.path}: runs' ends are still to be written")

    def close(self) -> None:
        """Flush, stop the writer thread and close the connections: the file is not touched after. Idempotent.

        A run still active on the store goes on (its outcome is its own), but
        nothing more of it is written: its later events and its end are
        dropped, with one warning (logger ``threadflow``) when it ends; its
        record in the file stays as it was at ``close()`` (a reader judges it
        by its owner, like any run whose end was never written). Runs started
        on the store after ``close()`` open the file again.

        ``StoreError`` if something could not be written (a run's end left
        unwritten is then recorded as abandoned by a reader once this process
        has exited).
        """
        WATCHER.forget(self)
        try:
            self.flush()
        except StoreError:
            for run_id in self._writes.owed:
                logger.error("threadflow: %s: closed before the end of run %s could be recorded", self.path, run_id)
            raise
        finally:
            self._cut_active_runs()
            self._writes.stop()
            self._shared.close()

    def _cut_active_runs(self) -> None:
        """Stop recording the runs still active: ``append`` finds no buffer, ``run_ended`` drops the end."""
        with self._writes.lock:
            self._cut.update(self._buffers)
            self._buffers.clear()

    def _drop_end(self, info: RunInfo) -> None:
        self._cut.discard(info.run_id)
        self._unwritten[info.run_id] = info
        self._queued.discard(info.run_id)
        logger.warning(
            "threadflow: %s: run %s ended %s after the store was closed: its end and its events since the close "
            "were not written (the record in the file stays as it was at close)",
            self.path,
            info.run_id,
            RunStatus(info.status).value,
        )

    def buffered_events(self) -> int:
        """Events this process's runs have handed the store that are not yet written (nor dropped)."""
        with self._writes.lock:
            buffers = [*self._buffers.values(), *(end.buffer for end in self._writes.owed.values())]
        return sum(buffer.buffered_events() for buffer in buffers)

    # -- reading --------------------------------------------------------------

    def get_run(self, run_id: str) -> RunInfo | None:
        """The run's latest record (the newest run with this id), or None; an owner that died is recorded first."""
        if not isinstance(run_id, str):
            return None
        run_id = clean_text(run_id)
        owed = self._writes.owed_info(run_id) or self._unwritten.get(run_id)
        if owed is not None:
            return owed  # ended here, not written (yet): never shown here as still running
        rows = self._shared.read(SELECT_NEWEST, (run_id,))
        if not rows:
            return None
        if rows[0][3] in ACTIVE and self._record_abandoned([run_id]):
            rows = self._shared.read(SELECT_NEWEST, (run_id,))
        return info_of(rows[0])

    def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        workflow_id: str | None = None,
        limit: int | None = None,
        workflow: str | None = None,
    ) -> Sequence[RunInfo]:
        """Records, newest first, filtered by status and workflow; ``workflow`` matches an id or a name."""
        _check_limit(limit, none_ok=True)
        self._record_abandoned(None)
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(RunStatus(status).value)
        if workflow_id is not None:
            where.append("workflow_id = ?")
            params.append(clean_text(workflow_id))
        if workflow is not None:
            where.append("(workflow_id = ? OR workflow_name = ?)")
            params += [clean_text(workflow)] * 2
        sql = SELECT_RUNS + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, run_key DESC LIMIT ?"
        infos = [info_of(row) for row in self._shared.read(sql, [*params, -1 if limit is None else limit])]
        return [self._writes.owed_info(info.run_id) or self._unwritten.get(info.run_id) or info for info in infos]

    def run_ids_with_prefix(self, prefix: str, *, limit: int = 2) -> list[str]:
        """Up to ``limit`` distinct run ids that start with ``prefix``, newest first (as git takes a short hash)."""
        _check_limit(limit, none_ok=False)
        prefix = clean_text(prefix)
        rows = self._shared.read(
            "SELECT run_id FROM runs WHERE run_id >= ? AND substr(run_id, 1, ?) = ?"
            " GROUP BY run_id ORDER BY MAX(created_at) DESC, MAX(run_key) DESC LIMIT ?",
            (prefix, len(prefix), prefix, limit),
        )
        return [run_id for (run_id,) in rows]

    def events(self, run_id: str, after_seq: int = 0) -> Sequence[Event]:
        """The committed events with ``seq > after_seq`` of the newest run with this id, in order.

        Events still buffered by this process's writer are not included: ``flush()`` first for those.
        """
        rows = self._shared.read(
            "SELECT first_seq, data, header, times FROM events"
            " WHERE run_key = (SELECT MAX(run_key) FROM runs WHERE run_id = ?) AND last_seq > ? ORDER BY first_seq",
            (clean_text(run_id), after_seq),
        )
        return [event for row in rows for event in decode_chunk(*row) if event.seq > after_seq]

    def owner(self, run_id: str) -> RunOwner | None:
        """The process that created the newest run with this id, or None for an unknown run."""
        rows = self._shared.read(
            f"SELECT {OWNER_COLUMNS} FROM runs WHERE run_id = ? ORDER BY run_key DESC LIMIT 1", (clean_text(run_id),)
        )
        return RunOwner(*rows[0]) if rows else None

    def _record_abandoned(self, run_ids: list[str] | None) -> bool:
        """Record as ended the unfinished runs (of ``run_ids``, or all) whose owner is gone; True if any.

        A read-only store judges nobody: it cannot write what it would find.
        """
        if self.readonly:
            return False
        # A queued run whose worker died is not abandoned: another worker resumes it (``_queue.py``).
        sql = f"SELECT run_key, {OWNER_COLUMNS} FROM runs WHERE status IN ({ACTIVE_SQL}) AND NOT queued"
        rows = self._shared.read(sql) if run_ids is None else self._shared.read(sql + " AND run_id = ?", run_ids)
        dead = dead_owner_keys(rows)
        for key in dead:
            self._shared.transact(functools.partial(record_abandoned, key=key))
        return bool(dead)

    # -- cancel from another process -------------------------------------------

    def request_cancel(self, run_id: str, reason: str | None = None, *, timeout: float = 5.0) -> bool | None:
        """Ask the process that owns ``run_id`` to cancel it, and wait up to ``timeout`` seconds for its answer.

        ``True``: the owner accepted (the run will end ``cancelled``); ``False``:
        unknown id, a run that has ended, or an owner that has died (the run
        is then recorded as abandoned); ``None``: no answer within ``timeout``
        (an owner on another host that is not watching, or a hung process) —
        the request is withdrawn, though an owner may have acted on it just
        before. ``TypeError`` for a non-str reason; ``StoreError`` on a
        read-only store. A lone surrogate in the reason is sent (and
        recorded) as ``?``.
        """
        check_reason(reason)
        if isinstance(run_id, str) and not self.readonly:
            cancel = functools.partial(cancel_unowned, run_id=clean_text(run_id), reason=reason)
            if self._shared.transact(cancel):
                return True  # a queued run nobody runs: ended here
        return request_cancel(self, run_id, reason, timeout)

    # the cancel watcher's side (``_remote_cancel.py``)

    def _has_active(self) -> bool:
        return bool(self._buffers)

    def _takes(self, request: Nudge) -> bool:
        """Whether a nudged request is about an active run of this process in this store."""
        return request.run_id in self._buffers

    def _answer(self, request: Nudge) -> None:
        self._answers.answer(self, request)

    def _answer_pending(self) -> None:
        self._answers.answer_pending(self)


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _check_limit(limit: Any, *, none_ok: bool) -> None:
    if limit is None and none_ok:
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative int{' or None' if none_ok else ''}, not {limit!r}")


def _release(wake: threading.Event, shared: SharedConnection) -> None:
    """A store was collected without ``close()``: its writer exits when woken; close its connection."""
    wake.set()
    shared.close_now()
