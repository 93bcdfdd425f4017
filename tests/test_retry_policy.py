"""RetryPolicy (SPEC §7): tenacity's own stop / wait / retry strategies, interruptible backoff."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import tenacity

import threadflow
from threadflow import CancelCause, RetryPolicy, RunStatus, Step, StepInput, Workflow, WorkflowError, get_context
from threadflow.events import StepRetryingEvent
from threadflow.exceptions import CancellationError
from threadflow.testing import check_run_events, wait_until

pytestmark = pytest.mark.usefixtures("no_leaked_runs")

WAIT = 30.0
PROMPT = 5.0


class Failing:
    """Raises ``errors[n]`` on attempt n+1 while there is one, then succeeds; records attempts."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.attempts: list[int] = []

    def __call__(self, si: StepInput) -> str:
        attempt = get_context().attempt
        self.attempts.append(attempt)
        if attempt <= len(self.errors):
            raise self.errors[attempt - 1]
        return f"ok on attempt {attempt}"


def delays(events: list[Any]) -> list[float]:
    return [e.delay for e in events if isinstance(e, StepRetryingEvent)]


def test_retry_policy_is_exported() -> None:
    assert threadflow.RetryPolicy is RetryPolicy
    assert "RetryPolicy" in threadflow.__all__


def test_stop_after_attempt_and_wait_exponential_drive_the_retries() -> None:
    step = Failing(*[ConnectionError(f"down {n}") for n in range(4)])
    policy = RetryPolicy(stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_exponential(multiplier=0.01, max=0.04))
    stream = Workflow("r", steps=[Step("call", executor=step, retry=policy)]).run(stream=True)
    events = check_run_events(stream)
    assert step.attempts == [1, 2, 3, 4, 5]
    assert delays(events) == [0.01, 0.02, 0.04, 0.04]
    assert stream.output is not None and stream.output.content == "ok on attempt 5"


def test_the_stop_strategy_gives_up_with_the_last_error() -> None:
    step = Failing(*[ValueError(f"bad {n}") for n in range(5)])
    wf = Workflow("r", steps=[Step("call", executor=step, retry=RetryPolicy(stop=tenacity.stop_after_attempt(3)))])
    with pytest.raises(WorkflowError) as raised:
        wf.run()
    assert step.attempts == [1, 2, 3]
    assert str(raised.value.__cause__) == "bad 2"


def test_retry_if_exception_type_retries_only_the_listed_errors() -> None:
    step = Failing(ConnectionError("flaky"), ValueError("a bug, not a hiccup"), ConnectionError("never reached"))
    policy = RetryPolicy(stop=tenacity.stop_after_attempt(10), retry=tenacity.retry_if_exception_type(ConnectionError))
    stream = Workflow("r", steps=[Step("call", executor=step, retry=policy)]).run(stream=True)
    events = check_run_events(stream)
    assert step.attempts == [1, 2]
    assert stream.output is not None and stream.output.status is RunStatus.error
    assert stream.output.error_type == "ValueError"
    assert [str(e.event) for e in events].count("step_retrying") == 1


def test_stop_after_delay_stops_once_the_time_is_up() -> None:
    step = Failing(*[TimeoutError(f"slow {n}") for n in range(1000)])
    policy = RetryPolicy(stop=tenacity.stop_after_delay(0.2), wait=tenacity.wait_fixed(0.05))
    start = time.monotonic()
    with pytest.raises(WorkflowError):
        Workflow("r", steps=[Step("call", executor=step, retry=policy)]).run()
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < PROMPT
    assert 2 <= len(step.attempts) < 50


def test_combined_stop_strategies() -> None:
    step = Failing(*[OSError(f"e{n}") for n in range(10)])
    policy = RetryPolicy(stop=tenacity.stop_after_attempt(3) | tenacity.stop_after_delay(60))
    with pytest.raises(WorkflowError):
        Workflow("r", steps=[Step("call", executor=step, retry=policy)]).run()
    assert step.attempts == [1, 2, 3]


def test_a_cancel_during_the_backoff_wait_lands_at_once() -> None:
    asked = threading.Event()

    def long_wait(retry_state: tenacity.RetryCallState) -> float:
        asked.set()
        return WAIT

    step = Failing(ConnectionError("down"), ConnectionError("down again"))
    policy = RetryPolicy(stop=tenacity.stop_after_attempt(5), wait=long_wait)
    handle = Workflow("r", steps=[Step("call", executor=step, retry=policy)]).run(background=True)
    assert asked.wait(PROMPT)
    assert wait_until(lambda: handle.status is RunStatus.waiting, PROMPT)  # in the backoff sleep itself
    start = time.monotonic()
    assert handle.cancel("gave up") is True
    out = handle.result(PROMPT)
    assert time.monotonic() - start < PROMPT
    assert (out.status, out.cause, out.reason) == (RunStatus.cancelled, CancelCause.requested, "gave up")
    assert step.attempts == [1]
    assert delays(list(handle.events())) == [WAIT]


def test_a_cancellation_is_never_retried_even_by_a_policy_retrying_everything() -> None:
    attempts: list[int] = []

    def cancels_itself(si: StepInput) -> str:
        attempts.append(get_context().attempt)
        threadflow.cancel_run(si.run_id, "from inside")
        get_context().check_cancellation()
        return "not reached"

    policy = RetryPolicy(stop=tenacity.stop_after_attempt(5), retry=tenacity.retry_if_exception_type(BaseException))
    out = Workflow("r", steps=[Step("call", executor=cancels_itself, retry=policy)]).run()
    assert out.status is RunStatus.cancelled
    assert attempts == [1]
    attempts_state = policy.attempts(lambda seconds: None)
    assert attempts_state.failed(CancellationError("r", None, CancelCause.requested)) is None


def test_an_async_step_is_retried_like_any_other() -> None:
    attempts: list[int] = []

    async def flaky(si: StepInput) -> str:
        await asyncio.sleep(0)
        attempts.append(get_context().attempt)
        if len(attempts) < 3:
            raise ConnectionError("down")
        return "up"

    policy = RetryPolicy(stop=tenacity.stop_after_attempt(3))
    assert Workflow("r", steps=[Step("call", executor=flaky, retry=policy)]).run().content == "up"
    assert attempts == [1, 2, 3]


def test_the_shorthands_remain_and_cannot_be_combined_with_a_policy() -> None:
    step = Failing(ValueError("once"))
    assert Workflow("r", steps=[Step("call", executor=step, max_retries=1)]).run().content == "ok on attempt 2"
    policy = RetryPolicy(stop=tenacity.stop_after_attempt(2))
    with pytest.raises(ValueError, match="not both"):
        Step("call", executor=step, retry=policy, max_retries=2)
    with pytest.raises(ValueError, match="not both"):
        Step("call", executor=step, retry=policy, retry_delay=1.0)
    with pytest.raises(TypeError, match="RetryPolicy"):
        Step("call", executor=step, retry=3)  # type: ignore[arg-type]  # the wrong type is the point
    with pytest.raises(TypeError, match="stop="):
        RetryPolicy(stop=3)  # type: ignore[arg-type]  # the wrong type is the point


def test_defaults_are_tenacitys_never_stop_no_wait_retry_any_exception() -> None:
    step = Failing(*[RuntimeError(f"r{n}") for n in range(7)])
    assert Workflow("r", steps=[Step("call", executor=step, retry=RetryPolicy())]).run().content == "ok on attempt 8"
