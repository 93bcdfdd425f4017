"""Step retries: tenacity's strategies, with its sleep wired to the run's cancel event.

threadflow does not re-implement backoff. A ``RetryPolicy`` holds tenacity's
own strategy objects — ``stop`` (when to give up), ``wait`` (how long to back
off), ``retry`` (which failures to retry) — and builds a ``tenacity.Retrying``
per step execution, asking it after each failed attempt whether to try again
and after how long (tenacity's ``RetryCallState`` carries the attempt number,
the outcome and the elapsed time the strategies read). The runner then emits
``step_retrying`` and sleeps through ``Retrying.sleep``, which is the run's
own interruptible wait, so a cancel during the backoff lands at once.
``CancellationError`` is never retried, whatever the ``retry`` strategy says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tenacity
from tenacity.retry import RetryBaseT
from tenacity.stop import StopBaseT
from tenacity.wait import WaitBaseT

from .exceptions import CancellationError

__all__ = ["RetryPolicy"]


class _GiveUp:
    """Returned by tenacity instead of raising when the stop strategy says stop."""


_GIVE_UP = _GiveUp()


class RetryPolicy:
    """How a failed step is retried, in tenacity's own terms.

    ``RetryPolicy(stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_exponential(max=10),
    retry=tenacity.retry_if_exception_type(ConnectionError))``. Any tenacity
    strategy, or combination of them (``stop_after_attempt(5) | stop_after_delay(30)``),
    fits. What is left out takes tenacity's default: never stop, do not wait,
    retry every ``Exception``. Strategies judge failed attempts only (a step
    that returns has succeeded: ``retry_if_result`` is never consulted).
    """

    __slots__ = ("retry", "stop", "wait")

    def __init__(
        self,
        *,
        stop: StopBaseT | None = None,
        wait: WaitBaseT | None = None,
        retry: RetryBaseT | None = None,
    ) -> None:
        for what, strategy in (("stop", stop), ("wait", wait), ("retry", retry)):
            if strategy is not None and not callable(strategy):
                raise TypeError(f"RetryPolicy {what}= takes a tenacity strategy, not {type(strategy).__name__}")
        self.stop: StopBaseT = stop if stop is not None else tenacity.stop_never
        self.wait: WaitBaseT = wait if wait is not None else tenacity.wait_none()
        self.retry: RetryBaseT = retry if retry is not None else tenacity.retry_if_exception_type()

    @classmethod
    def from_shorthands(
        cls, max_retries: int = 0, retry_delay: float = 0.0, wait: WaitBaseT | None = None
    ) -> RetryPolicy | None:
        """``Step(max_retries=, retry_delay=)`` as a policy; None when they ask for no retries."""
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative int, not {max_retries!r}")
        if isinstance(retry_delay, bool) or not isinstance(retry_delay, (int, float)) or not retry_delay >= 0:
            raise ValueError(f"retry_delay must be a non-negative number, not {retry_delay!r}")
        if max_retries == 0:
            return None
        wait = wait if wait is not None else tenacity.wait_fixed(retry_delay)
        return cls(stop=tenacity.stop_after_attempt(max_retries + 1), wait=wait)

    def attempts(self, sleep: Callable[[float], None]) -> Attempts:
        """A fresh retry state for one execution of the step; ``sleep`` waits between attempts."""
        return Attempts(self, sleep)

    def __repr__(self) -> str:
        return f"RetryPolicy(stop={self.stop!r}, wait={self.wait!r}, retry={self.retry!r})"


class Attempts:
    """One step execution's retry state, asked once per failed attempt."""

    __slots__ = ("_retrying", "_state")

    def __init__(self, policy: RetryPolicy, sleep: Callable[[float], None]) -> None:
        self._retrying = tenacity.Retrying(
            sleep=sleep,
            stop=policy.stop,
            wait=policy.wait,
            retry=policy.retry,
            retry_error_callback=lambda _state: _GIVE_UP,
        )
        self._retrying.begin()
        self._state = tenacity.RetryCallState(self._retrying, fn=None, args=(), kwargs={})
        self._retrying.iter(self._state)  # the first attempt

    def failed(self, error: BaseException) -> float | None:
        """Record a failed attempt; the delay before the next one, or None to give up."""
        if isinstance(error, CancellationError):
            return None
        self._state.set_exception((type(error), error, error.__traceback__))
        try:
            action: Any = self._retrying.iter(self._state)
        except BaseException as raised:
            if raised is error:  # the retry strategy declined it: tenacity hands the outcome back
                return None
            raise
        if isinstance(action, tenacity.DoSleep):
            self._state.prepare_for_next_attempt()
            return float(action)
        return None

    def sleep(self, seconds: float) -> None:
        """The backoff, through tenacity's injected (interruptible) sleep."""
        self._retrying.sleep(seconds)
