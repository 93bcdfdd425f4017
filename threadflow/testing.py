"""Fakes and checks for testing code built on threadflow.

- ``ScriptedModel``: a ``Model`` that streams the tokens you give it (or, turn
  by turn, tokens and ``ToolCall``s), can raise after some of them, and can
  park on a gate so a test knows where it is.
- ``FakeOpenAIServer`` / ``FakeReply``: a local OpenAI-compatible chat server
  (``threadflow.testing._fakeopenai``) for testing code that uses ``OpenAIChat``.
- ``check_run_events(events)``: the invariants every run's event sequence
  keeps: one ``workflow_started`` first, exactly one terminal event
  last, ``seq`` 1, 2, 3, ... without gaps, one run id.
- ``wait_until(predicate, timeout)``: poll a condition with a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ._fakeopenai import FakeOpenAIServer, FakeReply
from .agents import ToolCall
from .events import BaseEvent, WorkflowRunEvent

__all__ = ["FakeOpenAIServer", "FakeReply", "ScriptedModel", "ToolCall", "check_run_events", "wait_until"]


class ScriptedModel:
    """A model that streams ``tokens`` exactly, for tests.

    ``turns``, instead of ``tokens``: one list per call of ``stream``, each of
    ``str`` tokens and ``ToolCall``s, so an agent with tools can be scripted
    (``[[ToolCall("c1", "search", '{"q": "x"}')], ["the ", "answer"]]``); a call
    beyond the last turn repeats the last one. ``tools`` records the tools
    each call was offered. ``fail_after=N`` raises ``error`` after the N-th token. ``gate``: before
    each token after the first ``gate_after`` ones, set ``reached`` and wait
    for ``gate`` (a ``threading.Event``), so a test can hold the model at a
    known point. ``calls`` records the messages of every call; ``closed``
    counts streams that were closed.
    """

    def __init__(
        self,
        tokens: Sequence[str] = (),
        *,
        turns: Sequence[Sequence[str | ToolCall]] | None = None,
        fail_after: int | None = None,
        error: Exception | None = None,
        gate: threading.Event | None = None,
        gate_after: int = 0,
    ) -> None:
        self.turns: list[list[str | ToolCall]] = [list(turn) for turn in turns] if turns is not None else [list(tokens)]
        self.tokens = self.turns[0] if self.turns else []
        self.fail_after = fail_after
        self.error = error or RuntimeError("scripted model failure")
        self.gate = gate
        self.gate_after = gate_after
        self.reached = threading.Event()
        self.calls: list[list[dict[str, Any]]] = []
        self.tools: list[list[dict[str, Any]] | None] = []
        self.response_formats: list[dict[str, Any] | None] = []
        self.closed = 0

    def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> Iterator[str | ToolCall]:
        turn = self.turns[min(len(self.calls), len(self.turns) - 1)] if self.turns else []
        self.calls.append(messages)
        self.tools.append(tools)
        self.response_formats.append(response_format)
        return self._tokens(turn)

    def _tokens(self, turn: list[str | ToolCall]) -> Iterator[str | ToolCall]:
        try:
            for index, token in enumerate(turn):
                if self.fail_after is not None and index == self.fail_after:
                    raise self.error
                if self.gate is not None and index >= self.gate_after:
                    self.reached.set()
                    self.gate.wait()
                yield token
            if self.fail_after is not None and self.fail_after >= len(turn):
                raise self.error
        finally:
            self.closed += 1


_TERMINAL = {
    WorkflowRunEvent.workflow_completed,
    WorkflowRunEvent.workflow_cancelled,
    WorkflowRunEvent.workflow_error,
}


def check_run_events(events: Iterable[BaseEvent]) -> list[BaseEvent]:
    """Assert the event-sequence invariants of one run; returns the events as a list."""
    events = list(events)
    assert events, "a run emitted no events"
    assert events[0].event == WorkflowRunEvent.workflow_started, f"first event is {events[0].event}"
    terminals = [e for e in events if e.event in _TERMINAL]
    assert len(terminals) == 1, f"expected exactly one terminal event, got {[e.event for e in terminals]}"
    assert events[-1] is terminals[0], f"the terminal event is not last: {[e.event for e in events]}"
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1)), f"seq not 1..n without gaps: {seqs}"
    assert len({e.run_id for e in events}) == 1, "events of several runs mixed"
    return events


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.001) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True
