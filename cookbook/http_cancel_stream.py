"""Serve the demo workflow over HTTP; stream a run with the client in one thread, cancel it over HTTP from another.

The server is threadflow's own app (``threadflow.server.create_app``) under
uvicorn, started on 127.0.0.1 on a free port for the length of the script —
the same app ``threadflow serve module:workflow`` runs. One thread opens a
streaming run with ``Client.stream`` and prints the tokens as the server-sent
events arrive; a second thread, once the first token is in, waits a moment
and sends ``POST /workflows/{id}/runs/{run_id}/cancel`` through
``Client.cancel_run``. The stream then carries ``run_cancelled`` and
``workflow_cancelled`` (cause ``requested``, with the reason), and the script
reports how long the cancel took to reach the streaming client.

Everything runs offline: the demo's agents (those of ``threadflow demo``) use ``DemoModel``.

Run it (about two seconds)::

    python cookbook/http_cancel_stream.py [--cancel-after SECONDS]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any

from threadflow import Agent, Workflow
from threadflow.events import RunCancelledEvent, RunContentEvent, StepStartedEvent, WorkflowCancelledEvent
from threadflow.models import DemoModel

try:
    from threadflow.client import Client
    from threadflow.server import create_app, running_server
except ImportError as missing:  # the server extra is not installed: say so, no traceback
    sys.exit(f"this example needs the server extra: pip install 'threadflow[server]' ({missing})")

TOPIC = "how a streaming LLM pipeline is cancelled over HTTP"


def demo_workflow(tokens_per_second: float) -> Workflow:
    """The workflow of ``threadflow demo``: a researcher agent feeding a writer agent, offline."""
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
    return Workflow("research and write", steps=[researcher, writer])


def say(message: str) -> None:
    """Print a whole line in one write, so that lines from the two threads never interleave."""
    sys.stdout.write(f"{message}\n")
    sys.stdout.flush()


def stream_run(client: Client, workflow_id: str, shared: dict[str, Any]) -> None:
    """Start a streaming run over HTTP and print its tokens until the stream ends."""
    with client.stream(workflow_id, TOPIC) as stream:
        shared["run_id"] = stream.run_id  # known from the response headers, before any event
        say(f"streaming run {stream.run_id}")
        for event in stream:
            if isinstance(event, StepStartedEvent):
                say(f"\n--- {event.step_name} ---")
            elif isinstance(event, RunContentEvent):
                print(event.content, end="", flush=True)
                shared["first_token"].set()
            elif isinstance(event, RunCancelledEvent):
                say(f"\nstep {event.step_name!r} cancelled ({event.cause.value})")
            elif isinstance(event, WorkflowCancelledEvent):
                shared["landed_at"] = time.perf_counter()
                shared["terminal"] = event


def cancel_over_http(client: Client, workflow_id: str, shared: dict[str, Any], delay: float) -> None:
    """Once tokens flow, wait ``delay`` seconds, then cancel the run with POST .../cancel."""
    if not shared["first_token"].wait(10):
        return
    threading.Event().wait(delay)
    run_id = shared["run_id"]
    say(f"\n\n>>> POST /workflows/{workflow_id}/runs/{run_id}/cancel")
    shared["asked_at"] = time.perf_counter()
    accepted = client.cancel_run(workflow_id, run_id, reason=f"cancelled over HTTP after {delay:g}s")
    say(f">>> accepted: {accepted}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cancel-after", type=float, default=0.5, metavar="SECONDS")
    parser.add_argument("--tokens-per-second", type=float, default=40.0)
    args = parser.parse_args()

    workflow = demo_workflow(args.tokens_per_second)
    shared: dict[str, Any] = {"first_token": threading.Event()}
    with running_server(create_app(workflow)) as url, Client(url) as client:
        say(f"serving {workflow.id!r} on {url}")
        streamer = threading.Thread(target=stream_run, args=(client, workflow.id, shared), name="streamer")
        canceller = threading.Thread(
            target=cancel_over_http, args=(client, workflow.id, shared, args.cancel_after), name="canceller"
        )
        streamer.start()
        canceller.start()
        streamer.join()
        canceller.join()
        info = client.get_run(workflow.id, shared["run_id"])

    terminal = shared.get("terminal")
    say("\n" + "=" * 50)
    if terminal is None or info is None:
        say("the run was not cancelled (it completed first?)")
        return
    say(f"status:    {info.status.value}")
    say(f"cause:     {terminal.cause.value}")
    say(f"reason:    {terminal.reason}")
    say(f"step:      {terminal.step_name}")
    latency_ms = (shared["landed_at"] - shared["asked_at"]) * 1000
    say(f"cancel over HTTP reached the streaming client in {latency_ms:.1f} ms")


if __name__ == "__main__":
    main()
