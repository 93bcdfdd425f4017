"""Feeds: a stream's source of event batches, and the signal that ends it when its server stops.

A feed yields lists of events (one SSE send per list, not per event). It is
woken from any thread and can be stopped, for good, when its server starts to
stop: it then raises ``Stopped`` so that the stream can end cleanly.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
import types
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool

from .. import get_run
from ..events import BaseEvent, Event
from ..storage import RunStore

__all__ = ["OPEN_FEEDS", "Feed", "Stopped", "batched", "poll_store"]

_STORE_POLL_SECONDS = 0.05
_MAX_BATCH = 64  # events per SSE send, and per step of the event loop (see batched)
# While events trickle in, a stream sends at most once per this many seconds for each stream open on its
# loop, and at most once per _MAX_SEND_GAP_SECONDS (see batched): 200 streams send 10 times a second each.
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
        self.stopping = False

    def wake(self) -> None:
        self._event.set()

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


async def batched(events: AsyncIterator[Event], feed: Feed) -> AsyncIterator[list[BaseEvent]]:
    """``events`` gathered into batches: what has arrived each time the stream looks, at most ``_MAX_BATCH``.

    A pump task reads ``events`` (which yields what is logged without
    suspending, so a burst becomes one batch). Raises ``Stopped`` once
    ``feed`` is stopped, after the batch already gathered.

    The bound keeps every step of the event loop short: a run that has
    raced ahead of its client (a backlog of thousands of events) is sent a
    batch per loop turn, so that the other streams, and the disconnects the
    loop must notice, are not held up behind one huge send.

    Events that trickle in (a token every few ms) are gathered for a gap
    that grows with the streams open on the loop (see ``_held_back``): each
    send costs the loop a system call, which gives the GIL away to the
    runs' threads, and with hundreds of streams each sending every token,
    every turn of the loop grew long enough to hold up the requests
    waiting on it (a cancel, a new stream). An event after a quiet spell,
    the terminal event, and a full batch go out at once.
    """
    pending: list[BaseEvent] = []
    ended: list[BaseException | None] = []
    room = asyncio.Event()

    async def pump() -> None:
        try:
            async for event in events:
                pending.append(event)
                if len(pending) == 1 or event.terminal or len(pending) >= _MAX_BATCH:
                    feed.wake()  # not for every event: the stream looks again when its gap has passed
                if len(pending) >= _MAX_BATCH:
                    room.clear()
                    await room.wait()
        except Exception as error:  # noqa: BLE001 — not handled here: handed to the stream, which raises it
            ended.append(error)
        else:
            ended.append(None)
        feed.wake()

    task = _started_now(feed.loop, pump())  # the events logged already go out in the first send, this turn
    sent_at = -_MAX_SEND_GAP_SECONDS
    try:
        while True:
            await _held_back(feed, pending, ended, sent_at)
            feed.reset()
            batch = pending[:_MAX_BATCH]
            del pending[:_MAX_BATCH]
            room.set()
            if batch:
                yield batch
                sent_at = feed.loop.time()
            if ended and not pending:
                if ended[0] is not None:
                    raise ended[0]
                return
            if feed.stopping:
                raise Stopped
            if pending:
                await asyncio.sleep(0)  # a turn of the loop for the other streams before the next batch
            else:
                await feed.wait()
    finally:
        if task is not None:
            task.cancel()  # closes ``events`` (its finally runs in the pump task)


def _started_now(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` up to its first wait here and now, and the rest as a task (None if it did not wait).

    A task created the plain way starts on the loop's next turn, and under load
    a turn of the loop is long (~100 ms with 200 busy streams): a stream's
    pump started that way would leave the events already logged (the run's
    start, often its first token) for a later turn than the response itself.
    """
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return None

    async def rest() -> None:
        await _resumed(coro, waiting_on)

    task = loop.create_task(rest())
    task.add_done_callback(lambda _: _cancel_unstarted(coro))
    return task


def _cancel_unstarted(coro: Coroutine[Any, Any, None]) -> None:
    """Throw the cancel into ``coro`` if its task was cancelled before it ran, so that its ``finally`` blocks run.

    (``close()`` would not reach an async generator it awaits: that one would
    be left running for ever.) Once its task has run, ``coro`` has ended.
    """
    if inspect.getcoroutinestate(coro) != inspect.CORO_SUSPENDED:
        return
    try:
        coro.throw(asyncio.CancelledError())
    except (asyncio.CancelledError, StopIteration):
        return
    coro.close()  # it waited again after the cancel: nothing more can be done for it


@types.coroutine
def _resumed(coro: Coroutine[Any, Any, None], waiting_on: Any) -> Generator[Any, Any, None]:
    """Carry on ``coro``, stepped by hand until it waited on ``waiting_on``, as ``await`` would.

    What it waits on goes up to the task; what the task sends or throws in
    (a cancel) goes down to ``coro`` — ``yield from`` for a coroutine already begun.
    """
    while True:
        try:
            sent = yield waiting_on
        except BaseException as thrown:  # noqa: BLE001 — not handled: handed on to the coroutine
            step: Callable[[], Any] = functools.partial(coro.throw, thrown)
        else:
            step = functools.partial(coro.send, sent)
        try:
            waiting_on = step()
        except StopIteration:
            return


async def _held_back(feed: Feed, pending: list[BaseEvent], ended: list[BaseException | None], sent_at: float) -> None:
    """Wait until a gap after the last send has passed, unless what is pending must go out now.

    The gap is ``_SEND_GAP_PER_STREAM`` for each stream open on the loop, at
    most ``_MAX_SEND_GAP_SECONDS``: a few streams send at once, hundreds
    share the loop's sends. Woken early (by the pump) for the terminal event
    and a full batch, and by the feed's stop; a stream that has ended or
    holds nothing does not wait.
    """
    gap = min(_MAX_SEND_GAP_SECONDS, _SEND_GAP_PER_STREAM * OPEN_FEEDS.count(feed.loop))
    wait = sent_at + gap - feed.loop.time()
    if wait <= 0 or not pending or ended or feed.stopping or pending[-1].terminal or len(pending) >= _MAX_BATCH:
        return
    feed.reset()
    timer = feed.loop.call_later(wait, feed.wake)
    try:
        await feed.wait()
    finally:
        timer.cancel()


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
