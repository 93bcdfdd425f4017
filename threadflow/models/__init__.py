"""Models for ``Agent``: ``DemoModel`` (offline) and ``OpenAIChat`` (any OpenAI-compatible server).

``OpenAIChat`` needs the ``openai`` extra (``pip install 'threadflow[openai]'``,
which brings httpx); it is imported on first use, so ``DemoModel`` users never
load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..agents import Model, ToolCall, ToolModel
from .demo import DemoModel

if TYPE_CHECKING:
    from .openai import OpenAIChat, OpenAIError

__all__ = ["DemoModel", "Model", "OpenAIChat", "OpenAIError", "ToolCall", "ToolModel"]


def __getattr__(name: str) -> Any:
    if name in ("OpenAIChat", "OpenAIError"):
        from . import openai

        return getattr(openai, name)
    raise AttributeError(f"module 'threadflow.models' has no attribute {name!r}")
