"""The request bodies, and reading them: bounded in size, parsed by hand so that no input makes a 500."""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, field_validator
from starlette.requests import ClientDisconnect

from ._responses import Refused, error, invalid

__all__ = ["DEFAULT_MAX_BODY_BYTES", "CancelRunRequest", "StartRunRequest", "body_doc", "read_body"]

logger = logging.getLogger("threadflow.server")

#: The largest request body ``create_app`` accepts by default (10 MiB); larger ones are a 413.
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
_MAX_INPUT_DEPTH = 100  # deeper JSON cannot make the round trip through an event's JSON
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


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


async def read_body(request: Request, model: type[_Body], max_bytes: int) -> _Body:
    """Parse and validate a JSON object body (empty means all defaults).

    Raises ``RequestValidationError`` (422) for a body that is not such an
    object, ``Refused`` with a 413 for one over ``max_bytes`` (checked as it
    arrives: a larger body is never held in memory), and ``Refused`` with a
    400 for one the client cut off before its end.
    """
    raw = await _bounded_body(request, max_bytes)
    if not raw.strip():
        return model()
    try:
        document = json.loads(raw, parse_constant=_not_json)
        _check_json(document)
    except (ValueError, RecursionError) as problem:  # JSONDecodeError, UnicodeError, int too long, too deep
        raise invalid(["body"], "json_invalid", f"the body is not usable JSON: {problem}") from None
    if not isinstance(document, dict):
        kind = _JSON_TYPES.get(type(document), "null")
        raise invalid(["body"], "dict_type", f"the body must be a JSON object, not {kind}")
    try:
        return model.model_validate(document)
    except ValidationError as problem:
        errors = problem.errors(include_url=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


async def _bounded_body(request: Request, max_bytes: int) -> bytes:
    """The body, read chunk by chunk and refused as soon as it is known to be over ``max_bytes``.

    ``Content-Length`` is trusted to refuse early, never to accept: a chunked
    body (no length) and a body longer than its length are counted as they come.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody is left to answer; one line for whoever watches the logs, not a traceback.
        logger.warning(
            "threadflow: %s %s: the client left before sending the whole body", request.method, request.url.path
        )
        raise Refused(error(400, "the request body was cut off before its end")) from None
    return b"".join(chunks)


def _too_large(max_bytes: int) -> Refused:
    # Connection: close, since the rest of the body is never read.
    detail = f"the request body is larger than this server accepts ({max_bytes} bytes)"
    return Refused(error(413, detail, headers={"Connection": "close"}))


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


def body_doc(model: type[BaseModel], *, required: bool) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a route whose body ``read_body`` parses (FastAPI does not see it)."""
    return {"required": required, "content": {"application/json": {"schema": model.model_json_schema()}}}
