"""A background run's event log: kept for replay, followed live by any number of readers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from ._packedlog import PackedEvents
from .events import BaseEvent, Event

__all__ = ["EventLog"]


class EventLog:
    """A background run's events, kept for replay and followed live by any number of readers.

    Readers are cursors into one list, so a reader that stops reading never
    blocks the run and costs no memory of its own; the log itself holds the
    run's events (what ``events(after_seq=0)`` must replay) and goes away
    with the handle.

    The run's thread appends without taking a lock, and wakes only the
    readers that sleep (each on a lock of its own, released once: one
    wake-up per reader per batch, however many events the batch holds). A
    reader reads the list without a lock too; it takes the log's lock only
    to go to sleep. What makes that safe is the order on each side: the
    writer appends, *then* looks for sleepers; a reader registers as a
    sleeper, *then* looks at the list once more before it blocks — so
    either the writer finds it registered, or it finds the event.
    """

    __slots__ = ("_events", "_listeners", "_lock", "_sleepers", "done")

    def __init__(self) -> None:
        self._events: list[BaseEvent] | PackedEvents = []  # packed once complete, if asked (see pack)
        self._lock = threading.Lock()  # guards _sleepers and the replacing of _listeners
        self._sleepers: list[threading.Lock] = []  # readers blocked until the next append, each on its lock
        self._listeners: tuple[Callable[[], None], ...] = ()  # replaced, never changed in place
        self.done = False  # set just after the terminal event is appended

    def append(self, event: BaseEvent) -> None:
        self._events.append(event)  # type: ignore[union-attr]  # a list until the terminal event, the last append
        if event.terminal:
            self.done = True
        if self._sleepers:  # read unlocked: see the class docstring for why no wake-up is lost
            self._wake()
        for listener in self._listeners:
            listener()

    def _wake(self) -> None:
        with self._lock:
            sleepers, self._sleepers = self._sleepers, []
            for sleeper in sleepers:  # released under the lock: a reader that gave up is never woken late
                sleeper.release()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every append (from the run's thread)."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with self._lock:
            listeners = list(self._listeners)
            if listener in listeners:
                listeners.remove(listener)
                self._listeners = tuple(listeners)

    def pack(self) -> None:
        """Keep the events of a complete log compactly (see ``PackedEvents``); nothing happens before its end.

        Readers see equal events, rebuilt as they read; a reader that started
        before keeps the objects it was reading.
        """
        if self.done and isinstance(self._events, list):
            self._events = PackedEvents(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def batch(self, start: int, limit: int) -> list[BaseEvent]:
        """The events logged so far from index ``start`` (the events after seq ``start``), at most ``limit``."""
        return self._events[start : start + limit]

    def follow(self, after_seq: int = 0, then: Callable[[], object] | None = None) -> Iterator[Event]:
        """Replay, then follow live through the terminal event; call ``then()`` before the iteration ends."""
        cursor = after_seq
        events = self._events
        sleeper = threading.Lock()
        while True:
            done = self.done  # read before the list: once done, every event is in it
            if len(events) > cursor:
                batch = events[cursor:]
                cursor += len(batch)
                yield from batch  # type: ignore[misc]  # the runner logs only Event members
                if batch[-1].terminal:
                    break
            elif done:
                break
            else:
                self._sleep(sleeper, cursor)
        if then is not None:
            then()

    def _sleep(self, sleeper: threading.Lock, cursor: int) -> None:
        """Block until the log holds more than ``cursor`` events, or is done.

        ``sleeper`` is the reader's own lock, held while it is registered; the
        writer unregisters it and releases it to wake the reader.
        """
        sleeper.acquire(blocking=False)  # a reader that gave up last time may have been released since
        try:
            with self._lock:
                self._sleepers.append(sleeper)
            if len(self._events) <= cursor and not self.done:  # the last look, now that the writer will see us
                sleeper.acquire()
                return  # woken: the writer has unregistered us
        except BaseException:  # an interrupt (a signal handler raising) wherever it lands
            self._unregister(sleeper)
            raise
        self._unregister(sleeper)

    def _unregister(self, sleeper: threading.Lock) -> None:
        with self._lock:
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)
