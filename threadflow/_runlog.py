"""A background run's event log: kept for replay, followed live by any number of readers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from .events import BaseEvent, Event

__all__ = ["EventLog"]


class EventLog:
    """A background run's events, kept for replay and followed live by any number of readers.

    Readers are cursors into one list, so a reader that stops reading never
    blocks the run and costs no memory of its own; the log itself holds the
    run's events (what ``events(after_seq=0)`` must replay) and goes away
    with the handle.
    """

    __slots__ = ("_cond", "_events", "_listeners", "_waiters", "done")

    def __init__(self) -> None:
        self._events: list[BaseEvent] = []
        self._cond = threading.Condition(threading.Lock())
        self._waiters = 0
        self._listeners: list[Callable[[], None]] = []
        self.done = False

    def append(self, event: BaseEvent) -> None:
        with self._cond:
            self._events.append(event)
            if event.terminal:
                self.done = True
            if self._waiters:
                self._cond.notify_all()
            listeners = self._listeners[:] if self._listeners else None
        if listeners:
            for listener in listeners:
                listener()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every append (from the run's thread)."""
        with self._cond:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with self._cond:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def since(self, after_seq: int) -> list[BaseEvent]:
        """The events with ``seq > after_seq`` logged so far."""
        with self._cond:
            return self._events[after_seq:]

    def follow(self, after_seq: int = 0, timeout: float | None = None) -> Iterator[Event]:
        """Replay, then follow live until the terminal event."""
        cursor = after_seq
        while True:
            with self._cond:
                while len(self._events) <= cursor and not self.done:
                    self._waiters += 1
                    try:
                        self._cond.wait(timeout)
                    finally:
                        self._waiters -= 1
                batch = self._events[cursor:]
                finished = self.done
            for event in batch:
                cursor += 1
                yield event  # type: ignore[misc]  # the runner logs only Event members
            if finished and cursor >= len(self._events):
                return
