"""Run timeouts that do not count waiting.

``Workflow(run_timeout=...)`` bounds the time a run spends *working*. Time
spent in ``ctx.sleep()`` or ``ctx.wait()`` — waiting for an approval, a
webhook, a rate limit — does not count (the run's status is ``waiting``
meanwhile). When the budget is spent the run is cancelled with cause
``timeout``, exactly as if ``cancel_run`` had been called, so the step's
cleanup runs.

Two runs of a workflow with a 0.5 s budget:

1. ``await_approval`` does 0.1 s of work, waits 0.4 s with ``ctx.sleep()``
   (a rate limit) and then up to 2 s with ``ctx.wait(event)`` for a manager's
   approval that arrives 1 s after the start, then does 0.1 s more. It takes
   about 1.1 s in all, more than twice the budget, and completes: only ~0.2 s
   of it was work.
2. ``crunch_numbers`` works without pause for longer than the budget and is
   cancelled with cause ``timeout``.

Run it (about two seconds)::

    python cookbook/timeout_waits.py
"""

from __future__ import annotations

import threading
import time

import threadflow
from threadflow import CancellationError, StepInput, Workflow, get_context

BUDGET = 0.5  # seconds of work per run


def busy(seconds: float) -> None:
    """Work (not wait) for ``seconds``, with a cancellation checkpoint every few milliseconds."""
    ctx = get_context()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        sum(i * i for i in range(2_000))
        ctx.check_cancellation()


def await_approval(step_input: StepInput) -> str:
    ctx = get_context()
    approved: threading.Event = step_input.input
    busy(0.1)
    print("  await_approval: rate-limited, ctx.sleep(0.4)")
    waiting_since = time.perf_counter()
    ctx.sleep(0.4)
    print("  await_approval: waiting for the manager's approval with ctx.wait()")
    if not ctx.wait(approved, timeout=2.0):
        return "not approved in time"
    waited = time.perf_counter() - waiting_since
    print(f"  await_approval: approved after {waited:.2f} s of waiting (not counted)")
    busy(0.1)
    return "approved and processed"


def crunch_numbers(step_input: StepInput) -> str:
    try:
        busy(5.0)  # ten times the budget
        return "crunched"
    except CancellationError as cancel:
        print(f"  crunch_numbers: cleanup ran ({cancel})")
        raise


def report(title: str, workflow: Workflow, run_input: object, run_id: str) -> None:
    print(title)
    started = time.perf_counter()
    output = workflow.run(run_input, run_id=run_id)
    elapsed = time.perf_counter() - started
    print(f"Status: {output.status.value}")
    print(f"Elapsed: {elapsed:.2f} s (budget: {BUDGET:g} s of work)")
    if output.completed:
        print(f"Content: {output.content}")
    else:
        print(f"Cause: {output.cause.value if output.cause else None}")
        print(f"Reason: {output.reason}")


def main() -> None:
    approved = threading.Event()

    def approve() -> None:
        info = threadflow.get_run("approval-1")
        print(f"  manager: the run is {info.status.value if info else 'gone'}; approving")
        approved.set()

    manager = threading.Timer(1.0, approve)  # the approval arrives 1 s in
    manager.start()
    approval = Workflow("approval", steps=[await_approval], run_timeout=BUDGET)
    report("1. Waiting does not count", approval, approved, "approval-1")
    manager.join()
    print()
    crunch = Workflow("crunch", steps=[crunch_numbers], run_timeout=BUDGET)
    report("2. Busy work over budget", crunch, None, "crunch-1")


if __name__ == "__main__":
    main()
