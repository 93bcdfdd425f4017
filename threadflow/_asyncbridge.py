"""Waiting on threads from asyncio without blocking the event loop.

A run executes on a worker thread; asyncio code waits for it through an
``asyncio.Event`` that the run's thread sets with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

from ._runlog import EventLog
from .events import Event

__all__ = ["follow", "until_done"]


class _Finishing(Protocol):
    def done(self) -> bool: ...

    def add_done_callback(self, fn: Callable[[Any], object]) -> None: ...


def _threadsafe_setter(loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> Callable[..., None]:
    def set_from_any_thread(*_: object) -> None:  # a done callback is given the handle; a log listener nothing
        # RuntimeError: the loop has closed, so nobody is waiting any more
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(wake.set)

    return set_from_any_thread


async def until_done(handle: _Finishing) -> None:
    """Wait, without blocking the loop, until the background run has ended."""
    wake = asyncio.Event()
    listener = _threadsafe_setter(asyncio.get_running_loop(), wake)
    handle.add_done_callback(listener)
    while not handle.done():
        await wake.wait()
        wake.clear()


async def follow(log: EventLog, after_seq: int) -> AsyncGenerator[Event, None]:
    """The logged events after ``after_seq``, then live ones, through the terminal event.

    One listener for the whole follow, and at most one wake-up scheduled on
    the loop at a time however fast the run appends: a run streaming flat out
    costs the loop one call per look, not one per event. Events already in
    the log are yielded without a pause, so a reader can batch them.
    """
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    scheduled = False

    def wake() -> None:  # on the run's thread, after every append; unlocked: a race costs a spurious wake-up
        nonlocal scheduled
        if not scheduled:
            scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                loop.call_soon_threadsafe(ready.set)

    log.add_listener(wake)
    try:
        cursor = after_seq
        while True:
            scheduled = False
            ready.clear()
            done = log.done  # read before the events: once done, everything is in the log
            batch = log.since(cursor)
            cursor += len(batch)
            for event in batch:
                yield event  # type: ignore[misc]  # the runner logs only Event members
                if event.terminal:
                    return
            if done and not batch:
                return
            if not batch:
                await ready.wait()
    finally:
        log.remove_listener(wake)
