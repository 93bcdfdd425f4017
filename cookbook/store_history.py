"""Durable run history: run workflows with a ``SqliteStore``, then read it back with the CLI.

Three runs of a small research workflow are recorded in one SQLite file: one
completes, one is cancelled mid-stream, one fails in a step. Then the script
does what you would do in a shell afterwards, from another process::

    threadflow --db runs.db runs list
    threadflow --db runs.db runs list --status cancelled --json
    threadflow --db runs.db runs status RUN_ID
    threadflow --db runs.db runs logs RUN_ID

Every event of every run is in the file, so ``runs logs`` replays a run token
by token long after the process that ran it has exited. The same history is
enabled without code changes by ``THREADFLOW_DB=runs.db``.

Run it (under a second; the history goes to a temporary file unless you name one)::

    python cookbook/store_history.py [PATH]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from threadflow import Agent, Step, StepInput, Workflow, WorkflowError
from threadflow.events import RunContentEvent
from threadflow.models import DemoModel
from threadflow.storage import SqliteStore


def publish(step_input: StepInput) -> str:
    """The last step: legal review turns down anything confidential."""
    if "confidential" in str(step_input.input):
        raise PermissionError("legal review rejected the draft")
    return f"published {len(str(step_input.previous_step_content).split())} words"


def research_workflow(store: SqliteStore) -> Workflow:
    return Workflow(
        "research and publish",
        steps=[
            Agent("researcher", model=DemoModel(400, seed=3, max_tokens=30), instructions="Collect the key facts."),
            Agent("writer", model=DemoModel(400, seed=4, max_tokens=40), instructions="Write them up."),
            Step("publish", executor=publish),
        ],
        store=store,
    )


def record_three_runs(path: Path) -> dict[str, str]:
    """A completed, a cancelled and a failed run, all recorded in ``path``; their run ids."""
    runs: dict[str, str] = {}
    with SqliteStore(path) as store:
        workflow = research_workflow(store)
        done = workflow.run("tidal power")
        runs["completed"] = done.run_id

        stream = workflow.run("glaciers", stream=True)
        runs["cancelled"] = stream.run_id
        tokens = 0
        for event in stream:
            if isinstance(event, RunContentEvent):
                tokens += 1
                if tokens == 12:  # cancel from anywhere; here, from the consuming loop itself
                    workflow.cancel_run(stream.run_id, reason="the editor changed the topic")

        try:
            workflow.run("the confidential merger")
        except WorkflowError as error:
            runs["error"] = error.output.run_id
    return runs  # the store is closed: everything below reads the file from other processes


def threadflow_cli(path: Path, *args: str) -> str:
    """Run ``threadflow --db PATH ARGS...`` as a separate process, as you would in a shell."""
    command = [sys.executable, "-m", "threadflow", "--db", str(path), *args]
    print(f"$ threadflow --db {path.name} {' '.join(args)}")
    proc = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", check=False, timeout=60)
    if proc.returncode != 0:
        raise SystemExit(f"threadflow exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def show(path: Path, runs: dict[str, str]) -> None:
    print(threadflow_cli(path, "runs", "list"))
    cancelled: list[dict[str, Any]] = json.loads(
        threadflow_cli(path, "runs", "list", "--status", "cancelled", "--json")
    )
    for record in cancelled:
        print(f"  {record['run_id']}: cancelled in step {record['step_name']!r} because {record['reason']!r}\n")
    print(threadflow_cli(path, "runs", "status", runs["error"]))
    log = threadflow_cli(path, "runs", "logs", runs["cancelled"]).splitlines()
    print("\n".join([*log[:5], f"  ... {len(log) - 8} more events ...", *log[-3:]]), "\n")
    output = threadflow_cli(path, "runs", "logs", runs["completed"], "--json")
    replayed = [json.loads(line) for line in output.splitlines()]
    text = "".join(event["content"] for event in replayed if event["event"] == "run_content")
    print(f"replayed {len(replayed)} events of the completed run; its tokens: {text[:60]!r}...")


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(scratch) / "runs.db"
        runs = record_three_runs(path)
        print(f"recorded runs in {path.name}: {', '.join(f'{status} {run_id}' for status, run_id in runs.items())}\n")
        show(path, runs)


if __name__ == "__main__":
    main()
