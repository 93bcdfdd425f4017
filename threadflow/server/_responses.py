"""How the server answers: JSON that never fails to render, errors as ``{"detail": ...}``, and their OpenAPI docs."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

__all__ = [
    "EventStreamDoc",
    "JSONAnswer",
    "Refused",
    "error",
    "invalid",
    "refused_handler",
    "route_docs",
    "validation_error",
]


class JSONAnswer(JSONResponse):
    """JSON that any string can travel in (``\\u`` escapes), so rendering never fails on odd input."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class EventStreamDoc(Response):
    """Names the media type of a route answering with SSE, for its OpenAPI docs (the handler builds the stream)."""

    media_type = "text/event-stream"


def error(status_code: int, detail: str, *, headers: dict[str, str] | None = None, **extra: str) -> Response:
    return JSONAnswer({"detail": detail, **extra}, status_code=status_code, headers=headers)


class Refused(Exception):
    """Raised while a request is read, to answer it at once with ``response`` (413, 400)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


async def refused_handler(request: Request, refused: Exception) -> Response:
    assert isinstance(refused, Refused)
    return refused.response


def invalid(loc: list[str], kind: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": message, "type": kind}])


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
    return JSONAnswer({"detail": errors}, status_code=422)


# -- OpenAPI: every answer a route gives, not only FastAPI's default 200/422 ---------

_DETAIL: dict[str, Any] = {"type": "object", "properties": {"detail": {}}, "required": ["detail"]}
_STATUS: dict[str, Any] = {
    "type": "object",
    "properties": {"run_id": {"type": "string"}, "status": {"type": "string"}},
    "required": ["run_id", "status"],
}
_SSE: dict[str, Any] = {"text/event-stream": {"schema": {"type": "string"}}}
_DESCRIPTIONS = {
    200: "OK",
    202: "The run has started in the background: {run_id, workflow_id, status}",
    400: "The request body was cut off before its end",
    401: "Missing or wrong API key (only when the server has one)",
    404: "Unknown workflow or run",
    409: "The run id is active, or the run has already ended ({detail, run_id, status})",
    413: "The request body is larger than the server accepts",
    422: "Bad body, path, query or header",
}


def _answer(code: int, schema: dict[str, Any] | None = None, content: dict[str, Any] | None = None) -> dict[str, Any]:
    body = content if content is not None else {"application/json": {"schema": schema or _DETAIL}}
    return {"description": _DESCRIPTIONS[code], "content": body}


def route_docs(*codes: int, ok: dict[int, dict[str, Any]] | None = None) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route answering ``codes`` (401 always: any route may need the key)."""
    docs: dict[int | str, dict[str, Any]] = {code: _answer(code) for code in sorted({*codes, 401})}
    for code, doc in (ok or {}).items():
        docs[code] = doc
    return docs


STARTED: dict[int, dict[str, Any]] = {
    202: _answer(202, {"type": "object"}),
    200: {"description": "With stream: the events", "content": _SSE},
}
STREAM: dict[int, dict[str, Any]] = {200: {"description": "The run's events as server-sent events", "content": _SSE}}
_ENDED: dict[str, Any] = {
    "type": "object",
    "properties": {"detail": {}, **_STATUS["properties"]},
    "required": ["detail"],
}
CANCELLED: dict[int, dict[str, Any]] = {200: _answer(200, _STATUS), 409: _answer(409, _ENDED)}
