"""Trusted construction of events: ``make_event`` builds a model from values the runner made itself.

Machinery for the hot path; user code builds events with their constructors
or ``parse_event``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

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
    WorkflowStartedEvent,
)
from .status import RunInfo

__all__ = ["make_event"]


_M = TypeVar("_M", bound=BaseModel)


def make_event(cls: type[_M], fields: dict[str, Any]) -> _M:
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
