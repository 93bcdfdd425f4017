"""Cancel a streaming workflow run from another thread.

A port of Agno's "cancel a workflow run" cookbook example to threadflow. One
thread iterates the run's events (``for event in workflow.run(x, stream=True)``)
and prints the tokens as they arrive; a second thread waits a few seconds and
calls ``workflow.cancel_run(run_id)``. The run stops at the next token, the
stream carries ``run_cancelled`` then ``workflow_cancelled``, and the RESULTS
block reports the outcome.

Differences from the Agno original, all in threadflow's favour:

- the run id is known before the first event (``stream.run_id``), so the
  cancelling thread never has to race the first chunk for it;
- ``cancel_run`` returning True *guarantees* the run ends ``cancelled``;
- the agents use the offline ``DemoModel``: no network, no API key.

Run it (about two seconds)::

    python cookbook/cancel_run.py [--cancel-after SECONDS]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any

from threadflow import Agent, RunEvent, RunStatus, Step, Workflow, WorkflowRunEvent
from threadflow.models import DemoModel

TOPIC = (
    "Write a very long story about a dragon who learns to code. "
    "Make it at least 2000 words with detailed descriptions and dialogue."
)


def say(message: str) -> None:
    """Print a whole line in one write, so that lines from the two threads never interleave."""
    sys.stdout.write(f"{message}\n")
    sys.stdout.flush()


def long_running_task(workflow: Workflow, run_id_container: dict[str, Any]) -> None:
    """Stream one run of ``workflow``, printing tokens; store a result summary in the container."""
    content_pieces: list[str] = []
    stream = workflow.run(TOPIC, stream=True)
    # The id exists before anything runs: publish it for the cancelling thread.
    run_id_container["run_id"] = stream.run_id
    run_id_container["started"].set()
    say(f"Workflow run started: {stream.run_id}")

    with stream:
        for chunk in stream:
            if chunk.event == WorkflowRunEvent.step_started:
                say(f"\n--- step: {chunk.step_name} ---")
            elif chunk.event == RunEvent.run_content:
                print(chunk.content, end="", flush=True)
                content_pieces.append(chunk.content)
            elif chunk.event == RunEvent.run_cancelled:
                say(f"\nStep {chunk.step_name!r} was cancelled ({chunk.cause.value})")
            elif chunk.event == WorkflowRunEvent.workflow_cancelled:
                say(f"Workflow run was cancelled: {chunk.run_id}")

    output = stream.output
    assert output is not None  # the stream has ended
    preview = "".join(content_pieces)[:200]
    run_id_container["result"] = {
        "status": output.status.value,
        "run_id": output.run_id,
        "cancelled": output.status is RunStatus.cancelled,
        "cause": output.cause.value if output.cause else None,
        "reason": output.reason,
        "step": output.step_name,
        "content": preview + "..." if preview else "No content before cancellation",
    }


def cancel_after_delay(workflow: Workflow, run_id_container: dict[str, Any], delay_seconds: float) -> None:
    """Wait ``delay_seconds``, then cancel the run whose id is in the container."""
    say(f"Will cancel the workflow run in {delay_seconds:g} seconds...")
    run_id_container["started"].wait()
    time.sleep(delay_seconds)
    run_id = run_id_container["run_id"]
    say(f"\nCancelling workflow run: {run_id}")
    if workflow.cancel_run(run_id, reason=f"cancelled after {delay_seconds:g}s"):
        say(f"Workflow run {run_id} marked for cancellation")
    else:
        say(f"Failed to cancel workflow run {run_id} (unknown, or already finished)")


def build_workflow(tokens_per_second: float) -> Workflow:
    researcher = Agent(
        "Research Agent",
        model=DemoModel(tokens_per_second, seed=1, max_tokens=60),
        instructions="Research the given topic and provide key facts and insights.",
    )
    writer = Agent(
        "Writing Agent",
        model=DemoModel(tokens_per_second, seed=2, max_tokens=200),
        instructions="Write a comprehensive article based on the research provided.",
    )
    return Workflow(
        "article workflow",
        description="Automated article creation from research to writing",
        steps=[
            Step("research", agent=researcher, description="Research the topic"),
            Step("writing", agent=writer, description="Write an article based on the research"),
        ],
    )


def print_results(result: dict[str, Any] | None) -> None:
    print("\n" + "=" * 50)
    print("RESULTS:")
    print("=" * 50)
    if result is None:
        print("No result obtained")
        return
    print(f"Status: {result['status']}")
    print(f"Run ID: {result['run_id']}")
    print(f"Was Cancelled: {result['cancelled']}")
    print(f"Cause: {result['cause']}")
    print(f"Reason: {result['reason']}")
    print(f"Cancelled In Step: {result['step']}")
    print(f"Content Preview: {result['content']}")
    if result["cancelled"]:
        print("\nSUCCESS: Workflow run was successfully cancelled!")
    else:
        print("\nWARNING: Workflow run completed before cancellation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cancel-after", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--tokens-per-second", type=float, default=40.0)
    args = parser.parse_args()

    workflow = build_workflow(args.tokens_per_second)
    print("Starting workflow run cancellation example...")
    print("=" * 50)
    run_id_container: dict[str, Any] = {"started": threading.Event()}
    workflow_thread = threading.Thread(
        target=long_running_task, args=(workflow, run_id_container), name="WorkflowRunThread"
    )
    cancel_thread = threading.Thread(
        target=cancel_after_delay, args=(workflow, run_id_container, args.cancel_after), name="CancelThread"
    )
    workflow_thread.start()
    cancel_thread.start()
    workflow_thread.join()
    cancel_thread.join()

    print_results(run_id_container.get("result"))
    print("\nWorkflow cancellation example completed!")


if __name__ == "__main__":
    main()
