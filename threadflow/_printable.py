"""Turning users' objects into text without ever failing a run.

A step's output or exception is user code: its ``__str__`` / ``__repr__``
may raise. Logging, error messages and serialisation go through these
helpers, so that such an object costs a placeholder, never the run.
"""

from __future__ import annotations

__all__ = ["safe_repr", "safe_str"]


def safe_str(obj: object) -> str:
    """``str(obj)``, or a placeholder naming its type when that raises."""
    try:
        return str(obj)
    except Exception:  # noqa: BLE001 — any failure of user code gets the placeholder
        return _placeholder(obj)


def safe_repr(obj: object) -> str:
    """``repr(obj)``, or a placeholder naming its type when that raises."""
    try:
        return repr(obj)
    except Exception:  # noqa: BLE001 — any failure of user code gets the placeholder
        return _placeholder(obj)


def _placeholder(obj: object) -> str:
    return f"<unprintable {type(obj).__qualname__} object>"
