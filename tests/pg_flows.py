"""Workflows the multi-process PostgreSQL tests run in worker subprocesses (``threadflow worker pg_flows:ALL``).

``$THREADFLOW_HOSTNAME`` is the worker's host identity; a worker started with
``PG_FLOWS_STALL=1`` blocks in the second step (until it is killed), so that
the tests can kill it mid-run and watch another worker resume the run.
"""

from __future__ import annotations

import os
from typing import Any

from threadflow import StepInput, Workflow, get_context

HOST = os.environ.get("THREADFLOW_HOSTNAME", "")
STALL = os.environ.get("PG_FLOWS_STALL") == "1"


def first(step_input: StepInput) -> dict[str, Any]:
    return {"first_on": HOST, "input": step_input.input}


def second(step_input: StepInput) -> dict[str, Any]:
    if STALL:
        get_context().sleep(120)
    return {"first": step_input.previous_step_content, "second_on": HOST}


def opaque(step_input: StepInput) -> object:
    return {1, 2, 3}  # a set: not JSON, so a run cannot be resumed after this step


def nap(step_input: StepInput) -> str:
    get_context().sleep(float(step_input.input or 0.2))
    return HOST


def forever(step_input: StepInput) -> None:
    get_context().sleep(120)


resumable = Workflow("resumable", steps=[first, second])
unresumable = Workflow("unresumable", steps=[opaque, second])
naps = Workflow("naps", steps=[nap])
forever_wf = Workflow("forever", steps=[forever])
ALL = [resumable, unresumable, naps, forever_wf]
