"""run_timeout: one shared timer thread for every run of the process.

A run's budget is spent only while it is active: ``pause`` (entering
``ctx.sleep``/``ctx.wait``) banks what is left and ``resume`` re-arms the
deadline. When a deadline passes, the timer thread requests the cancel exactly
as ``cancel_run`` would (cause ``timeout``), so ``on_cancel`` callbacks run
even while the step is blocked. The thread starts on first use and exits when
no deadline is armed.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time

from ._registry import REGISTRY, RunState
from .status import CancelCause

__all__ = ["TIMER"]

logger = logging.getLogger("threadflow")

_IDLE_EXIT_SECONDS = 5.0


class _Timer:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, int, RunState]] = []
        self._stale = 0
        self._counter = 0
        self._thread: threading.Thread | None = None

    def resume(self, state: RunState) -> None:
        """Start (or restart, after a wait) spending the run's budget."""
        if state.budget_left is None:
            return
        now = time.monotonic()
        with self._cond:
            state.active_since = now
            state.timer_generation += 1
            self._counter += 1
            entry = (now + state.budget_left, self._counter, state.timer_generation, state)
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="threadflow-timer", daemon=True)
                self._thread.start()
            elif self._heap[0] is entry:
                self._cond.notify()

    def pause(self, state: RunState) -> None:
        """Stop spending the budget (the run is waiting, or it has ended)."""
        if state.budget_left is None:
            return
        with self._cond:
            state.budget_left -= max(0.0, time.monotonic() - state.active_since)
            self._disarm(state)
            spent = state.budget_left <= 0
        if spent:
            # The deadline passed while this thread held the GIL, so the timer thread had no
            # chance to fire; disarmed now, it never would. Expire the run here instead.
            _expire(state)

    def stop(self, state: RunState) -> None:
        if state.budget_left is None:
            return
        with self._cond:
            self._disarm(state)

    def _disarm(self, state: RunState) -> None:
        state.timer_generation += 1
        self._stale += 1
        if self._stale > 64 and self._stale * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[2] == e[3].timer_generation]
            heapq.heapify(self._heap)
            self._stale = 0

    def _loop(self) -> None:
        try:
            while True:
                expired = self._next_expired()
                if expired is None:
                    return
                for state in expired:
                    try:
                        _expire(state)
                    except BaseException:
                        logger.exception("threadflow: expiring run %s raised", state.run_id)
        finally:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _next_expired(self) -> list[RunState] | None:
        """Block until a deadline passes; None when idle long enough to exit."""
        with self._cond:
            while True:
                while self._heap and self._heap[0][2] != self._heap[0][3].timer_generation:
                    heapq.heappop(self._heap)  # disarmed: drop it now, not at its old deadline
                    self._stale = max(0, self._stale - 1)
                now = time.monotonic()
                expired = []
                while self._heap and self._heap[0][0] <= now:
                    _, _, generation, state = heapq.heappop(self._heap)
                    if generation == state.timer_generation:
                        state.timer_generation += 1
                        expired.append(state)
                    else:
                        self._stale = max(0, self._stale - 1)
                if expired:
                    return expired
                if not self._heap:
                    if not self._cond.wait(_IDLE_EXIT_SECONDS) and not self._heap:
                        # Forget this thread under the same lock that decided it exits:
                        # a deadline armed after this line starts a new thread.
                        self._thread = None
                        return None
                    continue
                self._cond.wait(self._heap[0][0] - now)


def _expire(state: RunState) -> None:
    # The timer serves every run: a slow on_cancel callback must delay only its own run.
    REGISTRY.cancel(state, f"run_timeout of {state.timeout:g}s exceeded", CancelCause.timeout, callbacks_elsewhere=True)


TIMER = _Timer()
