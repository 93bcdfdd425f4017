"""Timeouts: one shared timer thread for every deadline of every run of the process.

A run can have two budgets of active time: its ``run_timeout`` (armed when the
run starts, for the whole run) and the running step's ``Step(timeout=)``
(armed when an attempt of the step starts, disarmed when it ends). A budget is
spent only while the run is active: ``pause`` (entering
``ctx.sleep``/``ctx.wait``) banks what each budget has left and ``resume``
re-arms its deadline. When a deadline passes, the timer thread requests the
cancel exactly as ``cancel_run`` would (cause ``timeout``), so ``on_cancel``
callbacks run even while the step is blocked. The thread starts on first use
and exits when no deadline is armed.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time

from ._registry import REGISTRY, RunState
from .status import CancelCause

__all__ = ["TIMER", "Budget"]

logger = logging.getLogger("threadflow")

_IDLE_EXIT_SECONDS = 5.0


class Budget:
    """A limit on one run's active time; its fields change only under the timer's lock.

    ``generation`` changes whenever the budget is disarmed (or fires), which
    makes any heap entry armed before stale.
    """

    __slots__ = ("active_since", "generation", "left", "reason", "state")

    def __init__(self, state: RunState, seconds: float, reason: str) -> None:
        self.state = state
        self.left = seconds
        self.reason = reason
        self.active_since = 0.0
        self.generation = 0


def _budgets(state: RunState) -> tuple[Budget, ...]:
    run, step = state.run_budget, state.step_budget
    if step is None:
        return () if run is None else (run,)
    return (step,) if run is None else (run, step)


class _Timer:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, int, Budget]] = []
        self._stale = 0
        self._counter = 0
        self._thread: threading.Thread | None = None

    # -- a run's budgets ------------------------------------------------------

    def resume(self, state: RunState) -> None:
        """Start (or restart, after a wait) spending the run's budgets; the first call makes its run budget."""
        if state.run_budget is None and state.timeout is not None:
            state.run_budget = Budget(state, state.timeout, f"run_timeout of {state.timeout:g}s exceeded")
        budgets = _budgets(state)
        if budgets:
            with self._cond:
                for budget in budgets:
                    self._arm(budget)

    def pause(self, state: RunState) -> None:
        """Stop spending the budgets (the run is waiting)."""
        budgets = _budgets(state)
        if budgets:
            self._bank(budgets)

    def stop(self, state: RunState) -> None:
        """The run has ended: disarm everything."""
        budgets = _budgets(state)
        if budgets:
            with self._cond:
                for budget in budgets:
                    self._disarm(budget)

    # -- a step's budget --------------------------------------------------------

    def start_step(self, state: RunState, seconds: float, step_name: str, *, nested: bool = False) -> Budget:
        """Arm a budget of ``seconds`` for the attempt of ``step_name`` that starts now.

        A top-level step's budget is the run's ``step_budget``: paused while the run
        waits. A ``nested`` one (a step inside a composite step, perhaps one of several
        running at once) is the caller's alone and counts wall time.
        """
        budget = Budget(state, seconds, f"step {step_name!r} timeout of {seconds:g}s exceeded")
        with self._cond:
            if not nested:
                state.step_budget = budget
            self._arm(budget)
        return budget

    def end_step(self, state: RunState, budget: Budget | None = None) -> None:
        """Disarm a step's budget (the run's by default); if it ran out, the cancel is accepted before this returns.

        So a step that overran is cancelled as that step, never at the start of the next one.
        """
        if budget is None or budget is state.step_budget:
            budget, state.step_budget = state.step_budget, None
        if budget is not None:
            self._bank((budget,))

    # -- machinery ------------------------------------------------------------

    def _bank(self, budgets: tuple[Budget, ...]) -> None:
        now = time.monotonic()
        with self._cond:
            for budget in budgets:
                budget.left -= max(0.0, now - budget.active_since)
                self._disarm(budget)
        spent = sorted((b for b in budgets if b.left <= 0), key=lambda b: b.left)
        if spent:
            # The deadline passed while this thread held the GIL, so the timer thread had no
            # chance to fire (or has fired and not yet cancelled); disarmed now, it never would.
            # The budget that ran out first gives the cause: the first cancel wins.
            _expire(spent[0])

    def _arm(self, budget: Budget) -> None:
        now = time.monotonic()
        budget.active_since = now
        budget.generation += 1
        self._counter += 1
        entry = (now + budget.left, self._counter, budget.generation, budget)
        heapq.heappush(self._heap, entry)
        if self._thread is None:
            thread = threading.Thread(target=self._loop, name="threadflow-timer", daemon=True)
            # Recorded once started: a start() that fails (the process's thread limit) must not leave
            # a thread that never runs standing in for the timer, silencing every later deadline.
            thread.start()
            self._thread = thread
        elif self._heap[0] is entry:
            self._cond.notify()

    def _disarm(self, budget: Budget) -> None:
        budget.generation += 1
        self._stale += 1
        if self._stale > 64 and self._stale * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[2] == e[3].generation]
            heapq.heapify(self._heap)
            self._stale = 0

    def _loop(self) -> None:
        try:
            while True:
                expired = self._next_expired()
                if expired is None:
                    return
                for budget in expired:
                    try:
                        _expire(budget)
                    except BaseException:
                        logger.exception("threadflow: expiring run %s raised", budget.state.run_id)
        finally:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _next_expired(self) -> list[Budget] | None:
        """Block until a deadline passes; None when idle long enough to exit."""
        with self._cond:
            while True:
                while self._heap and self._heap[0][2] != self._heap[0][3].generation:
                    heapq.heappop(self._heap)  # disarmed: drop it now, not at its old deadline
                    self._stale = max(0, self._stale - 1)
                now = time.monotonic()
                expired = []
                while self._heap and self._heap[0][0] <= now:
                    _, _, generation, budget = heapq.heappop(self._heap)
                    if generation == budget.generation:
                        budget.generation += 1
                        expired.append(budget)
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


def _expire(budget: Budget) -> None:
    # The timer serves every run: a slow on_cancel callback must delay only its own run.
    REGISTRY.cancel(budget.state, budget.reason, CancelCause.timeout, callbacks_elsewhere=True)


TIMER = _Timer()
