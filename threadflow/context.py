"""What step code calls: ``get_context()``, checkpoints, waits, ``shield()``, ``on_cancel``.

A checkpoint is a place where a cancelled run raises ``CancellationError``:
``ctx.check_cancellation()``, ``ctx.sleep()``, ``ctx.wait()``, and the points
where the runner hands an event to the consumer. Cancellation is
level-triggered: once requested, every later checkpoint raises, except inside
``shield()``, which only postpones it to the first checkpoint after the
outermost shield exits.

The ambient context is set only while step code executes and is restored
before every event is handed to the consumer, so two streams interleaved in
one thread never see each other's context.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar

from ._registry import REGISTRY, RunState
from ._timer import TIMER
from ._validate import check_seconds, is_number
from .exceptions import CancellationError
from .status import CancelCause, RunStatus

__all__ = ["RunContext", "get_context", "shield"]

#: The ambient run context; set by the runner only while step code executes.
_CURRENT: ContextVar[RunContext | None] = ContextVar("threadflow_run_context", default=None)


class RunContext:
    """The view of the current run that step code gets from ``get_context()``."""

    __slots__ = ("_owned", "_state", "attempt", "shield_depth", "step_name")

    def __init__(self, state: RunState, *, branch: bool = False) -> None:
        self._state = state
        #: The step now running.
        self.step_name: str | None = None
        #: 1 for a step's first attempt, 2 for its first retry, ...
        self.attempt = 1
        #: Open ``shield()`` blocks of this context: shields are per branch, the cancel is per run.
        self.shield_depth = 0
        # A branch's own on_cancel registrations, dropped when its step ends without touching its
        # siblings'; None for the run's own context, whose steps never overlap.
        self._owned: list[Callable[[], object]] | None = [] if branch else None

    @property
    def delivers_cancel(self) -> bool:
        """True when a checkpoint here must raise: cancel requested and not shielded in this context."""
        return self._state.cancel_requested and not self.shield_depth

    @property
    def run_id(self) -> str:
        return self._state.run_id

    @property
    def workflow_id(self) -> str:
        return self._state.workflow_id

    @property
    def cancel_requested(self) -> bool:
        """True once a cancel has been accepted (also inside a shield)."""
        return self._state.cancel_requested

    @property
    def cancel_reason(self) -> str | None:
        return self._state.reason

    @property
    def cancel_cause(self) -> CancelCause | None:
        return self._state.cause

    @property
    def cancel_event(self) -> threading.Event:
        """Set when a cancel is accepted and never cleared; for code that waits on its own."""
        return self._state.cancel_event

    def check_cancellation(self) -> None:
        """A checkpoint: raise ``CancellationError`` if the run is cancelled (outside a shield)."""
        state = self._state
        if state.cancel_requested and not self.shield_depth:
            raise cancellation_error(state)

    def sleep(self, seconds: float) -> None:
        """Sleep, waking at once (with ``CancellationError``) when the run is cancelled.

        The time asleep does not count toward ``run_timeout``. Inside a shield
        the sleep runs its full length.
        """
        check_seconds("sleep length", seconds)
        self._wait_until(None, time.monotonic() + seconds)

    def wait(self, event: threading.Event | float | None = None, timeout: float | None = None) -> bool:
        """Wait until ``event`` is set or ``timeout`` passes; a checkpoint.

        Returns True if ``event`` was set, False on timeout. Raises
        ``CancellationError`` as soon as the run is cancelled (outside a
        shield). With no event it waits for the timeout (or for ever) — an
        interruptible pause; ``ctx.wait(5)`` is ``ctx.wait(timeout=5)``. The
        time waited does not count toward ``run_timeout``.
        """
        if is_number(event) and timeout is None:
            event, timeout = None, event
        if timeout is not None:
            check_seconds("timeout", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._wait_until(event, deadline)  # type: ignore[arg-type]  # a number was moved to timeout

    async def asleep(self, seconds: float) -> None:
        """``await``-able ``sleep`` for async steps: a cancel interrupts it like any ``await``.

        The step sees ``asyncio.CancelledError`` here (at once if the run is
        already cancelled, outside a shield). The time asleep does not count
        toward ``run_timeout``. Inside a shield it sleeps its full length.
        """
        check_seconds("sleep length", seconds)
        state = self._state
        if self.delivers_cancel:
            raise asyncio.CancelledError
        REGISTRY.set_status(state, RunStatus.waiting)
        TIMER.pause(state)
        try:
            await asyncio.sleep(seconds)
        finally:
            REGISTRY.set_status(state, RunStatus.running)
            TIMER.resume(state)

    def on_cancel(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call ``callback()`` once, from the cancelling thread, when the run is cancelled.

        Use it to unblock code that cannot be interrupted otherwise, e.g. to
        shut down the socket a step is reading. If the run is already
        cancelled the callback runs at once. It must be quick; an exception it
        raises is logged and does not stop the cancellation. The registration
        lasts until the current step ends; the returned function removes it
        earlier.
        """
        state = self._state
        owned = self._owned
        if owned is not None:
            owned.append(callback)
        REGISTRY.add_callback(state, callback)
        return lambda: REGISTRY.remove_callback(state, callback)

    def end_step(self) -> None:
        """The step ended: drop its ``on_cancel`` registrations (a branch drops only its own)."""
        owned = self._owned
        if owned is None:
            if self._state.callbacks:  # most steps register none: no lock to take
                REGISTRY.clear_callbacks(self._state)
        elif owned:
            REGISTRY.remove_callbacks(self._state, owned)
            owned.clear()

    # -- waiting ------------------------------------------------------------

    def _wait_until(self, event: threading.Event | None, deadline: float | None) -> bool:
        state = self._state
        self.check_cancellation()
        if self._owned is not None:  # a branch: its siblings may be running, so the run is not waiting
            woke = _wait_for(self, event, deadline)
            self.check_cancellation()
            return woke
        REGISTRY.set_status(state, RunStatus.waiting)
        TIMER.pause(state)
        try:
            return _wait_for(self, event, deadline)
        finally:
            REGISTRY.set_status(state, RunStatus.running)
            TIMER.resume(state)
            self.check_cancellation()

    def __repr__(self) -> str:
        return f"<RunContext run={self.run_id} step={self.step_name} attempt={self.attempt}>"


def _wait_for(ctx: RunContext, event: threading.Event | None, deadline: float | None) -> bool:
    """Wait for ``event`` (or only the deadline); wake early on an unshielded cancel."""
    state = ctx._state
    if event is None:
        while True:
            # One read decides: a cancel accepted after it sets cancel_event, which wakes the wait.
            requested = state.cancel_requested
            if requested and not ctx.shield_depth:
                return False
            remaining = _remaining(deadline)
            if remaining == 0.0:
                return False
            if requested:  # shielded: the cancel cannot wake us
                time.sleep(remaining if remaining is not None else _MAX_SLICE)
            else:
                state.cancel_event.wait(remaining)
    return _wait_for_event(ctx, event, deadline)


def _wait_for_event(ctx: RunContext, event: threading.Event, deadline: float | None) -> bool:
    # threading.Event cannot be waited on together with another Event, so we
    # wait on its own Condition and have the cancel notify that Condition.
    cond = getattr(event, "_cond", None)  # private, and absent from typeshed
    if not isinstance(event, threading.Event) or not isinstance(cond, threading.Condition):
        raise TypeError(f"ctx.wait() takes a threading.Event, not {type(event).__name__}")
    state = ctx._state

    def wake() -> None:
        with cond:
            cond.notify_all()

    REGISTRY.add_callback(state, wake)
    try:
        with cond:
            while not event.is_set():
                if ctx.delivers_cancel:
                    return False
                remaining = _remaining(deadline)
                if remaining == 0.0:
                    return False
                cond.wait(remaining)
            return True
    finally:
        REGISTRY.remove_callback(state, wake)


# One wait's longest slice: threading's limit is lower than math.inf, so longer
# waits (ctx.sleep(math.inf)) are made of slices.
_MAX_SLICE = 3600.0


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return min(_MAX_SLICE, max(0.0, deadline - time.monotonic()))


def cancellation_error(state: RunState) -> CancellationError:
    """The exception a checkpoint of the cancelled run ``state`` raises."""
    return CancellationError(state.run_id, state.reason, state.effective_cause)


def get_context() -> RunContext:
    """The ``RunContext`` of the step now executing; ``RuntimeError`` outside a run."""
    ctx = _CURRENT.get()
    if ctx is None:
        raise RuntimeError("threadflow.get_context() called outside a running step")
    return ctx


def shield() -> _Shield:
    """Postpone cancellation while the block runs (shields nest).

    Checkpoints inside do not raise; a cancel requested meanwhile is kept and
    lands at the first checkpoint after the outermost shield exits. Use it to
    protect a critical section or cleanup that must finish. In an async step
    ``async with shield():`` (or ``with``) keeps the cancel from interrupting
    the step's awaits; it lands at the first ``await`` after the outermost
    shield exits.
    """
    return _Shield()


class _Shield:
    """The context manager ``shield()`` returns: sync and async alike."""

    __slots__ = ("_ctx",)

    def __enter__(self) -> None:
        # Only the thread running this context's step touches its depth: no lock needed.
        ctx = self._ctx = get_context()
        ctx.shield_depth += 1

    def __exit__(self, *exc_info: object) -> None:
        ctx = self._ctx
        ctx.shield_depth -= 1
        if ctx._state.cancel_requested and not ctx.shield_depth:
            hook = _unshield_hook.get()
            if hook is not None:  # an async step: its task is cancelled now, at its next await
                hook()

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)


# Set by threadflow._aio inside an async step's task: lands a cancel that a shield held back.
_unshield_hook: ContextVar[Callable[[], None] | None] = ContextVar("threadflow_unshield_hook", default=None)


def unshield_hook_var() -> ContextVar[Callable[[], None] | None]:
    return _unshield_hook
