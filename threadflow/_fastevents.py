"""Trusted construction of events: ``make_event`` builds a model from values the runner made itself.

Machinery for the hot path; user code builds events with their constructors
or ``parse_event``.

The environment variable ``THREADFLOW_VALIDATE_EVENTS=1`` (read once, when
threadflow is imported) makes ``make_event`` check every event it builds
against pydantic's validation: a missing or wrongly typed field then raises
``EventValidationError`` where the event is made, naming the event class and
the field, instead of surfacing far away (a store, a client). threadflow's own
test suite runs with it on. Off (the default), ``make_event`` is the fast
function itself: the check costs nothing.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .events import (
    RunCancelledEvent,
    RunCompletedEvent,
    RunContentEvent,
    RunErrorEvent,
    RunStartedEvent,
    StepCompletedEvent,
    StepRetryingEvent,
    StepStartedEvent,
    ToolCallCompletedEvent,
    ToolCallStartedEvent,
    WorkflowCancelledEvent,
    WorkflowCompletedEvent,
    WorkflowErrorEvent,
    WorkflowResumedEvent,
    WorkflowStartedEvent,
)
from .status import RunInfo

__all__ = ["VALIDATE_EVENTS", "EventValidationError", "make_event", "make_exact", "renumber", "template"]


_M = TypeVar("_M", bound=BaseModel)

#: True when THREADFLOW_VALIDATE_EVENTS was set (to anything but "" or "0") at import.
VALIDATE_EVENTS = os.environ.get("THREADFLOW_VALIDATE_EVENTS", "") not in ("", "0")


class EventValidationError(AssertionError):
    """Validating mode found an event threadflow built differently from what pydantic makes of the same fields.

    A bug in threadflow, never in user code: the message names the event class and the field.
    """


def _make_event_fast(cls: type[_M], fields: dict[str, Any]) -> _M:
    """Build an event (or a ``RunInfo``) from trusted values without re-validating them.

    The runner builds every event from values it produced itself, so pydantic's
    validation would only cost time on the hot path (it is most of the price of
    an event). ``fields`` must give every required field; the result is equal
    to, and dumps the same JSON as, the validated ``cls(**fields)``.
    """
    values = _TEMPLATES[cls].copy()  # keeps the declared field order for the JSON
    values.update(fields)
    obj = _new(cls)
    _set_dict(obj, values)
    _set_fields_set(obj, _FIELDS_SET[cls])
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


def _make_exact_fast(cls: type[_M], values: dict[str, Any]) -> _M:
    """``make_event`` for ``values`` that hold every field of ``cls``, in declared order: taken as they are.

    The caller gives up ``values`` (the model keeps the dict). ``template()``
    makes such a dict once; a hot loop copies it and sets what changes.
    """
    obj = _new(cls)
    _set_dict(obj, values)
    _set_fields_set(obj, _FIELDS_SET[cls])
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


def _make_exact_validated(cls: type[_M], values: dict[str, Any]) -> _M:
    """``_make_exact_fast``, checked: exactly the declared fields, in their order, and valid."""
    if list(values) != list(cls.model_fields):
        raise EventValidationError(f"{cls.__name__}: fields {list(values)}, declared {list(cls.model_fields)}")
    return _make_event_validated(cls, values)


def template(cls: type[BaseModel], fields: dict[str, Any]) -> dict[str, Any]:
    """Every field of ``cls`` in declared order: ``fields`` over the defaults (None for required ones)."""
    return _TEMPLATES[cls] | fields


def _make_event_validated(cls: type[_M], fields: dict[str, Any]) -> _M:
    """``_make_event_fast``, checked: the same fields validated by pydantic must give an equal model.

    Raises ``EventValidationError`` naming the class and the field: an
    unknown or missing field, a value pydantic rejects or would convert
    (compared by type and value), or a different JSON dump.
    """
    fast = _make_event_fast(cls, fields)
    unknown = sorted(set(fields) - set(cls.model_fields))
    if unknown:
        raise EventValidationError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    try:
        checked = cls.model_validate(fields)
    except ValidationError as error:
        raise EventValidationError(f"{cls.__name__}: {error}") from error
    for name in cls.model_fields:
        _compare_field(cls, name, fast.__dict__[name], checked.__dict__[name])
    if _dump(fast) != _dump(checked):
        raise EventValidationError(f"{cls.__name__}: dumps {_dump(fast)}, validated dumps {_dump(checked)}")
    return fast


def renumber(event: BaseModel, seq: int) -> None:
    """Give an event made by a branch thread its place in the run's sequence.

    Only for an event nobody else has seen yet: branch threads build events
    with a provisional ``seq``; the consumer's thread numbers each one as it
    takes it from the run's channel, so ``seq`` stays gap-free and in the
    order the events happened.
    """
    event.__dict__["seq"] = seq


def _compare_field(cls: type[BaseModel], name: str, built: object, validated: object) -> None:
    if built is validated or (type(built) is type(validated) and built == validated):
        return
    raise EventValidationError(
        f"{cls.__name__}.{name}: built as {built!r} ({type(built).__name__}), "
        f"pydantic makes it {validated!r} ({type(validated).__name__})"
    )


def _dump(obj: BaseModel) -> str:
    try:
        return obj.model_dump_json()
    except Exception as error:  # noqa: BLE001 — an unserialisable value: both must fail alike
        return f"<{type(error).__name__}: {error}>"


make_event = _make_event_validated if VALIDATE_EVENTS else _make_event_fast
"""Build an event (or a ``RunInfo``) from trusted values; see ``_make_event_fast``.

Chosen once at import: the validated variant when ``THREADFLOW_VALIDATE_EVENTS`` is set.
"""

make_exact = _make_exact_validated if VALIDATE_EVENTS else _make_exact_fast
"""Build a model from a dict of all its fields in declared order, kept as is; see ``_make_exact_fast``."""


# BaseModel's own slot descriptors: setting them directly skips the frozen
# model's __setattr__ guard, which is what pydantic's model_construct does too.
_new = object.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def _template(cls: type[BaseModel]) -> dict[str, Any]:
    fields = cls.model_fields.items()
    return {name: (None if info.is_required() else info.default) for name, info in fields}


_FAST_MODELS: tuple[type[BaseModel], ...] = (
    RunInfo,
    WorkflowStartedEvent,
    StepStartedEvent,
    StepRetryingEvent,
    StepCompletedEvent,
    WorkflowCompletedEvent,
    WorkflowCancelledEvent,
    WorkflowErrorEvent,
    WorkflowResumedEvent,
    RunStartedEvent,
    RunContentEvent,
    RunCompletedEvent,
    RunCancelledEvent,
    RunErrorEvent,
    ToolCallStartedEvent,
    ToolCallCompletedEvent,
)
_TEMPLATES: dict[type[BaseModel], dict[str, Any]] = {c: _template(c) for c in _FAST_MODELS}
_FIELDS_SET: dict[type[BaseModel], set[str]] = {c: set(c.model_fields) for c in _FAST_MODELS}
