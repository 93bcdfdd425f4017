"""Agno's two-agent workflow with tools, streamed and cancelled from another thread.

The seed Agno example, with only the imports and the model class changed: a
researcher agent with ``tools=[search_web]`` and a writer agent, run as
``for event in workflow.run(topic, stream=True)``, and
``workflow.cancel_run(run_id)`` from a second thread while the writer streams.
The stream shows the researcher's tool call (``tool_call_started`` /
``tool_call_completed``), the tokens, then ``run_cancelled`` and
``workflow_cancelled``; the cancel lands within one token.

``--model openai`` uses ``OpenAIChat`` when ``OPENAI_BASE_URL`` or
``OPENAI_API_KEY`` is set (any OpenAI-compatible server: OpenAI, vLLM, Ollama,
llama.cpp, LM Studio; ``OPENAI_MODEL`` picks the model), and the offline
``DemoModel`` otherwise — so it runs with no network and no key. With
``OpenAIChat``, the cancel shuts the HTTP stream's socket down from the
cancelling thread: the blocked read returns at once.

Run it (about two seconds)::

    python cookbook/agno_seed_tools.py [--model demo|openai] [--cancel-after SECONDS]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

from threadflow import Agent, RunEvent, Step, Workflow, WorkflowRunEvent
from threadflow.models import DemoModel

TOPIC = "Write a long story about a dragon who learns to code."


def search_web(query: str, max_results: int = 3) -> list[str]:
    """Search the web for a topic (an offline stand-in for DuckDuckGoTools).

    Args:
        query: what to search for
        max_results: how many results to return
    """
    return [f"Result {i + 1} about {query}" for i in range(max_results)]


def make_model(kind: str, *, max_tokens: int = 200) -> Any:
    """``OpenAIChat`` when asked for and configured, else the offline ``DemoModel``."""
    if kind == "openai" and (os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_KEY")):
        from threadflow.models import OpenAIChat

        return OpenAIChat(id=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))
    if kind == "openai":
        say("OPENAI_BASE_URL / OPENAI_API_KEY not set: using the offline DemoModel")
    return DemoModel(tokens_per_second=40, max_tokens=max_tokens)


def say(message: str) -> None:
    """Print a whole line in one write, so that lines from the two threads never interleave."""
    sys.stdout.write(f"{message}\n")
    sys.stdout.flush()


def long_running_task(workflow: Workflow, run_id_container: dict[str, Any]) -> None:
    """Stream one run, printing what happens; the seed example's consumer loop."""
    for response in workflow.run(input=TOPIC, stream=True):
        if "run_id" not in run_id_container:
            run_id_container["run_id"] = response.run_id
            run_id_container["started"].set()
            say(f"Workflow run started: {response.run_id}")
        if response.event == WorkflowRunEvent.step_started:
            say(f"\n--- step: {response.step_name} ---")
        elif response.event == RunEvent.tool_call_started:
            say(f"[tool] {response.tool_name}({response.tool_args})")
        elif response.event == RunEvent.tool_call_completed:
            say(f"[tool] -> {response.result}")
        elif response.event == RunEvent.run_content:
            sys.stdout.write(response.content)
            sys.stdout.flush()
        elif response.event == RunEvent.run_cancelled:
            say(f"\n{response.agent_name} was cancelled ({response.cause})")
        elif response.event == WorkflowRunEvent.workflow_cancelled:
            took = (time.perf_counter() - run_id_container["cancelled_at"]) * 1000
            say(f"Workflow run was cancelled: {response.run_id} ({took:.1f} ms after cancel_run)")
            run_id_container["status"] = "cancelled"
        elif response.event == WorkflowRunEvent.workflow_completed:
            run_id_container["status"] = "completed"


def cancel_after_delay(workflow: Workflow, run_id_container: dict[str, Any], delay_seconds: float) -> None:
    """Wait for the writer to be streaming, then cancel the run from this thread."""
    run_id_container["started"].wait()
    time.sleep(delay_seconds)
    run_id = run_id_container["run_id"]
    say(f"\nCancelling workflow run: {run_id}")
    run_id_container["cancelled_at"] = time.perf_counter()
    say(f"cancel_run returned {workflow.cancel_run(run_id)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["demo", "openai"], default="demo")
    parser.add_argument("--cancel-after", type=float, default=1.5)
    args = parser.parse_args()

    researcher = Agent(
        name="Research Agent",
        model=make_model(args.model, max_tokens=20),
        tools=[search_web],
        instructions="Research the topic with the search tool, then summarise what you found.",
    )
    writer = Agent(
        name="Writer Agent",
        model=make_model(args.model),
        instructions="Write a long, detailed story based on the research.",
    )
    workflow = Workflow(
        name="Story Writing Workflow",
        steps=[Step(name="research", agent=researcher), Step(name="write", agent=writer)],
    )

    container: dict[str, Any] = {"started": threading.Event()}
    runner = threading.Thread(target=long_running_task, args=(workflow, container))
    canceller = threading.Thread(target=cancel_after_delay, args=(workflow, container, args.cancel_after))
    runner.start()
    canceller.start()
    runner.join()
    canceller.join()
    say(f"RESULTS: status={container.get('status')}")


if __name__ == "__main__":
    main()
