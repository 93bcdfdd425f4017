"""SPEC §4: immutable pydantic events, one discriminated union, exact JSON round trip."""

from __future__ import annotations

import json

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from threadflow import RunEvent, RunStatus, Workflow, WorkflowRunEvent
from threadflow import events as ev
from threadflow._fastevents import make_event
from threadflow.events import parse_event

BASE = {"run_id": "r-1", "workflow_id": "wf", "workflow_name": "WF", "seq": 3, "created_at": 1700000000.123456}
STEP = {"step_name": "s", "step_index": 0}
RUN = {**STEP, "agent_name": "writer"}

SAMPLES: list[ev.BaseEvent] = [
    ev.WorkflowStartedEvent(**BASE),
    ev.StepStartedEvent(**BASE, **STEP),
    ev.StepRetryingEvent(**BASE, **STEP, attempt=1, error="boom", error_type="ValueError", delay=0.5),
    ev.StepCompletedEvent(**BASE, **STEP, content={"k": [1, 2.5, None]}),
    ev.WorkflowCompletedEvent(**BASE, content="done"),
    ev.WorkflowCancelledEvent(**BASE, reason="user", cause=ev.CancelCause.timeout, step_name="s"),
    ev.WorkflowErrorEvent(**BASE, error="bad", error_type="KeyError", step_name="s"),
    ev.RunStartedEvent(**BASE, **RUN),
    ev.RunContentEvent(**BASE, **RUN, content="tok"),
    ev.RunCompletedEvent(**BASE, **RUN, content="all"),
    ev.RunCancelledEvent(**BASE, **RUN, reason=None, cause=ev.CancelCause.stream_closed),
    ev.RunErrorEvent(**BASE, **RUN, error="x", error_type="RuntimeError"),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: str(e.event))
def test_round_trips_exactly(event: ev.BaseEvent) -> None:
    text = event.model_dump_json()
    parsed = parse_event(text)
    assert type(parsed) is type(event)
    assert parsed == event
    assert parsed.model_dump_json() == text
    assert parse_event(text.encode()) == event
    assert parse_event(json.loads(text)) == event


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: str(e.event))
def test_fast_construction_equals_validated(event: ev.BaseEvent) -> None:
    fields = event.model_dump()
    fast = make_event(type(event), fields)
    assert fast == event
    assert fast.model_dump_json() == event.model_dump_json()


def test_events_are_immutable() -> None:
    with pytest.raises(pydantic.ValidationError):
        SAMPLES[0].seq = 9  # type: ignore[misc]


def test_only_terminal_workflow_events_have_status() -> None:
    with_status = {type(e).__name__ for e in SAMPLES if "status" in type(e).model_fields}
    assert with_status == {"WorkflowCompletedEvent", "WorkflowCancelledEvent", "WorkflowErrorEvent"}
    assert {e.status for e in SAMPLES if e.terminal} == {  # type: ignore[attr-defined]
        RunStatus.completed,
        RunStatus.cancelled,
        RunStatus.error,
    }


def test_enum_values_equal_names() -> None:
    for enum in (WorkflowRunEvent, RunEvent, RunStatus, ev.CancelCause):
        for member in enum:
            assert member.value == member.name
            assert member == member.name


def test_parse_event_rejects_garbage() -> None:
    with pytest.raises(pydantic.ValidationError):
        parse_event('{"event": "nope", "run_id": "r"}')
    with pytest.raises(pydantic.ValidationError):
        parse_event("not json")


def test_events_of_a_real_run_round_trip() -> None:
    def tokens(step_input: object) -> object:
        yield "a"
        yield "b"

    wf = Workflow("rt", steps=[tokens, lambda si: {"n": len(si.previous_step_content)}])
    events = list(wf.run("x", stream=True))
    for event in events:
        assert parse_event(event.model_dump_json()).model_dump_json() == event.model_dump_json()


@given(content=st.text(), seq=st.integers(min_value=1, max_value=2**53), created=st.floats(0, 4e9))
def test_content_events_round_trip_any_text(content: str, seq: int, created: float) -> None:
    event = ev.RunContentEvent(**{**BASE, "seq": seq, "created_at": created}, **RUN, content=content)
    assert parse_event(event.model_dump_json()) == event
