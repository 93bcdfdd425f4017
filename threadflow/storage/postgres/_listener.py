"""The store's LISTEN connection: cancels for this session's runs, answers, new events, queued runs.

One dedicated connection that only listens. psycopg's ``notifies()``
holds the connection while it waits, so a query on it would deadlock:
whatever a notification asks for runs on the pool's connections instead.
A NOTIFY sent while this connection is down is lost, so after every
(re)connect, and every ``recheck_interval`` seconds, ``on_recheck`` looks in
the table for requests that were missed — cancels are level-triggered
rows, the NOTIFY is only the fast path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from ._rows import ANSWER_CHANNEL, CANCEL_CHANNEL, EVENTS_CHANNEL, QUEUE_CHANNEL

__all__ = ["Listener", "Waiters"]

logger = logging.getLogger("threadflow")


class Waiters:
    """Threads waiting for a notification about one key (a run id), woken all at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, list[threading.Event]] = {}

    def register(self, key: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._by_key.setdefault(key, []).append(event)
        return event

    def unregister(self, key: str, event: threading.Event) -> None:
        with self._lock:
            events = self._by_key.get(key)
            if events is not None and event in events:
                events.remove(event)
                if not events:
                    del self._by_key[key]

    def wake(self, key: str) -> None:
        with self._lock:
            events = list(self._by_key.get(key, ()))
        for event in events:
            event.set()

    def wake_all(self) -> None:
        with self._lock:
            events = [event for events in self._by_key.values() for event in events]
        for event in events:
            event.set()


class Listener:
    """A thread holding the LISTEN connection; calls back on notifications, never queries on it."""

    def __init__(
        self,
        dsn: str,
        session: str,
        *,
        on_cancel: Callable[[str], None],
        on_recheck: Callable[[], None],
        recheck_interval: float,
    ) -> None:
        self.dsn = dsn
        self.session = session
        self.on_cancel = on_cancel
        self.on_recheck = on_recheck
        self.recheck_interval = recheck_interval
        self.answers = Waiters()
        self.events = Waiters()
        self.queue_listeners: list[Callable[[str], None]] = []
        self.connected = threading.Event()
        self.reconnects = 0
        self._stop_channel = f"threadflow_stop_{session}"
        self._stopped = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start listening (once); returns when the connection listens, or after ``timeout``."""
        with self._lock:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._loop, name="threadflow-pg-listener", daemon=True)
                self._thread.start()
        self.connected.wait(timeout)

    def _loop(self) -> None:
        delay = 0.05
        while not self._stopped:
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    for channel in (CANCEL_CHANNEL, ANSWER_CHANNEL, EVENTS_CHANNEL, QUEUE_CHANNEL):
                        conn.execute(f"LISTEN {channel}")
                    conn.execute(f'LISTEN "{self._stop_channel}"')
                    self.connected.set()
                    delay = 0.05
                    self._recheck()  # whatever was sent while no connection listened
                    while not self._stopped:
                        for note in conn.notifies(timeout=self.recheck_interval):
                            if self._stopped:
                                return
                            self._dispatch(note.channel, note.payload)
                        self._recheck()
            except psycopg.Error as error:
                self.connected.clear()
                if self._stopped:
                    return
                self.reconnects += 1
                logger.info("threadflow: postgres listener reconnecting after: %s", error)
                self.answers.wake_all()  # waiters look at the table themselves meanwhile
                threading.Event().wait(delay)
                delay = min(delay * 2, 1.0)

    def _dispatch(self, channel: str, payload: str) -> None:
        try:
            if channel == CANCEL_CHANNEL:
                session, _, run_id = payload.partition(" ")
                if session == self.session:
                    self.on_cancel(run_id)
            elif channel == ANSWER_CHANNEL:
                self.answers.wake(payload)
            elif channel == EVENTS_CHANNEL:
                self.events.wake(payload)
            elif channel == QUEUE_CHANNEL:
                for listener in list(self.queue_listeners):
                    listener(payload)
        except Exception:
            logger.exception("threadflow: postgres listener: handling %s %r failed", channel, payload)

    def _recheck(self) -> None:
        try:
            self.on_recheck()
        except Exception:  # the database may be restarting: the next recheck tries again
            logger.debug("threadflow: postgres listener: re-check failed", exc_info=True)
        self.answers.wake_all()
        self.events.wake_all()

    def stop(self, wake: Callable[[str], None]) -> None:
        """Stop the thread; ``wake(channel)`` sends a NOTIFY on the stop channel to end its wait at once."""
        self._stopped = True
        thread = self._thread
        if thread is None:
            return
        try:
            wake(self._stop_channel)
        except Exception:  # noqa: BLE001 — unreachable server: the thread ends at its next timeout
            pass
        if thread is not threading.current_thread():
            thread.join(self.recheck_interval + 1.0)
