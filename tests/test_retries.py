"""Step retries (issue 3): tenacity's strategies, ``step_retrying`` events, and cancels that are never retried."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import tenacity

import threadflow
from threadflow import CancelCause, RunStatus, Step, StepInput, Workflow, WorkflowError, get_context
from threadflow.events import BaseEvent, StepRetryingEvent
from threadflow.testing import check_run_events

pytestmark = pytest.mark.usefixtures("no_leaked_runs")

WAIT = 10.0


def names(events: Sequence[BaseEvent]) -> list[str]:
    return [str(e.event) for e in events]


def retrying_events(events: Sequence[BaseEvent]) -> list[StepRetryingEvent]:
    return [e for e in events if isinstance(e, StepRetryingEvent)]


class Flaky:
    """An executor that fails its first ``failures`` attempts, recording each attempt it sees."""

    def __init__(self, failures: int, error: Callable[[int], Exception] = lambda n: ValueError(f"fail {n}")) -> None:
        self.failures = failures
        self.error = error
        self.attempts: list[int] = []
        self.times: list[float] = []

    def __call__(self, si: StepInput) -> str:
        attempt = get_context().attempt
        self.attempts.append(attempt)
        self.times.append(time.monotonic())
        if attempt <= self.failures:
            raise self.error(attempt)
        return f"ok on attempt {attempt}"


def test_the_output_after_a_success_on_attempt_three() -> None:
    flaky = Flaky(failures=2)
    wf = Workflow("r", steps=[Step("flaky", executor=flaky, max_retries=3)])

    stream = wf.run(stream=True)
    events = check_run_events(stream)

    assert flaky.attempts == [1, 2, 3]
    assert stream.output is not None
    assert (stream.output.status, stream.output.content) == (RunStatus.completed, "ok on attempt 3")
    assert names(events) == [
        "workflow_started",
        "step_started",
        "step_retrying",
        "step_retrying",
        "step_completed",
        "workflow_completed",
    ]
    retries = retrying_events(events)
    assert [(r.attempt, r.error, r.error_type, r.delay) for r in retries] == [
        (1, "fail 1", "ValueError", 0.0),
        (2, "fail 2", "ValueError", 0.0),
    ]
    assert all(r.step_name == "flaky" and r.step_index == 0 for r in retries)


def test_giving_up_after_max_retries_is_a_workflow_error_caused_by_the_last_failure() -> None:
    raised: list[Exception] = []

    def error(n: int) -> Exception:
        raised.append(OSError(f"attempt {n} failed"))
        return raised[-1]

    flaky = Flaky(failures=99, error=error)
    wf = Workflow("r", steps=[Step("flaky", executor=flaky, max_retries=2)])

    with pytest.raises(WorkflowError) as info:
        wf.run()

    assert flaky.attempts == [1, 2, 3]
    assert info.value.__cause__ is raised[-1]
    assert info.value.output.status is RunStatus.error
    assert info.value.output.error == "attempt 3 failed"
    events = check_run_events(wf.run(stream=True))
    assert names(events).count("step_retrying") == 2  # none after the last attempt
    assert names(events)[-1] == "workflow_error"


def test_retry_delay_is_reported_and_waited() -> None:
    flaky = Flaky(failures=1)
    wf = Workflow("r", steps=[Step("flaky", executor=flaky, max_retries=1, retry_delay=0.05)])

    events = check_run_events(wf.run(stream=True))

    assert [r.delay for r in retrying_events(events)] == [0.05]
    assert flaky.times[1] - flaky.times[0] >= 0.05


def test_retry_wait_takes_a_tenacity_wait_strategy() -> None:
    flaky = Flaky(failures=3)
    wait = tenacity.wait_incrementing(start=0.01, increment=0.02)
    wf = Workflow("r", steps=[Step("flaky", executor=flaky, max_retries=3, retry_wait=wait)])

    events = check_run_events(wf.run(stream=True))

    assert [r.delay for r in retrying_events(events)] == pytest.approx([0.01, 0.03, 0.05])
    assert flaky.attempts == [1, 2, 3, 4]


def test_retry_wait_is_asked_with_tenacitys_retry_state() -> None:
    seen: list[tuple[int, str]] = []

    def wait(state: tenacity.RetryCallState) -> float:
        assert state.outcome is not None
        seen.append((state.attempt_number, str(state.outcome.exception())))
        return 0.0

    flaky = Flaky(failures=2)
    wf = Workflow("r", steps=[Step("flaky", executor=flaky, max_retries=5, retry_wait=wait)])

    assert wf.run().content == "ok on attempt 3"
    assert seen == [(1, "fail 1"), (2, "fail 2")]


def test_a_streaming_step_is_retried_and_the_failed_attempts_content_is_not_its_output() -> None:
    attempts: list[int] = []

    def chunks(si: StepInput) -> Iterator[str]:
        attempt = get_context().attempt
        attempts.append(attempt)
        yield f"partial {attempt} "
        if attempt == 1:
            raise ConnectionError("stream dropped")
        yield "rest"

    wf = Workflow("r", steps=[Step("chunks", executor=chunks, max_retries=1)])
    stream = wf.run(stream=True)
    events = check_run_events(stream)

    assert attempts == [1, 2]
    assert names(events) == [
        "workflow_started",
        "step_started",
        "run_started",
        "run_content",
        "run_error",
        "step_retrying",
        "run_started",
        "run_content",
        "run_content",
        "run_completed",
        "step_completed",
        "workflow_completed",
    ]
    assert stream.output is not None
    assert stream.output.content == "partial 2 rest"


def test_no_retries_by_default() -> None:
    flaky = Flaky(failures=1)
    with pytest.raises(WorkflowError):
        Workflow("r", steps=[flaky]).run()
    assert flaky.attempts == [1]


# -- cancellation is never retried -------------------------------------------------------


def test_a_cancellation_error_is_never_retried() -> None:
    parked = threading.Event()
    attempts: list[int] = []

    def step(si: StepInput) -> str:
        attempts.append(get_context().attempt)
        parked.set()
        get_context().wait()
        return "unreachable"

    wf = Workflow("r", steps=[Step("step", executor=step, max_retries=5)])
    handle = wf.run(background=True)
    assert parked.wait(WAIT)
    assert handle.cancel("stop") is True

    output = handle.result(WAIT)
    assert output.status is RunStatus.cancelled
    assert attempts == [1]
    assert "step_retrying" not in names(check_run_events(handle.events()))


def test_an_error_caused_by_the_cancel_is_not_retried() -> None:
    """on_cancel closes the "connection"; the step then fails with an ordinary error, which must not be retried."""
    parked = threading.Event()
    attempts: list[int] = []

    def step(si: StepInput) -> str:
        ctx = get_context()
        attempts.append(ctx.attempt)
        closed = threading.Event()
        ctx.on_cancel(closed.set)
        parked.set()
        closed.wait(WAIT)
        raise ConnectionResetError("connection closed")

    wf = Workflow("r", steps=[Step("step", executor=step, max_retries=5)])
    handle = wf.run(background=True)
    assert parked.wait(WAIT)
    assert handle.cancel() is True

    assert handle.result(WAIT).status is RunStatus.cancelled
    assert attempts == [1]
    assert "step_retrying" not in names(check_run_events(handle.events()))


def test_a_cancel_during_the_backoff_wakes_it_at_once() -> None:
    attempts: list[int] = []
    second_attempt = threading.Event()

    def step(si: StepInput) -> str:
        attempts.append(get_context().attempt)
        if get_context().attempt > 1:
            second_attempt.set()
        raise RuntimeError("always fails")

    # A 60 s backoff: only a prompt wake-up lets the run end within WAIT.
    wf = Workflow("r", steps=[Step("step", executor=step, max_retries=3, retry_delay=60)])
    handle = wf.run(background=True)
    events = handle.events()
    for event in events:
        if isinstance(event, StepRetryingEvent):
            assert event.delay == 60
            break
    assert handle.cancel("no more retries") is True

    assert handle.wait(WAIT), "the backoff was not interrupted by the cancel"
    output = handle.result(0)
    assert (output.status, output.cause, output.reason) == (
        RunStatus.cancelled,
        CancelCause.requested,
        "no more retries",
    )
    assert not second_attempt.is_set()
    assert attempts == [1]
    assert names(check_run_events(handle.events()))[-2:] == ["step_retrying", "workflow_cancelled"]


def test_a_cancel_during_a_tenacity_wait_strategys_backoff_wakes_it_too() -> None:
    flaky = Flaky(failures=99)
    wait = tenacity.wait_exponential(multiplier=60)
    wf = Workflow("r", steps=[Step("flaky", executor=flaky, max_retries=3, retry_wait=wait)])
    handle = wf.run(background=True)
    delays: list[float] = []
    for event in handle.events():
        if isinstance(event, StepRetryingEvent):
            delays.append(event.delay)
            break
    assert delays == [60]
    assert cancel_from_another_thread(handle.run_id) is True
    assert handle.wait(WAIT)
    assert handle.result(0).status is RunStatus.cancelled
    assert flaky.attempts == [1]


def cancel_from_another_thread(run_id: str) -> bool:
    """Cancel from a thread of its own, as another part of an application would."""
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(threadflow.cancel_run(run_id)))
    thread.start()
    thread.join(WAIT)
    return result[0]


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "bad"), [("max_retries", -1), ("max_retries", True), ("retry_delay", -0.1)])
def test_bad_retry_options_are_rejected(option: str, bad: Any) -> None:
    with pytest.raises(ValueError, match=option):
        Step("s", executor=lambda si: None, **{option: bad})
