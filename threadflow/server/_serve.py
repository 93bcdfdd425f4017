"""Serving an app with uvicorn: on a background thread (``running_server``) or in the foreground (``serve_target``)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import socket
import sys
import threading
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from .. import Workflow
from ..storage import DB_ENV, RunStore, StoreError, default_store
from ._app import create_app
from ._auth import Auth, api_key_or_env
from ._feeds import OPEN_FEEDS
from ._models import DEFAULT_MAX_BODY_BYTES

__all__ = ["running_server", "serve_target"]


class _Server(uvicorn.Server):
    """uvicorn's server, telling a waiting thread when it has started (or failed to).

    When it starts to stop, it ends the open SSE streams cleanly (``stream_interrupted``)
    rather than waiting out its graceful timeout and then cutting them.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.ready.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        OPEN_FEEDS.stop(asyncio.get_running_loop())
        await super().shutdown(sockets)


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound before uvicorn starts so that the URL (and port 0's pick) is known.

    The protocol is given explicitly: asyncio sets ``TCP_NODELAY`` only on
    connections whose socket says ``IPPROTO_TCP``, and without it every
    keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def running_server(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 10.0
) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a background thread for the ``with`` block; yields its base URL.

    ``port=0`` picks a free port. Leaving the block stops the server; a
    stream still open then is closed (its run cancelled, cause
    ``stream_closed``). Raises ``RuntimeError`` if the server does not start
    within ``startup_timeout`` seconds. Meant for tests, examples and
    embedding; ``threadflow serve`` runs a server in the foreground.
    """
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, log_level="warning", timeout_graceful_shutdown=2
    )
    sock = _bind(host, port)
    server = _Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="threadflow-http", daemon=True)
    thread.start()
    try:
        if not server.ready.wait(startup_timeout) or not server.started:
            raise RuntimeError(f"the HTTP server did not start on {host}:{port}")
        yield _url(host, sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(startup_timeout)
        sock.close()


def _load_target(target: str) -> object:
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"target must look like 'module:attribute', not {target!r}")
    if "" not in sys.path:  # as `python -m` would: modules next to the caller are importable
        sys.path.insert(0, "")
    value: object = importlib.import_module(module_name)
    for name in attribute.split("."):
        value = getattr(value, name)
    return value


def _app_for(value: object, api_key: str | None, store: RunStore | None, max_body_bytes: int) -> ASGIApp:
    """A Workflow, a list/tuple/dict of them, an ASGI app, or a no-argument factory of one of those.

    ``max_body_bytes`` applies to the apps built here; an app of the user's own keeps its own rules.
    """
    if isinstance(value, (Workflow, list, tuple, dict)):
        # create_app checks the items
        return create_app(value, api_key=api_key, store=store, max_body_bytes=max_body_bytes)
    if inspect.isfunction(value) or inspect.ismethod(value):
        required = [p for p in inspect.signature(value).parameters.values() if p.default is p.empty]
        if not required:
            return _app_for(value(), api_key, store, max_body_bytes)  # a factory
        if len(required) != 3:
            raise TypeError(f"{value.__name__} is neither an app factory nor an ASGI app (scope, receive, send)")
    if not callable(value):
        raise TypeError(f"cannot serve a {type(value).__name__}: give a Workflow, a list or dict of them, or an app")
    key = api_key_or_env(api_key)
    return Auth(value, api_key=key) if key is not None else value


def serve_target(
    target: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    db: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> int:
    """``threadflow serve module:attribute``: import the target and serve it with uvicorn until stopped.

    ``db`` sets ``$THREADFLOW_DB`` before the import, so workflows built at
    import time keep their runs there, and the app answers for every run
    recorded in it (runs of other processes included). Returns the exit code: 0 after a
    clean stop, 1 when the run history (``db`` or ``$THREADFLOW_DB``) cannot be used
    (as for ``threadflow runs``), 2 when the target cannot be loaded or served.
    ``max_body_bytes``: as for ``create_app``.
    """
    if db:
        os.environ[DB_ENV] = db
    try:
        store = default_store() if db else None  # the one SqliteStore for that path, shared with the workflows
        app = _app_for(_load_target(target), api_key, store, max_body_bytes)
    except StoreError as error:  # a bad run history, from --db or from a workflow the import built
        print(f"threadflow serve: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 — any failure to load the user's target is a usage error
        print(f"threadflow serve: cannot serve {target!r}: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
    try:
        sock = _bind(host, port)
    except OSError as error:
        print(f"threadflow serve: cannot listen on {host}:{port}: {error}", file=sys.stderr)
        return 2
    print(f"threadflow: serving {target} on {_url(host, sock.getsockname()[1])}", flush=True)
    try:
        _Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully on Ctrl+C, then re-raises it
        pass
    return 0
