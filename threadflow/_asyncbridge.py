"""Waiting on threads from asyncio without blocking the event loop.

A run executes on a worker thread; asyncio code waits for it through an
``asyncio.Event`` that the run's thread sets with ``call_soon_threadsafe``.
Followers of runs' logs share one waker per loop: however many runs append
at once, their threads make one ``call_soon_threadsafe`` per turn of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import threading
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

from ._runlog import EventLog
from .events import Event

__all__ = ["follow", "follow_batches", "until_done"]


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

    ``follow_batches`` unbatched: the events already in the log are yielded
    without a pause, so a reader can batch them, and the run's thread wakes
    the reader only while it waits (all followers on a loop share one
    ``call_soon_threadsafe`` per turn, see ``_LoopWaker``).
    """
    async with contextlib.aclosing(follow_batches(log, after_seq, sys.maxsize, None, None)) as batches:
        async for batch in batches:
            for event in batch:
                yield event


async def follow_batches(
    log: EventLog, after_seq: int, limit: int, gather: Callable[[], float] | None, wake: asyncio.Event | None
) -> AsyncGenerator[list[Event], None]:
    """``follow`` in batches: at each look, what the log holds, at most ``limit``; see ``RunHandle.abatches``.

    While the consumer gathers (``gather()`` seconds after a batch), the
    run's appends cost the loop nothing: the run's thread wakes the
    consumer only for the terminal event or a full batch (see ``_Watch``).
    """
    loop = asyncio.get_running_loop()
    watch = _Watch(log, limit, wake if wake is not None else asyncio.Event(), loop_waker(loop))
    watch.cursor = after_seq
    log.add_listener(watch.appended)
    sent_at = -math.inf
    try:
        while True:
            done = log.done  # read before the length: once done, every event is in the log
            pending = len(log) - watch.cursor
            if 0 < pending < limit and not done and gather is not None:
                wait = sent_at + gather() - loop.time()
                if wait > 0:
                    if await watch.wait(_URGENT, loop, wait):
                        yield []  # woken from outside: the consumer looks at what it must
                    continue
            if pending > 0:
                batch = log.batch(watch.cursor, limit)
                watch.cursor += len(batch)
                yield batch  # type: ignore[misc]  # the runner logs only Event members
                sent_at = loop.time()
                if batch[-1].terminal:
                    return
            elif done:
                return
            if len(log) > watch.cursor:
                await asyncio.sleep(0)  # a turn of the loop for the other consumers before the next batch
            elif await watch.wait(_ANY, loop):
                yield []
    finally:
        log.remove_listener(watch.appended)


_ANY = 1  # the consumer waits for the next event
_URGENT = 2  # the consumer gathers events: it waits for the terminal event or a full batch only


class _Watch:
    """A consumer's listener on a run's log: on the run's thread, wakes the consumer only when it waits for what came.

    ``want`` says what the consumer waits for; the consumer sets it (on its
    loop) before it waits, and whichever side ends the wait clears it. The
    consumer sets ``want``, *then* looks at the log once more before it
    waits; the run's thread appends, *then* reads ``want``: so either the
    run's thread sees what the consumer waits for, or the consumer sees the
    event (the order ``EventLog`` relies on too). A wake-up that comes late
    costs one more look, nothing else.
    """

    __slots__ = ("cursor", "expired", "limit", "log", "ready", "waker", "want")

    def __init__(self, log: EventLog, limit: int, ready: asyncio.Event, waker: _LoopWaker) -> None:
        self.log = log
        self.limit = limit
        self.ready = ready  # set through the waker by the run's thread, by the timer, or by the consumer's code
        self.waker = waker
        self.cursor = 0  # the index (= seq) of the last event taken; read by the run's thread, racily
        self.want = 0
        self.expired = False

    def _came(self, want: int) -> bool:
        log = self.log
        if want == _ANY:
            return len(log) > self.cursor or log.done
        return log.done or len(log) - self.cursor >= self.limit

    def appended(self) -> None:
        """After every append, on the run's thread."""
        want = self.want
        if want and self._came(want):
            self.want = 0
            self.waker.wake(self.ready)

    async def wait(self, want: int, loop: asyncio.AbstractEventLoop, timeout: float | None = None) -> bool:
        """Until what ``want`` names came, or ``timeout`` seconds passed; True if neither: woken from outside.

        ``ready`` is cleared here, once the wait is over, never before it: a
        wake-up from outside set while the consumer was away (before the
        first look, during a turn of the loop) ends this wait at once.
        """
        self.want, self.expired = want, False
        try:
            if self._came(want):
                return False
            timer = None if timeout is None else loop.call_later(timeout, self._expire)
            try:
                await self.ready.wait()
            finally:
                if timer is not None:
                    timer.cancel()
                self.ready.clear()
            return not (self.expired or self._came(want))
        finally:
            self.want = 0

    def _expire(self) -> None:
        self.expired = True
        self.ready.set()
