"""The server's only uses of threadflow's private core, until ``RunHandle`` offers them publicly.

The core is gaining ``RunHandle.close()`` (cancel with cause
``stream_closed``) and ``RunHandle.aevents(after_seq)`` (replay, then follow
live, without blocking the event loop). Until then these functions do the
same on top of the handle's private objects; each says what replaces it.
Nothing else in ``threadflow.server`` reaches past the public API.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from .. import CancelCause, RunHandle
from ..events import Event
from ..registry import REGISTRY

__all__ = ["close_run", "follow_events"]


def close_run(handle: RunHandle) -> bool:
    """Cancel the run with cause ``stream_closed``; True iff the cancel was accepted."""
    # integrator: replace with RunHandle.close()
    return REGISTRY.cancel(handle.state, None, CancelCause.stream_closed)


async def follow_events(handle: RunHandle, after_seq: int = 0) -> AsyncIterator[Event]:
    """The run's events after ``after_seq``: what was emitted, then live ones, to the terminal event.

    Never blocks the event loop: the run's thread wakes this task at most once per look.
    """
    # integrator: replace with RunHandle.aevents(after_seq)
    log = handle.log
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    scheduled = [False]

    def wake() -> None:  # on the run's thread, after every append; unlocked: a race costs a spurious wake-up
        if not scheduled[0]:
            scheduled[0] = True
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                loop.call_soon_threadsafe(ready.set)

    log.add_listener(wake)
    try:
        cursor = after_seq
        while True:
            scheduled[0] = False
            ready.clear()
            done = log.done  # read before the events: once done, everything is in the log
            batch = log.since(cursor)
            cursor += len(batch)
            for event in batch:
                yield event  # type: ignore[misc]  # the runner logs only Event members
            if (batch and batch[-1].terminal) or (done and not batch):
                return
            if not batch:
                await ready.wait()
    finally:
        log.remove_listener(wake)
