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
import weakref
from collections import deque

from . import _observe
from ._abandon import unstarted_events
from ._gcdefer import drain
from ._registry import REGISTRY
from ._runner import Runner, record_end
from ._validate import check_seconds
from .handles import RunHandle
from .status import CancelCause, RunStatus

__all__ = ["WORKER_THREAD_PREFIX", "WorkerPool", "active_handles", "shutdown"]

logger = logging.getLogger("threadflow")

#: Worker threads are named this followed by the workflow's id.
WORKER_THREAD_PREFIX = "threadflow-worker-"

_handles_lock = threading.Lock()
_active: dict[str, RunHandle] = {}


class WorkerPool:
    """Runs handles' runners on at most ``max_workers`` threads at once.

    A queued run leaves the queue in O(1) whichever way it goes: the thread
    that clears its ``_queued`` flag (under the pool's lock) owns it — a
    worker runs it, a cancelling thread records it. A cancelled run's slot in
    the deque is skipped when it reaches the front, and the deque is
    compacted once the skipped slots outnumber the queued runs.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self.max_workers = max_workers
        self.name = name
        self._lock = threading.Lock()
        self._queue: deque[RunHandle] = deque()
        self._queued = 0  # handles in _queue whose _queued flag is set
        self._workers = 0
        _POOLS.add(self)

    def submit(self, handle: RunHandle) -> None:
        with _handles_lock:
            _active[handle.run_id] = handle
        with self._lock:
            handle._queued = True
            self._queue.append(handle)
            self._queued += 1
            start = self._workers < self.max_workers
            if start:
                self._workers += 1
        # Registered after queueing: a cancel accepted before this line calls it at once.
        REGISTRY.add_callback(handle._state, _Unqueue(self, handle))
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
                orphans = [h for h in self._queue if h._queued] if self._workers == 0 else []
            for handle in orphans:
                REGISTRY.cancel(handle._state, "no thread could be started to run it", CancelCause.shutdown)
            raise

    def _compact(self) -> None:
        """Drop the skipped slots once they outnumber the queued runs (under the lock)."""
        if len(self._queue) > 64 and len(self._queue) > 2 * self._queued:
            self._queue = deque(h for h in self._queue if h._queued)

    def take_all(self) -> list[RunHandle]:
        """Empty the queue at once; the caller owns (and must end) every run returned."""
        with self._lock:
            taken = [h for h in self._queue if h._queued]
            for handle in taken:
                handle._queued = False
            self._queue.clear()
            self._queued = 0
        return taken

    def _cancel_queued(self, handle: RunHandle) -> None:
        """Take ``handle`` out of the queue and record it; a worker that has it already sees the cancel itself.

        Once this thread has taken the run, it records it whatever interrupts it
        (Ctrl+C in the cancelling thread): nobody else would, ever.
        """
        taken = False
        try:
            with self._lock:
                if not handle._queued:
                    return
                # One statement: an interrupt lands before or after it, never between the flag, the count
                # and this thread knowing it owns the run.
                taken, handle._queued, self._queued = True, False, self._queued - 1
                self._compact()
        finally:
            if taken:
                _record_unstarted(handle)

    def _next(self) -> RunHandle | None:
        with self._lock:
            queue = self._queue
            while queue:
                handle = queue.popleft()
                if handle._queued:
                    handle._queued = False
                    self._queued -= 1
                    return handle
            return None

    def _work(self) -> None:
        try:
            while (handle := self._next()) is not None:
                _execute(handle)
        finally:
            # However this thread ends, its slot is given back (under the lock
            # that also decides whether a new worker is needed).
            with self._lock:
                self._workers -= 1
                restart = self._queued > 0 and self._workers < self.max_workers
                if restart:
                    self._workers += 1
            if restart:
                self._start_worker()

    @property
    def queued(self) -> int:
        return self._queued


class _Unqueue:
    """The cancel callback of a queued run: no closure, so it costs a queued run 48 bytes."""

    __slots__ = ("handle", "pool")

    def __init__(self, pool: WorkerPool, handle: RunHandle) -> None:
        self.pool = pool
        self.handle = handle

    def __call__(self) -> None:
        self.pool._cancel_queued(self.handle)


_POOLS: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


def _execute(handle: RunHandle) -> None:
    runner: Runner = handle._materialize()
    try:
        for _ in runner.events():
            pass
    except BaseException:
        logger.exception("threadflow: background run %s crashed", handle.run_id)
        runner.abandon()
    finally:
        _done(handle)


def _record_unstarted(handle: RunHandle) -> None:
    """Record a queued run whose cancel was accepted: ``workflow_started`` + ``workflow_cancelled``, then done."""
    try:
        if _heard(handle):
            handle._materialize().abandon()
        else:
            _end_unheard(handle)
    finally:
        _done(handle)


def _heard(handle: RunHandle) -> bool:
    """Whether a queued run's events are heard as they are made: a runner, a store, telemetry, the debug log."""
    source, store = handle._source, handle._state.store
    return source is None or source.debug_mode or _observe.watches_events() or store is None or store.records_events


def _end_unheard(handle: RunHandle) -> None:
    """``abandon()`` of a run nobody hears yet, without making its runner: its events are made when asked for."""
    state = handle._state
    try:
        state.started_at = time.time()
        REGISTRY.finish(state, RunStatus.cancelled)  # the cancel was accepted: it ends cancelled
        log = handle._end_unheard()
        if log is not None:  # a follower is waiting for them
            for event in unstarted_events(state):
                log.append(event)
        ends = _observe.run_ends()
        if ends is not None:  # metrics count it as the runner would have: started, then ended
            ends.started(state.workflow_id)
            ends.ended(state.run_id, state.workflow_id, RunStatus.cancelled, state.effective_cause)
        if state.store is not None:
            record_end(state.store, state)
    finally:
        REGISTRY.remove(state)


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
    # Queued runs first, every queue emptied at once: no worker starts one of them meanwhile.
    _end_taken([handle for pool in list(_POOLS) for handle in pool.take_all()])
    handles = active_handles()
    for handle in handles:
        REGISTRY.cancel(handle._state, _SHUTDOWN, CancelCause.shutdown)
    deadline = None if timeout is None else time.monotonic() + timeout
    ended = True
    for handle in handles:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ended = handle.wait(left) and ended
    return ended


def _end_taken(taken: list[RunHandle]) -> None:
    """End every run taken out of its queue: nobody else ever will, whatever ending one of them raised.

    A failure (a store's ``run_ended``) is logged, as when a cancel takes a
    run out of the queue; an interrupt (a done callback's ``KeyboardInterrupt``)
    is raised once every run has ended.
    """
    interrupt: BaseException | None = None
    for handle in taken:
        try:
            _cancel_unstarted(handle)
        except Exception:
            logger.exception("threadflow: recording queued run %s as cancelled failed", handle.run_id)
        except BaseException as error:
            logger.exception("threadflow: recording queued run %s as cancelled was interrupted", handle.run_id)
            interrupt = interrupt or error
    if interrupt is not None:
        raise interrupt


def _cancel_unstarted(handle: RunHandle) -> None:
    """End a run taken out of its queue: cancelled (``shutdown``) and recorded, having never started."""
    try:
        # Its one callback is its _Unqueue (no step of it ran), a no-op now that it is taken: dropped,
        # the cancel has no callbacks to run (nor an Event to make for concurrent cancellers to wait on).
        REGISTRY.clear_callbacks(handle._state)
        REGISTRY.cancel(handle._state, _SHUTDOWN, CancelCause.shutdown)
    finally:
        _record_unstarted(handle)


_SHUTDOWN = "threadflow is shutting down"

atexit.register(shutdown)
