"""The ``threadflow`` command line (also ``python -m threadflow``); public API only.

Commands: ``demo``, ``runs list|status|logs|cancel``, ``serve``.
Exit codes: 0 success, 1 not found / not cancellable, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from . import Agent, Workflow
from .events import RunContentEvent, StepStartedEvent, WorkflowCancelledEvent
from .models import DemoModel
from .storage import RunStore, StoreError

__all__ = ["build_parser", "demo_workflow", "main"]

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE = 0, 1, 2


def demo_workflow(*, tokens_per_second: float = 20.0, store: RunStore | None = None) -> Workflow:
    """The demo: a researcher agent feeding a writer agent, both on the offline ``DemoModel``."""
    researcher = Agent(
        "researcher",
        model=DemoModel(tokens_per_second, seed=1, max_tokens=60),
        instructions="Collect the key facts about the topic, briefly.",
    )
    writer = Agent(
        "writer",
        model=DemoModel(tokens_per_second, seed=2, max_tokens=90),
        instructions="Write a short, clear article from the research notes.",
    )
    return Workflow("research and write", steps=[researcher, writer], store=store)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threadflow", description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLite run history (overrides $THREADFLOW_DB)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser("demo", help="stream a research→writing workflow and cancel it from another thread")
    demo.add_argument("topic", nargs="?", default="how threadflow cancels a streaming LLM pipeline")
    demo.add_argument("--cancel-after", type=float, default=4.0, metavar="SECONDS")
    demo.add_argument("--no-cancel", action="store_true", help="let the run complete")
    demo.add_argument("--tokens-per-second", type=float, default=20.0)
    demo.set_defaults(handler=_demo)

    _add_optional_commands(commands)
    return parser


def _add_optional_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``runs`` and ``serve`` live in their own modules; each adds its sub-commands."""
    from ._cli_runs import add_runs_commands

    add_runs_commands(commands)
    serve = commands.add_parser("serve", help="serve workflows over HTTP (needs threadflow[server])")
    serve.add_argument("target", help="module:attribute naming a Workflow, a list of them, or an app factory")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=None, help="require this bearer token (or set $THREADFLOW_API_KEY)")
    serve.set_defaults(handler=_serve)


def main(argv: Sequence[str] | None = None) -> int:
    from ._cli_runs import EXIT_INTERRUPTED

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        code: int = args.handler(args)
    except StoreError as error:  # a bad --db / $THREADFLOW_DB: one line, not a traceback
        print(f"threadflow: {error}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except KeyboardInterrupt:  # Ctrl+C: the commands have cleaned up on the way out; no traceback
        return EXIT_INTERRUPTED
    return code


# -- demo -------------------------------------------------------------------


def _demo(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if args.cancel_after < 0 or args.tokens_per_second <= 0:
        print("threadflow demo: --cancel-after must be >= 0 and --tokens-per-second > 0", file=sys.stderr)
        return EXIT_USAGE
    store = _store_from_args(args)
    workflow = demo_workflow(tokens_per_second=args.tokens_per_second, store=store)
    stream = workflow.run(args.topic, stream=True)
    asked_at: list[float] = []

    def cancel_later() -> None:
        if not stop.wait(args.cancel_after):
            asked_at.append(time.perf_counter())
            workflow.cancel_run(stream.run_id, reason=f"demo: cancelled after {args.cancel_after:g}s")

    stop = threading.Event()
    canceller = threading.Thread(target=cancel_later, name="demo-canceller", daemon=True)
    if not args.no_cancel:
        canceller.start()
    landed_at = None
    try:
        with stream:  # however the loop is left, the run ends: leaving early cancels it (stream_closed)
            for event in stream:
                if isinstance(event, StepStartedEvent):
                    print(f"\n\n── {event.step_name} ──", file=out)
                elif isinstance(event, RunContentEvent):
                    print(event.content, end="", file=out, flush=True)
                elif isinstance(event, WorkflowCancelledEvent):
                    landed_at = time.perf_counter()
    except KeyboardInterrupt:  # Ctrl+C: the run has been recorded; say how it ended, exit 130 quietly
        from ._cli_runs import EXIT_INTERRUPTED

        stop.set()
        output = stream.output
        if output is not None:
            _print_summary(output, asked_at, landed_at, out)
            if output.error_type is not None:  # Ctrl+C landed in the step's own code
                print(f"error:   {output.error_type}", file=out)
        return EXIT_INTERRUPTED
    stop.set()
    _print_summary(stream.output, asked_at, landed_at, out)
    return EXIT_OK


def _print_summary(output: object, asked_at: list[float], landed_at: float | None, out: TextIO) -> None:
    from . import WorkflowRunOutput

    assert isinstance(output, WorkflowRunOutput)
    print("\n\n── summary ──", file=out)
    print(f"status:  {output.status.value}", file=out)
    print(f"run id:  {output.run_id}", file=out)
    if output.cause is not None:
        print(f"cause:   {output.cause.value} ({output.reason})", file=out)
    print(f"step:    {output.step_name}", file=out)
    if asked_at and landed_at is not None:
        print(f"cancel landed in {(landed_at - asked_at[0]) * 1000:.2f} ms", file=out)


def _store_from_args(args: argparse.Namespace) -> RunStore | None:
    if not args.db:
        return None
    from .storage import SqliteStore

    store: RunStore = SqliteStore(args.db)
    return store


# -- serve ------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    try:
        from .server import serve_target
    except ImportError as error:
        print(f"threadflow serve: needs the server extra: pip install 'threadflow[server]' ({error})", file=sys.stderr)
        return EXIT_USAGE
    return serve_target(args.target, host=args.host, port=args.port, api_key=args.api_key, db=args.db)
