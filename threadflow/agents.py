"""Agents: a step that streams a model's answer, calls its tools, and can answer in a schema.

A ``Model`` is any object with ``stream(messages) -> Iterator[str]``, where
``messages`` is a list of chat messages (``{"role": ..., "content": ...}``).
Every token the model yields is a checkpoint: a cancel lands at the next
token, and the model's iterator is closed (``close()``, when it has one) so
that a provider client can release its connection.

A model that also takes ``tools=`` (a list of OpenAI tool schemas) may yield
``ToolCall``s among its tokens. The agent then calls those tools in the run's
thread — a checkpoint before and after each call, a ``tool_call_started`` /
``tool_call_completed`` event around it — sends the results back with their
``tool_call_id``, and asks the model again, for at most ``max_tool_rounds``
rounds. A model that takes ``response_format=`` is asked for JSON in the
agent's ``output_schema``; every model is also told so in the system message.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from ._printable import safe_str
from ._tools import Tool, ToolCall, jsonable, tool_message_content
from .context import get_context
from .events import ToolCallCompletedEvent, ToolCallStartedEvent
from .exceptions import CancellationError
from .steps import EventMarker

__all__ = ["Agent", "Model", "ToolCall", "ToolModel"]

DEFAULT_MAX_TOOL_ROUNDS = 8


@runtime_checkable
class Model(Protocol):
    """What an ``Agent`` needs from a language model."""

    def stream(self, messages: list[dict[str, Any]]) -> Iterator[str]: ...


class ToolModel(Protocol):
    """A model that can call tools and answer in a JSON schema (``OpenAIChat``, ``DemoModel``)."""

    def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> Iterator[str | ToolCall]: ...


class Agent:
    """An LLM step: answers its prompt by streaming ``model``'s tokens.

    The prompt is the previous step's output if there is one, else the
    workflow's input; ``instructions`` become the system message. ``tools``:
    plain functions the model may call (``TypeError`` if the model's
    ``stream`` takes no ``tools=``). ``output_schema``: a pydantic model; the
    step's output is then a validated instance of it, and an answer that does
    not validate is a step error that shows the text.
    """

    __slots__ = ("description", "instructions", "max_tool_rounds", "model", "name", "output_schema", "tools")

    def __init__(
        self,
        name: str | None = None,
        *,
        model: Model | ToolModel,
        instructions: str | None = None,
        description: str | None = None,
        tools: Sequence[Callable[..., Any]] | None = None,
        output_schema: type[BaseModel] | None = None,
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
    ) -> None:
        if not callable(getattr(model, "stream", None)):
            raise TypeError(f"model must have a stream(messages) method, not {type(model).__name__}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"agent name must be a non-empty str, not {name!r}")
        if output_schema is not None and not (isinstance(output_schema, type) and issubclass(output_schema, BaseModel)):
            raise TypeError(f"output_schema must be a pydantic model class, not {output_schema!r}")
        if isinstance(max_tool_rounds, bool) or not isinstance(max_tool_rounds, int) or max_tool_rounds < 1:
            raise ValueError(f"max_tool_rounds must be a positive int, not {max_tool_rounds!r}")
        self.name = name or "agent"
        self.model = model
        self.instructions = instructions
        self.description = description
        self.tools = _tools_by_name(tools or (), model)
        self.output_schema = output_schema
        self.max_tool_rounds = max_tool_rounds

    def messages(self, prompt: str) -> list[dict[str, Any]]:
        """The conversation the model is first asked: the system message (if any), then ``prompt``."""
        system = [self.instructions] if self.instructions else []
        if self.output_schema is not None:
            schema = json.dumps(self.output_schema.model_json_schema())
            system.append(f"Answer with one JSON object, and nothing else, that matches this JSON schema: {schema}")
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": "\n\n".join(system)})
        messages.append({"role": "user", "content": prompt})
        return messages

    def stream_answer(self, prompt: str) -> Generator[str | EventMarker, None, Any]:
        """Yield the model's tokens (and tool-call markers); return the step's output.

        The output is the final answer's text, or the ``output_schema``
        instance. The model's stream is closed however this ends.
        """
        messages = self.messages(prompt)
        for _round in range(self.max_tool_rounds + 1):
            text: list[str] = []
            calls: list[ToolCall] = []
            yield from self._one_turn(messages, text, calls)
            if not calls:
                return self._output("".join(text))
            if _round == self.max_tool_rounds:
                break
            messages.append(_assistant_message("".join(text), calls))
            for call in calls:
                messages.append((yield from self._call_tool(call)))
        raise RuntimeError(
            f"agent {self.name!r} stopped after {self.max_tool_rounds} tool rounds: the model kept calling tools"
        )

    def _one_turn(
        self, messages: list[dict[str, Any]], text: list[str], calls: list[ToolCall]
    ) -> Generator[str, None, None]:
        tokens = self._ask(messages)
        try:
            for item in tokens:
                if isinstance(item, str):
                    text.append(item)
                    yield item
                elif isinstance(item, ToolCall):
                    calls.append(item)
                else:
                    raise TypeError(f"model {type(self.model).__name__} yielded {type(item).__name__}, not str")
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()

    def _ask(self, messages: list[dict[str, Any]]) -> Iterator[str | ToolCall]:
        """Call the model with only the keywords this agent needs (a plain ``Model`` gets none)."""
        options: dict[str, Any] = {}
        if self.tools:
            options["tools"] = [tool.schema() for tool in self.tools.values()]
        if self.output_schema is not None and _accepts(self.model, "response_format"):
            options["response_format"] = _response_format(self.output_schema)
        # a list copy: a model that keeps the messages it was sent sees them as they were
        stream: Iterator[str | ToolCall] = self.model.stream(list(messages), **options)
        return stream

    def _call_tool(self, call: ToolCall) -> Generator[EventMarker, None, dict[str, Any]]:
        """Run one tool call between two checkpoints; the ``tool`` message for the model."""
        ctx = get_context()
        ctx.check_cancellation()
        args, error = _parse_arguments(call.arguments)
        yield EventMarker(ToolCallStartedEvent, tool_name=call.name, tool_args=args, tool_call_id=call.id)
        result: Any = None
        tool = self.tools.get(call.name)
        if tool is None:
            error = f"unknown tool {call.name!r}; the tools are: {', '.join(self.tools) or 'none'}"
        elif error is None:
            try:
                result = jsonable(tool(args))
            except CancellationError:
                raise
            except Exception as raised:  # noqa: BLE001 — a tool's failure is the model's to handle
                error = f"{type(raised).__name__}: {safe_str(raised)}"
        ctx.check_cancellation()
        yield EventMarker(ToolCallCompletedEvent, tool_call_id=call.id, result=result, error=error, tool_name=call.name)
        content = f"Error: {error}" if error is not None else tool_message_content(result)
        return {"role": "tool", "tool_call_id": call.id, "content": content}

    def _output(self, text: str) -> Any:
        if self.output_schema is None:
            return text
        try:
            return self.output_schema.model_validate_json(_strip_fence(text))
        except ValidationError as error:
            raise ValueError(
                f"agent {self.name!r}: the model's answer is not a valid {self.output_schema.__name__} "
                f"({error.error_count()} error(s): {error.errors()[0]['msg']}); the answer was: {_excerpt(text)}"
            ) from error

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, model={type(self.model).__name__})"


def _tools_by_name(tools: Sequence[Callable[..., Any]], model: object) -> dict[str, Tool]:
    if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
        raise TypeError(f"tools must be a list of functions, not {type(tools).__name__}")
    by_name: dict[str, Tool] = {}
    for fn in tools:
        tool = fn if isinstance(fn, Tool) else Tool.from_function(fn)
        if tool.name in by_name:
            raise ValueError(f"two tools are named {tool.name!r}; tool names must be unique in an agent")
        by_name[tool.name] = tool
    if by_name and not _accepts(model, "tools"):
        raise TypeError(f"model {type(model).__name__}.stream() takes no tools= argument, so it cannot call tools")
    return by_name


def _accepts(model: object, keyword: str) -> bool:
    """Whether ``model.stream`` takes ``keyword`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(model.stream).parameters  # type: ignore[attr-defined]  # checked callable above
    except (TypeError, ValueError):
        return False
    return keyword in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _response_format(schema: type[BaseModel]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema()}}


#: How much of a model's unusable output (tool arguments, an answer that fails output_schema) an error quotes.
_QUOTED_TEXT = 200


def _parse_arguments(arguments: str) -> tuple[dict[str, Any], str | None]:
    """The model's arguments as a dict, or an error that says why they are not one."""
    try:
        args = json.loads(arguments or "{}")
    except (ValueError, RecursionError) as error:  # RecursionError: nested deeper than json can read
        return {}, f"the arguments are not valid JSON ({error}): {_excerpt(arguments)}"
    if not isinstance(args, dict):
        return {}, f"the arguments must be a JSON object, not {_excerpt(arguments)}"
    return args, None


def _excerpt(text: str) -> str:
    """A model's text as an error quotes it: a huge one is not copied whole into messages, events and logs."""
    if len(text) <= _QUOTED_TEXT:
        return repr(text)
    return f"{text[:_QUOTED_TEXT]!r}... ({len(text)} characters)"


def _assistant_message(text: str, calls: list[ToolCall]) -> dict[str, Any]:
    tool_calls = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
    ]
    return {"role": "assistant", "content": text or None, "tool_calls": tool_calls}


def _strip_fence(text: str) -> str:
    """Models often wrap JSON in a Markdown code fence even when asked not to."""
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```"):
        stripped = stripped[3:-3]
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else stripped
    return stripped
