"""Waiting on threads from asyncio without blocking the event loop.

A run executes on a worker thread; asyncio code waits for it through an
``asyncio.Event`` that the run's thread sets with ``call_soon_threadsafe``.
Followers of runs' logs share one waker per loop: however many runs append
at once, their threads make one ``call_soon_threadsafe`` per turn of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

from ._runlog import EventLog
from .events import Event

__all__ = ["follow", "loop_waker", "until_done"]


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


class _LoopWaker:
    """Sets ``asyncio.Event``s of one loop from any thread, with one ``call_soon_threadsafe`` per turn for all.

    Each ``call_soon_threadsafe`` writes to the loop's self-pipe: a system
    call on the run's thread, which lets go of the GIL and hands it to
    another thread. With hundreds of runs streaming to one loop (a server),
    one call per run per look made the runs' threads and the loop take turns
    at the GIL far more often than the work needs.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._due: list[asyncio.Event] = []
        self._scheduled = False

    def wake(self, event: asyncio.Event) -> None:
        """Set ``event`` on the loop soon; callable from any thread."""
        with self._lock:
            self._due.append(event)
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._set_due)

    def _set_due(self) -> None:
        with self._lock:
            due, self._due = self._due, []
            self._scheduled = False
        for event in due:
            event.set()


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWaker] = weakref.WeakKeyDictionary()
_wakers_lock = threading.Lock()


def loop_waker(loop: asyncio.AbstractEventLoop) -> _LoopWaker:
    """The waker shared by everything on ``loop`` that is woken from runs' threads."""
    with _wakers_lock:
        waker = _wakers.get(loop)
        if waker is None:
            waker = _wakers[loop] = _LoopWaker(loop)
        return waker


async def follow(log: EventLog, after_seq: int) -> AsyncGenerator[Event, None]:
    """The logged events after ``after_seq``, then live ones, through the terminal event.

    One listener for the whole follow, and at most one wake-up pending for
    it however fast the run appends: a run streaming flat out costs the loop
    one call per look, not one per event (and all followers on a loop share
    one ``call_soon_threadsafe`` per turn, see ``_LoopWaker``). Events
    already in the log are yielded without a pause, so a reader can batch them.
    """
    waker = loop_waker(asyncio.get_running_loop())
    ready = asyncio.Event()
    scheduled = False

    def wake() -> None:  # on the run's thread, after every append; unlocked: a race costs a spurious wake-up
        nonlocal scheduled
        if not scheduled:
            scheduled = True
            waker.wake(ready)

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
