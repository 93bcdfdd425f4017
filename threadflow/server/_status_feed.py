"""``GET /runs/feed``: runs' status changes as server-sent events, so a page stays live without polling.

Messages: ``event: run`` with a ``RunInfo`` as JSON, for each selected run
when the feed opens (oldest first) and whenever its record changes after;
``event: gone`` with ``{"run_id"}`` when a run leaves the selection (it no
longer matches the status filter, or newer runs pushed it past ``limit``).
The server looks every ``POLL_SECONDS``: other processes writing the same
store show up too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import anyio
from starlette.concurrency import run_in_threadpool

from .. import RunInfo
from ..storage import RunStore
from ._feeds import Feed
from ._runs import Filters, snapshot
from ._sse import INTERRUPTED

__all__ = ["POLL_SECONDS", "status_changes"]

POLL_SECONDS = 0.25


def _run_message(info: RunInfo) -> str:
    return f"event: run\ndata: {info.model_dump_json()}\n\n"


def _gone_message(run_id: str) -> str:
    return f"event: gone\ndata: {json.dumps({'run_id': run_id})}\n\n"


def changes(before: dict[str, RunInfo], now: dict[str, RunInfo]) -> str:
    """The messages that turn the view ``before`` into ``now`` (new and changed runs oldest first)."""
    fresh = [info for run_id, info in now.items() if before.get(run_id) != info]
    fresh.sort(key=lambda info: (info.created_at, info.run_id))
    gone = [run_id for run_id in before if run_id not in now]
    return "".join([*map(_run_message, fresh), *map(_gone_message, gone)])


async def status_changes(stores: Sequence[RunStore], filters: Filters, limit: int, feed: Feed) -> AsyncIterator[bytes]:
    """The feed's chunks until the client leaves; ``stream_interrupted`` when the server stops."""
    seen: dict[str, RunInfo] = {}
    first = True
    while not feed.stopping:
        now = await run_in_threadpool(snapshot, stores, filters, limit)
        text = changes(seen, now)
        if text or first:
            yield (text or ": no runs yet\n\n").encode()  # the first answer at once, even when empty
        seen, first = now, False
        feed.reset()
        with anyio.move_on_after(POLL_SECONDS):
            await feed.wait()
    yield INTERRUPTED
