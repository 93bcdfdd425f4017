"""Holding every thread of anyio's shared worker pool, as a busy server's plain-function routes would."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import httpx
from fastapi import FastAPI

WAIT = 10.0
ANYIO_DEFAULT_THREADS = 40  # anyio's default limiter: what plain-function routes and store polls share


class SharedPoolHog:
    """A plain-function route (FastAPI runs it on the shared pool) that holds its thread until released."""

    def __init__(self, app: FastAPI) -> None:
        self.release = threading.Event()
        self._entered = 0
        self._cond = threading.Condition()
        app.add_api_route("/busy", self._busy, methods=["GET"])

    def _busy(self) -> dict[str, str]:
        with self._cond:
            self._entered += 1
            self._cond.notify_all()
        self.release.wait(3 * WAIT)  # longer than any request of the test waits: released by the test
        return {}

    @contextlib.contextmanager
    def holding_every_thread(self, url: str) -> Iterator[None]:
        """Inside the block, every thread of the shared pool waits in ``/busy``."""
        callers = [
            threading.Thread(target=httpx.get, args=(f"{url}/busy",), kwargs={"timeout": WAIT})
            for _ in range(ANYIO_DEFAULT_THREADS)
        ]
        try:
            for caller in callers:
                caller.start()
            with self._cond:
                assert self._cond.wait_for(lambda: self._entered >= ANYIO_DEFAULT_THREADS, WAIT)
            yield
        finally:
            self.release.set()
            for caller in callers:
                caller.join(WAIT)
