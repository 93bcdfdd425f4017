"""The dashboard and the metrics: a page at ``/`` and its static files under ``/static/``, shipped inside the package.

No build step: plain HTML, CSS and JavaScript modules, read with
``importlib.resources``. The page talks to the same HTTP API as any client
(``/runs/feed``, ``/workflows``, the run routes), so it shows nothing the
API does not.
"""

from __future__ import annotations

import contextlib
from importlib import resources

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from ..telemetry import enable_metrics, metrics_text
from ._responses import error

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


async def _metrics() -> Response:
    """The run metrics in Prometheus' text format (see ``threadflow.telemetry``); 501 without prometheus_client."""
    try:
        body, content_type = await run_in_threadpool(metrics_text)
    except ModuleNotFoundError:
        return error(501, "GET /metrics needs prometheus_client: pip install 'threadflow[server]'")
    return Response(body, media_type=content_type)


def add_dashboard(app: FastAPI) -> None:
    """Serve the page at ``/``, ``/static/*`` (hidden from the OpenAPI docs: they are not API) and ``/metrics``.

    The metrics are counted from the moment the app is made.
    """
    with contextlib.suppress(ModuleNotFoundError):
        enable_metrics()
    app.add_api_route("/", _index, methods=["GET"], include_in_schema=False, response_class=HTMLResponse)
    app.add_api_route("/metrics", _metrics, methods=["GET"], response_class=Response)
    app.mount("/static", StaticFiles(packages=[(__package__, "static")]), name="static")
