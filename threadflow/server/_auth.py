"""Auth: one API key, as a bearer token (programs) or as a browser session (the dashboard).

A browser's ``EventSource`` cannot send an ``Authorization`` header, so the
dashboard trades the key once, at ``POST /session``, for a session cookie
(HttpOnly, SameSite=Strict, signed, expiring). A request that is
authenticated by that cookie and changes something (any method but GET,
HEAD, OPTIONS) must also carry the session's CSRF token in the
``X-Threadflow-CSRF`` header: a page of another site can make the browser
send the cookie, but cannot read the token nor set the header.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from http.cookies import SimpleCookie
from importlib import resources
from urllib.parse import urlsplit

from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ._responses import JSONAnswer, error

__all__ = ["API_KEY_ENV", "CSRF_HEADER", "SESSION_COOKIE", "Auth", "Sessions", "api_key_or_env"]

#: The environment variable holding the API key when ``create_app`` is given none.
API_KEY_ENV = "THREADFLOW_API_KEY"
#: The dashboard's session cookie, and the header carrying its CSRF token.
SESSION_COOKIE = "threadflow_session"
CSRF_HEADER = "X-Threadflow-CSRF"

_SESSION_SECONDS = 12 * 3600
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a browser without a session may fetch: the login form and what it needs.
_PUBLIC = frozenset({("GET", "/"), ("GET", "/static/style.css"), ("GET", "/static/login.js")})
_MAX_LOGIN_BYTES = 4096


class Sessions:
    """Signed session tokens (``<expiry>.<nonce>.<signature>``) and the CSRF token of each.

    The signing secret is made when the app is: restarting the server logs every browser out.
    """

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)
        # Logged-out sessions' nonces, by expiry: a copy of the cookie (a proxy log, a shared
        # machine) must not outlive the logout. Kept until they would have expired anyway.
        self._revoked: dict[str, int] = {}

    def _sign(self, text: str) -> str:
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()

    def new(self) -> str:
        payload = f"{int(time.time()) + _SESSION_SECONDS}.{secrets.token_hex(16)}"
        return f"{payload}.{self._sign(payload)}"

    def nonce(self, token: str) -> str | None:
        """The session's nonce if ``token`` is one of ours and has not expired, else None."""
        expiry, _, rest = token.partition(".")
        nonce, _, signature = rest.partition(".")
        if not expiry.isdigit() or not hmac.compare_digest(self._sign(f"{expiry}.{nonce}"), signature):
            return None
        return nonce if int(expiry) > time.time() and nonce not in self._revoked else None

    def revoke(self, token: str) -> None:
        """Log the session ``token`` out for good (if it is a live one of ours)."""
        nonce = self.nonce(token)
        if nonce is None:
            return
        now = time.time()
        for old in [n for n, expiry in self._revoked.items() if expiry <= now]:
            del self._revoked[old]  # expired anyway: nonce() refuses them without help
        self._revoked[nonce] = int(token.partition(".")[0])

    def csrf(self, nonce: str) -> str:
        return self._sign(f"csrf.{nonce}")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _cookie(scope: Scope) -> str | None:
    raw = _header(scope, b"cookie")
    if raw is None:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw.decode("latin-1"))
    except Exception:  # noqa: BLE001 — a malformed Cookie header is no session, never a 500
        return None
    morsel = jar.get(SESSION_COOKIE)
    return morsel.value if morsel is not None else None


def _login_page() -> Response:
    page = resources.files(__package__).joinpath("static/login.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


class Auth:
    """ASGI middleware: with an API key, every request needs the key or a session, and answers ``/session``.

    Bearer tokens are compared in constant time. Without either, an HTTP
    request is answered 401 — except the dashboard's page, which is then the
    login form; a websocket is closed before it is accepted (code 1008). A
    session-authenticated request that changes something without the right
    CSRF header is answered 403. Without an API key everything passes, and
    ``GET /session`` says so (``{"auth": false}``).
    """

    def __init__(self, app: ASGIApp, *, api_key: str | None) -> None:
        self.app = app
        self._key = api_key.encode() if api_key is not None else None
        self.sessions = Sessions()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            if self._key is None or self._bearer(scope):
                await self.app(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong API key"})
        else:
            raise RuntimeError(f"threadflow's API key check does not know ASGI scopes of type {kind!r}")

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        response: Response | None
        if scope["path"] == "/session":
            response = await self._session_route(scope, receive)
        elif self._key is None:
            response = _cross_site(scope)
        elif self._bearer(scope):
            response = None
        else:
            response = self._by_session(scope)
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    def _by_session(self, scope: Scope) -> Response | None:
        """None to let a request with a valid session through, else the answer (login form, 401, 403)."""
        nonce = self._nonce(scope)
        if nonce is None:
            if (scope["method"], scope["path"]) in _PUBLIC:
                return _login_page() if scope["path"] == "/" else None
            detail = "missing or wrong API key: send 'Authorization: Bearer <key>'"
            return error(401, detail, headers={"WWW-Authenticate": "Bearer"})
        if scope["method"] not in _SAFE_METHODS:
            sent = _header(scope, CSRF_HEADER.lower().encode()) or b""
            if not hmac.compare_digest(sent, self.sessions.csrf(nonce).encode()):
                return error(403, f"a request from the dashboard must carry its {CSRF_HEADER} header")
        return None

    def _bearer(self, scope: Scope) -> bool:
        assert self._key is not None
        value = _header(scope, b"authorization")
        if value is None:
            return False
        scheme, _, token = value.partition(b" ")
        return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self._key)

    def _nonce(self, scope: Scope) -> str | None:
        token = _cookie(scope)
        return self.sessions.nonce(token) if token else None

    async def _session_route(self, scope: Scope, receive: Receive) -> Response:
        method = scope["method"]
        if method == "GET":
            return self._whoami(scope)
        if method == "POST":
            return await self._login(scope, receive)
        if method == "DELETE":
            return self._logout(scope)
        return error(405, "/session answers GET, POST and DELETE", headers={"Allow": "GET, POST, DELETE"})

    def _whoami(self, scope: Scope) -> Response:
        """``{"auth": needs a key, "csrf": the session's token or null}``; 401 with a key but no session."""
        if self._key is None:
            return JSONAnswer({"auth": False, "csrf": None})
        nonce = self._nonce(scope)
        if nonce is None:
            return error(401, 'no session: POST /session with {"api_key": ...} first')
        return JSONAnswer({"auth": True, "csrf": self.sessions.csrf(nonce)})

    async def _login(self, scope: Scope, receive: Receive) -> Response:
        if self._key is None:
            return JSONAnswer({"auth": False, "csrf": None})
        offered = _api_key_in(await _small_body(receive))
        if offered is None or not secrets.compare_digest(offered.encode(), self._key):
            return error(401, "wrong API key")
        token = self.sessions.new()
        nonce = self.sessions.nonce(token)
        assert nonce is not None
        response = JSONAnswer({"auth": True, "csrf": self.sessions.csrf(nonce)})
        secure = scope.get("scheme") == "https"
        response.set_cookie(
            SESSION_COOKIE, token, max_age=_SESSION_SECONDS, path="/", httponly=True, samesite="strict", secure=secure
        )
        return response

    def _logout(self, scope: Scope) -> Response:
        refused = self._by_session(scope) if self._key is not None and not self._bearer(scope) else None
        if refused is not None:
            return refused
        token = _cookie(scope)
        if token:
            self.sessions.revoke(token)
        response = JSONAnswer({"auth": self._key is not None, "csrf": None})
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response


def _cross_site(scope: Scope) -> Response | None:
    """403 for a change a browser sends on behalf of another site's page, to a server without a key.

    Without a key nothing else stops a page the user visits from posting
    (as a "simple" ``text/plain`` request, which needs no CORS preflight) to a
    server on their machine: starting runs with its input, cancelling them.
    Browsers say where a request comes from (``Sec-Fetch-Site``, else
    ``Origin``); programs send neither and pass.
    """
    if scope["method"] in _SAFE_METHODS:
        return None
    site = _header(scope, b"sec-fetch-site")
    if site is not None:
        foreign = site not in (b"same-origin", b"none")
    else:
        origin = _header(scope, b"origin")
        foreign = origin is not None and urlsplit(origin.decode("latin-1")).netloc.lower() != _host(scope)
    if foreign:
        return error(403, "a change sent from another site's page is refused")
    return None


def _host(scope: Scope) -> str:
    return (_header(scope, b"host") or b"").decode("latin-1").lower()


async def _small_body(receive: Receive) -> bytes:
    """The request body, up to ``_MAX_LOGIN_BYTES`` (what is beyond makes it no valid login)."""
    body = b""
    more = True
    while more and len(body) <= _MAX_LOGIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


def _api_key_in(body: bytes) -> str | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    key = value.get("api_key") if isinstance(value, dict) else None
    return key if isinstance(key, str) else None


def api_key_or_env(api_key: str | None) -> str | None:
    """``api_key``, or ``$THREADFLOW_API_KEY`` when None; None (no auth) when that is unset or empty."""
    if api_key is None:
        return os.environ.get(API_KEY_ENV) or None
    if not isinstance(api_key, str) or not api_key:
        raise ValueError("api_key must be a non-empty str, or None to read $THREADFLOW_API_KEY")
    return api_key
