"""Feeds: a stream's source of event batches, and the signal that ends it when its server stops.

A feed yields lists of events (one SSE send per list, not per event). It is
woken from any thread and can be stopped, for good, when its server starts to
stop: it then raises ``Stopped`` so that the stream can end cleanly.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import AsyncIterator

import anyio
from starlette.concurrency import run_in_threadpool

from .. import get_run
from .._asyncbridge import loop_waker
from .._runlog import EventLog
from ..events import BaseEvent
from ..storage import RunStore

__all__ = ["OPEN_FEEDS", "Feed", "Stopped", "log_batches", "poll_store"]

_STORE_POLL_SECONDS = 0.05
_MAX_BATCH = 64  # events per SSE send, and per step of the event loop (see log_batches)
# While events trickle in, a stream sends at most once per this many seconds for each stream open on its
# loop, and at most once per _MAX_SEND_GAP_SECONDS (see log_batches): 200 streams send 10 times a second each.
_SEND_GAP_PER_STREAM = 0.0005
_MAX_SEND_GAP_SECONDS = 0.1
# How long a run that has ended here may take to be recorded as ended in its store.
_RECORDING_GRACE_SECONDS = 5.0


class Stopped(Exception):
    """Raised by a feed whose server is stopping before its run has ended."""


class Feed:
    """Wakes one asyncio task from the loop; ``stop()`` wakes it for good (the server is stopping)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._waker = loop_waker(self.loop)
        self.stopping = False

    def wake(self) -> None:
        self._event.set()

    def wake_soon(self) -> None:
        """``wake()`` from any thread (one ``call_soon_threadsafe`` per loop turn for every feed of the loop)."""
        self._waker.wake(self._event)

    def stop(self) -> None:
        self.stopping = True
        self._event.set()

    def reset(self) -> None:
        """Call before looking; a wake-up from then on is not lost."""
        if not self.stopping:
            self._event.clear()

    async def wait(self) -> None:
        await self._event.wait()


class _OpenFeeds:
    """The feeds open on each event loop, so that a server that starts to stop can end them cleanly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one loop per server thread; several servers may run at once
        self._open: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[Feed]] = weakref.WeakKeyDictionary()
        self._stopping: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

    def add(self, feed: Feed) -> None:
        with self._lock:
            stopping = feed.loop in self._stopping
            if not stopping:
                self._open.setdefault(feed.loop, set()).add(feed)
        if stopping:  # a stream that starts while its server stops ends at once
            feed.stop()

    def discard(self, feed: Feed) -> None:
        with self._lock:
            self._open.get(feed.loop, set()).discard(feed)

    def count(self, loop: asyncio.AbstractEventLoop) -> int:
        """How many feeds are open on ``loop`` (read without the lock: a moment's count is enough)."""
        return len(self._open.get(loop, ()))

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        """End every feed on ``loop``, now and from now on; call on ``loop``."""
        with self._lock:
            self._stopping.add(loop)
            feeds = self._open.pop(loop, set())
        for feed in feeds:
            feed.stop()


OPEN_FEEDS = _OpenFeeds()


async def log_batches(log: EventLog, after_seq: int, feed: Feed) -> AsyncIterator[list[BaseEvent]]:
    """The run's logged events after ``after_seq`` in batches, then the live ones, through the terminal event.

    A batch is what the log holds when the stream looks, at most
    ``_MAX_BATCH``. Raises ``Stopped`` once ``feed`` is stopped, after one
    more batch of what is already logged.

    The stream reads the log itself, from the request's task: the events
    already logged (the run's start, often its first token) are the first
    batch, in the same turn of the event loop as the response's headers.

    The bound keeps every step of the event loop short: a run that has
    raced ahead of its client (a backlog of thousands of events) is sent a
    batch per loop turn, so that the other streams, and the disconnects the
    loop must notice, are not held up behind one huge send.

    Events that trickle in (a token every few ms) are gathered for a gap
    that grows with the streams open on the loop: each send costs the loop
    a system call, which gives the GIL away to the runs' threads, and with
    hundreds of streams each sending every token, every turn of the loop
    grew long enough to hold up the requests waiting on it (a cancel, a new
    stream). An event after a quiet spell, the terminal event, and a full
    batch go out at once. While the stream gathers, the events appended cost
    the loop nothing: the run's thread wakes the stream only for the
    terminal event or a full batch (see ``_Watch``).
    """
    watch = _Watch(log, feed, after_seq)
    log.add_listener(watch.appended)
    sent_at = -_MAX_SEND_GAP_SECONDS
    try:
        while True:
            feed.reset()
            done = log.done  # read before the length: once done, every event is in the log
            ready = len(log) - watch.cursor
            if 0 < ready < _MAX_BATCH and not done and not feed.stopping:
                wait = sent_at + _gap(feed) - feed.loop.time()
                if wait > 0:
                    await watch.wait(_URGENT, wait)
                    continue
            if ready > 0:
                batch = log.batch(watch.cursor, _MAX_BATCH)
                watch.cursor += len(batch)
                yield batch
                sent_at = feed.loop.time()
                if batch[-1].terminal:
                    return
            elif done:
                return
            if feed.stopping:
                raise Stopped
            if len(log) > watch.cursor:
                await asyncio.sleep(0)  # a turn of the loop for the other streams before the next batch
            else:
                await watch.wait(_ANY)
    finally:
        log.remove_listener(watch.appended)


def _gap(feed: Feed) -> float:
    """How long a stream gathers trickling events: ``_SEND_GAP_PER_STREAM`` per stream open on its loop, at most
    ``_MAX_SEND_GAP_SECONDS``."""
    return min(_MAX_SEND_GAP_SECONDS, _SEND_GAP_PER_STREAM * OPEN_FEEDS.count(feed.loop))


_ANY = 1  # the stream waits for the next event
_URGENT = 2  # the stream gathers events: it waits for the terminal event or a full batch only


class _Watch:
    """A stream's listener on its run's log: on the run's thread, wakes the stream only when it waits for what came.

    ``want`` says what the stream waits for; the stream sets it (on the
    loop) before it waits, and whichever side ends the wait clears it. The
    stream sets ``want``, *then* looks at the log once more before it
    waits; the run's thread appends, *then* reads ``want``: so either the
    run's thread sees what the stream waits for, or the stream sees the
    event (the order ``EventLog`` relies on too). A wake-up that comes late
    costs the stream one more look, nothing else.
    """

    __slots__ = ("cursor", "feed", "log", "want")

    def __init__(self, log: EventLog, feed: Feed, cursor: int) -> None:
        self.log = log
        self.feed = feed
        self.cursor = cursor  # the index (= seq) of the last event sent; read by the run's thread, racily
        self.want = 0

    def _came(self, want: int) -> bool:
        log = self.log
        if want == _ANY:
            return len(log) > self.cursor or log.done
        return log.done or len(log) - self.cursor >= _MAX_BATCH

    def appended(self) -> None:
        """After every append, on the run's thread."""
        want = self.want
        if want and self._came(want):
            self.want = 0
            self.feed.wake_soon()

    async def wait(self, want: int, timeout: float | None = None) -> None:
        """Until what ``want`` names has come (or ``timeout`` seconds have passed, or the feed was woken)."""
        self.want = want
        try:
            if self._came(want) or self.feed.stopping:
                return
            timer = None if timeout is None else self.feed.loop.call_later(timeout, self.feed.wake)
            try:
                await self.feed.wait()
            finally:
                if timer is not None:
                    timer.cancel()
        finally:
            self.want = 0


async def poll_store(store: RunStore, run_id: str, after_seq: int, feed: Feed) -> AsyncIterator[list[BaseEvent]]:
    """Replay the run's stored events after ``after_seq``, then poll for more until the store has its end.

    Ends after the terminal event, or after a last read once the store's own
    record of the run is terminal; raises ``Stopped`` if ``feed`` is stopped first.
    """
    cursor = after_seq
    while True:
        final, batch = await run_in_threadpool(_read_store, store, run_id, cursor)
        if batch:
            cursor = batch[-1].seq
            yield batch
            if batch[-1].terminal:
                return
        if final:
            return
        if feed.stopping:
            raise Stopped
        if not batch:
            feed.reset()
            with anyio.move_on_after(_STORE_POLL_SECONDS):
                await feed.wait()


def _read_store(store: RunStore, run_id: str, cursor: int) -> tuple[bool, list[BaseEvent]]:
    """The run's stored events after ``cursor``, and whether no more will come (read first)."""
    final = _ended_in(store, run_id)
    return final, list(store.events(run_id, cursor))


def _ended_in(store: RunStore, run_id: str) -> bool:
    """Whether ``store`` holds all of the run's events: its own record of the run is terminal.

    A store that records only ended runs answers None while the run is
    active; then ``threadflow.get_run`` says whether the run is still going.
    A run that has just ended here is recorded in the store a moment later
    (``run_ended`` comes after the terminal event is stored), so it is given
    a grace period; a run known nowhere has nothing more to come.
    """
    info = store.get_run(run_id)
    if info is not None:
        return info.status.is_terminal
    live = get_run(run_id)
    if live is None:
        info = store.get_run(run_id)  # it may have ended meanwhile
        return info is None or info.status.is_terminal
    if not live.status.is_terminal:
        return False
    return live.ended_at is None or time.time() - live.ended_at > _RECORDING_GRACE_SECONDS
