"""The store's background thread: batched event writes and the session's lease.

``append`` (the hot path) only puts the event in a deque. While this
session has runs, the thread wakes every ``flush_interval`` seconds, writes
what arrived in one transaction (one fenced statement per run, see
``_rows.py``) and renews the lease every third of ``lease_seconds``. A
batch that cannot be written (the server is restarting) is put back, in
order, and tried again: nothing is lost, and ``ON CONFLICT DO NOTHING``
makes a batch whose commit was lost in flight harmless to write again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ...events import BaseEvent, RunContentEvent, StepStartedEvent
from ..errors import StoreError
from ._db import Cursor, Database
from ._rows import dump_event, dump_tokens, renew_lease, write_events

__all__ = ["LocalRun", "Writer"]

logger = logging.getLogger("threadflow")


@dataclass
class LocalRun:
    """A run this session executes: its attempt (the fence) and whether another session took it over."""

    attempt: int
    lost: bool = False


class Writer:
    """Writes appended events in batches and keeps the session's lease while it has runs or workers."""

    def __init__(self, db: Database, session: str, owner: str, lease_seconds: float, flush_interval: float) -> None:
        self.db = db
        self.session = session
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.flush_interval = flush_interval
        self.runs: dict[str, LocalRun] = {}
        self.queue: deque[BaseEvent] = deque()
        self.holders = 0  # workers using this store: the lease is kept while they run, even idle
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._renewed = 0.0
        self._start_lock = threading.Lock()

    # -- the lease ------------------------------------------------------------

    def ensure_lease(self) -> None:
        """Renew the lease now unless it was renewed within a third of ``lease_seconds``; start the thread."""
        if time.monotonic() - self._renewed > self.lease_seconds / 3:
            self.renew()
        self._ensure_thread()

    def renew(self) -> None:
        started = time.monotonic()
        self.db.transact(lambda cursor: renew_lease(cursor, self.session, self.owner, self.lease_seconds))
        self._renewed = started

    def wake(self) -> None:
        """A run was registered: the thread writes its events from now on."""
        self._wake.set()

    def _busy(self) -> bool:
        return bool(self.runs) or self.holders > 0 or bool(self.queue)

    # -- events ---------------------------------------------------------------

    def flush(self, then: Callable[[Cursor], bool] | None = None) -> bool:
        """Write every event appended so far, then ``then(cursor)`` in the same transaction; its answer.

        ``StoreError`` if the server stays unreachable: the events are kept, in order, for the next try.
        """
        with self._flush_lock:
            batch: list[BaseEvent] = []
            queue = self.queue
            while queue:
                batch.append(queue.popleft())
            if not batch and then is None:
                return True

            def write(cursor: Cursor) -> bool:
                self._write(cursor, batch)
                return then(cursor) if then is not None else True

            try:
                return self.db.transact(write)
            except BaseException:
                queue.extendleft(reversed(batch))
                raise

    def _write(self, cursor: Cursor, batch: list[BaseEvent]) -> None:
        by_run: dict[str, list[BaseEvent]] = {}
        for event in batch:
            by_run.setdefault(event.run_id, []).append(event)
        for run_id, events in by_run.items():
            run = self.runs.get(run_id)
            if run is None or run.lost:
                continue
            rows = _dump(events)
            steps = [e.step_name for e in events if type(e) is StepStartedEvent]
            if not write_events(cursor, run_id, self.session, run.attempt, rows, steps[-1] if steps else None):
                run.lost = True
                logger.warning(
                    "threadflow: run %s was taken over by another worker; its events here are dropped", run_id
                )

    # -- the thread -----------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._stopped or (self._thread is not None and self._thread.is_alive()):
                self._wake.set()
                return
            self._thread = threading.Thread(target=self._loop, name="threadflow-pg-writer", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stopped:
            if not self._busy():
                self._wake.clear()
                if not self._busy():
                    self._wake.wait(1.0)
                continue
            time.sleep(self.flush_interval)
            self._tick(self.flush, "write events")
            if time.monotonic() - self._renewed > self.lease_seconds / 3:
                self._tick(self.renew, "renew its lease")

    def _tick(self, fn: Callable[[], object], what: str) -> None:
        try:
            fn()
        except (StoreError, OSError) as error:
            logger.warning("threadflow: postgres store could not %s (will retry): %s", what, error)
        except Exception:
            logger.exception("threadflow: postgres store could not %s", what)

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)


def _dump(events: list[BaseEvent]) -> list[tuple[int, str, bool]]:
    """The rows of a run's events, in order: tokens through the fast path, the rest through pydantic."""
    fast = {seq: (data, exact) for seq, data, exact in dump_tokens([e for e in events if type(e) is RunContentEvent])}
    rows = []
    for event in events:
        data, exact = fast.get(event.seq) or dump_event(event)
        rows.append((event.seq, data, exact))
    return rows
