"""``FakeOpenAIServer``: a local OpenAI-compatible chat-completions server for tests (stdlib only).

Public as ``threadflow.testing.FakeOpenAIServer``. It serves
``POST /v1/chat/completions`` on 127.0.0.1 (a free port), HTTP/1.1 with
keep-alive, streaming each reply as server-sent events in chunked encoding.
Replies are scripted with ``FakeReply``s, taken in order, one per request;
when the script is empty the ``default`` reply answers. It notices a client
that hangs up mid-reply (``disconnects``, ``client_disconnected``) and stops
cleanly: ``stop()`` (or leaving the ``with`` block) closes every connection
and joins every thread it started.
"""

from __future__ import annotations

import json
import select
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._tools import ToolCall

__all__ = ["FakeOpenAIServer", "FakeReply"]


@dataclass
class FakeReply:
    """One scripted answer.

    - ``tokens`` are streamed as ``delta.content`` chunks, then ``tool_calls``
      (each split into a name chunk and two argument slices, as OpenAI does).
    - ``pace``: seconds before each chunk; ``header_delay``: seconds before the
      status line (a slow server, or one queueing the request).
    - ``status`` other than 200: a JSON error answer with ``message`` and, if
      given, a ``Retry-After`` header of ``retry_after`` seconds.
    - ``hang_after=N``: after N tokens, send nothing more until the client
      leaves or the server stops (``hanging`` is set then): a stalled model.
    - ``cut_after=N``: close the connection after N chunks, mid-body.
    - ``malformed=True``: send a ``data:`` line that is not JSON after the tokens.
    - ``done=False``: end the body cleanly but without ``finish_reason``/``[DONE]``.
    """

    tokens: Sequence[str] = ("Hello", " from", " the", " fake", " server.")
    tool_calls: Sequence[ToolCall] = ()
    pace: float = 0.0
    header_delay: float = 0.0
    status: int = 200
    message: str = "scripted failure"
    retry_after: float | None = None
    hang_after: int | None = None
    cut_after: int | None = None
    malformed: bool = False
    done: bool = True
    headers: dict[str, str] = field(default_factory=dict)


class _ClientGone(Exception):
    """The client hung up (or the server is stopping) while a reply was being sent."""


class FakeOpenAIServer:
    """A scripted OpenAI-compatible server: ``with FakeOpenAIServer() as server: ...``.

    ``base_url`` ends in ``/v1``. ``requests``: the JSON bodies received, in
    order; ``request_headers``: their headers (lower-case names).
    ``script(*replies)`` queues replies. ``request_received`` is set when a
    request arrives and ``body_started`` when a reply's first chunk was sent
    (tests clear them to wait for the next one), ``hanging`` when a reply
    starts hanging (``hang_after``); ``client_disconnected`` is set
    and ``disconnects`` counted when a client leaves mid-reply.
    """

    def __init__(self, *replies: FakeReply, default: FakeReply | None = None) -> None:
        self.default = default or FakeReply()
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self.disconnects = 0
        self.request_received = threading.Event()
        self.body_started = threading.Event()
        self.hanging = threading.Event()
        self.client_disconnected = threading.Event()
        self._script: list[FakeReply] = list(replies)
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        # a short poll interval: stop() waits for the serving loop to look up
        serve = lambda: self._httpd.serve_forever(poll_interval=0.02)  # noqa: E731
        self._thread = threading.Thread(target=serve, name="fake-openai-server", daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def script(self, *replies: FakeReply) -> None:
        """Queue ``replies`` for the next requests, in order."""
        with self._lock:
            self._script.extend(replies)

    def stop(self) -> None:
        """Close every connection, stop serving, join every thread. Idempotent."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            connections = list(self._connections)
        self._wake_w.send(b"x")  # wakes replies pausing between chunks
        for conn in connections:
            _shutdown(conn)  # wakes handlers waiting for a keep-alive request
        self._httpd.shutdown()
        self._httpd.server_close()  # joins the handler threads (block_on_close)
        self._thread.join()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> FakeOpenAIServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- used by the handler ---------------------------------------------------

    def _next_reply(self, body: dict[str, Any], headers: dict[str, str]) -> FakeReply:
        with self._lock:
            self.requests.append(body)
            self.request_headers.append(headers)
            reply = self._script.pop(0) if self._script else self.default
        self.request_received.set()
        return reply

    def _track(self, conn: socket.socket, live: bool) -> None:
        with self._lock:
            if live:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
        if live and self._stopping:
            _shutdown(conn)

    def _gone(self) -> None:
        with self._lock:
            self.disconnects += 1
        self.client_disconnected.set()

    def _pause(self, conn: socket.socket, seconds: float) -> None:
        """Wait ``seconds``, but notice at once a client hanging up or the server stopping."""
        if seconds <= 0:
            return
        timeout = None if seconds == float("inf") else seconds
        readable, _, _ = select.select([conn, self._wake_r], [], [], timeout)
        if self._wake_r in readable or self._stopping:
            raise _ClientGone
        if conn in readable:  # mid-reply, a client only ever sends its goodbye
            try:
                if conn.recv(1, socket.MSG_PEEK) == b"":
                    raise _ClientGone
            except OSError:
                raise _ClientGone from None


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads
    block_on_close = True
    fake: FakeOpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that reset its connection (a cancel does exactly that): not a server fault
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, chunked bodies: what clients' pools expect
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the client is gone; nothing left to flush
        self.server.fake._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 — the stdlib's parameter name
        pass  # quiet: tests read requests from the server's lists

    def do_POST(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"unparsable": raw.decode("utf-8", "replace")}
        reply = fake._next_reply(body, {k.lower(): v for k, v in self.headers.items()})
        try:
            fake._pause(self.connection, reply.header_delay)
            if not self.path.endswith("/chat/completions"):
                self._error(404, f"no route {self.path}", None)
            elif reply.status != 200:
                self._error(reply.status, reply.message, reply.retry_after)
            else:
                self._stream(reply, str(body.get("model", "fake")))
        except (_ClientGone, BrokenPipeError, ConnectionResetError):
            fake._gone()
            self.close_connection = True

    def _error(self, status: int, message: str, retry_after: float | None) -> None:
        payload = json.dumps({"error": {"message": message, "type": "fake_error", "code": status}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after is not None:
            self.send_header("Retry-After", f"{retry_after:g}")
        self.end_headers()
        self.wfile.write(payload)

    def _stream(self, reply: FakeReply, model: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        fake = self.server.fake
        for index, data in enumerate(_events(reply, model)):
            if reply.cut_after is not None and index >= reply.cut_after:
                self.close_connection = True
                _shutdown(self.connection)  # mid-body, with no terminating chunk: a cut stream
                return
            if reply.hang_after is not None and index == reply.hang_after + 1:  # +1: the role chunk
                fake.hanging.set()
                fake._pause(self.connection, float("inf"))
            fake._pause(self.connection, reply.pace)
            self._chunk(f"data: {data}\n\n".encode())
            fake.body_started.set()
        self._chunk(b"")  # the terminating chunk

    def _chunk(self, payload: bytes) -> None:
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        self.wfile.flush()


def _events(reply: FakeReply, model: str) -> list[str]:
    """The ``data:`` payloads of one streamed reply, in order."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        envelope = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model}
        return json.dumps({**envelope, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": token}) for token in reply.tokens]
    for index, call in enumerate(reply.tool_calls):
        head = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        events.append(chunk({"tool_calls": [head]}))
        half = len(call.arguments) // 2
        for part in (call.arguments[:half], call.arguments[half:]):
            events.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]}))
    if reply.malformed:
        events.append('{"choices": [ this is not JSON')
    if reply.done:
        events.append(chunk({}, "tool_calls" if reply.tool_calls else "stop"))
        events.append("[DONE]")
    return events


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed
