"""Server-sent events: a run's events on the wire, and the response that owns (and may cancel) its run.

Every SSE message is ``id: <seq>`` and ``data: <the event's own JSON>`` (the events' wire format).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread
from pydantic_core import PydanticSerializationError
from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from .. import RunHandle
from ..events import BaseEvent
from ..telemetry import count_streamed
from ._feeds import OPEN_FEEDS, Feed, Stopped

__all__ = ["INTERRUPTED", "EventStreamResponse", "FeedResponse", "event_json"]

logger = logging.getLogger("threadflow.server")

_SHUTDOWN_GRACE_SECONDS = 1.0  # under uvicorn's graceful-shutdown timeout (2 s here, 5 s for `threadflow serve`)
_SURROGATE = re.compile("[\ud800-\udfff]")
_INTERRUPTED_DETAIL = "the server is stopping before the run has ended; ask again (after_seq, Last-Event-ID) to resume"
INTERRUPTED = f"event: stream_interrupted\ndata: {json.dumps({'detail': _INTERRUPTED_DETAIL})}\n\n".encode()
# Closing the runs whose clients left gets threads of its own: behind the app's shared worker
# threads (anyio's 40), busy with starts and store reads under load, a disconnect would wait its turn.
_CLOSERS = anyio.CapacityLimiter(256)


def event_json(event: BaseEvent) -> str:
    """The event's own JSON (the events' wire format), whatever a step put in it.

    Content JSON cannot carry as-is still goes out: an unknown type as its
    ``repr`` (a placeholder naming its type if that raises), content that
    contains itself as its ``repr``, a lone surrogate as U+FFFD (``parse_event``
    refuses ``\\ud800``). Never raises: a step's output must not cut a stream.
    """
    try:
        return event.model_dump_json()
    except (PydanticSerializationError, ValueError):  # ValueError: content that contains itself
        pass
    fields = {name: getattr(event, name) for name in type(event).model_fields}
    try:
        text = json.dumps(fields, ensure_ascii=False, default=_safe_repr, separators=(",", ":"))
    except ValueError:  # content that contains itself: sent as its repr, which marks the cycle
        fields["content"] = _safe_repr(fields.get("content"))
        text = json.dumps(fields, ensure_ascii=False, default=_safe_repr, separators=(",", ":"))
    return _SURROGATE.sub("\ufffd", text)


def _safe_repr(value: object) -> str:
    """``repr(value)``; a placeholder naming its type when user code's ``__repr__`` raises."""
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 — serialising must never cut a stream
        return f"<unprintable {type(value).__qualname__} object>"


def _message(event: BaseEvent) -> str:
    return f"id: {event.seq}\ndata: {event_json(event)}\n\n"


async def _chunks(batches: AsyncIterator[list[BaseEvent]]) -> AsyncIterator[bytes]:
    """One SSE chunk per batch of events, so a fast run costs one send per batch, not per event.

    A feed stopped by the server's shutdown ends with one ``stream_interrupted`` message.
    """
    async with contextlib.aclosing(batches):  # type: ignore[type-var]  # async generators have aclose()
        try:
            async for batch in batches:
                yield "".join(map(_message, batch)).encode()
                count_streamed(len(batch))
        except Stopped:
            yield INTERRUPTED


class FeedResponse(EventSourceResponse):
    """An SSE response whose feed a stopping server ends cleanly (``stream_interrupted``) rather than cuts."""

    def __init__(self, chunks: AsyncIterator[bytes], feed: Feed, *, headers: dict[str, str]) -> None:
        self._feed = feed
        # sse-starlette sets this when it sees uvicorn stop (the process's signal handler), then
        # waits up to the grace period for the feed to end before it cuts the stream.
        self._shutdown = anyio.Event()
        super().__init__(
            chunks,
            headers=headers,
            sep="\n",
            shutdown_event=self._shutdown,
            shutdown_grace_period=_SHUTDOWN_GRACE_SECONDS,
            data_sender_callable=self._stop_on_shutdown,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        OPEN_FEEDS.add(self._feed)
        try:
            await super().__call__(scope, receive, send)
        finally:
            OPEN_FEEDS.discard(self._feed)

    async def _stop_on_shutdown(self) -> None:
        await self._shutdown.wait()
        self._feed.stop()


class EventStreamResponse(FeedResponse):
    """A run's events as SSE; however the response ends, it cancels the run it owns if that run is still going.

    "However it ends" covers the client disconnecting (sse-starlette sees the
    ``http.disconnect`` at once and cancels the stream), a failed send, and the
    server stopping; a run that reached its terminal event is not affected.
    """

    def __init__(
        self,
        batches: AsyncIterator[list[BaseEvent]],
        feed: Feed,
        *,
        owns: RunHandle | None,
        headers: dict[str, str],
    ) -> None:
        self._owned = owns
        super().__init__(_chunks(batches), feed, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            owned = self._owned
            if owned is not None and not owned.status.is_terminal:  # a racy read: close() decides
                # Off the loop: the run's on_cancel callbacks may record its end in a store
                # (a queued run's), which can wait for a busy database. Shielded, so that the
                # cancel still happens when this request is itself being cancelled.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_close, owned, limiter=_CLOSERS)


def _close(handle: RunHandle) -> None:
    try:
        handle.close()
    except (SystemExit, KeyboardInterrupt):
        # Raised by an on_cancel callback after the cancel was accepted (and logged by the core);
        # in a server's worker thread it would only turn into an ASGI error.
        logger.warning("threadflow: an on_cancel callback of run %s raised SystemExit/KeyboardInterrupt", handle.run_id)
