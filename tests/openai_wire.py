"""A second, independent OpenAI-compatible chat server, written from the protocol and not from threadflow's fake.

Raw sockets, no http.server: one request per connection, ``Connection:
close`` and an EOF-terminated body (no chunked encoding), ``\\r\\n`` line
endings, ``data:`` without a space, ``: ping`` comments and blank keep-alive
lines between events. If OpenAIChat only worked against FakeOpenAIServer's
framing, these tests would catch it.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WireReply:
    tokens: list[str] = field(default_factory=lambda: ["wire", " says", " hi"])
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)  # (id, name, arguments)
    gate_after: int | None = None  # send this many tokens, then wait for ``release`` (or the client leaving)
    cut_after: int | None = None  # send this many tokens, then close without finishing


class WireServer:
    def __init__(self) -> None:
        self.replies: list[WireReply] = []
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []  # (request line, headers, body)
        self.gated = threading.Event()
        self.release = threading.Event()
        self.client_left = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, name="wire-accept")
        self._accept.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"

    def __enter__(self) -> WireServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
        except OSError:
            pass
        self._listener.close()
        self._accept.join(10)
        for thread in self._threads:
            thread.join(10)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._handle, args=(conn,), name="wire-conn")
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            raw = b""
            while b"\r\n\r\n" not in raw:
                data = conn.recv(65536)
                if not data:
                    return
                raw += data
            head, body = raw.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            while len(body) < int(headers.get("content-length", 0)):
                body += conn.recv(65536)
            self.requests.append((lines[0], headers, json.loads(body)))
            reply = self.replies.pop(0) if self.replies else WireReply()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
            self._reply(conn, reply)

    def _reply(self, conn: socket.socket, reply: WireReply) -> None:
        def send(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
            conn.sendall(f": ping\r\n\r\ndata:{data}\r\n\r\n".encode())

        for index, token in enumerate(reply.tokens):
            if reply.cut_after is not None and index == reply.cut_after:
                return  # EOF mid-answer: no finish_reason, no [DONE]
            if reply.gate_after is not None and index == reply.gate_after:
                self.gated.set()
                conn.settimeout(10)
                try:  # wait for the client to hang up (EOF) or for release
                    while not self.release.is_set():
                        conn.settimeout(0.05)
                        try:
                            if conn.recv(1) == b"":
                                self.client_left.set()
                                return
                        except TimeoutError:
                            continue
                except OSError:
                    self.client_left.set()
                    return
            send({"choices": [{"index": 0, "delta": {"content": token}}]})
        for index, (call_id, name, arguments) in enumerate(reply.tool_calls):
            call = {"index": index, "id": call_id, "function": {"name": name, "arguments": arguments}}
            send({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
        send({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        send("[DONE]")
