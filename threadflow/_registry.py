"""The run registry: every active run of this process, one lock, named states.

Each active run has a ``RunState`` here from the moment it is created (a
``RunStream`` not yet iterated, a queued background run) until it has ended.
Every change of a run's status, and every cancel request, happens under the
registry's one lock; the decision between *cancelled* and *completed* is made
in exactly one place (``Registry.finish``), so a ``cancel_run`` that returned
``True`` always ends in ``cancelled``. No user code, callback or I/O runs while
the lock is held: ``on_cancel`` callbacks run right after it is released, in
the cancelling thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import _observe
from ._fastevents import make_exact
from ._gcdefer import drain
from ._validate import check_reason
from .exceptions import DuplicateRunError
from .status import ACTIVE_STATUSES, CancelCause, RunInfo, RunStatus

if TYPE_CHECKING:
    from ._timer import Budget
    from .storage.base import RunStore

__all__ = ["LOCAL_RUNS", "REGISTRY", "Registry", "RunState", "new_run_id"]

logger = logging.getLogger("threadflow")


class RunState:
    """The live record of one active run. Its status changes only under the registry lock.

    ``cancel_requested`` is a plain attribute so that the hot-path checkpoint is
    one attribute read; ``cancel_event`` is set at the same moment, for waiting.
    Neither is ever cleared: cancellation is level-triggered.
    """

    __slots__ = (
        "__weakref__",
        "background",
        "callbacks",
        "callbacks_running",
        "_cancel_event",
        "cancel_requested",
        "cause",
        "created_at",
        "ended_at",
        "error",
        "error_type",
        "failing",
        "reason",
        "run_budget",
        "run_id",
        "started_at",
        "status",
        "step_budget",
        "step_name",
        "store",
        "timeout",
        "traceparent",
        "owner",
        "attempt",
        "workflow_id",
        "workflow_name",
    )

    def __init__(
        self,
        run_id: str,
        workflow_id: str,
        workflow_name: str,
        *,
        store: RunStore | None = None,
        timeout: float | None = None,
        background: bool = False,
    ) -> None:
        self.run_id = run_id
        self.workflow_id = workflow_id
        self.workflow_name = workflow_name
        self.store = store
        self.status = RunStatus.pending
        self.cause: CancelCause | None = None
        self.reason: str | None = None
        self.step_name: str | None = None
        self.error: str | None = None
        self.error_type: str | None = None
        self.created_at = time.time()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.cancel_requested = False
        self._cancel_event: threading.Event | None = None  # made on first use: most runs never wait
        # True while a failing branch stops the rest of the run (``Registry.fail``): the checkpoints
        # raise as for a cancel, but the run ends ``error`` unless a real cancel arrives meanwhile.
        self.failing = False
        self.callbacks: list[Callable[[], object]] | None = []
        # [the Event set when they have run (made by the first cancel that waits for them), the thread
        # running them] while a cancel runs the callbacks
        self.callbacks_running: list[Any] | None = None
        self.background = background
        self.timeout = timeout  # run_timeout, in seconds
        # The run's and the running step's budgets of active time, owned by threadflow._timer.
        self.run_budget: Budget | None = None
        self.step_budget: Budget | None = None
        #: The W3C traceparent the run continues (``threadflow._observe``); None without telemetry.
        self.traceparent: str | None = None
        #: What the record says of the process running it, on a store that records an owner; and its attempt.
        self.owner: str | None = None
        self.attempt = 1

    @property
    def cancel_event(self) -> threading.Event:
        """Set when the cancel is accepted, never cleared."""
        event = self._cancel_event
        if event is None:
            with REGISTRY.lock:
                event = self._cancel_event
                if event is None:
                    event = self._cancel_event = threading.Event()
                    if self.cancel_requested:
                        event.set()
        return event

    @property
    def effective_cause(self) -> CancelCause:
        """The cause to report for a cancelled run (``requested`` when none was recorded)."""
        return self.cause or CancelCause.requested

    def info(self) -> RunInfo:
        """A snapshot of the run's record."""
        return make_exact(
            RunInfo,
            {  # every field, in RunInfo's order
                "run_id": self.run_id,
                "workflow_id": self.workflow_id,
                "workflow_name": self.workflow_name,
                "status": self.status,
                "cause": self.cause,
                "reason": self.reason,
                "step_name": self.step_name,
                "error": self.error,
                "error_type": self.error_type,
                "created_at": self.created_at,
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "owner": self.owner,
                "attempt": self.attempt,
                "traceparent": self.traceparent,
            },
        )

    def __repr__(self) -> str:
        return f"<RunState {self.run_id} {self.status.value}>"


class Registry:
    """The active runs of the process.

    The lock is re-entrant on purpose: a ``RunStream`` dropped by the garbage
    collector finalises its run from ``__del__``, and the collector can run in
    any thread at any allocation, including inside one of the short critical
    sections below. Those sections never iterate the table in Python, so a
    re-entrant finalisation cannot break them.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._runs: dict[str, RunState] = {}

    # -- membership ---------------------------------------------------------

    def add(self, state: RunState) -> None:
        """Register a new run; raises ``DuplicateRunError`` if its id is active.

        An entry whose run has ended is replaced: it is left over only when an
        interrupt (Ctrl+C) landed inside the ``remove`` that ends every run.
        """
        with self.lock:
            existing = self._runs.get(state.run_id)
            if existing is not None and not existing.status.is_terminal:
                raise DuplicateRunError(state.run_id)
            self._runs[state.run_id] = state

    def remove(self, state: RunState) -> None:
        with self.lock:
            if self._runs.get(state.run_id) is state:
                del self._runs[state.run_id]

    def get(self, run_id: str) -> RunState | None:
        return self._runs.get(run_id)

    def states(self) -> list[RunState]:
        """The registered runs; ended ones an interrupted ``remove`` left behind are dropped here."""
        drain()
        with self.lock:
            for state in [s for s in self._runs.values() if s.status.is_terminal]:
                if self._runs.get(state.run_id) is state:
                    del self._runs[state.run_id]
            return list(self._runs.values())

    def __len__(self) -> int:
        drain()
        return len(self._runs)

    # -- status changes -----------------------------------------------------

    def set_status(self, state: RunState, status: RunStatus) -> None:
        """Move between pending, running and waiting; a cancelling run stays cancelling."""
        with self.lock:
            if state.status in ACTIVE_STATUSES and state.status is not RunStatus.cancelling:
                state.status = status

    def request_cancel(
        self,
        run_id: str,
        reason: str | None = None,
        cause: CancelCause = CancelCause.requested,
        *,
        workflow_id: str | None = None,
        callbacks_elsewhere: bool = False,
    ) -> bool:
        """Cancel the active run ``run_id`` (of ``workflow_id``, when given).

        Returns True iff the run is active; the first accepted request fixes
        the cause and reason. Returns after the run's ``on_cancel`` callbacks
        have run (unless ``callbacks_elsewhere``: see ``cancel``), never
        waiting for the run's own code.
        """
        check_reason(reason)
        state = self._runs.get(run_id)
        if state is None or (workflow_id is not None and state.workflow_id != workflow_id):
            return False
        return self.cancel(state, reason, cause, callbacks_elsewhere=callbacks_elsewhere)

    def cancel(
        self, state: RunState, reason: str | None, cause: CancelCause, *, callbacks_elsewhere: bool = False
    ) -> bool:
        """Accept a cancel of ``state`` if it is active; True iff accepted (now or before).

        The first request runs the ``on_cancel`` callbacks; a concurrent later
        one returns only after they have run, as rule 1 promises both. A
        thread shared by every run (the timer, a store's watcher) passes
        ``callbacks_elsewhere=True``: the cancel is accepted at once and the
        callbacks run on a thread of their own, so a slow one delays only its
        own run.
        """
        me = threading.get_ident()
        new = False  # accepted by this call: telemetry hears of it (outside the lock, like every callback)
        callbacks: list[Callable[[], object]] | None = None
        with self.lock:
            if state.status not in ACTIVE_STATUSES:
                return False
            if state.failing:  # a failure is stopping the run: this cancel is accepted, and wins
                state.failing = False
                state.cause, state.reason, state.status = cause, reason, RunStatus.cancelling
                new = True
            if state.cancel_requested:
                running = state.callbacks_running  # not None: another thread runs them; wait below
                if running is None or running[1] == me or callbacks_elsewhere:
                    running = None
                elif running[0] is None:  # the first cancel to wait for them makes the Event
                    running[0] = threading.Event()
            else:
                state.cancel_requested = new = True
                state.cause = cause
                state.reason = reason
                state.status = RunStatus.cancelling
                callbacks, state.callbacks = state.callbacks, None
                if state._cancel_event is not None:
                    state._cancel_event.set()
                if callbacks:
                    # The thread that runs the callbacks is named once it runs them (see _run_callbacks).
                    state.callbacks_running = [None, None if callbacks_elsewhere else me]
                running = None
        if new:
            _observe.cancel_requested(state.run_id, cause, reason)
        if running is not None:  # another thread is running the callbacks
            running[0].wait()
            return True
        if callbacks and not (callbacks_elsewhere and _run_detached(state, callbacks)):
            _run_callbacks(state, callbacks)
        return True

    def add_callback(self, state: RunState, callback: Callable[[], object]) -> None:
        """Call ``callback`` once when the run is cancelled (at once if it already is)."""
        with self.lock:
            if state.callbacks is not None:
                state.callbacks.append(callback)
                return
        _call_all((callback,))

    def remove_callback(self, state: RunState, callback: Callable[[], object]) -> None:
        with self.lock:
            if state.callbacks is not None and callback in state.callbacks:
                state.callbacks.remove(callback)

    def fail(self, state: RunState) -> bool:
        """A branch failed: stop the rest of the run as a cancel would, without making it a cancel.

        Every checkpoint of the run raises from now on and the ``on_cancel``
        callbacks run (in this thread), so sibling branches stop and clean up;
        the run still ends ``error``, unless a real cancel is accepted before
        it ends (then ``cancelled``: rule 2). False if the run is already
        stopping (cancelled, or failing), and nothing is done.
        """
        with self.lock:
            if state.status not in ACTIVE_STATUSES or state.cancel_requested:
                return False
            state.cancel_requested = state.failing = True
            callbacks, state.callbacks = state.callbacks, None
            if state._cancel_event is not None:
                state._cancel_event.set()
            if callbacks:
                state.callbacks_running = [None, threading.get_ident()]
        if callbacks:
            _run_callbacks(state, callbacks)
        return True

    def remove_callbacks(self, state: RunState, callbacks: Sequence[Callable[[], object]]) -> None:
        """Drop the given registrations (a branch's, when its step ends); others stay."""
        with self.lock:
            mine = state.callbacks
            if mine:
                for callback in callbacks:
                    if callback in mine:
                        mine.remove(callback)

    def clear_callbacks(self, state: RunState) -> None:
        """Drop the callbacks registered by a step that has ended."""
        with self.lock:
            if state.callbacks:
                state.callbacks = []

    def finish(self, state: RunState, wanted: RunStatus) -> RunStatus:
        """Make the run terminal and return its final status.

        This is where cancellation and completion meet: a run whose cancel was
        accepted ends ``cancelled`` whatever ``wanted`` says. The entry stays
        in the table (answering ``False`` to cancels) until ``remove``.
        """
        with self.lock:
            if state.status not in ACTIVE_STATUSES:
                return state.status
            # A failing branch stopped the run (``fail``), and no real cancel came: an error.
            final = RunStatus.error if state.failing else RunStatus.cancelled if state.cancel_requested else wanted
            state.status = final
            state.ended_at = time.time()
            state.callbacks = None
            return final


def new_run_id() -> str:
    """A random (version 4) UUID string, made without the uuid module's object overhead.

    Ids are made 256 at a time from one ``os.urandom`` read; ``list.pop`` hands
    each out once, whichever thread asks.
    """
    while True:
        try:
            return _ids.pop()
        except IndexError:
            with _ids_lock:
                if not _ids:
                    _ids.extend(_make_ids(256))


# A version-4 UUID's variant nibble is 10xx: its two low bits are random.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
_ids_lock = threading.Lock()
_ids: list[str] = []


def _make_ids(count: int) -> list[str]:
    h = os.urandom(16 * count).hex()
    return [
        f"{h[o : o + 8]}-{h[o + 8 : o + 12]}-4{h[o + 13 : o + 16]}-"  # version 4
        f"{_VARIANT[h[o + 16]]}{h[o + 17 : o + 20]}-{h[o + 20 : o + 32]}"
        for o in range(0, 32 * count, 32)
    ]


def _forget_random() -> None:
    """A forked child must not hand out the ids its parent will (the ones it inherited)."""
    global _ids_lock
    _ids.clear()
    _ids_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_random)


def _run_callbacks(state: RunState, callbacks: Sequence[Callable[[], object]]) -> None:
    """Run a cancel's callbacks in this thread, then release the cancels waiting for them."""
    running = state.callbacks_running
    if running is not None:
        running[1] = threading.get_ident()  # a callback that cancels its own run must not wait on itself
    try:
        _call_all(callbacks)
    finally:
        with REGISTRY.lock:  # where a cancel that waits for them makes its Event: most cancels make none
            state.callbacks_running = None
            done = running[0] if running is not None else None
        if done is not None:
            done.set()


def _run_detached(state: RunState, callbacks: Sequence[Callable[[], object]]) -> bool:
    """Start a thread running the callbacks; False if none can start (the process is at its thread limit).

    Then the caller runs them itself: late for other runs, but never lost —
    the cancel is already accepted, and every later cancel waits for them.
    """
    thread = threading.Thread(
        target=_run_callbacks_detached, args=(state, callbacks), name="threadflow-on-cancel", daemon=True
    )
    try:
        thread.start()
    except RuntimeError:
        logger.warning("threadflow: no thread for the on_cancel callbacks of run %s; running them here", state.run_id)
        return False
    return True


def _run_callbacks_detached(state: RunState, callbacks: Sequence[Callable[[], object]]) -> None:
    """``_run_callbacks`` on a thread of its own: nobody is there to receive an interrupt."""
    try:
        _run_callbacks(state, callbacks)
    except BaseException:  # noqa: BLE001 — already logged by _call_all; this thread just ends
        pass


def _call_all(callbacks: Sequence[Callable[[], object]]) -> None:
    """Call each callback; one that raises is logged and does not stop the others.

    A ``BaseException`` (``KeyboardInterrupt``, ``SystemExit``) is re-raised
    once every callback has run.
    """
    interrupt: BaseException | None = None
    for callback in callbacks:
        try:
            callback()
        except Exception:
            logger.exception("threadflow: on_cancel callback %r raised", callback)
        except BaseException as error:
            logger.exception("threadflow: on_cancel callback %r raised", callback)
            interrupt = interrupt or error
    if interrupt is not None:
        raise interrupt


REGISTRY = Registry()


class _LocalRuns:
    """The ``storage.base.LocalRuns`` the core lends a store: this process's active runs, by id.

    ``cancel`` is the one implementation of ``threadflow.cancel_run``.
    """

    __slots__ = ()

    def cancel(self, run_id: str, reason: str | None = None, *, callbacks_elsewhere: bool = False) -> bool:
        check_reason(reason)
        if not isinstance(run_id, str):
            return False
        drain()
        return REGISTRY.request_cancel(run_id, reason, CancelCause.requested, callbacks_elsewhere=callbacks_elsewhere)

    def info(self, run_id: str) -> RunInfo | None:
        state = REGISTRY.get(run_id) if isinstance(run_id, str) else None
        return state.info() if state is not None else None


LOCAL_RUNS = _LocalRuns()
