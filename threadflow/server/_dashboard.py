"""The dashboard: a page at ``/`` and its static files under ``/static/``, shipped inside the package.

No build step: plain HTML, CSS and JavaScript modules, read with
``importlib.resources``. The page talks to the same HTTP API as any client
(``/runs/feed``, ``/workflows``, the run routes), so it shows nothing the
API does not.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

__all__ = ["add_dashboard"]

# A strict policy: the page loads only its own scripts and styles, and talks only to its own server.
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _page() -> Response:
    html = resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")
    return HTMLResponse(html, headers=_HEADERS)


async def _index() -> Response:
    """The dashboard page."""
    return _page()


def add_dashboard(app: FastAPI) -> None:
    """Serve the page at ``/`` and ``/static/*`` (hidden from the OpenAPI docs: they are not API)."""
    app.add_api_route("/", _index, methods=["GET"], include_in_schema=False, response_class=HTMLResponse)
    app.mount("/static", StaticFiles(packages=[(__package__, "static")]), name="static")
