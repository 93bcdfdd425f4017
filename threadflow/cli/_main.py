"""The ``threadflow`` parser and ``main``: one place that turns every expected failure into an exit code."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..storage import StoreError
from ._args import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, CommandError, Parser, add_db_option
from ._demo import add_demo_command
from ._runs import add_runs_commands
from ._serve import add_serve_command
from ._worker import add_worker_command

__all__ = ["build_parser", "main"]

_EPILOG = """\
--db may be given before the command or after it (and after a runs
sub-command); when it is given more than once, the last one wins.
Exit codes: 0 success, 1 not found / ambiguous / not cancellable /
unusable history, 2 usage error, 130 interrupted (Ctrl+C)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``threadflow`` command line: ``demo``, ``runs list|status|logs|cancel``, ``serve``, ``worker``."""
    parser = Parser(
        prog="threadflow",
        description="Run the demo, serve workflows over HTTP, and list, follow and cancel stored runs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"threadflow {__version__}")
    add_db_option(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_demo_command(commands)
    add_runs_commands(commands)
    add_serve_command(commands)
    add_worker_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default: ``sys.argv[1:]``); its exit code. Errors are one line on stderr."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_OK
    name = " ".join(filter(None, ["threadflow", args.command, getattr(args, "runs_command", None)]))
    try:
        code: int = args.handler(args)
    except CommandError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return error.code
    except StoreError as error:  # a bad --db / $THREADFLOW_DB: one line, not a traceback
        print(f"{name}: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # Ctrl+C: the commands have cleaned up on the way out; no traceback
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `threadflow runs logs ID | head`: stop quietly, and let exit not flush again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return code
