"""Cooperative cancellation in a long, CPU-bound step.

Python cannot interrupt a thread that is busy computing, so a long step
tells threadflow where it may stop: it calls ``ctx.check_cancellation()``
every ``CHECK_EVERY`` items, and pauses between batches (a rate limit) with
``ctx.sleep()``, which wakes at once when the run is cancelled. Both are
checkpoints: a cancel raises ``CancellationError`` there, inside the step, so
its ``except`` / ``finally`` can record how far it got.

The run executes in the main thread; a ``threading.Timer`` cancels it from
another thread with ``threadflow.cancel_run(run_id)`` after 0.5 s. The
script prints how many items were processed, where the cancel landed and how
long it took to land.

Run it (under a second)::

    python cookbook/cooperative_checks.py
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import threadflow
from threadflow import CancellationError, StepInput, Workflow, get_context

ITEMS = 20_000
CHECK_EVERY = 50  # items between two ctx.check_cancellation() calls
BATCH = 1_000  # items between two rate-limit pauses
PAUSE = 0.02  # seconds of ctx.sleep() after each batch


@dataclass
class Progress:
    """What the step and the canceller record, for the summary."""

    done: int = 0
    where: str = ""
    accepted: bool | None = None
    requested_at: float = 0.0
    landed_at: float = 0.0


progress = Progress()


def process(item: int) -> str:
    """A little CPU work per item (about 50 µs)."""
    digest = str(item).encode()
    for _ in range(100):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:8]


def process_items(step_input: StepInput) -> int:
    """Process ``ITEMS`` items, checking for cancellation every ``CHECK_EVERY`` of them."""
    ctx = get_context()
    where = "ctx.check_cancellation()"
    try:
        for item in range(ITEMS):
            if item % CHECK_EVERY == 0:
                where = "ctx.check_cancellation()"
                ctx.check_cancellation()
            if item and item % BATCH == 0:
                where = "ctx.sleep()"
                ctx.sleep(PAUSE)  # wakes at once, with CancellationError, on cancel
            process(item)
            progress.done = item + 1
        return ITEMS
    except CancellationError:
        progress.landed_at = time.perf_counter()
        progress.where = where
        raise
    finally:
        print(f"step cleanup: processed {progress.done} of {ITEMS} items")


workflow = Workflow("batch job", steps=[process_items])


def cancel(run_id: str) -> None:
    """The operator's button, pressed from the timer thread."""
    progress.requested_at = time.perf_counter()
    # Printed later by the main thread: two threads printing at once interleave.
    progress.accepted = threadflow.cancel_run(run_id, reason="operator stopped the batch")


def main() -> None:
    run_id = "batch-1"
    timer = threading.Timer(0.5, cancel, args=(run_id,))
    timer.start()
    started = time.perf_counter()
    output = workflow.run(run_id=run_id)
    timer.join()
    elapsed = time.perf_counter() - started
    print(f"cancel_run({run_id!r}) returned {progress.accepted}")

    print(f"Status: {output.status.value}")
    print(f"Cause: {output.cause.value if output.cause else None}")
    print(f"Reason: {output.reason}")
    print(f"Processed: {progress.done} of {ITEMS} items in {elapsed:.2f} s")
    if output.cancelled:
        latency_ms = (progress.landed_at - progress.requested_at) * 1000
        print(f"Cancel landed in {progress.where}")
        print(f"Cancel latency: {latency_ms:.1f} ms")


if __name__ == "__main__":
    main()
