"""What every command shares: the parser class, the ``--db`` option, value checks, exit codes and errors.

A bad command line is one line on stderr naming the flag, and exit 2 — never
a usage block or a traceback.
"""

from __future__ import annotations

import argparse
import math
from typing import NoReturn, TypeAlias, TypeVar

__all__ = [
    "DB_ENV",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandError",
    "Commands",
    "Parser",
    "add_db_option",
    "non_negative_float",
    "port",
    "positive_float",
    "positive_int",
    "text",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DB_ENV = "THREADFLOW_DB"
_Number = TypeVar("_Number", int, float)


class CommandError(Exception):
    """A failure to report as one line on stderr, and the exit code (1 unless said otherwise)."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line: ``PROG: error: MESSAGE (see PROG --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


#: What ``add_subparsers`` returns on a ``Parser``: where each module adds its command.
Commands: TypeAlias = "argparse._SubParsersAction[Parser]"


def add_db_option(parser: argparse.ArgumentParser) -> None:
    """Accept ``--db`` on ``parser`` too; given there, it overrides one given earlier on the line.

    ``SUPPRESS`` keeps an absent option out of the namespace, so a command's
    parser never resets the ``--db`` that the top level (or ``runs``) read.
    """
    parser.add_argument(
        "--db",
        default=argparse.SUPPRESS,
        metavar="DB",
        help=f"the run history: a SQLite file path or a postgresql:// URL (overrides ${DB_ENV})",
    )


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _parse(int, text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: the system picks a free one)."""
    value = _parse(int, text, "a port number (0-65535)")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (0-65535), not {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (``nan`` and ``inf`` are refused)."""
    value = _parse(float, text, "a positive number")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (``nan`` and ``inf`` are refused)."""
    value = _parse(float, text, "a number >= 0")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text!r}")
    return value


def _parse(kind: type[_Number], text: str, what: str) -> _Number:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None


def text(value: str) -> str:
    """``value`` as the store keeps text: each lone surrogate (an undecodable argv byte) becomes ``?``.

    So a run id, reason or workflow name given with such a byte is stored,
    looked up and printed alike, never a traceback.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value
