"""Draft, review, repeat: a ``Loop`` that ends when the reviewer approves.

``Loop(steps, max_iterations=, end_condition=)`` runs ``steps`` again and
again; each iteration starts from the previous one's last output, and
``end_condition(outputs)`` (this iteration's outputs, in step order) decides
when to stop. Events inside the loop carry ``step_path`` such as
``review[2]/draft`` — iteration 2's draft. The drafting agent runs offline on
``DemoModel``; the reviewer here approves a draft on the third round.

Run it::

    python cookbook/draft_review_loop.py
"""

from __future__ import annotations

import itertools

from threadflow import Agent, Loop, Step, StepInput, Workflow
from threadflow.models import DemoModel

APPROVE_ON_ROUND = 3
drafter = Agent("draft", model=DemoModel(tokens_per_second=None, max_tokens=16), instructions="Improve the draft.")


rounds = itertools.count(1)


def critique(si: StepInput) -> str:
    """Approve on the third round; otherwise send back notes, which the next draft answers."""
    if next(rounds) >= APPROVE_ON_ROUND:
        return f"APPROVED: {si.previous_step_content}"
    return f"Revise this draft, shorter: {si.previous_step_content}"


workflow = Workflow(
    "essay",
    steps=[
        Loop(
            [Step("draft", agent=drafter), critique],
            max_iterations=5,
            end_condition=lambda outputs: outputs[-1].startswith("APPROVED"),
            name="review",
        )
    ],
)


def main() -> None:
    for event in workflow.run("an essay on cancellation", stream=True):
        if event.event == "step_completed" and "/" in event.step_path:  # type: ignore[attr-defined]
            print(f"{event.step_path:<18} {str(event.content)[:50]}")  # type: ignore[attr-defined]
        if event.terminal:
            print(f"done: {event.event}, {str(event.content)[:40]}...")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
