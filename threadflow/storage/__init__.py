"""Where runs are recorded: the ``RunStore`` protocol and its implementations."""

from .base import RunStore as RunStore
from .memory import MemoryStore as MemoryStore

__all__ = ["MemoryStore", "RunStore"]
