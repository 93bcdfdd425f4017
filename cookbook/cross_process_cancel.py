"""Cancel a run from another process with ``threadflow runs cancel``.

A worker process streams a long article from the offline ``DemoModel`` with
its runs recorded in a SQLite file. From this (separate) process, the script
then does what an operator would do in a shell::

    threadflow --db runs.db runs status RUN_ID
    threadflow --db runs.db runs cancel RUN_ID --reason "..."
    threadflow --db runs.db runs logs RUN_ID

``runs cancel`` writes a cancel request into the database; the worker's
cancel watcher (a thread that runs only while the process has active stored
runs) picks it up within milliseconds and cancels the run exactly as
``cancel_run()`` would, so the step's cleanup runs, the stream ends with
``run_cancelled`` and ``workflow_cancelled``, and the reason is recorded.
``runs cancel`` prints the owner's answer and exits 0; asked again, the run
has ended and it exits 1.

Run it (about a second)::

    python cookbook/cross_process_cancel.py
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from threadflow import Agent, Workflow
from threadflow.events import RunCancelledEvent, RunContentEvent
from threadflow.models import DemoModel
from threadflow.storage import SqliteStore


def worker(path: str) -> None:
    """The long run, in its own process: announce the run id, then stream until it ends."""
    writer = Agent("writer", model=DemoModel(50, seed=7, max_tokens=5000), instructions="Write at length.")
    workflow = Workflow("long article", steps=[writer], store=SqliteStore(path))
    with workflow.run("the history of the lighthouse", stream=True) as stream:
        tokens = 0
        for event in stream:
            if isinstance(event, RunContentEvent):
                tokens += 1
                if tokens == 3:  # streaming for real: tell the other process which run to cancel
                    print(f"streaming {stream.run_id}", flush=True)
            elif isinstance(event, RunCancelledEvent):
                print(f"worker: the writer step saw the cancel after {tokens} tokens", flush=True)
    output = stream.output
    assert output is not None
    print(f"worker: run ended {output.status.value} ({output.cause}: {output.reason})", flush=True)


def threadflow_cli(path: Path, *args: str, echo: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``threadflow --db PATH ARGS...`` as a separate process, as an operator would in a shell."""
    print(f"$ threadflow --db {path.name} {shlex.join(args)}")
    command = [sys.executable, "-m", "threadflow", "--db", str(path), *args]
    proc = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", check=False, timeout=60)
    if echo:
        print(proc.stdout + proc.stderr, end="")
        print(f"(exit code {proc.returncode})\n")
    return proc


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "runs.db"
        command = [sys.executable, __file__, "--worker", str(path)]
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, encoding="utf-8") as child:
            assert child.stdout is not None
            announced = child.stdout.readline().split()
            if announced[:1] != ["streaming"]:
                raise SystemExit(f"the worker did not start: {announced}")
            run_id = announced[1]
            print(f"worker process {child.pid} is streaming run {run_id}\n")
            threadflow_cli(path, "runs", "status", run_id)
            started = time.perf_counter()
            cancelled = threadflow_cli(path, "runs", "cancel", run_id, "--reason", "an operator stopped it")
            answered_ms = (time.perf_counter() - started) * 1000
            print(child.stdout.read(), end="")
        assert cancelled.returncode == 0 and child.returncode == 0
        print(f"\n`runs cancel` got the owner's answer in {answered_ms:.0f} ms, including starting Python\n")
        log = threadflow_cli(path, "runs", "logs", run_id, echo=False).stdout.splitlines()
        print("\n".join([*log[:4], f"  ... {len(log) - 6} more events ...", *log[-2:]]), "\n")
        again = threadflow_cli(path, "runs", "cancel", run_id)
        assert again.returncode == 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2])
    else:
        main()
