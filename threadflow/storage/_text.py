"""Small checks on text that every store shares."""

from __future__ import annotations

__all__ = ["check_reason", "clean_text", "maybe_text"]


def check_reason(reason: object) -> None:
    """``TypeError`` unless ``reason`` is a str or None (as ``threadflow.cancel_run`` checks it)."""
    if reason is not None and not isinstance(reason, str):
        raise TypeError(f"reason must be a str or None, not {type(reason).__name__}")


def clean_text(text: str) -> str:
    """``text`` with each lone surrogate, which UTF-8 (and so SQLite) cannot hold, replaced by ``?``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def maybe_text(text: str | None) -> str | None:
    """``clean_text``, passing None through."""
    return None if text is None else clean_text(text)
