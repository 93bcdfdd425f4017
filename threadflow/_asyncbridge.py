"""Waiting on threads from asyncio without blocking the event loop.

A run executes on a worker thread; asyncio code waits for it through an
``asyncio.Event`` that the run's thread sets with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Protocol

from ._runlog import EventLog
from .events import BaseEvent, Event

__all__ = ["follow", "until_done"]


class _Finishing(Protocol):
    def done(self) -> bool: ...

    def add_done_callback(self, callback: Callable[[], None]) -> None: ...


def _threadsafe_setter(loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> Callable[[], None]:
    def set_from_any_thread() -> None:
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
    """The logged events after ``after_seq``, then live ones, through the terminal event."""
    cursor = after_seq
    while batch := await _next_batch(log, cursor):
        for event in batch:
            cursor += 1
            yield event  # type: ignore[misc]  # the runner logs only Event members
            if event.terminal:
                return


async def _next_batch(log: EventLog, cursor: int) -> list[BaseEvent]:
    """The events after ``cursor``, waiting without blocking the loop; [] once the log has ended."""
    done = log.done  # read before the events: once done, everything is in the log
    batch = log.since(cursor)
    if batch or done:
        return batch
    wake = asyncio.Event()
    listener = _threadsafe_setter(asyncio.get_running_loop(), wake)
    log.add_listener(listener)
    try:
        while True:
            done = log.done
            batch = log.since(cursor)
            if batch or done:
                return batch
            await wake.wait()
            wake.clear()
    finally:
        log.remove_listener(listener)
