"""``DemoModel``: an offline model that streams plausible prose, calls tools and answers in JSON.

``DemoModel`` needs no network and no key, and is deterministic: the same
messages and seed give the same tokens, at ``tokens_per_second``. Its pause
between tokens waits on the run's cancel event, the way a real provider
client is unblocked by an ``on_cancel`` callback, so a cancel lands within
one token.

Given ``tools``, it first calls each of them once (in one turn), with
arguments made up from their schema and the prompt; once the results are in
the conversation it answers, citing them. Given a ``json_schema``
``response_format``, it streams a JSON object that fits the schema.
"""

from __future__ import annotations

import json
import random
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

from ..agents import ToolCall, ToolModel

__all__ = ["DemoModel"]

_OPENERS = [
    "In short,",
    "Put simply,",
    "Seen from the field,",
    "Across the sources we reviewed,",
    "On balance,",
    "Most practitioners agree that",
    "The evidence suggests that",
    "A closer look shows that",
]
_SUBJECTS = [
    "the core idea",
    "the main trade-off",
    "this approach",
    "the newer generation of tools",
    "a careful rollout",
    "the underlying mechanism",
    "the strongest counter-argument",
    "a small, well-tested prototype",
]
_VERBS = [
    "depends on",
    "improves",
    "reshapes",
    "clarifies",
    "puts pressure on",
    "rewards",
    "complicates",
    "builds on",
]
_OBJECTS = [
    "how teams plan their work",
    "the cost of getting it wrong",
    "what users expect from it",
    "the way results are measured",
    "long-term maintenance",
    "the speed of iteration",
    "trust between the people involved",
    "the quality of the final answer",
]
_CLOSERS = [
    "which is worth stating plainly.",
    "and the details matter.",
    "though the picture is still changing.",
    "more than most summaries admit.",
    "in ways that are easy to miss.",
    "once the first results are in.",
]


class DemoModel:
    """An offline streaming model: deterministic, plausible prose, at a steady rate.

    ``tokens_per_second`` paces the stream (0 or None for no pause);
    ``max_tokens`` bounds the answer; ``seed`` varies the text.
    """

    def __init__(self, tokens_per_second: float | None = 20.0, *, seed: int = 0, max_tokens: int = 80) -> None:
        if tokens_per_second is not None and tokens_per_second < 0:
            raise ValueError(f"tokens_per_second must be non-negative, not {tokens_per_second!r}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, not {max_tokens!r}")
        self.tokens_per_second = tokens_per_second
        self.seed = seed
        self.max_tokens = max_tokens

    def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> Iterator[str | ToolCall]:
        """Yield the answer to ``messages`` word by word (each token ends with a space).

        With ``tools`` and no tool result yet in ``messages``: one ``ToolCall``
        per tool instead. With a ``json_schema`` ``response_format``: a JSON object.
        """
        if tools and not any(m.get("role") == "tool" for m in messages):
            yield from self._tool_calls(messages, tools)
            return
        schema = _schema_of(response_format)
        if schema is not None:
            words = json.dumps(_instance(schema, _topic(_last_user(messages)))).split(" ")
            yield from self._paced([w + " " for w in words[:-1]] + words[-1:])
            return
        yield from self._paced([w + " " for w in self.answer(messages).split(" ")[: self.max_tokens]])

    def _paced(self, tokens: list[str]) -> Iterator[str]:
        delay = 1.0 / self.tokens_per_second if self.tokens_per_second else 0.0
        cancel_event = _current_cancel_event()
        for token in tokens:
            if delay:
                if cancel_event is not None:
                    cancel_event.wait(delay)  # the next token is a checkpoint: a cancel lands there
                else:
                    time.sleep(delay)
            yield token

    def _tool_calls(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Iterator[ToolCall]:
        topic = _topic(_last_user(messages))
        for index, tool in enumerate(tools):
            function = tool.get("function", {})
            arguments = _instance(function.get("parameters", {}), topic, required_only=True)
            yield ToolCall(id=f"call_demo_{index}", name=function.get("name", ""), arguments=json.dumps(arguments))

    def answer(self, messages: list[dict[str, str]]) -> str:
        """The whole answer ``stream`` would produce, at once."""
        text = "\n".join(str(m.get("content") or "") for m in messages)
        rng = random.Random(zlib.crc32(text.encode()) ^ self.seed)
        topic = _topic(_last_user(messages))
        sentences = [f"About {topic}:"]
        results = [str(m.get("content") or "") for m in messages if m.get("role") == "tool"]
        if results:
            sentences.append(f"The tools found: {' / '.join(' '.join(r.split()[:12]) for r in results)}.")
        while sum(len(s.split()) for s in sentences) < self.max_tokens:
            sentences.append(
                f"{rng.choice(_OPENERS)} {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} "
                f"{rng.choice(_OBJECTS)}, {rng.choice(_CLOSERS)}"
            )
        return " ".join(sentences)

    def __repr__(self) -> str:
        return f"DemoModel(tokens_per_second={self.tokens_per_second}, seed={self.seed})"


def _topic(prompt: str) -> str:
    text = prompt.strip()
    if text.startswith("About ") and ":" in text:  # answering an earlier DemoModel answer
        text = text[len("About ") : text.index(":")]
    words = text.split()
    return " ".join(words[:8]) if words else "the question"


def _last_user(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def _schema_of(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    if not response_format or response_format.get("type") != "json_schema":
        return None
    schema = response_format.get("json_schema", {}).get("schema")
    return schema if isinstance(schema, dict) else None


def _instance(schema: dict[str, Any], topic: str, *, required_only: bool = False) -> Any:
    """A plausible value for a JSON schema: good enough for demos, not a general generator."""
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    if kind == "object" or "properties" in schema:
        required = set(schema.get("required", []))
        properties = schema.get("properties", {})
        return {
            name: _instance(_resolve(sub, schema), topic)
            for name, sub in properties.items()
            if name in required or not required_only
        }
    if kind == "array":
        return [_instance(schema.get("items", {}), topic)]
    return {"integer": 3, "number": 0.5, "boolean": True, "null": None}.get(str(kind), topic)


def _resolve(sub: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = sub.get("$ref", "")
    if ref.startswith("#/$defs/"):
        resolved: dict[str, Any] = root.get("$defs", {}).get(ref.rsplit("/", 1)[1], {})
        return resolved
    options = sub.get("anyOf")
    if options:  # Optional[X]: the first non-null option
        return next((o for o in options if o.get("type") != "null"), options[0])
    return sub


def _current_cancel_event() -> threading.Event | None:
    from ..context import get_context

    try:
        return get_context().cancel_event
    except RuntimeError:
        return None


_: type[ToolModel] = DemoModel  # DemoModel satisfies the tool-calling model protocol
