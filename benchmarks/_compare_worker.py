"""The micro-benchmarks ``compare.py`` runs against each version: a pyperf script.

It imports whichever ``threadflow`` its interpreter finds (the working tree,
or a tag installed in a temporary venv), and uses only the API every release
has had: ``Workflow(name, steps=[Step(name, executor=fn)])``, ``run()`` and
``run(stream=True)``. pyperf calibrates the loops, spreads the values over
several worker processes and writes them as JSON (``-o`` / ``--append``).

Benchmarks (all times per unit, the unit in the name):

- ``run_1_step`` / ``run_10_steps``: one plain ``run()`` of trivial steps (per run);
- ``stream_<n>``: a one-step ``run(stream=True)`` of ``n`` chunks, consumed (per chunk).

``--only a,b`` limits the set (``compare.py --quick`` uses it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pyperf

from threadflow import Step, StepInput, Workflow

STREAM_SIZES = (100, 1_000, 10_000, 100_000)


def trivial(step_input: StepInput) -> Any:
    return step_input.previous_step_content


def time_runs(loops: int, wf: Workflow) -> float:
    started = time.perf_counter()
    for _ in range(loops):
        wf.run("x")
    return time.perf_counter() - started


def time_stream(loops: int, wf: Workflow) -> float:
    started = time.perf_counter()
    for _ in range(loops):
        for _ in wf.run(stream=True):
            pass
    return time.perf_counter() - started


def streaming_workflow(n: int) -> Workflow:
    def tokens(step_input: StepInput) -> Iterator[str]:
        for _ in range(n):
            yield "tok"

    return Workflow(f"cmp-stream-{n}", steps=[Step("s", executor=tokens)])


def run_workflow(steps: int) -> Workflow:
    return Workflow(f"cmp-run-{steps}", steps=[Step(f"s{i}", executor=trivial) for i in range(steps)])


def main() -> None:
    runner = pyperf.Runner()
    runner.argparser.add_argument("--only", default="", help="comma-separated benchmark names")
    args = runner.parse_args()
    only = set(filter(None, args.only.split(",")))

    def wanted(name: str) -> bool:
        return not only or name in only

    runner.metadata["threadflow_version"] = sys.modules["threadflow"].__dict__.get("__version__", "?")
    for steps, name in ((1, "run_1_step"), (10, "run_10_steps")):
        if wanted(name):
            runner.bench_time_func(name, time_runs, run_workflow(steps))
    for n in STREAM_SIZES:
        if wanted(f"stream_{n}"):
            runner.bench_time_func(f"stream_{n}", time_stream, streaming_workflow(n), inner_loops=n)


if __name__ == "__main__":
    main()
