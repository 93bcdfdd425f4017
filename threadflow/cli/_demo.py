"""``threadflow demo``: stream a research-then-write workflow and cancel it from another thread."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import TextIO

from .. import Agent, RunStream, Workflow, WorkflowRunOutput
from ..events import RunContentEvent, StepStartedEvent, WorkflowCancelledEvent
from ..models import DemoModel
from ..storage import RunStore
from ._args import EXIT_INTERRUPTED, EXIT_OK, Commands, add_db_option, non_negative_float, positive_float
from ._store import db_from, open_store

__all__ = ["add_demo_command", "demo_workflow"]

_TOPIC = "how threadflow cancels a streaming LLM pipeline"


def add_demo_command(commands: Commands) -> None:
    """Add ``demo`` to the ``threadflow`` parser."""
    demo = commands.add_parser(
        "demo",
        help="stream a research-then-write workflow and cancel it from another thread",
        description="Stream a two-agent workflow on the offline demo model, cancel it from another thread "
        "after a while, and print how the run ended and how fast the cancel landed.",
    )
    demo.add_argument("topic", nargs="?", default=_TOPIC, help=f"what to write about (default: {_TOPIC!r})")
    demo.add_argument(
        "--cancel-after",
        type=non_negative_float,
        default=4.0,
        metavar="SECONDS",
        help="cancel the run after this many seconds (default 4; 0 cancels at once)",
    )
    demo.add_argument("--no-cancel", action="store_true", help="let the run complete")
    demo.add_argument(
        "--tokens-per-second", type=positive_float, default=20.0, metavar="N", help="the model's speed (default 20)"
    )
    add_db_option(demo)
    demo.set_defaults(handler=demo_command)


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


def demo_command(args: argparse.Namespace) -> int:
    """Run the demo; 0 when it ran (cancelled or not), 130 on Ctrl+C (after the summary)."""
    db = db_from(args)
    store = open_store(db) if db else None
    try:
        workflow = demo_workflow(tokens_per_second=args.tokens_per_second, store=store)
        return _run(workflow, args, sys.stdout)
    finally:
        if store is not None:
            store.close()


def _run(workflow: Workflow, args: argparse.Namespace, out: TextIO) -> int:
    stream = workflow.run(args.topic, stream=True)
    asked_at: list[float] = []
    stop = threading.Event()

    def cancel_later() -> None:
        if not stop.wait(args.cancel_after):
            asked_at.append(time.perf_counter())
            workflow.cancel_run(stream.run_id, reason=f"demo: cancelled after {args.cancel_after:g}s")

    if not args.no_cancel:
        threading.Thread(target=cancel_later, name="demo-canceller", daemon=True).start()
    try:
        landed_at = _print_stream(stream, out)
    except KeyboardInterrupt:  # Ctrl+C: the run has been recorded; say how it ended, exit 130 quietly
        stop.set()
        if stream.output is not None:
            _print_summary(stream.output, asked_at, None, out)
        return EXIT_INTERRUPTED
    stop.set()
    assert stream.output is not None  # the stream ran to its end
    _print_summary(stream.output, asked_at, landed_at, out)
    return EXIT_OK


def _print_stream(stream: RunStream, out: TextIO) -> float | None:
    """Print the steps' tokens as they stream; when the cancel landed (``perf_counter``), if it did."""
    landed_at = None
    with stream:  # however the loop is left, the run ends: leaving early cancels it (stream_closed)
        for event in stream:
            if isinstance(event, StepStartedEvent):
                print(f"\n\n── {event.step_name} ──", file=out)
            elif isinstance(event, RunContentEvent):
                print(event.content, end="", file=out, flush=True)
            elif isinstance(event, WorkflowCancelledEvent):
                landed_at = time.perf_counter()
    return landed_at


def _print_summary(output: WorkflowRunOutput, asked_at: list[float], landed_at: float | None, out: TextIO) -> None:
    print("\n\n── summary ──", file=out)
    print(f"status:  {output.status.value}", file=out)
    print(f"run id:  {output.run_id}", file=out)
    if output.cause is not None:
        print(f"cause:   {output.cause.value} ({output.reason})", file=out)
    print(f"step:    {output.step_name}", file=out)
    if output.error_type is not None:  # e.g. Ctrl+C landed in the step's own code
        print(f"error:   {output.error_type}", file=out)
    if asked_at and landed_at is not None:
        print(f"cancel landed in {(landed_at - asked_at[0]) * 1000:.2f} ms", file=out)
