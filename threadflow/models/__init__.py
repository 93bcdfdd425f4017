"""Models for ``Agent``: ``DemoModel`` streams plausible prose offline.

``DemoModel`` needs no network and no key, and is deterministic: the same
messages and seed give the same tokens, at ``tokens_per_second``. Its pause
between tokens waits on the run's cancel event, the way a real provider
client is unblocked by an ``on_cancel`` callback, so a cancel lands within
one token.
"""

from __future__ import annotations

import random
import threading
import time
import zlib
from collections.abc import Iterator

from ..agents import Model

__all__ = ["DemoModel", "Model"]

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

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        """Yield the answer to ``messages`` word by word (each token ends with a space)."""
        words = self.answer(messages).split(" ")
        delay = 1.0 / self.tokens_per_second if self.tokens_per_second else 0.0
        cancel_event = _current_cancel_event()
        for word in words[: self.max_tokens]:
            if delay:
                if cancel_event is not None:
                    cancel_event.wait(delay)  # the next token is a checkpoint: a cancel lands there
                else:
                    time.sleep(delay)
            yield word + " "

    def answer(self, messages: list[dict[str, str]]) -> str:
        """The whole answer ``stream`` would produce, at once."""
        text = "\n".join(m.get("content", "") for m in messages)
        rng = random.Random(zlib.crc32(text.encode()) ^ self.seed)
        topic = _topic(messages[-1]["content"] if messages else "")
        sentences = [f"About {topic}:"]
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


def _current_cancel_event() -> threading.Event | None:
    from ..context import get_context

    try:
        return get_context().cancel_event
    except RuntimeError:
        return None


_: type[Model] = DemoModel  # DemoModel satisfies the Model protocol
