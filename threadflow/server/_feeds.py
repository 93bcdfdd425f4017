"""Feeds: a stream's source of event batches, and the signal that ends it when its server stops.

A feed yields lists of events (one SSE send per list, not per event). It is
woken from any thread and can be stopped, for good, when its server starts to
stop: it then raises ``Stopped`` so that the stream can end cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import weakref
from collections.abc import AsyncIterator, Sequence

import anyio
from starlette.concurrency import run_in_threadpool

from .. import RunHandle, get_run
from ..events import BaseEvent, Event
from ..storage import RunStore

__all__ = ["OPEN_FEEDS", "Feed", "Stopped", "poll_store", "run_batches"]

_STORE_POLL_SECONDS = 0.05
_MAX_BATCH = 64  # events per SSE send, and per step of the event loop (see run_batches)
# While events trickle in, a stream sends at most once per this many seconds for each stream open on its
# loop, and at most once per _MAX_SEND_GAP_SECONDS (see run_batches): 200 streams send 10 times a second each.
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
        self.event = asyncio.Event()  # set to wake the stream's task
        self.stopping = False

    def wake(self) -> None:
        self.event.set()

    def stop(self) -> None:
        self.stopping = True
        self.event.set()

    def reset(self) -> None:
        """Call before looking; a wake-up from then on is not lost."""
        if not self.stopping:
            self.event.clear()

    async def wait(self) -> None:
        await self.event.wait()


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


async def run_batches(handle: RunHandle, after_seq: int, feed: Feed) -> AsyncIterator[Sequence[Event]]:
    """The run's events after ``after_seq`` in batches, through the terminal event, from its handle.

    Raises ``Stopped`` once ``feed`` is stopped, after the batch in hand,
    unless that batch ended with the terminal event (then the stream ends as usual).
    At most ``_MAX_BATCH`` events a batch: a run that has raced ahead of its
    client (a backlog of thousands of events) is sent a batch per loop
    turn, so that the other streams, and the disconnects the loop must
    notice, are not held up behind one huge send.

    Events that trickle in (a token every few ms) are gathered for a gap
    that grows with the streams open on the loop (``_gap``): each send costs
    the loop a system call, which gives the GIL away to the runs' threads,
    and with hundreds of streams each sending every token, every turn of
    the loop grew long enough to hold up the requests waiting on it (a
    cancel, a new stream). An event after a quiet spell, the terminal event,
    and a full batch go out at once; while a stream gathers, its run's
    events cost the loop nothing (``RunHandle.abatches``).
    """
    gap = functools.partial(_gap, feed.loop)
    batches = handle.abatches(after_seq, limit=_MAX_BATCH, gather=gap, wake=feed.event)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            if batch:
                yield batch
                if batch[-1].terminal:
                    return  # the run's end is out: a stop now interrupts nothing
            if feed.stopping:
                raise Stopped


def _gap(loop: asyncio.AbstractEventLoop) -> float:
    """``_SEND_GAP_PER_STREAM`` for each stream open on ``loop``, at most ``_MAX_SEND_GAP_SECONDS``."""
    return min(_MAX_SEND_GAP_SECONDS, _SEND_GAP_PER_STREAM * OPEN_FEEDS.count(loop))


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
