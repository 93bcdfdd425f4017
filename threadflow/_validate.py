"""Argument checks shared by the core: one spelling of each rule and of its error message.

``bool`` is an ``int`` to Python but never a count or a number of seconds
here, so every numeric check rejects it; NaN fails every comparison, so the
checks are written to reject it too.
"""

from __future__ import annotations

from typing import TypeGuard

__all__ = ["check_count", "check_id", "check_reason", "check_seconds", "is_number"]


def is_number(value: object) -> TypeGuard[int | float]:
    """True for an ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_seconds(what: str, value: object, *, positive: bool = False, optional: bool = False) -> float | None:
    """``value`` as a float of seconds: ``>= 0`` (``> 0`` when ``positive``); None passes when ``optional``.

    Raises ``ValueError`` naming ``what`` otherwise.
    """
    if value is None and optional:
        return None
    if not is_number(value) or not (value > 0 if positive else value >= 0):
        kind = "positive" if positive else "non-negative"
        suffix = " or None" if optional else ""
        raise ValueError(f"{what} must be a {kind} number of seconds{suffix}, not {value!r}")
    return float(value)


def check_count(what: str, value: object, *, minimum: int = 0) -> int:
    """``value`` as an int ``>= minimum`` (0 or 1); ``ValueError`` naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "positive" if minimum > 0 else "non-negative"
        raise ValueError(f"{what} must be a {kind} int, not {value!r}")
    return value


def check_id(what: str, value: object) -> str:
    """``value`` as a non-empty str; ``ValueError`` naming ``what`` otherwise."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty str, not {value!r}")
    return value


def check_reason(reason: object) -> None:
    """A cancel reason is a str or None; ``TypeError`` otherwise."""
    if reason is not None and not isinstance(reason, str):
        raise TypeError(f"reason must be a str or None, not {type(reason).__name__}")
