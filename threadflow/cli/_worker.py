"""``threadflow worker MODULE:ATTR``: run queued runs of some workflows from a shared store until stopped.

SIGTERM (and Ctrl+C) stop it gracefully: it stops claiming, lets its runs
finish for up to ``--grace`` seconds, then cancels the rest with cause
``shutdown`` (they end ``cancelled``, recorded) and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from .. import Worker, Workflow
from ._args import EXIT_OK, EXIT_USAGE, CommandError, Commands, add_db_option, positive_float, positive_int
from ._store import db_from, open_store

__all__ = ["add_worker_command", "load_workflows"]


def add_worker_command(commands: Commands) -> None:
    """Add ``worker`` to the ``threadflow`` parser."""
    worker = commands.add_parser(
        "worker",
        help="run queued runs of workflows from a shared store (PostgreSQL, or SQLite on one host)",
        description="Import MODULE:ATTR (a Workflow or a list of them) and run their queued runs from --db "
        "until stopped (SIGTERM or Ctrl+C: stop claiming, let runs finish up to --grace seconds, then cancel).",
    )
    worker.add_argument("target", metavar="MODULE:ATTR", help="a module attribute naming a Workflow or a list of them")
    worker.add_argument("--concurrency", type=positive_int, default=8, metavar="N", help="runs at once (default 8)")
    worker.add_argument(
        "--lease-seconds",
        type=positive_float,
        default=15.0,
        metavar="S",
        help="after S seconds without renewal, another worker resumes this one's runs (default 15)",
    )
    worker.add_argument(
        "--grace", type=positive_float, default=30.0, metavar="S", help="on SIGTERM, let runs finish for S seconds"
    )
    add_db_option(worker)
    worker.set_defaults(handler=worker_command)


def load_workflows(target: str) -> list[Workflow]:
    """The workflows ``MODULE:ATTR`` names (the current directory is importable). ``CommandError`` (exit 2) if none."""
    module_name, separator, attr = target.partition(":")
    if not separator or not module_name or not attr:
        raise CommandError(f"expected MODULE:ATTR, not {target!r}", EXIT_USAGE)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as error:
        raise CommandError(f"cannot load {target!r}: {error}", EXIT_USAGE) from None
    flows = [found] if isinstance(found, Workflow) else list(found) if isinstance(found, list | tuple) else []
    if not flows or not all(isinstance(flow, Workflow) for flow in flows):
        raise CommandError(f"{target!r} is not a Workflow or a list of them", EXIT_USAGE)
    return flows


def worker_command(args: argparse.Namespace) -> int:
    """Run a ``Worker`` until SIGTERM/SIGINT; exit 0 after a graceful stop."""
    db = db_from(args)
    if not db:
        raise CommandError("worker needs a shared store: --db postgresql://... or a SQLite path", EXIT_USAGE)
    flows = load_workflows(args.target)
    store = open_store(db)
    if not hasattr(store, "claim"):
        store.close()
        raise CommandError("--db: this kind of store has no run queue", EXIT_USAGE)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    worker = Worker(flows, store, concurrency=args.concurrency, lease_seconds=args.lease_seconds)
    try:
        worker.start()
        print(f"threadflow worker {store!r}: {', '.join(f.id for f in flows)}", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            pass
        worker.stop(args.grace)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        store.close()
    return EXIT_OK
