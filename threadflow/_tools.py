"""Tools for agents: a plain function, described to the model as a JSON schema by pydantic.

Machinery behind ``Agent(tools=[...])``. The schema comes from the function's
signature (types, defaults) and its docstring (the first paragraph describes
the tool; an ``Args:`` section or ``:param name:`` lines describe the
parameters). The model's arguments are validated by the same pydantic model
before the function is called, so a bad argument is an error result, not a crash.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic_core import to_jsonable_python

__all__ = ["Tool", "ToolCall", "jsonable", "tool_message_content"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A model's request to call the tool ``name`` with ``arguments`` (a JSON object, as text).

    A model with tool support yields these from ``stream(messages, tools=...)``
    alongside its text tokens; ``id`` is echoed back with the result.
    """

    id: str
    name: str
    arguments: str = "{}"


class Tool:
    """A function an agent may call; built from the function by ``Tool.from_function``."""

    __slots__ = ("description", "fn", "name", "params")

    def __init__(self, fn: Callable[..., Any], name: str, description: str, params: type[BaseModel]) -> None:
        self.fn = fn
        self.name = name
        self.description = description
        self.params = params

    @classmethod
    def from_function(cls, fn: Callable[..., Any]) -> Tool:
        """Describe ``fn``; ``TypeError`` for what a model cannot call (``*args``, ``**kwargs``)."""
        if not callable(fn):
            raise TypeError(f"a tool must be a function, not {type(fn).__name__}")
        name = getattr(fn, "__name__", None) or type(fn).__name__
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise ValueError(f"tool name {name!r} must be 1-64 letters, digits, '_' or '-'")
        summary, param_docs = _parse_docstring(inspect.getdoc(fn) or "")
        return cls(fn, name, summary, _params_model(fn, name, param_docs))

    def schema(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry: ``{"type": "function", "function": {...}}``."""
        parameters = self.params.model_json_schema()
        parameters.pop("title", None)
        function = {"name": self.name, "description": self.description, "parameters": parameters}
        return {"type": "function", "function": function}

    def __call__(self, arguments: dict[str, Any]) -> Any:
        """Validate ``arguments`` and call the function; ``pydantic.ValidationError`` if they are wrong."""
        values = self.params.model_validate(arguments)
        return self.fn(**{name: getattr(values, name) for name in type(values).model_fields})

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def _params_model(fn: Callable[..., Any], name: str, docs: dict[str, str]) -> type[BaseModel]:
    signature = inspect.signature(fn)
    try:
        hints = get_type_hints(fn)
    except Exception:  # noqa: BLE001 — unresolvable annotations: fall back to "any JSON value"
        hints = {}
    fields: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {name!r}: *args and **kwargs cannot be described to a model")
        if param.kind is param.POSITIONAL_ONLY:
            raise TypeError(f"tool {name!r}: positional-only parameters cannot be passed by name")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), Field(default, description=docs.get(param.name)))
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    model: type[BaseModel] = create_model(f"{name}_arguments", __config__=config, **fields)
    return model


_ARG_LINE = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")
_SPHINX = re.compile(r"^\s*:param\s+(?:[\w\[\], ]+\s+)?(\w+)\s*:\s*(.+)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The summary paragraph and each parameter's description (Google or Sphinx style)."""
    summary = doc.split("\n\n", 1)[0].strip().replace("\n", " ")
    params: dict[str, str] = {}
    in_args = False
    for line in doc.splitlines():
        if sphinx := _SPHINX.match(line):
            params[sphinx.group(1)] = sphinx.group(2).strip()
        elif line.strip() in ("Args:", "Arguments:", "Parameters:"):
            in_args = True
        elif in_args and (arg := _ARG_LINE.match(line)):
            params[arg.group(1)] = arg.group(2).strip()
        elif in_args and line and not line.startswith((" ", "\t")):
            in_args = False
    return summary, params


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (pydantic models, dataclasses, ...); ``str()`` for the rest."""
    return to_jsonable_python(value, fallback=str)


def tool_message_content(result: Any) -> str:
    """What the model is sent as the tool's result: strings as they are, the rest as JSON."""
    if isinstance(result, str):
        return result
    return json.dumps(result, ensure_ascii=False)
