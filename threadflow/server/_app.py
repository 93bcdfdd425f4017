"""``create_app``: the routes over the served workflows, their stores, and the runs this app started."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.routing import Route

from .. import DuplicateRunError, RunHandle, RunInfo, RunStatus, Workflow, __version__
from ..storage import RunStore
from ..storage.memory import records_run_starts
from . import _responses as answers
from ._auth import Auth, api_key_or_env
from ._capacity import on_control_thread
from ._dashboard import add_dashboard
from ._feeds import Feed, poll_store, run_batches
from ._listing import Listing
from ._models import DEFAULT_MAX_BODY_BYTES, CancelRunRequest, StartRunRequest, body_doc, read_body
from ._responses import JSONAnswer, error
from ._sse import EventStreamResponse

__all__ = ["RUN_ID_HEADER", "create_app"]

logger = logging.getLogger("threadflow.server")

#: The response header carrying a started run's id (percent-encoded, as in its URL).
RUN_ID_HEADER = "X-Threadflow-Run-Id"

_MAX_SEQ = 2**63 - 1  # seq numbers are SQLite integers
_LAST_EVENT_ID_DOC = (
    "Resume after this event (SSE reconnection): a decimal seq number counts like after_seq (the larger wins); "
    "any other value is ignored, as the SSE standard lets a client send back whatever id it last saw."
)
_NOT_KEPT = "it was not started through this server (or has ended long ago), and no store records its events"


class _RecentRuns:
    """The handles of the runs this app started: every active one, and the ``keep`` that ended last.

    Each run is dropped when ``keep`` runs have ended after it, in O(1): a
    start never scans the handles kept.
    """

    def __init__(self, keep_finished: int) -> None:
        self._keep = keep_finished
        self._lock = threading.Lock()
        self._handles: dict[str, RunHandle] = {}
        self._finished: OrderedDict[str, RunHandle] = OrderedDict()  # in the order they ended, oldest first

    def add(self, handle: RunHandle) -> None:
        with self._lock:
            self._handles[handle.run_id] = handle  # a reused id: the newer run wins
            self._finished.pop(handle.run_id, None)
        handle.add_done_callback(self._ended)

    def _ended(self, handle: RunHandle) -> None:
        with self._lock:
            if self._handles.get(handle.run_id) is not handle:  # replaced by a newer run of that id
                return
            self._finished[handle.run_id] = handle
            if len(self._finished) > self._keep:
                oldest, _ = self._finished.popitem(last=False)
                del self._handles[oldest]
            kept = handle.run_id in self._finished
        if kept:
            handle.compact()  # kept for replay: out of the garbage collector's way (on the run's thread)

    def get(self, workflow: Workflow, run_id: str) -> RunHandle | None:
        handle = self._handles.get(run_id)
        return handle if handle is not None and handle.workflow_id == workflow.id else None


def last_event_id(header: str | None) -> int:
    """The seq a ``Last-Event-ID`` header names, or 0 for one that names none (see ``_LAST_EVENT_ID_DOC``)."""
    text = (header or "").strip()
    if not (text.isascii() and text.isdigit()):
        return 0
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(_MAX_SEQ)):  # before int(): past 4300 digits int() raises ValueError
        return 0
    seq = int(digits)
    return seq if seq <= _MAX_SEQ else 0


class _Api:
    """The route handlers, over the served workflows (by route id) and the app's own store."""

    def __init__(self, workflows: dict[str, Workflow], store: RunStore | None, keep: int, max_body: int) -> None:
        self.workflows = workflows
        self.store = store
        self.recent = _RecentRuns(keep)
        self.max_body = max_body

    def add_routes(self, app: FastAPI) -> None:
        start_body = {"requestBody": body_doc(StartRunRequest, required=False)}
        cancel_body = {"requestBody": body_doc(CancelRunRequest, required=False)}
        run = "/workflows/{workflow_id}/runs/{run_id}"
        add = app.add_api_route
        add("/workflows", self.list_workflows, methods=["GET"], responses=answers.route_docs())
        started = answers.route_docs(400, 404, 409, 413, 422, ok=answers.STARTED)
        add("/workflows/{workflow_id}/runs", self.start_run, methods=["POST"], openapi_extra=start_body, **_ok(started))
        add(run, self.get_run, methods=["GET"], responses=answers.route_docs(404, 422), response_model=RunInfo)
        events = answers.route_docs(404, 422, ok=answers.STREAM)
        add(f"{run}/events", self.run_events, methods=["GET"], responses=events, response_class=answers.EventStreamDoc)
        cancelled = answers.route_docs(400, 404, 409, 413, 422, ok=answers.CANCELLED)
        add(f"{run}/cancel", self.cancel_run, methods=["POST"], openapi_extra=cancel_body, **_ok(cancelled))
        _served_directly(app, "/workflows/{workflow_id}/runs", self.start_run)
        _served_directly(app, f"{run}/cancel", self.cancel_run)

    async def list_workflows(self) -> Response:
        """The served workflows: ``[{id, name, description, steps}]``."""
        return JSONAnswer([_describe(route_id, wf) for route_id, wf in self.workflows.items()])

    async def start_run(self, workflow_id: str, request: Request) -> Response:
        """Start a run: 202 with its id, or (``"stream": true``) its events as SSE; 404, 409, 413, 422."""
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            return _no_workflow(workflow_id)
        body = await read_body(request, StartRunRequest, self.max_body)
        try:
            handle = await _started(workflow, body)
        except DuplicateRunError as duplicate:
            return error(409, str(duplicate), run_id=duplicate.run_id)
        self.recent.add(handle)
        location = f"/workflows/{quote(workflow_id, safe='')}/runs/{quote(handle.run_id, safe='')}"
        headers = {RUN_ID_HEADER: quote(handle.run_id, safe=""), "Location": location}
        if body.stream:
            feed = Feed()
            return EventStreamResponse(run_batches(handle, 0, feed), feed, owns=handle, headers=headers)
        started = {"run_id": handle.run_id, "workflow_id": handle.workflow_id, "status": handle.status.value}
        return JSONAnswer(started, status_code=202, headers=headers)

    async def get_run(self, workflow_id: str, run_id: str) -> Response:
        """The run's record: 200 ``RunInfo`` JSON, or 404 (looked up on a control thread: it may read a store)."""
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            return _no_workflow(workflow_id)
        info = await on_control_thread(self._lookup, workflow, run_id)
        if info is None:
            return _no_run(workflow_id, run_id)
        return JSONAnswer(info.model_dump(mode="json"))

    async def run_events(
        self,
        workflow_id: str,
        run_id: str,
        after_seq: Annotated[int, Query(ge=0, le=_MAX_SEQ)] = 0,
        last_event_id_header: Annotated[
            str | None, Header(alias="Last-Event-ID", description=_LAST_EVENT_ID_DOC)
        ] = None,
    ) -> Response:
        """SSE: the run's events after ``after_seq`` (or ``Last-Event-ID``), then live ones to the end; 404."""
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            return _no_workflow(workflow_id)
        after_seq = max(after_seq, last_event_id(last_event_id_header))
        feed = Feed()
        handle = self.recent.get(workflow, run_id)
        if handle is not None:
            return EventStreamResponse(run_batches(handle, after_seq, feed), feed, owns=None, headers={})
        store, info = await on_control_thread(self._event_store, workflow, run_id)
        if store is None:
            if info is None:
                return _no_run(workflow_id, run_id)
            return error(404, f"the events of run {run_id!r} are not kept here: {_NOT_KEPT}")
        return EventStreamResponse(poll_store(store, run_id, after_seq, feed), feed, owns=None, headers={})

    async def cancel_run(self, workflow_id: str, run_id: str, request: Request) -> Response:
        """Cancel: 200 ``{run_id, status}`` (``cancelling``, or how it ended), 404 unknown, 409 already ended."""
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            return _no_workflow(workflow_id)
        body = await read_body(request, CancelRunRequest, self.max_body)
        response: Response = await on_control_thread(self._cancel, workflow_id, workflow, run_id, body.reason)
        return response

    # -- helpers, run on a worker thread (stores may do I/O) --

    def _lookup(self, workflow: Workflow, run_id: str) -> RunInfo | None:
        info = workflow.get_run(run_id)
        if info is None and self.store is not None and self.store is not workflow.store:
            info = self.store.get_run(run_id)
            if info is not None and info.workflow_id != workflow.id:
                info = None
        return info

    def all_stores(self) -> list[RunStore]:
        """Every store this app answers from, each once: the served workflows' and the app's own."""
        stores: dict[int, RunStore] = {}
        for workflow in self.workflows.values():
            stores.setdefault(id(workflow.store), workflow.store)
        if self.store is not None:
            stores.setdefault(id(self.store), self.store)
        return list(stores.values())

    def _stores(self, workflow: Workflow) -> list[RunStore]:
        stores = [workflow.store]
        if self.store is not None and self.store is not workflow.store:
            stores.append(self.store)
        return stores

    def _event_store(self, workflow: Workflow, run_id: str) -> tuple[RunStore | None, RunInfo | None]:
        info = self._lookup(workflow, run_id)
        if info is None:
            return None, None
        for store in self._stores(workflow):
            if store.records_events and (store is workflow.store or store.get_run(run_id) is not None):
                return store, info
        return None, info

    def _cancel(self, workflow_id: str, workflow: Workflow, run_id: str, reason: str | None) -> Response:
        if _cancel_here(workflow, run_id, reason):
            info = self._lookup(workflow, run_id)
            return _cancelled(run_id, info.status if info is not None else RunStatus.cancelled)
        info = self._lookup(workflow, run_id)  # cancel_run said False: the run is unknown, or has ended
        if info is None:
            return _no_run(workflow_id, run_id)
        if not info.status.is_terminal:
            # Active, but not in this process: ask its owner through the store.
            if any(store.request_cancel(run_id, reason) for store in self._stores(workflow)):
                return _cancelled(run_id, RunStatus.cancelling)
            info = self._lookup(workflow, run_id) or info  # it may have ended meanwhile
        if info.status.is_terminal:
            detail = f"run {run_id!r} has already ended: {info.status.value}"
        else:
            detail = f"run {run_id!r} is {info.status.value} in another process, which this server cannot reach"
        return error(409, detail, run_id=run_id, status=info.status.value)


def _cancel_here(workflow: Workflow, run_id: str, reason: str | None) -> bool:
    """``workflow.cancel_run``; True also when an ``on_cancel`` callback raised ``SystemExit`` or the like.

    The core re-raises such an exception only after it has accepted the
    cancel (and logged it): the run is cancelled all the same, and the HTTP
    answer says so instead of turning into a 500.
    """
    try:
        return workflow.cancel_run(run_id, reason)
    except (SystemExit, KeyboardInterrupt):
        logger.warning("threadflow: an on_cancel callback of run %s raised SystemExit/KeyboardInterrupt", run_id)
        return True


def _served_directly(app: FastAPI, path: str, handler: Callable[..., Awaitable[Response]]) -> None:
    """Answer ``POST path`` with ``handler(**path_params, request=request)``, as a plain Starlette route.

    The route FastAPI made for ``handler`` documents it in the OpenAPI
    schema; this one, put first, answers. Both handlers read the request
    themselves, so FastAPI's per-request work (solving their parameters from
    their annotations) is skipped: measured, it was a fifth of the event
    loop's time to start a stream, which is what bounds how fast a server
    answers a crowd of clients starting runs at once. The app's middleware
    and exception handlers apply as to any route.
    """

    async def endpoint(request: Request) -> Response:
        return await handler(**request.path_params, request=request)

    app.router.routes.insert(0, Route(path, endpoint, methods=["POST"], include_in_schema=False))


def _ok(responses: dict[int | str, dict[str, Any]]) -> dict[str, Any]:
    """Route options for a handler answering with a ``Response`` of its own: no default 200 model."""
    return {"responses": responses, "response_class": JSONAnswer}


def _start(workflow: Workflow, body: StartRunRequest) -> RunHandle:
    return workflow.run(body.input, background=True, run_id=body.run_id)


async def _started(workflow: Workflow, body: StartRunRequest) -> RunHandle:
    """The run, started in the background: on the event loop itself unless starting it writes to its store.

    A store that records new runs (SQLite, PostgreSQL) may wait for a busy
    database: such a run is started on a control thread. A run on a
    ``MemoryStore`` only registers and hands itself to a worker thread, as
    ``await workflow.arun(x, background=True)`` does on the loop. Measured
    with 200 clients starting streams at once on one server: the hop to a
    thread and back cost each start two thread starts and two turns of a
    busy loop, and the p99 of the time to the first event was 1.5-2x that
    of starting on the loop.
    """
    if records_run_starts(workflow.store):
        return await on_control_thread(_start, workflow, body)
    return _start(workflow, body)


def _cancelled(run_id: str, status: RunStatus) -> Response:
    return JSONAnswer({"run_id": run_id, "status": status.value})


def _no_workflow(workflow_id: str) -> Response:
    return error(404, f"no workflow {workflow_id!r} is served here")


def _no_run(workflow_id: str, run_id: str) -> Response:
    return error(404, f"workflow {workflow_id!r} has no run {run_id!r}")


def _describe(route_id: str, workflow: Workflow) -> dict[str, Any]:
    steps = [step.name for step in workflow.steps]
    described = {"id": route_id, "name": workflow.name, "description": workflow.description, "steps": steps}
    return {**described, "workflow_id": workflow.id}  # the id its runs carry, which a mapping may route as another


def _workflow_table(workflows: Workflow | Sequence[Workflow] | Mapping[str, Workflow]) -> dict[str, Workflow]:
    if isinstance(workflows, Workflow):
        workflows = [workflows]
    pairs = list(workflows.items()) if isinstance(workflows, Mapping) else [(getattr(w, "id", w), w) for w in workflows]
    table: dict[str, Workflow] = {}
    for route_id, workflow in pairs:
        if not isinstance(workflow, Workflow):
            raise TypeError(f"create_app serves Workflow objects, not {type(workflow).__name__}")
        if not isinstance(route_id, str) or not route_id or "/" in route_id:
            raise ValueError(f"workflow id {route_id!r} cannot be one URL path segment")
        if route_id in table:
            raise ValueError(f"two workflows are served as {route_id!r}")
        table[route_id] = workflow
    if not table:
        raise ValueError("create_app needs at least one workflow")
    return table


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int of at least {minimum}, not {value!r}")
    return value


def create_app(
    workflows: Workflow | Sequence[Workflow] | Mapping[str, Workflow],
    *,
    api_key: str | None = None,
    store: RunStore | None = None,
    keep_finished_runs: int = 100,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """An ASGI app (FastAPI) serving ``workflows`` over HTTP; see ``threadflow.server`` for the routes.

    ``workflows``: one ``Workflow``, a sequence of them (served by their ``id``)
    or a mapping of route id to workflow. ``api_key``: require
    ``Authorization: Bearer <api_key>`` on every request (default:
    ``$THREADFLOW_API_KEY``; unset or empty means no auth). ``store``: a
    further store to answer for runs the workflows' own stores do not know
    (e.g. a shared ``SqliteStore``). ``keep_finished_runs``: how many finished
    runs started through this app keep their events in memory for ``/events``.
    ``max_body_bytes``: larger request bodies are refused with 413 (default 10 MiB).
    The app also serves the dashboard at ``/`` (see ``threadflow.server``).
    """
    keep = _count("keep_finished_runs", keep_finished_runs, 0)
    api = _Api(_workflow_table(workflows), store, keep, _count("max_body_bytes", max_body_bytes, 1))
    key = api_key_or_env(api_key)
    app = FastAPI(title="threadflow", version=__version__, default_response_class=JSONAnswer, redirect_slashes=False)
    app.add_exception_handler(RequestValidationError, answers.validation_error)
    app.add_exception_handler(answers.Refused, answers.refused_handler)
    api.add_routes(app)
    Listing(api.workflows, api.all_stores).add_routes(app)
    add_dashboard(app)
    app.add_middleware(Auth, api_key=key)  # without a key it only answers GET /session
    return app
