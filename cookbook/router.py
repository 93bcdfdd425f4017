"""Route each question to the right agent with ``Router``.

``Router(selector, choices)`` runs the choice ``selector(step_input)`` names —
here by looking at the question — and its output becomes the router's. The
chosen agent's events carry ``step_path`` ``route/<agent>``, so a consumer can
tell which specialist answered. Everything runs offline on ``DemoModel``.

Run it::

    python cookbook/router.py
"""

from __future__ import annotations

from threadflow import Agent, Router, Step, StepInput, Workflow
from threadflow.models import DemoModel

math = Agent("math", model=DemoModel(tokens_per_second=None, seed=1, max_tokens=12), instructions="Solve it.")
writer = Agent("writer", model=DemoModel(tokens_per_second=None, seed=2, max_tokens=12), instructions="Write it.")


def pick(si: StepInput) -> str:
    """Any digit in the question means maths; anything else goes to the writer."""
    return "math" if any(ch.isdigit() for ch in str(si.input)) else "writer"


workflow = Workflow("helpdesk", steps=[Router(pick, [Step("math", agent=math), Step("writer", agent=writer)], "route")])


def main() -> None:
    for question in ("What is 12 times 7?", "A haiku about autumn, please"):
        answered_by = None
        for event in workflow.run(question, stream=True):
            if event.event == "run_started":
                answered_by = event.step_path  # type: ignore[attr-defined]
            if event.terminal:
                print(f"{question!r} -> {answered_by}: {str(event.content)[:48]}...")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
