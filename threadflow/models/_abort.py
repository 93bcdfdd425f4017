"""Abortable HTTP: an httpx transport whose in-flight request can be stopped from another thread.

Why not ``response.close()``: with httpx (and the openai SDK on top of it),
closing a response or client from another thread takes effect only when the
blocked ``recv()`` returns, i.e. when the next byte arrives — seconds later for
a slow model, never for a stalled one. Shutting the socket down
(``socket.shutdown(SHUT_RDWR)``) makes the blocked ``recv()`` return at once,
both while waiting for the headers and mid-body.

So the transport's connections come from an httpcore network backend whose
streams report their socket to the ``Abort`` of the request now running in
this thread (httpcore's sync pool does all its I/O in the caller's thread).
``Abort.abort()`` — from an ``on_cancel`` callback — shuts that socket down;
httpcore then sees a dead connection and drops it from the pool, so the pool
stays usable.

The TCP connect is abortable too: the backend connects sockets itself
(``_connect``) and hands each to the ``Abort`` first, since a ``shutdown()``
of a connecting socket makes its blocked ``connect()`` return at once.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx
from httpcore._backends.sync import SyncStream  # the stream httpcore's own backend wraps a socket in

__all__ = ["Abort", "AbortableTransport"]

_ACTIVE = threading.local()  # .abort: the Abort of the request this thread is running, if any


class Abort:
    """One request's abort switch: ``abort()`` from any thread; ``active()`` around its I/O."""

    __slots__ = ("_lock", "_sock", "aborted")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.aborted = False

    def abort(self) -> None:
        """Shut down the socket the request is using (now, or as soon as it has one)."""
        with self._lock:  # under the lock: the socket cannot go back to the pool meanwhile
            self.aborted = True
            if self._sock is not None:
                _shutdown(self._sock)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Route this thread's HTTP I/O through this abort switch while the block runs."""
        previous = getattr(_ACTIVE, "abort", None)
        _ACTIVE.abort = self
        try:
            yield
        finally:
            _ACTIVE.abort = previous
            with self._lock:
                self._sock = None  # the connection may go back to the pool: never touch it again

    def _attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.aborted and sock is not None:
                _shutdown(sock)


def _connect(
    abort: Abort, address: tuple[str, int], timeout: float | None, source: tuple[str, int] | None
) -> socket.socket:
    """``socket.create_connection``, with each socket given to ``abort`` before it connects.

    A blocked ``connect()`` (a server whose accept queue is full, a host that
    drops the SYN) returns at once when another thread shuts its socket down,
    so a cancel no longer waits for the connect timeout.
    """
    error: OSError | None = None
    for family, kind, proto, _, target in socket.getaddrinfo(*address, 0, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            abort._attach(sock)
            if abort.aborted:  # cancelled before this socket was attached: don't start
                raise ConnectionAbortedError("the request was aborted")
            sock.settimeout(timeout)
            if source is not None:
                sock.bind(source)
            sock.connect(target)
        except OSError as failed:
            sock.close()
            error = failed
            if abort.aborted:
                break
        else:
            return sock
    raise error if error is not None else OSError(f"getaddrinfo returned nothing for {address!r}")


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected: nothing left to unblock


class _Stream(httpcore.NetworkStream):
    """A network stream that tells the running request's ``Abort`` which socket it uses."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def _arm(self) -> None:
        abort: Abort | None = getattr(_ACTIVE, "abort", None)
        if abort is not None:
            abort._attach(self._inner.get_extra_info("socket"))

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._arm()
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._arm()
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> _Stream:
        # wrapping replaces the socket object (an SSLSocket takes over the fd): track the new one
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        abort: Abort | None = getattr(_ACTIVE, "abort", None)
        if abort is None:
            return _Stream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))
        source = None if local_address is None else (local_address, 0)
        try:
            sock = _connect(abort, (host, port), timeout, source)
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except TimeoutError as error:  # as httpcore's own backend maps them
            raise httpcore.ConnectTimeout(error) from error
        except OSError as error:
            raise httpcore.ConnectError(error) from error
        return _Stream(SyncStream(sock))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class AbortableTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` (HTTP/1.1, TLS, keep-alive pool) whose requests ``Abort`` can stop.

    Environment proxies are not used (httpx ignores them for a custom
    transport); give ``base_url`` the address to reach.
    """

    def __init__(self, *, verify: bool | str = True, limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(verify=verify, limits=limits)
        if not isinstance(self._pool, httpcore.ConnectionPool):  # pragma: no cover — an httpx that changed shape
            raise RuntimeError("threadflow's OpenAIChat does not support this httpx version's transport")
        # httpx takes no network_backend argument: replace its pool with one that has ours, same settings
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_Backend(),
        )
