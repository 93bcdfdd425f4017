"""Bearer-token auth: one API key, checked on every request before the app sees it."""

from __future__ import annotations

import os
import secrets

from starlette.types import ASGIApp, Receive, Scope, Send

from ._responses import error

__all__ = ["API_KEY_ENV", "BearerAuth", "api_key_or_env"]

#: The environment variable holding the API key when ``create_app`` is given none.
API_KEY_ENV = "THREADFLOW_API_KEY"


class BearerAuth:
    """ASGI middleware: each request needs ``Authorization: Bearer <key>``, compared in constant time.

    An HTTP request without it is answered 401; a websocket is closed before it
    is accepted, with code 1008 (policy violation). Only lifespan messages,
    which carry no headers, pass unchecked; any other kind of scope is refused.
    """

    def __init__(self, app: ASGIApp, *, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan" or (kind in {"http", "websocket"} and self._authorized(scope)):
            await self.app(scope, receive, send)
        elif kind == "http":
            detail = "missing or wrong API key: send 'Authorization: Bearer <key>'"
            response = error(401, detail, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong API key"})
        else:
            raise RuntimeError(f"threadflow's API key check does not know ASGI scopes of type {kind!r}")

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self._key)
        return False


def api_key_or_env(api_key: str | None) -> str | None:
    """``api_key``, or ``$THREADFLOW_API_KEY`` when None; None (no auth) when that is unset or empty."""
    if api_key is None:
        return os.environ.get(API_KEY_ENV) or None
    if not isinstance(api_key, str) or not api_key:
        raise ValueError("api_key must be a non-empty str, or None to read $THREADFLOW_API_KEY")
    return api_key
