"""``Step(timeout=)`` (SPEC §7): a per-attempt budget of active time, cancelled with cause ``timeout``.

As in test_timeouts.py, timing is one-sided: a step that must time out is
stopped only by the timeout (it would otherwise run for WAIT seconds and then
complete), and a step that must not time out spends several times its budget
where the budget is not spent (in ``ctx.sleep``, or in another step).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import WAIT, names
from test_timeouts import BUDGET, spin, spin_until_cancelled

from threadflow import Agent, CancelCause, CancellationError, RunStatus, Step, StepInput, Workflow, get_context
from threadflow.events import RunCancelledEvent, StepRetryingEvent, WorkflowCancelledEvent
from threadflow.output import WorkflowRunOutput
from threadflow.testing import check_run_events


def quick(si: StepInput) -> str:
    return "quick"


def assert_step_timed_out(output: WorkflowRunOutput, step: str, limit: float) -> None:
    assert (output.status, output.cause, output.step_name) == (RunStatus.cancelled, CancelCause.timeout, step)
    assert output.reason == f"step {step!r} timeout of {limit:g}s exceeded"


def test_a_step_that_runs_too_long_is_cancelled_with_cause_timeout_naming_the_step() -> None:
    wf = Workflow("t", steps=[quick, Step("slow", executor=spin, timeout=BUDGET), quick])

    stream = wf.run(stream=True)
    events = check_run_events(stream)

    assert stream.output is not None
    assert_step_timed_out(stream.output, "slow", BUDGET)
    terminal = events[-1]
    assert isinstance(terminal, WorkflowCancelledEvent)
    assert (terminal.cause, terminal.step_name) == (CancelCause.timeout, "slow")
    assert "step_started" in names(events) and names(events).count("step_completed") == 1  # the first step only


def test_step_timeout_fires_while_the_step_is_blocked_and_on_cancel_unblocks_it() -> None:
    calls: list[int] = []
    step_thread: list[int] = []

    def blocked(si: StepInput) -> str:
        unblock = threading.Event()
        step_thread.append(threading.get_ident())

        def on_cancel() -> None:
            calls.append(threading.get_ident())
            unblock.set()

        get_context().on_cancel(on_cancel)
        unblock.wait(WAIT)  # foreign blocking code: no checkpoint until it returns
        return "late result"

    output = Workflow("t", steps=[Step("blocked", executor=blocked, timeout=BUDGET)]).run()

    assert_step_timed_out(output, "blocked", BUDGET)
    assert output.content is None and "blocked" not in output.step_outputs  # the late result is discarded
    assert len(calls) == 1
    assert calls != step_thread  # requested by the timer, not found by the step itself


def test_step_timeout_in_a_streaming_step_is_thrown_in_at_its_yield() -> None:
    cleanup: list[CancelCause] = []

    def ticker(si: StepInput) -> Iterator[str]:
        try:
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                yield "tick"
        except CancellationError as cancelled:
            cleanup.append(cancelled.cause)
            raise

    stream = Workflow("t", steps=[Step("ticker", executor=ticker, timeout=BUDGET)]).run(stream=True)
    events = check_run_events(stream)

    assert cleanup == [CancelCause.timeout]
    assert names(events)[-2:] == ["run_cancelled", "workflow_cancelled"]
    assert isinstance(events[-2], RunCancelledEvent) and events[-2].cause is CancelCause.timeout
    assert stream.output is not None
    assert_step_timed_out(stream.output, "ticker", BUDGET)


def test_step_timeout_applies_to_an_agent_step() -> None:
    class BusyModel:
        """Streams tokens for WAIT seconds without ever waiting: only the timeout stops it."""

        def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                yield "token "

    step = Step("writer", agent=Agent("writer", model=BusyModel()), timeout=BUDGET)
    stream = Workflow("t", steps=[step]).run(stream=True)
    events = check_run_events(stream)

    assert names(events)[-2:] == ["run_cancelled", "workflow_cancelled"]
    assert stream.output is not None
    assert_step_timed_out(stream.output, "writer", BUDGET)


def test_step_timeout_in_a_background_run() -> None:
    handle = Workflow("t", steps=[Step("slow", executor=spin, timeout=BUDGET)]).run(background=True)
    assert_step_timed_out(handle.result(WAIT), "slow", BUDGET)


def test_time_in_ctx_sleep_and_ctx_wait_does_not_count_toward_the_step_timeout() -> None:
    never = threading.Event()

    def patient(si: StepInput) -> str:
        ctx = get_context()
        ctx.sleep(2 * BUDGET)
        assert ctx.wait(never, timeout=2 * BUDGET) is False
        return "waited"

    output = Workflow("t", steps=[Step("patient", executor=patient, timeout=BUDGET)]).run()
    assert (output.status, output.content) == (RunStatus.completed, "waited")


def test_the_step_budget_left_after_a_wait_is_kept_not_reset() -> None:
    phases: list[str] = []

    def step(si: StepInput) -> str:
        spin_until_cancelled(0.3)  # 0.3 of 0.5 spent
        phases.append("first")
        get_context().sleep(1.0)  # free
        phases.append("slept")
        spin_until_cancelled(0.4)  # 0.2 left: the timeout lands in here, unless the wait reset the budget
        phases.append("second")
        return "not cancelled"

    output = Workflow("t", steps=[Step("step", executor=step, timeout=0.5)]).run()
    assert phases == ["first", "slept"]
    assert_step_timed_out(output, "step", 0.5)


def test_a_step_that_ends_in_time_leaves_no_deadline_armed_for_the_steps_after_it() -> None:
    def long_but_untimed(si: StepInput) -> str:
        spin_until_cancelled(3 * BUDGET)  # three times the first step's budget, in a step without one
        return "done"

    steps = [Step("timed", executor=quick, timeout=BUDGET), Step("untimed", executor=long_but_untimed)]
    output = Workflow("t", steps=steps).run()
    assert (output.status, output.content) == (RunStatus.completed, "done")


def test_each_step_has_its_own_budget() -> None:
    def most_of_it(si: StepInput) -> str:
        spin_until_cancelled(0.6 * BUDGET)
        return "ok"

    steps = [Step(f"s{i}", executor=most_of_it, timeout=BUDGET) for i in range(4)]  # 2.4 budgets in all
    output = Workflow("t", steps=steps).run()
    assert output.status is RunStatus.completed


def test_run_timeout_first_wins_over_a_longer_step_timeout() -> None:
    wf = Workflow("t", steps=[Step("slow", executor=spin, timeout=WAIT / 2)], run_timeout=BUDGET)
    output = wf.run()
    assert (output.status, output.cause, output.step_name) == (RunStatus.cancelled, CancelCause.timeout, "slow")
    assert output.reason == f"run_timeout of {BUDGET:g}s exceeded"


def test_step_timeout_first_wins_over_a_longer_run_timeout() -> None:
    wf = Workflow("t", steps=[Step("slow", executor=spin, timeout=BUDGET)], run_timeout=WAIT / 2)
    assert_step_timed_out(wf.run(), "slow", BUDGET)


def test_run_timeout_still_counts_across_steps_that_each_end_within_their_own() -> None:
    def most_of_it(si: StepInput) -> str:
        spin_until_cancelled(0.6 * BUDGET)
        return "ok"

    steps = [Step(f"s{i}", executor=most_of_it, timeout=BUDGET) for i in range(4)]
    output = Workflow("t", steps=steps).run(run_timeout=BUDGET)
    assert (output.status, output.cause) == (RunStatus.cancelled, CancelCause.timeout)
    assert output.step_name != "s0"  # due in s1; later only if this machine is slow to run the timer thread
    assert output.reason == f"run_timeout of {BUDGET:g}s exceeded"


# -- retries: the timeout is per attempt, and a timed-out attempt is not retried ----------


def test_the_step_timeout_is_per_attempt() -> None:
    attempts: list[int] = []

    def flaky(si: StepInput) -> str:
        attempts.append(get_context().attempt)
        spin_until_cancelled(0.6 * BUDGET)  # every attempt within the budget, all three together well over it
        if len(attempts) < 3:
            raise RuntimeError("flaky")
        return "recovered"

    output = Workflow("t", steps=[Step("flaky", executor=flaky, max_retries=2, timeout=BUDGET)]).run()
    assert (output.status, output.content, attempts) == (RunStatus.completed, "recovered", [1, 2, 3])


def test_an_attempt_that_times_out_ends_the_run_and_is_not_retried() -> None:
    attempts: list[int] = []

    def fails_then_hangs(si: StepInput) -> str:
        attempts.append(get_context().attempt)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails at once")
        return spin_until_cancelled()

    stream = Workflow("t", steps=[Step("s", executor=fails_then_hangs, max_retries=5, timeout=BUDGET)]).run(stream=True)
    events = check_run_events(stream)
    assert stream.output is not None
    assert_step_timed_out(stream.output, "s", BUDGET)
    assert attempts == [1, 2]
    assert len([e for e in events if isinstance(e, StepRetryingEvent)]) == 1


def test_retry_backoff_does_not_count_toward_the_step_timeout() -> None:
    failures: list[int] = []

    def flaky(si: StepInput) -> str:
        if not failures:
            failures.append(1)
            raise RuntimeError("first attempt fails")
        return "recovered"

    step = Step("flaky", executor=flaky, max_retries=1, retry_delay=3 * BUDGET, timeout=BUDGET)
    output = Workflow("t", steps=[step]).run()
    assert (output.status, output.content) == (RunStatus.completed, "recovered")


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, float("nan"), math.inf, True, "1"])
def test_step_timeout_must_be_a_positive_finite_number(bad: object) -> None:
    with pytest.raises(ValueError, match="step 's': timeout must be a positive finite number of seconds or None"):
        Step("s", executor=quick, timeout=bad)  # type: ignore[arg-type]


def test_step_timeout_none_and_numbers_are_accepted() -> None:
    assert Step("s", executor=quick).timeout is None
    assert Step("s", executor=quick, timeout=2).timeout == 2.0
