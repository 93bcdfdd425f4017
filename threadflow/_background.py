"""Background runs: a bounded pool of worker threads per workflow, and shutdown.

A workflow runs at most ``max_concurrent_runs`` background runs at once;
the rest wait in a FIFO queue as ``pending``. Workers are started on demand
and exit when the queue is empty, so an idle process holds no threads. A run
cancelled while queued is taken out of the queue by the cancelling thread and
recorded at once (``workflow_started``, ``workflow_cancelled``): it never
starts and never waits for a slot.

``shutdown()`` cancels every active background run with cause ``shutdown``
and waits for them; it is registered with ``atexit``, which runs before the
(daemon) workers are stopped, so no run is left recorded as ``running``.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque

from ._gcdefer import drain
from ._registry import REGISTRY
from ._runner import Runner
from ._validate import check_seconds
from .handles import RunHandle
from .status import CancelCause

__all__ = ["WORKER_THREAD_PREFIX", "WorkerPool", "active_handles", "shutdown"]

logger = logging.getLogger("threadflow")

#: Worker threads are named this followed by the workflow's id.
WORKER_THREAD_PREFIX = "threadflow-worker-"

_handles_lock = threading.Lock()
_active: dict[str, RunHandle] = {}


class WorkerPool:
    """Runs handles' runners on at most ``max_workers`` threads at once."""

    def __init__(self, max_workers: int, name: str) -> None:
        self.max_workers = max_workers
        self.name = name
        self._lock = threading.Lock()
        self._queue: deque[RunHandle] = deque()
        self._workers = 0

    def submit(self, handle: RunHandle) -> None:
        with _handles_lock:
            _active[handle.run_id] = handle
        with self._lock:
            self._queue.append(handle)
            start = self._workers < self.max_workers
            if start:
                self._workers += 1
        # Registered after queueing: a cancel accepted before this line calls it at once.
        REGISTRY.add_callback(handle._state, lambda: self._cancel_queued(handle))
        if start:
            self._start_worker()

    def _start_worker(self) -> None:
        """Start a worker for the slot just taken; if no thread can start, give the slot back.

        Runs left queued with no worker at all would never run: they are
        cancelled (cause ``shutdown``, which takes them out of the queue and
        records them) and the ``RuntimeError`` propagates.
        """
        try:
            threading.Thread(target=self._work, name=f"{WORKER_THREAD_PREFIX}{self.name}", daemon=True).start()
        except RuntimeError:  # the process is at its thread limit
            with self._lock:
                self._workers -= 1
                orphans = list(self._queue) if self._workers == 0 else []
            for handle in orphans:
                REGISTRY.cancel(handle._state, "no thread could be started to run it", CancelCause.shutdown)
            raise

    def _cancel_queued(self, handle: RunHandle) -> None:
        with self._lock:
            try:
                self._queue.remove(handle)
            except ValueError:
                return  # a worker has it already: it sees the cancel at its first checkpoint
        _record_unstarted(handle)

    def _work(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        return
                    handle = self._queue.popleft()
                _execute(handle)
        finally:
            # However this thread ends, its slot is given back (under the lock
            # that also decides whether a new worker is needed).
            with self._lock:
                self._workers -= 1
                restart = bool(self._queue) and self._workers < self.max_workers
                if restart:
                    self._workers += 1
            if restart:
                self._start_worker()

    @property
    def queued(self) -> int:
        return len(self._queue)


def _execute(handle: RunHandle) -> None:
    runner: Runner = handle._runner
    try:
        for _ in runner.events():
            pass
    except BaseException:
        logger.exception("threadflow: background run %s crashed", handle.run_id)
        runner.abandon()
    finally:
        _done(handle)


def _record_unstarted(handle: RunHandle) -> None:
    try:
        handle._runner.abandon()  # records workflow_started + workflow_cancelled, with the cause asked for
    finally:
        _done(handle)


def _done(handle: RunHandle) -> None:
    with _handles_lock:
        # The id left the registry a moment ago and may already belong to a new run.
        if _active.get(handle.run_id) is handle:
            del _active[handle.run_id]
    handle._set_done()


def active_handles() -> list[RunHandle]:
    with _handles_lock:
        return list(_active.values())


def shutdown(timeout: float | None = 10.0) -> bool:
    """Cancel every active background run (cause ``shutdown``) and wait up to ``timeout`` seconds.

    ``timeout=None`` waits for as long as the runs take. Returns True if
    they all ended in time. Streams being iterated by other
    threads are not touched: their consumers own them.
    """
    check_seconds("timeout", timeout, optional=True)
    drain()
    handles = active_handles()
    for handle in handles:
        REGISTRY.cancel(handle._state, "threadflow is shutting down", CancelCause.shutdown)
    deadline = None if timeout is None else time.monotonic() + timeout
    ended = True
    for handle in handles:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ended = handle.wait(left) and ended
    return ended


atexit.register(shutdown)
