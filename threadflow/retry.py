"""Step retries: tenacity's strategies, with its sleep wired to the run's cancel event.

threadflow does not re-implement backoff. A ``RetryPolicy`` builds a
``tenacity.Retrying`` per step execution and asks it, after each failed
attempt, whether to try again and after how long. The runner then emits
``step_retrying`` and sleeps through ``Retrying.sleep``, which is the run's
own interruptible wait, so a cancel during the backoff lands at once.
``CancellationError`` is a ``BaseException`` and never reaches tenacity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tenacity
from tenacity.wait import WaitBaseT

__all__ = ["RetryPolicy"]


class _GiveUp:
    """Returned by tenacity instead of raising when the stop strategy says stop."""


_GIVE_UP = _GiveUp()


class RetryPolicy:
    """How a step is retried: ``max_retries`` more attempts, waiting ``wait`` between them.

    ``wait`` is any tenacity wait strategy (``wait_exponential(...)``,
    ``wait_fixed(...) + wait_random(...)``, ...); by default a fixed
    ``retry_delay``. ``retry_on`` limits which exceptions are retried.
    """

    __slots__ = ("max_retries", "retry_on", "wait")

    def __init__(
        self,
        *,
        max_retries: int = 0,
        retry_delay: float = 0.0,
        wait: WaitBaseT | None = None,
        retry_on: type[Exception] | tuple[type[Exception], ...] = Exception,
    ) -> None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative int, not {max_retries!r}")
        if isinstance(retry_delay, bool) or not isinstance(retry_delay, (int, float)) or retry_delay < 0:
            raise ValueError(f"retry_delay must be a non-negative number, not {retry_delay!r}")
        self.max_retries = max_retries
        self.wait: WaitBaseT = wait if wait is not None else tenacity.wait_fixed(retry_delay)
        self.retry_on = retry_on

    def attempts(self, sleep: Callable[[float], None]) -> Attempts:
        """A fresh retry state for one execution of the step; ``sleep`` waits between attempts."""
        return Attempts(self, sleep)


class Attempts:
    """One step execution's retry state, asked once per failed attempt."""

    __slots__ = ("_retrying", "_state")

    def __init__(self, policy: RetryPolicy, sleep: Callable[[float], None]) -> None:
        self._retrying = tenacity.Retrying(
            sleep=sleep,
            stop=tenacity.stop_after_attempt(policy.max_retries + 1),
            wait=policy.wait,
            retry=tenacity.retry_if_exception_type(policy.retry_on),
            retry_error_callback=lambda _state: _GIVE_UP,
        )
        self._retrying.begin()
        self._state = tenacity.RetryCallState(self._retrying, fn=None, args=(), kwargs={})
        self._retrying.iter(self._state)  # the first attempt

    def failed(self, error: BaseException) -> float | None:
        """Record a failed attempt; the delay before the next one, or None to give up."""
        self._state.set_exception((type(error), error, error.__traceback__))
        action: Any = self._retrying.iter(self._state)
        if isinstance(action, tenacity.DoSleep):
            self._state.prepare_for_next_attempt()
            return float(action)
        return None

    def sleep(self, seconds: float) -> None:
        """The backoff, through tenacity's injected (interruptible) sleep."""
        self._retrying.sleep(seconds)
