"""Agents: a step that streams a model's answer token by token.

A ``Model`` is any object with ``stream(messages) -> Iterator[str]``, where
``messages`` is a list of ``{"role": ..., "content": ...}`` dicts. Every token
the model yields is a checkpoint: a cancel lands at the next token, and the
model's iterator is closed (``close()``, when it has one) so that a provider
client can release its connection.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Protocol, runtime_checkable

__all__ = ["Agent", "Model"]


@runtime_checkable
class Model(Protocol):
    """What an ``Agent`` needs from a language model."""

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]: ...


class Agent:
    """An LLM step: answers its prompt by streaming ``model``'s tokens.

    The prompt is the previous step's output if there is one, else the
    workflow's input; ``instructions`` become the system message.
    """

    __slots__ = ("description", "instructions", "model", "name")

    def __init__(
        self,
        name: str | None = None,
        *,
        model: Model,
        instructions: str | None = None,
        description: str | None = None,
    ) -> None:
        if not callable(getattr(model, "stream", None)):
            raise TypeError(f"model must have a stream(messages) method, not {type(model).__name__}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"agent name must be a non-empty str, not {name!r}")
        self.name = name or "agent"
        self.model = model
        self.instructions = instructions
        self.description = description

    def messages(self, prompt: str) -> list[dict[str, str]]:
        messages = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        messages.append({"role": "user", "content": prompt})
        return messages

    def stream_answer(self, prompt: str) -> Generator[str, None, None]:
        """Yield the model's tokens; closes the model's stream however this ends."""
        tokens = self.model.stream(self.messages(prompt))
        try:
            yield from tokens
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, model={type(self.model).__name__})"
