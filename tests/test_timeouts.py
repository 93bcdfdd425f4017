"""``run_timeout`` (SPEC §3 rule 9, issue 3): a cancel with cause ``timeout`` that does not count waiting.

Timing here is one-sided: a run that must time out is stopped only by the
timeout (its step would otherwise run for WAIT seconds and then complete), and
a run that must not time out spends several times its budget inside
``ctx.sleep`` / ``ctx.wait``, where the budget is not spent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from conftest import WAIT, names

from threadflow import CancelCause, CancellationError, RunStatus, Step, StepInput, Workflow, get_context
from threadflow.events import RunCancelledEvent, WorkflowCancelledEvent
from threadflow.testing import check_run_events

BUDGET = 0.3


def spin_until_cancelled(seconds: float = WAIT) -> str:
    """Busy work with checkpoints and no waiting; returns only if nothing cancels it in time."""
    ctx = get_context()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ctx.check_cancellation()
    return "not cancelled"


def spin(si: StepInput) -> str:
    return spin_until_cancelled()


def assert_timed_out(output_cause: object, output_reason: object, limit: float) -> None:
    assert output_cause is CancelCause.timeout
    assert isinstance(output_reason, str)
    assert f"{limit:g}" in output_reason, f"the reason should name the limit: {output_reason!r}"


def test_workflow_run_timeout_cancels_with_cause_timeout_and_a_reason_naming_the_limit() -> None:
    wf = Workflow("t", steps=[spin], run_timeout=BUDGET)

    stream = wf.run(stream=True)
    events = check_run_events(stream)

    output = stream.output
    assert output is not None
    assert output.status is RunStatus.cancelled
    assert_timed_out(output.cause, output.reason, BUDGET)
    terminal = events[-1]
    assert isinstance(terminal, WorkflowCancelledEvent)
    assert_timed_out(terminal.cause, terminal.reason, BUDGET)
    assert terminal.step_name == "spin"


def test_per_run_timeout_applies_and_overrides_the_workflows() -> None:
    plain = Workflow("t", steps=[spin])
    generous = Workflow("t2", steps=[spin], run_timeout=60)

    for wf in (plain, generous):
        output = wf.run(run_timeout=0.25)
        assert output.status is RunStatus.cancelled
        assert_timed_out(output.cause, output.reason, 0.25)


def test_a_run_that_ends_within_its_timeout_completes() -> None:
    wf = Workflow("t", steps=[lambda si: "quick"], run_timeout=30)
    assert wf.run().status is RunStatus.completed
    handle = wf.run(background=True)
    assert handle.result(WAIT).status is RunStatus.completed


def test_background_run_times_out_with_cause_timeout() -> None:
    wf = Workflow("t", steps=[spin])
    handle = wf.run(background=True, run_timeout=BUDGET)
    output = handle.result(WAIT)
    assert output.status is RunStatus.cancelled
    assert_timed_out(output.cause, output.reason, BUDGET)
    assert handle.cancel() is False


# -- waiting does not count --------------------------------------------------------------


def test_time_in_ctx_sleep_does_not_count() -> None:
    def sleeper(si: StepInput) -> str:
        get_context().sleep(3 * BUDGET)
        return "slept"

    output = Workflow("t", steps=[sleeper], run_timeout=BUDGET).run()
    assert (output.status, output.content) == (RunStatus.completed, "slept")


def test_time_in_ctx_wait_does_not_count() -> None:
    never = threading.Event()

    def waiter(si: StepInput) -> str:
        ctx = get_context()
        assert ctx.wait(never, timeout=1.5 * BUDGET) is False
        assert ctx.wait(timeout=1.5 * BUDGET) is False
        return "waited"

    output = Workflow("t", steps=[waiter], run_timeout=BUDGET).run()
    assert (output.status, output.content) == (RunStatus.completed, "waited")


def test_waiting_in_several_steps_and_a_retry_backoff_does_not_count() -> None:
    failures: list[int] = []

    def flaky(si: StepInput) -> str:
        if not failures:
            failures.append(1)
            raise RuntimeError("first attempt fails")
        return "recovered"

    def sleeper(si: StepInput) -> str:
        get_context().sleep(1.5 * BUDGET)
        return str(si.previous_step_content)

    wf = Workflow(
        "t",
        steps=[Step("flaky", executor=flaky, max_retries=1, retry_delay=1.5 * BUDGET), sleeper],
        run_timeout=BUDGET,
    )
    output = wf.run()
    assert (output.status, output.content) == (RunStatus.completed, "recovered")


def test_the_budget_left_after_a_wait_is_kept_not_reset() -> None:
    budget = 0.5
    phases: list[str] = []

    def step(si: StepInput) -> str:
        spin_until_cancelled(0.3)  # 0.3 of 0.5 spent
        phases.append("first")
        get_context().sleep(3 * budget)  # free
        phases.append("slept")
        spin_until_cancelled(0.4)  # 0.2 left: the timeout lands in here, unless the wait reset the budget
        phases.append("second")
        return "not cancelled"

    output = Workflow("t", steps=[step], run_timeout=budget).run()
    assert phases == ["first", "slept"]
    assert output.status is RunStatus.cancelled
    assert output.cause is CancelCause.timeout


def test_a_step_that_alternates_short_bursts_of_work_with_ctx_sleep_still_times_out() -> None:
    """The budget runs out during a burst that holds the GIL and then enters ``ctx.sleep``.

    Each burst is shorter than the interpreter's thread switch interval, so
    the timer thread cannot run before the step pauses its budget again: the
    run must notice the spent budget itself when it enters the wait.
    """
    bursts: list[int] = []

    def step(si: StepInput) -> str:
        ctx = get_context()
        for burst in range(200):  # 200 x 1 ms of work: four times the budget
            bursts.append(burst)
            deadline = time.monotonic() + 0.001
            while time.monotonic() < deadline:
                ctx.check_cancellation()
            ctx.sleep(0.0001)
        return "not cancelled"

    output = Workflow("t", steps=[step], run_timeout=0.05).run()

    assert output.status is RunStatus.cancelled, f"ran all {len(bursts)} bursts"
    assert_timed_out(output.cause, output.reason, 0.05)
    assert len(bursts) < 200


# -- blocked steps -----------------------------------------------------------------


def test_timeout_fires_during_a_blocking_step_and_its_on_cancel_callback_unblocks_it() -> None:
    calls: list[int] = []
    step_thread: list[int] = []

    def blocked(si: StepInput) -> str:
        ctx = get_context()
        unblock = threading.Event()
        step_thread.append(threading.get_ident())

        def on_cancel() -> None:
            calls.append(threading.get_ident())
            unblock.set()

        ctx.on_cancel(on_cancel)
        unblock.wait(WAIT)  # foreign blocking code: no checkpoint until it returns
        return "late result"

    output = Workflow("t", steps=[blocked], run_timeout=BUDGET).run()

    assert output.status is RunStatus.cancelled
    assert_timed_out(output.cause, output.reason, BUDGET)
    assert output.content is None  # the step's result after the cancel is discarded
    # once, and not from the blocked step's thread: the timer requested the cancel
    assert len(calls) == 1
    assert calls != step_thread


def test_timeout_fires_during_a_busy_wait_that_never_calls_ctx_wait() -> None:
    callback_ran = threading.Event()
    stopped_by: list[str] = []

    def busy(si: StepInput) -> str:
        ctx = get_context()
        never = threading.Event()
        ctx.on_cancel(callback_ran.set)
        while not never.wait(0.005):  # polls a flag the way foreign code would; no checkpoint
            if ctx.cancel_requested:
                stopped_by.append(str(ctx.cancel_cause))
                break
        return "stopped"

    handle = Workflow("t", steps=[busy], run_timeout=BUDGET).run(background=True)
    output = handle.result(WAIT)
    assert output.status is RunStatus.cancelled
    assert output.cause is CancelCause.timeout
    assert callback_ran.is_set()
    assert stopped_by == ["timeout"]


def test_timeout_in_a_streaming_step_is_thrown_in_at_its_yield() -> None:
    cleanup: list[CancelCause] = []

    def ticker(si: StepInput) -> Iterator[str]:
        try:
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                yield "tick"
        except CancellationError as cancelled:
            cleanup.append(cancelled.cause)
            raise

    stream = Workflow("t", steps=[Step("ticker", executor=ticker)], run_timeout=BUDGET).run(stream=True)
    events = check_run_events(stream)

    assert cleanup == [CancelCause.timeout]
    assert names(events)[-2:] == ["run_cancelled", "workflow_cancelled"]
    run_cancelled = events[-2]
    assert isinstance(run_cancelled, RunCancelledEvent)
    assert run_cancelled.cause is CancelCause.timeout


def test_a_timeout_after_a_manual_cancel_changes_nothing() -> None:
    entered, release = threading.Event(), threading.Event()

    def stubborn(si: StepInput) -> str:
        entered.set()
        release.wait(WAIT)
        time.sleep(2 * BUDGET)  # the budget runs out while the step ignores the cancel
        return "ignored"

    wf = Workflow("t", steps=[stubborn], run_timeout=BUDGET)
    handle = wf.run(background=True)
    assert entered.wait(WAIT)
    assert handle.cancel("by hand") is True
    release.set()
    output = handle.result(WAIT)
    assert (output.status, output.cause, output.reason) == (RunStatus.cancelled, CancelCause.requested, "by hand")


# -- one timer thread --------------------------------------------------------------------


def test_one_shared_timer_thread_serves_every_run() -> None:
    runs = 50
    inside = threading.Barrier(runs + 1)
    release = threading.Event()

    def blocked(si: StepInput) -> str:
        inside.wait(WAIT)
        release.wait(WAIT)  # not a wait that pauses the budget: every run's deadline is armed
        return "ok"

    wf = Workflow("t", steps=[blocked], run_timeout=60, max_concurrent_runs=runs)
    handles = [wf.run(i, background=True) for i in range(runs)]
    inside.wait(WAIT)

    timers = [t for t in threading.enumerate() if t.name == "threadflow-timer"]
    release.set()
    assert all(h.result(WAIT).status is RunStatus.completed for h in handles)
    assert len(timers) == 1, f"expected one shared timer thread, found {len(timers)}"


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, float("nan"), True, "1"])
def test_run_timeout_must_be_a_positive_number(bad: object) -> None:
    with pytest.raises(ValueError, match="run_timeout"):
        Workflow("t", steps=[spin], run_timeout=bad)  # type: ignore[arg-type]
    wf = Workflow("t", steps=[spin])
    with pytest.raises(ValueError, match="run_timeout"):
        wf.run(run_timeout=bad)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="run_timeout"):
        wf.run(background=True, run_timeout=bad)  # type: ignore[call-overload]
