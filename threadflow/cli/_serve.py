"""``threadflow serve MODULE:ATTR``: serve workflows over HTTP (needs the ``threadflow[server]`` extra)."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import Any

from ._args import EXIT_USAGE, CommandError, Commands, add_db_option, port, positive_int
from ._store import check_db, db_from

__all__ = ["add_serve_command"]

_INSTALL = "pip install 'threadflow[server]'"


def add_serve_command(commands: Commands) -> None:
    """Add ``serve`` to the ``threadflow`` parser."""
    serve = commands.add_parser(
        "serve",
        help="serve workflows over HTTP (needs threadflow[server])",
        description="Import MODULE:ATTR and serve it over HTTP until stopped (Ctrl+C). "
        f"Needs the server extra: {_INSTALL}.",
    )
    serve.add_argument(
        "target", metavar="MODULE:ATTR", help="a module attribute naming a Workflow, a list of them, or an app factory"
    )
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=port, default=8000, help="the port to listen on, 0-65535 (default 8000; 0 picks one)"
    )
    serve.add_argument("--api-key", default=None, help="require this bearer token (or set $THREADFLOW_API_KEY)")
    serve.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=None,
        metavar="N",
        help="refuse request bodies larger than N bytes (default: the server's limit)",
    )
    add_db_option(serve)
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    """Serve until stopped; the server's exit code (0 clean stop, 1 unusable history, 2 bad target or address)."""
    db = db_from(args)
    if db:
        check_db(db)
    serve_target = _serve_target()
    options: dict[str, Any] = {}
    if args.max_body_bytes is not None:
        if not _accepts(serve_target, "max_body_bytes"):
            raise CommandError("--max-body-bytes: this threadflow's server has no body size limit", EXIT_USAGE)
        options["max_body_bytes"] = args.max_body_bytes
    code: int = serve_target(
        args.target, host=args.host, port=args.port, api_key=args.api_key, db=getattr(args, "db", None), **options
    )
    return code


def _serve_target() -> Callable[..., int]:
    """The server's entry point, imported only now: without the extra, a one-line error (exit 2)."""
    try:
        from ..server import serve_target
    except ImportError as error:
        missing = f" (no module {error.name!r})" if error.name else ""
        raise CommandError(f"needs the server extra{missing}: {_INSTALL}", EXIT_USAGE) from None
    return serve_target


def _accepts(function: Callable[..., Any], keyword: str) -> bool:
    parameters = inspect.signature(function).parameters.values()
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
