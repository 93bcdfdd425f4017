"""Deferring the finalisation of runs abandoned inside a garbage collection to a safe point.

A ``RunStream`` caught in a reference cycle is finalised by the cyclic
collector, which runs at an arbitrary allocation in an arbitrary thread —
possibly while that thread holds one of threadflow's own locks (the timer's,
a store's). Ending the run right there (the step's cleanup, store I/O,
those locks) could deadlock the thread on itself. So while a collection is
running, finalisers only queue the work (``SimpleQueue.put`` is safe there),
and the queue is worked off at the next safe point: the next run created,
``get_run()``, ``active_runs()``, ``cancel_run()``, ``shutdown()`` or
interpreter exit. Drops that are not part of a collection — ``break``,
``del``, the end of a ``with`` block — happen at a known point in user code
and are finished at once.
"""

from __future__ import annotations

import atexit
import gc
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["drain", "finish_soon"]

logger = logging.getLogger("threadflow")

_pending: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
# The thread running a garbage collection now, if any. Only finalisers called
# *by* that collection run at an arbitrary point; another thread that ends a
# run meanwhile (a plain ``break``) is at a known point and finishes at once.
_collecting_thread: int | None = None


def _track_collections(phase: str, info: dict[str, Any]) -> None:
    global _collecting_thread
    _collecting_thread = threading.get_ident() if phase == "start" else None


gc.callbacks.append(_track_collections)


def finish_soon(finish: Callable[[], object]) -> None:
    """Run ``finish()`` now, or — inside a garbage collection in this thread — at the next safe point."""
    if _collecting_thread == threading.get_ident():
        _pending.put(finish)
    else:
        finish()


def drain() -> None:
    """Run what collections queued. Call only where no threadflow lock is held."""
    if _pending.empty():  # the common case, on every new run: no exception raised and caught
        return
    while True:
        try:
            finish = _pending.get_nowait()
        except queue.Empty:
            return
        try:
            finish()
        except Exception:
            logger.exception("threadflow: finishing an abandoned run raised")


atexit.register(drain)
