"""Following a run's stored log as other processes commit to it: one loop for every store."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from ..events import Event
from ..status import RunInfo

__all__ = ["follow_log"]


class _Log(Protocol):
    def events(self, run_id: str, after_seq: int = 0) -> Sequence[Event]: ...

    def get_run(self, run_id: str) -> RunInfo | None: ...


def follow_log(
    store: _Log,
    run_id: str,
    after_seq: int,
    poll: float,
    waking: Callable[[], AbstractContextManager[threading.Event]] | None = None,
) -> Iterator[Event]:
    """The run's events after ``after_seq``, then new ones as they are committed, through its terminal event.

    Ends at once for an unknown run, and after the last event of an ended one.
    Between looks it waits ``poll`` seconds on the event ``waking()`` holds
    (entered before each look, so that a wake-up between the look and the
    wait is not lost), or on nothing.
    """
    cursor = after_seq
    pause = threading.Event()
    while True:
        with waking() if waking is not None else contextlib.nullcontext(pause) as wake:
            batch = store.events(run_id, cursor)
            for event in batch:
                cursor = event.seq
                yield event
                if event.terminal:
                    return
            if not batch:
                info = store.get_run(run_id)
                if info is None or (info.status.is_terminal and not store.events(run_id, cursor)):
                    return
                wake.wait(poll)
