"""Fan out: research three sources at once, then cancel the run from another thread mid-flight.

Three agents (web, papers, news) stream their answers in a ``Parallel`` step,
each on a thread of threadflow's branch pool; a summary step would follow.
Each source's model registers an ``on_cancel`` callback (where a real client
would abort its HTTP request) and closes its stream in ``finally``. Once every
source has streamed a few tokens, a second thread calls ``cancel_run``. The
cancel reaches every branch at its next token; every branch's callback and
cleanup run; and the run's ``workflow_cancelled`` arrives only after every
branch has stopped — the nursery rule: no branch outlives its run.

Run it (well under a second)::

    python cookbook/parallel_research.py
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

from threadflow import Agent, Parallel, RunStatus, Step, StepInput, Workflow, get_context
from threadflow.models import DemoModel

SOURCES = ("web", "papers", "news")
TOKENS_BEFORE_CANCEL = 3

cleaned: dict[str, str] = {}
lock = threading.Lock()


def say(message: str) -> None:
    sys.stdout.write(f"{message}\n")
    sys.stdout.flush()


class Source:
    """A DemoModel standing in for a search API: reports what it cleans up."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.model = DemoModel(tokens_per_second=200, seed=len(name), max_tokens=400)

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        ctx = get_context()
        ctx.on_cancel(lambda: say(f"  [{self.name}] on_cancel: aborting the request"))
        sent = 0
        try:
            for token in self.model.stream(messages):
                sent += 1
                yield token
        finally:
            with lock:
                cleaned[self.name] = f"closed its stream after {sent} tokens"


def summarize(si: StepInput) -> str:
    return " | ".join(f"{name}: {text[:40]}" for name, text in si.previous_step_content.items())


workflow = Workflow(
    "research",
    steps=[
        Parallel(*(Step(name, agent=Agent(name, model=Source(name))) for name in SOURCES), name="fanout"),
        summarize,
    ],
)


def main() -> None:
    stream = workflow.run("the history of threads", stream=True)
    every_source_started = threading.Event()
    accepted: list[bool] = []

    def canceller() -> None:
        every_source_started.wait()
        accepted.append(workflow.cancel_run(stream.run_id, "the user changed the question"))

    thread = threading.Thread(target=canceller)
    thread.start()
    tokens = dict.fromkeys(SOURCES, 0)
    for event in stream:
        if event.event == "run_content":
            tokens[event.step_name] += 1  # type: ignore[attr-defined]
            if min(tokens.values()) >= TOKENS_BEFORE_CANCEL:
                every_source_started.set()
        elif event.event in ("step_started", "run_cancelled"):
            say(f"{event.seq:>4} {event.event:<15} {event.step_path}")  # type: ignore[attr-defined]
        elif event.terminal:
            with lock:
                all_stopped = len(cleaned) == len(SOURCES)
            say(f"{event.seq:>4} {event.event} (every branch had stopped: {all_stopped})")
    thread.join()
    output = stream.output
    assert output is not None
    say("RESULTS")
    say(f"  cancel_run returned: {accepted[0]}")
    say(f"  status: {output.status.value}, cause: {output.cause and output.cause.value}, reason: {output.reason}")
    for name in SOURCES:
        say(f"  {name}: {cleaned.get(name, 'did not clean up')}")
    if output.status is not RunStatus.cancelled:
        sys.exit(1)


if __name__ == "__main__":
    main()
