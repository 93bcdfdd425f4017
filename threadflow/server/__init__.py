"""The HTTP adapter (``pip install 'threadflow[server]'``): workflows over HTTP, events as server-sent events.

::

    GET  /workflows                                     200 the served workflows
    POST /workflows/{workflow_id}/runs                  202 {run_id, workflow_id, status}; with "stream": true,
                                                        200 text/event-stream of the run's events
                                                        404 unknown workflow, 409 run_id active, 422 bad body,
                                                        413 body over max_body_bytes, 400 body cut off
    GET  /workflows/{workflow_id}/runs/{run_id}         200 the run's record (RunInfo), 404
    GET  /workflows/{workflow_id}/runs/{run_id}/events  200 text/event-stream: replay after ?after_seq=N, then
                                                        follow to the terminal event; 404. A Last-Event-ID
                                                        header that is a decimal seq counts like after_seq;
                                                        any other value is ignored
    POST /workflows/{workflow_id}/runs/{run_id}/cancel  200 {run_id, status}, 404, 409 already ended {.., status}

Every SSE message is ``id: <seq>`` and ``data: <the event's own JSON>`` (the events' wire format),
so ``threadflow.events.parse_event`` reads it back. With an API key
(``create_app(api_key=...)`` or ``$THREADFLOW_API_KEY``) every request needs
``Authorization: Bearer <key>`` (401 otherwise). Errors are JSON
``{"detail": ...}``; a bad body, path or query is a 422, never a 500. A
request body over ``max_body_bytes`` (``create_app``, 10 MiB by default) is
refused with 413 as soon as that is known — from ``Content-Length``, or
while a chunked body is read — and is never held in memory.

The client that starts a run with ``"stream": true`` owns it: when that
response ends before the run has (the client disconnected, or the server is
stopping), the run is cancelled with cause ``stream_closed``. Readers of
``/events`` only watch.

Where ``/events`` finds a run's events: the runs this app started (every
active one, and the ``keep_finished_runs`` most recent finished ones) are
followed from their own event log; other runs are replayed — and followed,
polling — from a store that records events (the workflow's, or the one given
to ``create_app``), until the store's own record of the run is terminal. A
run whose events are kept nowhere is a 404.

When the server stops (``running_server``, ``threadflow serve``, or any
uvicorn whose shutdown sse-starlette sees) an open stream ends cleanly with
one last message, ``event: stream_interrupted`` with ``data: {"detail": ...}``,
instead of being cut: the client can tell that the run has not ended, and
resume from the last ``id:``. The route handlers never block the event loop:
whatever may touch a store (a cancel included) runs on a worker thread.
"""

from __future__ import annotations

try:  # the server extra; without it, say how to get it rather than which module is missing
    import fastapi as _fastapi
    import sse_starlette as _sse_starlette
    import uvicorn as _uvicorn
except ModuleNotFoundError as _missing:
    raise ImportError(
        f"threadflow.server needs the server extra: pip install 'threadflow[server]' (no module {_missing.name!r})"
    ) from _missing

from ._app import RUN_ID_HEADER, create_app
from ._auth import API_KEY_ENV
from ._models import DEFAULT_MAX_BODY_BYTES, CancelRunRequest, StartRunRequest
from ._serve import running_server, serve_target

del _fastapi, _sse_starlette, _uvicorn

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_MAX_BODY_BYTES",
    "RUN_ID_HEADER",
    "CancelRunRequest",
    "StartRunRequest",
    "create_app",
    "running_server",
    "serve_target",
]
