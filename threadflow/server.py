"""The HTTP adapter (``pip install 'threadflow[server]'``): workflows over HTTP, events as server-sent events.

::

    GET  /workflows                                     200 the served workflows
    POST /workflows/{workflow_id}/runs                  202 {run_id, workflow_id, status}; with "stream": true,
                                                        200 text/event-stream of the run's events
                                                        404 unknown workflow, 409 run_id active, 422 bad body
    GET  /workflows/{workflow_id}/runs/{run_id}         200 the run's record (RunInfo), 404
    GET  /workflows/{workflow_id}/runs/{run_id}/events  200 text/event-stream: replay after ?after_seq=N, then
                                                        follow to the terminal event; 404
    POST /workflows/{workflow_id}/runs/{run_id}/cancel  200 {run_id, status}, 404, 409 already ended {.., status}

Every SSE message is ``id: <seq>`` and ``data: <the event's own JSON>`` (SPEC §4),
so ``threadflow.events.parse_event`` reads it back. With an API key
(``create_app(api_key=...)`` or ``$THREADFLOW_API_KEY``) every request needs
``Authorization: Bearer <key>`` (401 otherwise). Errors are JSON
``{"detail": ...}``; a bad body, path or query is a 422, never a 500.

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

import asyncio
import contextlib
import importlib
import inspect
import json
import os
import re
import secrets
import socket
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import anyio
import anyio.to_thread
import uvicorn
from fastapi import FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, field_validator
from pydantic_core import PydanticSerializationError
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from . import CancelCause, DuplicateRunError, RunHandle, RunInfo, RunStatus, Workflow, __version__
from ._registry import REGISTRY, RunState
from ._runlog import EventLog
from .events import BaseEvent
from .storage import RunStore, StoreError
from .storage._defaults import DB_ENV, default_store

__all__ = [
    "API_KEY_ENV",
    "RUN_ID_HEADER",
    "CancelRunRequest",
    "StartRunRequest",
    "create_app",
    "running_server",
    "serve_target",
]

#: The environment variable holding the API key when ``create_app`` is given none.
API_KEY_ENV = "THREADFLOW_API_KEY"
#: The response header carrying a started run's id (percent-encoded, as in its URL).
RUN_ID_HEADER = "X-Threadflow-Run-Id"

_MAX_INPUT_DEPTH = 100  # deeper JSON cannot make the round trip through an event's JSON
_STORE_POLL_SECONDS = 0.05
_SHUTDOWN_GRACE_SECONDS = 1.0  # under uvicorn's graceful-shutdown timeout (2 s here, 5 s for `threadflow serve`)
_MAX_SEQ = 2**63 - 1  # seq numbers are SQLite integers
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


# -- request bodies -----------------------------------------------------------


class StartRunRequest(BaseModel):
    """The body of ``POST /workflows/{workflow_id}/runs``; every field is optional."""

    model_config = ConfigDict(extra="forbid")

    input: Any = None
    run_id: StrictStr | None = Field(default=None, min_length=1)
    stream: StrictBool = False

    @field_validator("run_id")
    @classmethod
    def _usable_in_urls(cls, run_id: str | None) -> str | None:
        if run_id is not None and ("/" in run_id or run_id in {".", ".."}):
            raise ValueError("run_id must be usable as one URL path segment: no '/', not '.' or '..'")
        return run_id


class CancelRunRequest(BaseModel):
    """The body of ``POST .../runs/{run_id}/cancel``; optional."""

    model_config = ConfigDict(extra="forbid")

    reason: StrictStr | None = None


_Body = TypeVar("_Body", bound=BaseModel)


async def _read_body(request: Request, model: type[_Body]) -> _Body:
    """Parse and validate a JSON object body (empty means all defaults); ``RequestValidationError`` otherwise."""
    raw = await request.body()
    if not raw.strip():
        return model()
    try:
        document = json.loads(raw, parse_constant=_not_json)
        _check_json(document)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeError, int too long, too deep
        raise _invalid(["body"], "json_invalid", f"the body is not usable JSON: {error}") from None
    if not isinstance(document, dict):
        kind = _JSON_TYPES.get(type(document), "null")
        raise _invalid(["body"], "dict_type", f"the body must be a JSON object, not {kind}")
    try:
        return model.model_validate(document)
    except ValidationError as error:
        errors = error.errors(include_url=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON value")


def _check_json(document: Any) -> None:
    """Reject what parses but cannot be sent back out: lone surrogates, very deep nesting."""
    pending: list[tuple[Any, int]] = [(document, 0)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"a string holds a lone surrogate, which is not Unicode text: {value!r}") from None
        elif isinstance(value, (list, dict)):
            if depth >= _MAX_INPUT_DEPTH:
                raise ValueError(f"nested more than {_MAX_INPUT_DEPTH} levels deep")
            items = [*value, *value.values()] if isinstance(value, dict) else value
            pending.extend((item, depth + 1) for item in items)


def _invalid(loc: list[str], kind: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": message, "type": kind}])


# -- responses ----------------------------------------------------------------


class _JSONResponse(JSONResponse):
    """JSON that any string can travel in (``\\u`` escapes), so rendering never fails on odd input."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status_code: int, detail: str, **extra: str) -> Response:
    return _JSONResponse({"detail": detail, **extra}, status_code=status_code)


async def _validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in error.errors()
    ]
    return _JSONResponse({"detail": errors}, status_code=422)


def _event_json(event: BaseEvent) -> str:
    """The event's own JSON (SPEC §4), whatever a step put in it.

    Content JSON cannot carry as-is still goes out: an unknown type as its
    ``repr``, a lone surrogate as U+FFFD (``parse_event`` refuses ``\\ud800``).
    """
    try:
        return event.model_dump_json()
    except PydanticSerializationError:
        fields = {name: getattr(event, name) for name in type(event).model_fields}
        text = json.dumps(fields, ensure_ascii=False, default=repr, separators=(",", ":"))
        return _SURROGATE.sub("\ufffd", text)


def _sse_message(event: BaseEvent) -> str:
    return f"id: {event.seq}\ndata: {_event_json(event)}\n\n"


async def _sse(batches: AsyncIterator[list[BaseEvent]]) -> AsyncIterator[bytes]:
    """One SSE chunk per batch of events, so a fast run costs one send per batch, not per event.

    A feed stopped by the server's shutdown ends with one ``stream_interrupted`` message.
    """
    async with contextlib.aclosing(batches):  # type: ignore[type-var]  # async generators have aclose()
        try:
            async for batch in batches:
                yield "".join(map(_sse_message, batch)).encode()
        except _Stopped:
            yield _INTERRUPTED


class _Stopped(Exception):
    """Raised by a feed whose server is stopping before its run has ended."""


_INTERRUPTED_DETAIL = "the server is stopping before the run has ended; ask again (after_seq, Last-Event-ID) to resume"
_INTERRUPTED = f"event: stream_interrupted\ndata: {json.dumps({'detail': _INTERRUPTED_DETAIL})}\n\n".encode()


class _EventStreamResponse(EventSourceResponse):
    """An SSE response that, however it ends, cancels the run it owns if that run is still going.

    "However it ends" covers the client disconnecting (sse-starlette sees the
    ``http.disconnect`` at once and cancels the stream), a failed send, and the
    server stopping; a run that reached its terminal event is not affected.
    A stopping server ends the feed cleanly (``stream_interrupted``) rather than cutting it.
    """

    def __init__(
        self,
        batches: AsyncIterator[list[BaseEvent]],
        wakeup: _Wakeup,
        *,
        owns: RunState | None,
        headers: dict[str, str],
    ) -> None:
        self._wakeup = wakeup
        self._owned = owns
        # sse-starlette sets this when it sees uvicorn stop (the process's signal handler), then
        # waits up to the grace period for the feed to end before it cuts the stream.
        self._shutdown = anyio.Event()
        super().__init__(
            _sse(batches),
            headers=headers,
            sep="\n",
            shutdown_event=self._shutdown,
            shutdown_grace_period=_SHUTDOWN_GRACE_SECONDS,
            data_sender_callable=self._stop_on_shutdown,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        _OPEN_FEEDS.add(self._wakeup)
        try:
            await super().__call__(scope, receive, send)
        finally:
            _OPEN_FEEDS.discard(self._wakeup)
            owned = self._owned
            if owned is not None and not owned.status.is_terminal:  # unlocked read: cancel() decides
                # Off the loop: the run's on_cancel callbacks may record its end in a store
                # (a queued run's), which can wait for a busy database. Shielded, so that the
                # cancel still happens when this request is itself being cancelled.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(REGISTRY.cancel, owned, None, CancelCause.stream_closed)

    async def _stop_on_shutdown(self) -> None:
        await self._shutdown.wait()
        self._wakeup.stop()


# -- following events without blocking the event loop ---------------------------


class _Wakeup:
    """Wakes one asyncio task from any thread; wake-ups coalesce until the task has looked.

    ``stop()`` (on the loop) also wakes it, for good: the server is stopping.
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._scheduled = False
        self.stopping = False

    def __call__(self) -> None:
        # Unlocked on purpose: a race costs at most a spurious wake-up, never a lost
        # one, since reset() clears the flag before the task looks and set() runs on the loop.
        if not self._scheduled:  # one call_soon_threadsafe per look, not per event
            self._scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
                self.loop.call_soon_threadsafe(self._event.set)

    def stop(self) -> None:
        self.stopping = True
        self._event.set()

    def reset(self) -> None:
        """Call before looking; a wake-up from then on is not lost."""
        self._scheduled = False
        if not self.stopping:
            self._event.clear()

    async def wait(self) -> None:
        await self._event.wait()


class _OpenFeeds:
    """The SSE feeds open on each event loop, so that a server that starts to stop can end them cleanly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one loop per server thread; several servers may run at once
        self._open: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[_Wakeup]] = weakref.WeakKeyDictionary()
        self._stopping: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

    def add(self, wakeup: _Wakeup) -> None:
        with self._lock:
            stopping = wakeup.loop in self._stopping
            if not stopping:
                self._open.setdefault(wakeup.loop, set()).add(wakeup)
        if stopping:  # a stream that starts while its server stops ends at once
            wakeup.stop()

    def discard(self, wakeup: _Wakeup) -> None:
        with self._lock:
            self._open.get(wakeup.loop, set()).discard(wakeup)

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        """End every feed on ``loop``, now and from now on; call on ``loop``."""
        with self._lock:
            self._stopping.add(loop)
            wakeups = self._open.pop(loop, set())
        for wakeup in wakeups:
            wakeup.stop()


_OPEN_FEEDS = _OpenFeeds()


async def _follow_log(log: EventLog, after_seq: int, wakeup: _Wakeup) -> AsyncIterator[list[BaseEvent]]:
    """Batches of the run's events after ``after_seq``: what was logged, then live ones, to the end.

    Raises ``_Stopped`` if ``wakeup`` is stopped first.
    """
    log.add_listener(wakeup)
    try:
        cursor = after_seq
        while True:
            wakeup.reset()
            done = log.done  # read before the events: once done, everything is in the log
            batch = log.since(cursor)
            if batch:
                cursor += len(batch)
                yield batch
                if batch[-1].terminal:
                    return
            elif done:
                return
            if wakeup.stopping:
                raise _Stopped
            if not batch:
                await wakeup.wait()
    finally:
        log.remove_listener(wakeup)


async def _poll_store(store: RunStore, run_id: str, after_seq: int, wakeup: _Wakeup) -> AsyncIterator[list[BaseEvent]]:
    """Replay the run's stored events after ``after_seq``, then poll for more until the store has its end.

    Ends after the terminal event, or after a last read once the store's own
    record of the run is terminal; raises ``_Stopped`` if ``wakeup`` is stopped first.
    """
    cursor = after_seq
    while True:
        final, batch = await run_in_threadpool(_read_store, store, run_id, cursor)
        if batch:
            cursor = batch[-1].seq
            yield batch
            if batch[-1].terminal:
                return
        if final:
            return
        if wakeup.stopping:
            raise _Stopped
        if not batch:
            with anyio.move_on_after(_STORE_POLL_SECONDS):
                await wakeup.wait()


def _read_store(store: RunStore, run_id: str, cursor: int) -> tuple[bool, list[BaseEvent]]:
    """The run's stored events after ``cursor``, and whether no more will come (read first)."""
    final = _ended_in(store, run_id)
    return final, list(store.events(run_id, cursor))


def _ended_in(store: RunStore, run_id: str) -> bool:
    """Whether ``store`` holds all of the run's events: its own record of the run is terminal.

    Not the registry's record: that turns terminal before the terminal event is
    stored, and only the store's ``run_ended`` says every event is in
    (``RunStore.run_ended``). A store that records only ended runs answers None
    while the run is active here; a run known nowhere has nothing more to come.
    """
    info = store.get_run(run_id)
    if info is None:
        if REGISTRY.get(run_id) is not None:
            return False
        info = store.get_run(run_id)  # it may have ended meanwhile: run_ended comes before leaving the registry
        if info is None:
            return True
    return info.status.is_terminal


class _RecentRuns:
    """The handles of the runs this app started: every active one, and the most recent finished ones."""

    def __init__(self, keep_finished: int) -> None:
        self._keep = keep_finished
        self._lock = threading.Lock()
        self._handles: dict[str, RunHandle] = {}  # oldest first

    def add(self, handle: RunHandle) -> None:
        with self._lock:
            self._handles.pop(handle.run_id, None)  # a reused id: the newer run wins
            self._handles[handle.run_id] = handle
            if len(self._handles) > self._keep:
                finished = [run_id for run_id, h in self._handles.items() if h.done()]
                for run_id in finished[: max(0, len(finished) - self._keep)]:
                    del self._handles[run_id]

    def get(self, workflow: Workflow, run_id: str) -> RunHandle | None:
        handle = self._handles.get(run_id)
        return handle if handle is not None and handle.workflow_id == workflow.id else None


# -- the routes -----------------------------------------------------------------


class _Api:
    """The route handlers, over the served workflows (by route id) and the app's own store."""

    def __init__(self, workflows: dict[str, Workflow], store: RunStore | None, keep_finished_runs: int) -> None:
        self.workflows = workflows
        self.store = store
        self.recent = _RecentRuns(keep_finished_runs)

    def add_routes(self, app: FastAPI) -> None:
        start_body = {"requestBody": _body_doc(StartRunRequest, required=False)}
        cancel_body = {"requestBody": _body_doc(CancelRunRequest, required=False)}
        run = "/workflows/{workflow_id}/runs/{run_id}"
        app.add_api_route("/workflows", self.list_workflows, methods=["GET"])
        app.add_api_route("/workflows/{workflow_id}/runs", self.start_run, methods=["POST"], openapi_extra=start_body)
        app.add_api_route(run, self.get_run, methods=["GET"])
        app.add_api_route(f"{run}/events", self.run_events, methods=["GET"])
        app.add_api_route(f"{run}/cancel", self.cancel_run, methods=["POST"], openapi_extra=cancel_body)

    async def list_workflows(self) -> Response:
        """The served workflows: ``[{id, name, description, steps}]``."""
        return _JSONResponse([_describe(route_id, wf) for route_id, wf in self.workflows.items()])

    async def start_run(self, workflow_id: str, request: Request) -> Response:
        """Start a run: 202 with its id, or (``"stream": true``) its events as SSE; 404, 409, 422."""
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            return _no_workflow(workflow_id)
        body = await _read_body(request, StartRunRequest)
        try:
            handle = await run_in_threadpool(_start, workflow, body)
        except DuplicateRunError as error:
            return _error(409, str(error), run_id=error.run_id)
        self.recent.add(handle)
        location = f"/workflows/{quote(workflow_id, safe='')}/runs/{quote(handle.run_id, safe='')}"
        headers = {RUN_ID_HEADER: quote(handle.run_id, safe=""), "Location": location}
        if body.stream:
            wakeup = _Wakeup()
            return _EventStreamResponse(
                _follow_log(handle._log, 0, wakeup), wakeup, owns=handle._state, headers=headers
            )
        started = {"run_id": handle.run_id, "workflow_id": handle.workflow_id, "status": handle.status.value}
        return _JSONResponse(started, status_code=202, headers=headers)

    def get_run(self, workflow_id: str, run_id: str) -> Response:
        """The run's record: 200 ``RunInfo`` JSON, or 404.

        A plain function, so that FastAPI calls it on a worker thread: it may read a store.
        """
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            return _no_workflow(workflow_id)
        info = self._lookup(workflow, run_id)
        if info is None:
            return _no_run(workflow_id, run_id)
        return _JSONResponse(info.model_dump(mode="json"))

    async def run_events(
        self,
        workflow_id: str,
        run_id: str,
        after_seq: Annotated[int, Query(ge=0, le=_MAX_SEQ)] = 0,
        last_event_id: Annotated[int | None, Header(ge=0, le=_MAX_SEQ)] = None,
    ) -> Response:
        """SSE: the run's events after ``after_seq`` (or ``Last-Event-ID``), then live ones to the end; 404."""
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            return _no_workflow(workflow_id)
        after_seq = max(after_seq, last_event_id or 0)
        handle = self.recent.get(workflow, run_id)
        if handle is not None:
            wakeup = _Wakeup()
            return _EventStreamResponse(_follow_log(handle._log, after_seq, wakeup), wakeup, owns=None, headers={})
        store, info = await run_in_threadpool(self._event_store, workflow, run_id)
        if store is None:
            if info is None:
                return _no_run(workflow_id, run_id)
            return _error(404, f"the events of run {run_id!r} are not kept here: {_NOT_KEPT}")
        wakeup = _Wakeup()
        return _EventStreamResponse(_poll_store(store, run_id, after_seq, wakeup), wakeup, owns=None, headers={})

    async def cancel_run(self, workflow_id: str, run_id: str, request: Request) -> Response:
        """Cancel: 200 ``{run_id, status}`` (``cancelling``, or how it ended), 404 unknown, 409 already ended."""
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            return _no_workflow(workflow_id)
        body = await _read_body(request, CancelRunRequest)
        response: Response = await run_in_threadpool(self._cancel, workflow_id, workflow, run_id, body.reason)
        return response

    # -- helpers, run on a worker thread (stores may do I/O) --

    def _lookup(self, workflow: Workflow, run_id: str) -> RunInfo | None:
        info = workflow.get_run(run_id)
        if info is None and self.store is not None and self.store is not workflow.store:
            info = self.store.get_run(run_id)
            if info is not None and info.workflow_id != workflow.id:
                info = None
        return info

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
        if workflow.cancel_run(run_id, reason):
            info = self._lookup(workflow, run_id)
            return _cancelled(run_id, info.status if info is not None else RunStatus.cancelled)
        info = self._lookup(workflow, run_id)  # cancel_run said False: the run is unknown, or has ended
        if info is None:
            return _no_run(workflow_id, run_id)
        if not info.status.is_terminal:
            # Active, but not in this process: ask its owner through the store (SPEC §5).
            if any(store.request_cancel(run_id, reason) for store in self._stores(workflow)):
                return _cancelled(run_id, RunStatus.cancelling)
            info = self._lookup(workflow, run_id) or info  # it may have ended meanwhile
        if info.status.is_terminal:
            detail = f"run {run_id!r} has already ended: {info.status.value}"
        else:
            detail = f"run {run_id!r} is {info.status.value} in another process, which this server cannot reach"
        return _error(409, detail, run_id=run_id, status=info.status.value)


def _start(workflow: Workflow, body: StartRunRequest) -> RunHandle:
    return workflow.run(body.input, background=True, run_id=body.run_id)


def _cancelled(run_id: str, status: RunStatus) -> Response:
    return _JSONResponse({"run_id": run_id, "status": status.value})


def _no_workflow(workflow_id: str) -> Response:
    return _error(404, f"no workflow {workflow_id!r} is served here")


_NOT_KEPT = "it was not started through this server (or has ended long ago), and no store records its events"


def _no_run(workflow_id: str, run_id: str) -> Response:
    return _error(404, f"workflow {workflow_id!r} has no run {run_id!r}")


def _describe(route_id: str, workflow: Workflow) -> dict[str, Any]:
    steps = [step.name for step in workflow.steps]
    return {"id": route_id, "name": workflow.name, "description": workflow.description, "steps": steps}


def _body_doc(model: type[BaseModel], *, required: bool) -> dict[str, Any]:
    # The bodies are parsed by hand (_read_body) so that no input can make a 500; this documents them.
    return {"required": required, "content": {"application/json": {"schema": model.model_json_schema()}}}


# -- the app ----------------------------------------------------------------------


class _BearerAuth:
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
            response = _JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
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


def _api_key(api_key: str | None) -> str | None:
    if api_key is None:
        return os.environ.get(API_KEY_ENV) or None
    if not isinstance(api_key, str) or not api_key:
        raise ValueError("api_key must be a non-empty str, or None to read $THREADFLOW_API_KEY")
    return api_key


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


def create_app(
    workflows: Workflow | Sequence[Workflow] | Mapping[str, Workflow],
    *,
    api_key: str | None = None,
    store: RunStore | None = None,
    keep_finished_runs: int = 100,
) -> FastAPI:
    """An ASGI app (FastAPI) serving ``workflows`` over HTTP; see the module docstring for the routes.

    ``workflows``: one ``Workflow``, a sequence of them (served by their ``id``)
    or a mapping of route id to workflow. ``api_key``: require
    ``Authorization: Bearer <api_key>`` on every request (default:
    ``$THREADFLOW_API_KEY``; unset or empty means no auth). ``store``: a
    further store to answer for runs the workflows' own stores do not know
    (e.g. a shared ``SqliteStore``). ``keep_finished_runs``: how many finished
    runs started through this app keep their events in memory for ``/events``.
    """
    if isinstance(keep_finished_runs, bool) or not isinstance(keep_finished_runs, int) or keep_finished_runs < 0:
        raise ValueError(f"keep_finished_runs must be a non-negative int, not {keep_finished_runs!r}")
    api = _Api(_workflow_table(workflows), store, keep_finished_runs)
    key = _api_key(api_key)
    app = FastAPI(title="threadflow", version=__version__, default_response_class=_JSONResponse, redirect_slashes=False)
    app.add_exception_handler(RequestValidationError, _validation_error)
    api.add_routes(app)
    if key is not None:
        app.add_middleware(_BearerAuth, api_key=key)
    return app


# -- running it -------------------------------------------------------------------


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
        _OPEN_FEEDS.stop(asyncio.get_running_loop())
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


def _app_for(value: object, api_key: str | None, store: RunStore | None) -> ASGIApp:
    """A Workflow, a list/tuple/dict of them, an ASGI app, or a no-argument factory of one of those."""
    if isinstance(value, (Workflow, list, tuple, dict)):
        return create_app(value, api_key=api_key, store=store)  # create_app checks the items
    if inspect.isfunction(value) or inspect.ismethod(value):
        required = [p for p in inspect.signature(value).parameters.values() if p.default is p.empty]
        if not required:
            return _app_for(value(), api_key, store)  # a factory
        if len(required) != 3:
            raise TypeError(f"{value.__name__} is neither an app factory nor an ASGI app (scope, receive, send)")
    if not callable(value):
        raise TypeError(f"cannot serve a {type(value).__name__}: give a Workflow, a list or dict of them, or an app")
    key = _api_key(api_key)
    return _BearerAuth(value, api_key=key) if key is not None else value


def serve_target(
    target: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, db: str | None = None
) -> int:
    """``threadflow serve module:attribute``: import the target and serve it with uvicorn until stopped.

    ``db`` sets ``$THREADFLOW_DB`` before the import, so workflows built at
    import time keep their runs there, and the app answers for every run
    recorded in it (runs of other processes included). Returns the exit code: 0 after a
    clean stop, 1 when the run history (``db`` or ``$THREADFLOW_DB``) cannot be used
    (as for ``threadflow runs``), 2 when the target cannot be loaded or served.
    """
    if db:
        os.environ[DB_ENV] = db
    try:
        store = default_store() if db else None  # the one SqliteStore for that path, shared with the workflows
        app = _app_for(_load_target(target), api_key, store)
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
