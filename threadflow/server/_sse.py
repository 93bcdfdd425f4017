"""Server-sent events: a run's events on the wire, and the response that owns (and may cancel) its run.

Every SSE message is ``id: <seq>`` and ``data: <the event's own JSON>`` (the events' wire format).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import weakref
from collections.abc import AsyncIterator, Sequence

import anyio
import anyio.to_thread
from pydantic_core import PydanticSerializationError
from sse_starlette import EventSourceResponse
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .. import RunHandle
from ..events import BaseEvent
from ..telemetry import count_streamed
from ._feeds import OPEN_FEEDS, Feed, Stopped

__all__ = ["INTERRUPTED", "KEEP_ALIVE_SECONDS", "EventStreamResponse", "FeedResponse", "event_json"]

logger = logging.getLogger("threadflow.server")

#: A stream sends a keep-alive comment every this many seconds (proxies close connections idle too long).
KEEP_ALIVE_SECONDS = 15.0
_KEEP_ALIVE = b": keep-alive\n\n"
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


async def _chunks(batches: AsyncIterator[Sequence[BaseEvent]]) -> AsyncIterator[bytes]:
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


class FeedResponse(StreamingResponse):
    """An SSE response over a feed's chunks; a stopping server ends the feed cleanly (``stream_interrupted``).

    Sent from the request's own task: the headers at once, then each chunk as
    it comes, with no task group around it (under load every task started is
    a turn of the event loop before the first byte goes out). One watcher
    task beside it reads the connection: a client's disconnect ends the
    response at once (the chunks are closed, a run the response owns is
    cancelled, see ``EventStreamResponse``), and a keep-alive comment goes
    out every ``KEEP_ALIVE_SECONDS``. (Routes streaming SSE answer ``GET``
    and ``POST``, never ``HEAD``.)
    """

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], feed: Feed, *, headers: dict[str, str]) -> None:
        self._feed = feed
        # The chunks and the keep-alive comments share the connection. asyncio's lock: taking it
        # free costs no turn of the loop (anyio's yields one on every acquire).
        self._sending = asyncio.Lock()
        self._ended = False  # the body is complete: nothing more may be sent
        self._open = anyio.CancelScope()
        sse = {"Cache-Control": "no-store", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
        super().__init__(chunks, headers={**sse, **headers})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        OPEN_FEEDS.add(self._feed)
        _stop_feeds_on_exit(self._feed.loop)
        try:
            await send(start)
            watcher = self._feed.loop.create_task(self._watch(receive, send))
            try:
                with self._open:  # cancelled by the watcher when the client has gone
                    await self._send_chunks(send)
            finally:
                watcher.cancel()
        finally:
            OPEN_FEEDS.discard(self._feed)

    async def _send_chunks(self, send: Send) -> None:
        async with contextlib.aclosing(self.body_iterator):  # type: ignore[type-var]  # async generators have aclose()
            async for chunk in self.body_iterator:
                async with self._sending:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        async with self._sending:
            self._ended = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch(self, receive: Receive, send: Send) -> None:
        """Until the client disconnects (then end the response), a keep-alive comment every ``KEEP_ALIVE_SECONDS``."""
        while True:
            with anyio.move_on_after(KEEP_ALIVE_SECONDS):
                if (await receive())["type"] == "http.disconnect":
                    self._open.cancel()
                    return
                continue
            async with self._sending:
                if self._ended:
                    return
                await send({"type": "http.response.body", "body": _KEEP_ALIVE, "more_body": True})


_exit_watched: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def _stop_feeds_on_exit(loop: asyncio.AbstractEventLoop) -> None:
    """Once per loop: end its feeds when the uvicorn serving it is told to stop.

    ``running_server`` and ``threadflow serve`` end them themselves; this is
    for an app served by a uvicorn of the user's own (a signal stops it).
    sse-starlette's shared watcher tells: one task per loop, not per stream.
    """
    if loop not in _exit_watched:
        _exit_watched.add(loop)
        loop.create_task(_feeds_stop_on_exit(loop))


async def _feeds_stop_on_exit(loop: asyncio.AbstractEventLoop) -> None:
    await EventSourceResponse._listen_for_exit_signal()  # sse-starlette's one shutdown watcher (a private name)
    OPEN_FEEDS.stop(loop)


class EventStreamResponse(FeedResponse):
    """A run's events as SSE; however the response ends, it cancels the run it owns if that run is still going.

    "However it ends" covers the client disconnecting (the response's watcher
    sees the ``http.disconnect`` at once and ends the stream), a failed send, and the
    server stopping; a run that reached its terminal event is not affected.
    """

    def __init__(
        self,
        batches: AsyncIterator[Sequence[BaseEvent]],
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
