"""Step retries with backoff, and a cancel that lands during the backoff.

``Step(..., max_retries=N, retry_delay=seconds)`` retries a failing step up to
N more times; ``retry_wait=`` takes any tenacity wait strategy instead
(``tenacity.wait_exponential(...)``, ``wait_fixed(...) + wait_random(...)``,
...). Every retry is announced by a ``step_retrying`` event carrying the
attempt that failed, its error and the delay before the next one.

The backoff sleep is the run's own interruptible wait, and
``CancellationError`` is a ``BaseException`` that no retry loop can swallow,
so a run cancelled during a long backoff stops at once rather than after it.

Three runs:

1. a flaky API call that fails twice, with a fixed 0.1 s delay, then succeeds;
2. the same with ``retry_wait=tenacity.wait_exponential(multiplier=0.05)``;
3. a step that keeps failing with a 30 s backoff, cancelled from another
   thread 0.2 s into its first backoff.

Run it (about one second)::

    python cookbook/retry_backoff.py
"""

from __future__ import annotations

import threading
import time

import tenacity

from threadflow import RunStatus, Step, StepInput, Workflow, get_context
from threadflow.events import StepRetryingEvent, WorkflowCancelledEvent, WorkflowCompletedEvent


class FlakyAPI:
    """Fails with ``ConnectionError`` ``failures`` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, step_input: StepInput) -> str:
        self.calls += 1
        print(f"  call #{self.calls} (attempt {get_context().attempt})")
        if self.calls <= self.failures:
            raise ConnectionError(f"upstream unavailable (call #{self.calls})")
        return f"answer after {self.calls} calls"


def stream_and_print(workflow: Workflow) -> None:
    """Stream a run, printing its retries and its end."""
    started = time.perf_counter()
    with workflow.run(stream=True) as stream:
        for event in stream:
            if isinstance(event, StepRetryingEvent):
                print(
                    f"  step_retrying: attempt {event.attempt} failed with {event.error_type}: "
                    f"{event.error}; next attempt in {event.delay:.2f}s"
                )
            elif isinstance(event, WorkflowCompletedEvent):
                print(f"  workflow_completed: {event.content}")
    output = stream.output
    assert output is not None
    print(f"Status: {output.status.value} in {time.perf_counter() - started:.2f} s")


def fixed_delay() -> None:
    print("1. max_retries=3, retry_delay=0.1")
    step = Step("call_api", executor=FlakyAPI(failures=2), max_retries=3, retry_delay=0.1)
    stream_and_print(Workflow("fixed backoff", steps=[step]))


def exponential_backoff() -> None:
    print("\n2. max_retries=4, retry_wait=tenacity.wait_exponential(multiplier=0.05)")
    step = Step(
        "call_api",
        executor=FlakyAPI(failures=3),
        max_retries=4,
        retry_wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
    )
    stream_and_print(Workflow("exponential backoff", steps=[step]))


def cancel_during_backoff() -> None:
    print("\n3. cancelled during a 30 s backoff")
    step = Step("call_api", executor=FlakyAPI(failures=100), max_retries=5, retry_delay=30.0)
    workflow = Workflow("long backoff", steps=[step])
    requested_at: list[float] = []

    def cancel(run_id: str) -> None:
        requested_at.append(time.perf_counter())
        workflow.cancel_run(run_id, reason="user gave up on the upstream")

    timer: threading.Timer | None = None
    with workflow.run(stream=True) as stream:
        for event in stream:
            if isinstance(event, StepRetryingEvent):
                print(f"  step_retrying: attempt {event.attempt} failed; next attempt in {event.delay:g}s")
                # The backoff starts once we ask for the next event; cancel 0.2 s into it.
                timer = threading.Timer(0.2, cancel, args=(stream.run_id,))
                timer.start()
            elif isinstance(event, WorkflowCancelledEvent):
                landed = (time.perf_counter() - requested_at[0]) * 1000
                print(f"  workflow_cancelled: cause {event.cause.value}, reason {event.reason!r}")
                print(f"Cancel landed {landed:.1f} ms after the request, not after the 30 s backoff")
    if timer is not None:
        timer.join()
    output = stream.output
    assert output is not None and output.status is RunStatus.cancelled
    print(f"Status: {output.status.value}")


def main() -> None:
    fixed_delay()
    exponential_backoff()
    cancel_during_backoff()


if __name__ == "__main__":
    main()
