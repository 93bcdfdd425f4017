"""The writer: one thread per store that turns its runs' buffers and its callers' ops into batched writes.

``append`` is on the runner's hot path, so it only adds the event to the
run's in-memory buffer (``_layout.py``). The writer thread empties the
buffers every ``flush_interval`` seconds (sooner when one is long) and writes
each run's stretch of events as one row, with as few statements as possible:
the sqlite3 module releases the GIL for every statement, and a thread that
gives up the GIL while another thread streams tokens flat out waits up to the
interpreter's switch interval (5 ms) to get it back. For the same reason a
batch of events commits statement by statement instead of in one
transaction: the write lock is then held only while a statement runs, never
while this process waits for the GIL, so writers in other processes are not
held up. A run's start and end go through the same writer (in one
transaction with the events before them) and their callers wait until their
batch has committed, so a run's record exists before its first event, and its
terminal event and final status are on disk before ``run()`` returns or its
stream ends. A run buffers at most ``max_buffered_events`` tokens; a run that
outruns the disk waits for the writer. The writer holds only a weak reference
to its store and exits after ``writer_idle_timeout`` seconds without work (or
as soon as its store is collected), so a dropped store leaves no thread or
connection behind; the next write starts a new one.

**When a write fails** (the file locked by another process for longer than
``timeout``, the disk full), the events go back into their run's buffer and
the writer tries again, backing off (up to a second). Memory stays bounded
however long the failure lasts: a run whose unwritten events reach
``max_buffered_events`` stops being recorded — its buffered events are
dropped, and so are its later ones (``events_lost``), a warning says so — so
that neither the run nor the process pays for a disk that cannot take them.
A run's start is tried ``write_attempts`` times, then ``StoreError``. A run's
end that cannot be written is *owed*: it is kept in memory and the writer
keeps trying, so it is written once the store can take it again; until then
this process's own reads answer with it (never ``running`` for a run that
ended). A file that cannot even be opened fails every waiting call with
``StoreError`` at once.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ...exceptions import DuplicateRunError
from ...status import RunInfo
from ..errors import StoreError
from ._layout import Chunk, RunBuffer, Taken, Tokens
from ._rows import insert_events
from ._schema import open_history, transaction

__all__ = ["Op", "WriteQueue"]

logger = logging.getLogger("threadflow")


_Apply = Callable[[sqlite3.Connection, RunBuffer], None]


class Settings(Protocol):
    """The store's tunables, read through a weak reference each time (tests and users change them)."""

    flush_interval: float
    writer_idle_timeout: float
    max_buffered_events: int


class Op:
    """Work a caller waits for: ``apply(conn, buffer)`` in the next batch, after the buffer's events if ``drain``.

    ``creates``: ``apply`` writes the run's record and sets ``buffer.key``, which a failed batch resets.
    """

    __slots__ = ("apply", "buffer", "creates", "done", "drain", "error")

    def __init__(
        self,
        apply: _Apply | None,
        buffer: RunBuffer | None,
        *,
        drain: bool,
        creates: bool = False,
    ) -> None:
        self.apply = apply
        self.buffer = buffer
        self.drain = drain
        self.creates = creates
        self.done = threading.Event()
        self.error: BaseException | None = None

    def again(self) -> Op:
        """A fresh op doing the same, to try again."""
        return Op(self.apply, self.buffer, drain=self.drain, creates=self.creates)

    def fail(self, error: BaseException) -> None:
        """Record that its batch did not commit (unless it failed on its own first)."""
        self.error = self.error or error
        if self.creates and self.buffer is not None:
            self.buffer.key = -1  # that rowid was rolled back: events must not be written under it


class _Owed:
    """A run's end that could not be written yet: its buffer, its final record, and how to write it."""

    __slots__ = ("apply", "buffer", "info")

    def __init__(self, apply: _Apply, buffer: RunBuffer, info: RunInfo) -> None:
        self.apply, self.buffer, self.info = apply, buffer, info


class WriteQueue:
    """A store's pending writes: its active runs' buffers, the ops callers wait for, the ends it owes.

    ``buffers`` is read by the store's ``append`` without a lock (a dict
    lookup is atomic); every other change happens under ``lock``.
    """

    def __init__(self, settings: Settings, path: Path, timeout: float) -> None:
        self.settings = weakref.ref(settings)
        self.path, self.timeout = path, timeout
        self.buffers: dict[str, RunBuffer] = {}  # this process's runs in this store that have not ended
        self.ops: deque[Op] = deque()
        self.owed: dict[str, _Owed] = {}
        self.wake = threading.Event()
        self.drained = threading.Condition()
        # re-entrant: a RunStream collected by the GC ends its run (run_ended) in whatever thread, at any point
        self.lock = threading.RLock()
        self.last_error: StoreError | None = None
        self._writer: _Writer | None = None

    def submit(self, op: Op, *, attempts: int = 1) -> None:
        """Queue ``op`` and wait until its batch has committed; ``StoreError`` (or what it raised) if it did not.

        A batch that failed on the file (``sqlite3.OperationalError``: locked
        for longer than ``timeout``, disk full) is tried again, up to
        ``attempts`` times in all, pausing longer each time.
        """
        for attempt in range(1, max(1, attempts) + 1):
            self.ops.append(op)
            writer = self.ensure_writer()
            self.wake.set()
            if writer.is_current():
                return  # a finaliser run by the writer itself: written with the next batch
            while not op.done.wait(0.5):
                self.ensure_writer()  # the writer thread died (it logs why): start another
            if op.error is None:
                return
            if attempt >= attempts or not isinstance(op.error, sqlite3.OperationalError):
                break
            time.sleep(0.05 * 4 ** (attempt - 1))
            op = op.again()
        raise _as_raised(op.error, self.path)

    def owe(self, run_id: str, apply: _Apply, buffer: RunBuffer, info: RunInfo) -> None:
        """Keep a run's end that could not be written: the writer writes it once it can."""
        with self.lock:
            self.owed[run_id] = _Owed(apply, buffer, info)
        self.ensure_writer()
        self.wake.set()

    def owed_info(self, run_id: str) -> RunInfo | None:
        owed = self.owed.get(run_id)
        return None if owed is None else owed.info

    def ensure_writer(self) -> _Writer:
        with self.lock:
            if self._writer is None or not self._writer.alive:
                self._writer = _Writer(self)
            return self._writer

    def is_writer(self) -> bool:
        writer = self._writer
        return writer is not None and writer.is_current()

    def backpressure(self, buffer: RunBuffer, tokens: Tokens) -> None:
        """Called by a run's thread when its open stretch of tokens is long: wake the writer, wait if too long."""
        if not self.wake.is_set():
            self.wake.set()
        if buffer.events_lost:
            with buffer.lock:
                if buffer.tokens is tokens:
                    buffer.tokens = None  # not recorded any more: let the stretch go
            return
        writer, settings = self._writer, self.settings()
        if writer is None or writer.is_current() or settings is None:
            return
        with self.drained:
            while len(tokens.contents) >= settings.max_buffered_events and writer.alive and not buffer.events_lost:
                self.drained.wait(0.1)

    def forget(self, run_id: str, buffer: RunBuffer) -> None:
        with self.lock:
            if self.buffers.get(run_id) is buffer:
                del self.buffers[run_id]

    def has_work(self) -> bool:
        return bool(self.ops or self.buffers or self.owed)

    def stop(self) -> None:
        with self.lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.stop()


def _as_raised(error: BaseException | None, path: Path) -> BaseException:
    if isinstance(error, DuplicateRunError):
        return error
    if isinstance(error, StoreError):  # one error may fail several callers: each raises its own
        return StoreError(str(error)).with_traceback(None)
    return StoreError(f"{path}: cannot write the run history ({error})")


#: One batch, in order: the ops, and before each op (and at the end) the buffered events to write.
_Plan = list[Taken | Op]


class _Writer:
    """The thread that turns a queue's buffers and ops into batched transactions.

    It holds the queue, but only a weak reference to the store (its
    settings), and exits after ``writer_idle_timeout`` seconds with nothing to
    do, or once the store is collected; the store starts another when needed.
    """

    def __init__(self, queue: WriteQueue) -> None:
        self._queue = queue
        self._stopping = threading.Event()
        self._pause = 0.0  # backing off after failed writes: seconds to the next try, and when that is
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._loop, name="threadflow-store-writer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping.is_set()

    def is_current(self) -> bool:
        return threading.current_thread() is self._thread

    def stop(self) -> None:
        self._stopping.set()
        self._queue.wake.set()
        self._thread.join()

    def _loop(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while self._wait():
                conn = conn or self._connect()
                if conn is not None:
                    self._batch(conn)
        except BaseException:
            logger.exception("threadflow: the run-history writer for %s stopped", self._queue.path)
            raise
        finally:
            self._stopping.set()
            if conn is not None:
                conn.close()

    def _wait(self) -> bool:
        """Wait until a batch is due: True; False when the writer is to exit (stopped, idle, or its store gone)."""
        queue = self._queue
        while True:
            settings = queue.settings()
            if settings is None:
                return False  # collected: nobody can be waiting for it (a waiter holds it)
            busy = queue.buffers or queue.owed
            delay = settings.flush_interval if busy else settings.writer_idle_timeout
            del settings  # not kept alive while waiting
            backing_off = self._retry_at - time.monotonic()
            if backing_off > 0 and not self._stopping.is_set():
                self._stopping.wait(backing_off)  # after a failure (at most a second): wakes do not hurry it
                continue
            if queue.ops:
                return True
            if self._stopping.is_set():
                return False
            woke = queue.wake.wait(delay)
            queue.wake.clear()
            if queue.ops or queue.buffers or queue.owed:
                return True
            if not woke and self._retire():
                return False

    def _retire(self) -> bool:
        """Exit if there is still nothing to do: decided under the lock ``ensure_writer`` takes."""
        with self._queue.lock:
            if self._queue.has_work():
                return False
            self._stopping.set()
            return True

    def _connect(self) -> sqlite3.Connection | None:
        """The writer's own connection; None if it cannot be opened: every op waiting then fails with why.

        Opened before any op is taken, so an op is either written or failed, never dropped.
        """
        queue = self._queue
        waiting = len(queue.ops)
        try:
            return open_history(queue.path, create=True, timeout=queue.timeout)[0]
        except Exception as error:  # noqa: BLE001 — handed to every waiting caller, which re-raises it
            logger.error("threadflow: cannot open %s for writing: %s", queue.path, error)
            for _ in range(waiting):
                op = queue.ops.popleft()
                op.fail(error)
                op.done.set()
            self._back_off()
            return None

    def _batch(self, conn: sqlite3.Connection) -> None:
        queue = self._queue
        ops = [queue.ops.popleft() for _ in range(len(queue.ops))]
        try:
            with queue.lock:
                buffers = list(queue.buffers.values())
                owed = [(run_id, end, _owed_op(end)) for run_id, end in queue.owed.items()]
            self._write(conn, [*(op for _, _, op in owed), *ops], buffers)
            self._settle(owed)
        finally:
            for op in ops:
                op.done.set()  # whatever happened: no caller is left waiting
            with queue.drained:
                queue.drained.notify_all()

    def _settle(self, owed: list[tuple[str, _Owed, Op]]) -> None:
        """Forget the owed ends just written (a failed batch leaves them owed)."""
        written = [(run_id, end) for run_id, end, op in owed if op.error is None and self._pause == 0.0]
        with self._queue.lock:
            for run_id, end in written:
                if self._queue.owed.get(run_id) is end:
                    del self._queue.owed[run_id]
                    logger.warning("threadflow: %s: the end of run %s is recorded at last", self._queue.path, run_id)

    def _write(self, conn: sqlite3.Connection, ops: list[Op], buffers: list[RunBuffer]) -> None:
        """Write a batch: each op after its run's buffered events, then every other run's events.

        With ops (a run starting or ending) it is one transaction. Without —
        most batches of a stream — each statement commits on its own: it holds
        the write lock only while it runs, with the GIL released, so a busy
        stream never makes a writer in another process (a ``runs cancel``)
        wait for this process to get the GIL back between statements. If the
        batch fails, the events go back into their buffers (a statement that
        did commit is written again identically, and ignored; a run over its
        bound drops them) and the writer backs off before the next try.
        """
        taken: list[Taken] = []
        plan: _Plan = []
        try:
            for op in ops:
                if op.drain and op.buffer is not None:
                    plan.append(_take(op.buffer, taken))
                plan.append(op)
            plan += [_take(buffer, taken) for buffer in buffers if buffer.key >= 0]
            if all(isinstance(part, Taken) and part.quiet for part in plan):
                return  # runs are active but nothing new happened
            if ops:
                with transaction(conn):
                    _execute(conn, plan)
            else:
                _execute(conn, plan)
        except Exception as error:  # noqa: BLE001 — put back (within bounds), tried again, handed to the ops
            self._failed(error, taken, ops)
        else:
            self._pause = self._retry_at = 0.0
            self._queue.last_error = None

    def _failed(self, error: Exception, taken: list[Taken], ops: list[Op]) -> None:
        queue, settings = self._queue, self._queue.settings()
        bound = settings.max_buffered_events if settings is not None else 0
        logger.warning("threadflow: could not write to %s (%s); trying again", queue.path, error)
        queue.last_error = StoreError(f"{queue.path}: cannot write the run history ({error})")
        for part in reversed(taken):  # newest first: each goes back in front of the one after it
            part.buffer.put_back(part.rows, part.started_at, part.step_name, bound=bound)
        for op in ops:
            op.fail(error)
        self._back_off()

    def _back_off(self) -> None:
        self._pause = min(max(self._pause * 2, 0.05), 1.0)
        self._retry_at = time.monotonic() + self._pause


def _owed_op(end: _Owed) -> Op:
    return Op(end.apply, end.buffer, drain=True)


def _execute(conn: sqlite3.Connection, plan: _Plan) -> None:
    rows: list[Chunk] = []
    progress: list[Taken] = []
    for part in plan:
        if isinstance(part, Op):
            insert_events(conn, rows, progress)
            rows, progress = [], []
            _apply(conn, part)
        else:
            rows += part.rows
            progress.append(part)
    insert_events(conn, rows, progress)


def _take(buffer: RunBuffer, taken: list[Taken]) -> Taken:
    part = Taken(buffer, *buffer.take())
    taken.append(part)
    return part


def _apply(conn: sqlite3.Connection, op: Op) -> None:
    """Apply one op in a savepoint, so that its failure fails it alone."""
    if op.apply is None or op.buffer is None:
        return
    conn.execute("SAVEPOINT op")
    try:
        op.apply(conn, op.buffer)
    except Exception as error:  # noqa: BLE001 — handed to the op's caller, which re-raises it
        conn.execute("ROLLBACK TO op")
        op.fail(error)
    conn.execute("RELEASE op")
