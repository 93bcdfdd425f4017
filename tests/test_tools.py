"""Agents with tools and output schemas (SPEC §9), offline: ScriptedModel and DemoModel."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import WAIT, names
from pydantic import BaseModel

from threadflow import Agent, CancelCause, RunStatus, Workflow, WorkflowError, get_context
from threadflow.events import RunEvent, ToolCallCompletedEvent, ToolCallStartedEvent, parse_event
from threadflow.models import DemoModel
from threadflow.testing import ScriptedModel, ToolCall, check_run_events


def search(query: str, limit: int = 2) -> list[str]:
    """Search the archive.

    Args:
        query: what to look for
        limit: how many hits to return
    """
    return [f"{query} #{i}" for i in range(limit)]


def add(a: int, b: int) -> int:
    """Add two integers.

    :param a: the first
    :param b: the second
    """
    return a + b


def broken(x: str) -> str:
    """Always fails."""
    raise ValueError(f"cannot handle {x}")


def tool_events(events: list[Any]) -> list[Any]:
    return [e for e in events if e.event in (RunEvent.tool_call_started, RunEvent.tool_call_completed)]


# -- schemas -----------------------------------------------------------------


def test_tool_schema_comes_from_signature_and_docstring() -> None:
    agent = Agent(model=ScriptedModel(["x"]), tools=[search, add])
    schemas = {t.name: t.schema() for t in agent.tools.values()}
    fn = schemas["search"]["function"]
    assert fn["description"] == "Search the archive."
    assert fn["parameters"]["required"] == ["query"]
    assert fn["parameters"]["properties"]["query"] == {
        "type": "string",
        "description": "what to look for",
        "title": "Query",
    }
    assert fn["parameters"]["properties"]["limit"]["default"] == 2
    assert schemas["add"]["function"]["parameters"]["properties"]["b"]["description"] == "the second"


def test_tools_the_model_cannot_take_are_rejected_at_construction() -> None:
    class PlainModel:
        def stream(self, messages: list[dict[str, Any]]) -> Iterator[str]:
            yield "hi"

    with pytest.raises(TypeError, match="takes no tools= argument"):
        Agent(model=PlainModel(), tools=[search])

    def variadic(*words: str) -> None:
        """Cannot be described."""

    with pytest.raises(TypeError, match=r"\*args and \*\*kwargs"):
        Agent(model=ScriptedModel(["x"]), tools=[variadic])
    with pytest.raises(ValueError, match="must be 1-64 letters"):
        Agent(model=ScriptedModel(["x"]), tools=[lambda: None])
    with pytest.raises(ValueError, match="two tools are named"):
        Agent(model=ScriptedModel(["x"]), tools=[search, search])
    with pytest.raises(TypeError, match="output_schema"):
        Agent(model=ScriptedModel(["x"]), output_schema=dict)  # type: ignore[arg-type]  # the wrong type on purpose


def test_a_plain_model_still_works_without_tools() -> None:
    class PlainModel:
        def stream(self, messages: list[dict[str, Any]]) -> Iterator[str]:
            assert [m["role"] for m in messages] == ["user"]
            yield from ["plain ", "answer"]

    assert Workflow("p", steps=[Agent(model=PlainModel())]).run("q").content == "plain answer"


# -- the tool loop --------------------------------------------------------------


def test_tool_round_trip_events_and_messages() -> None:
    model = ScriptedModel(
        turns=[
            ["Let me look. ", ToolCall("c1", "search", '{"query": "tea"}'), ToolCall("c2", "add", '{"a": 2, "b": 3}')],
            ["Tea ", "and 5."],
        ]
    )
    wf = Workflow("t", steps=[Agent("researcher", model=model, tools=[search, add])])
    events = check_run_events(list(wf.run("q", stream=True)))
    tools = tool_events(events)
    assert names(tools) == ["tool_call_started", "tool_call_completed"] * 2
    started, completed = tools[0], tools[1]
    assert isinstance(started, ToolCallStartedEvent) and isinstance(completed, ToolCallCompletedEvent)
    assert (started.tool_name, started.tool_args, started.tool_call_id) == ("search", {"query": "tea"}, "c1")
    assert (completed.tool_call_id, completed.result, completed.error) == ("c1", ["tea #0", "tea #1"], None)
    assert (tools[3].tool_call_id, tools[3].result) == ("c2", 5)
    assert started.step_name == "researcher" and started.agent_name == "researcher" and started.step_index == 0
    # the second call carries the assistant's tool calls, then each result with its tool_call_id
    second = model.calls[1]
    assert second[-3]["role"] == "assistant" and [c["id"] for c in second[-3]["tool_calls"]] == ["c1", "c2"]
    assert second[-2] == {"role": "tool", "tool_call_id": "c1", "content": '["tea #0", "tea #1"]'}
    assert second[-1] == {"role": "tool", "tool_call_id": "c2", "content": "5"}
    assert model.tools[0] is not None and {t["function"]["name"] for t in model.tools[0]} == {"search", "add"}
    # the output is the final answer, not the text of the tool-calling turn
    assert events[-1].content == "Tea and 5."


def test_tool_events_round_trip_through_json() -> None:
    model = ScriptedModel(turns=[[ToolCall("c1", "search", '{"query": "x"}')], ["done"]])
    events = list(Workflow("j", steps=[Agent(model=model, tools=[search])]).run("q", stream=True))
    for event in tool_events(events):
        assert parse_event(event.model_dump_json()) == event
        assert parse_event(json.loads(event.model_dump_json())) == event


def test_a_failing_tool_becomes_an_error_result_for_the_model() -> None:
    model = ScriptedModel(
        turns=[
            [
                ToolCall("c1", "broken", '{"x": "y"}'),
                ToolCall("c2", "nope", "{}"),
                ToolCall("c3", "add", "not json"),
                ToolCall("c4", "add", '{"a": "many"}'),
            ],
            ["recovered"],
        ]
    )
    out = Workflow("f", steps=[Agent(model=model, tools=[broken, add])]).run("q")
    assert out.status is RunStatus.completed and out.content == "recovered"
    results = {m["tool_call_id"]: m["content"] for m in model.calls[1] if m["role"] == "tool"}
    assert results["c1"] == "Error: ValueError: cannot handle y"
    assert results["c2"].startswith("Error: unknown tool 'nope'")
    assert "not valid JSON" in results["c3"]
    assert "ValidationError" in results["c4"]


def test_the_loop_stops_after_max_tool_rounds() -> None:
    model = ScriptedModel(turns=[[ToolCall("c", "add", '{"a": 1, "b": 1}')]])  # asks for tools forever
    wf = Workflow("m", steps=[Agent(model=model, tools=[add], max_tool_rounds=3)])
    with pytest.raises(WorkflowError, match="stopped after 3 tool rounds"):
        wf.run("q")
    assert len(model.calls) == 4
    with pytest.raises(ValueError, match="max_tool_rounds"):
        Agent(model=model, tools=[add], max_tool_rounds=0)


def test_tools_run_in_the_run_thread_with_its_context() -> None:
    seen: list[tuple[str, str | None]] = []

    def where() -> str:
        """Report the thread."""
        seen.append((threading.current_thread().name, get_context().step_name))
        return "here"

    model = ScriptedModel(turns=[[ToolCall("c", "where", "{}")], ["ok"]])
    wf = Workflow("w", steps=[Agent("a", model=model, tools=[where])])
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(wf.run("q").content), name="the-run-thread")
    thread.start()
    thread.join(WAIT)
    assert result == ["ok"] and seen == [("the-run-thread", "a")]


def test_cancel_during_a_slow_tool_is_prompt() -> None:
    entered = threading.Event()

    def slow(seconds: float) -> str:
        """Take a while."""
        entered.set()
        get_context().sleep(seconds)
        return "slept"

    model = ScriptedModel(turns=[[ToolCall("c", "slow", '{"seconds": 30}')], ["never"]])
    wf = Workflow("slow", steps=[Agent(model=model, tools=[slow])])
    handle = wf.run("q", background=True)
    assert entered.wait(WAIT)
    started = time.perf_counter()
    assert handle.cancel("stop") is True
    assert handle.wait(WAIT)
    assert time.perf_counter() - started < 1.0
    events = check_run_events(handle.events())
    assert names(events)[-3:] == ["tool_call_started", "run_cancelled", "workflow_cancelled"]
    assert handle.result().cause is CancelCause.requested
    assert len(model.calls) == 1  # the model was not asked again


def test_a_cancel_that_lands_while_a_quick_tool_runs_stops_before_the_next_round() -> None:
    wf_box: list[Workflow] = []

    def cancel_me() -> str:
        """Cancel the run from inside (as another thread would, mid-call)."""
        ctx = get_context()
        wf_box[0].cancel_run(ctx.run_id)
        return "done anyway"  # the tool ignores the cancel; the checkpoint after it does not

    model = ScriptedModel(turns=[[ToolCall("c", "cancel_me", "{}")], ["never"]])
    wf = Workflow("c", steps=[Agent(model=model, tools=[cancel_me])])
    wf_box.append(wf)
    events = check_run_events(list(wf.run("q", stream=True)))
    assert names(events)[-3:] == ["tool_call_started", "run_cancelled", "workflow_cancelled"]
    assert len(model.calls) == 1


# -- structured output ---------------------------------------------------------


class Verdict(BaseModel):
    title: str
    score: int


def test_output_schema_gives_a_validated_instance() -> None:
    model = ScriptedModel(['{"title": ', '"ok", "score": 7}'])
    out = Workflow("s", steps=[Agent(model=model, output_schema=Verdict)]).run("q")
    assert out.content == Verdict(title="ok", score=7)
    assert "JSON schema" in model.calls[0][0]["content"]  # asked for JSON in the system message
    assert model.response_formats[0] == {
        "type": "json_schema",
        "json_schema": {"name": "Verdict", "schema": Verdict.model_json_schema()},
    }


def test_output_schema_accepts_a_fenced_answer() -> None:
    model = ScriptedModel(['```json\n{"title": "t", "score": 1}\n```'])
    assert Workflow("s", steps=[Agent(model=model, output_schema=Verdict)]).run("q").content == Verdict(
        title="t", score=1
    )


def test_invalid_json_is_a_step_error_that_shows_the_text() -> None:
    model = ScriptedModel(["I think ", "it is fine"])
    wf = Workflow("s", steps=[Agent("judge", model=model, output_schema=Verdict)])
    events = check_run_events(list(wf.run("q", stream=True)))
    error = events[-1]
    assert error.event == "workflow_error" and "not a valid Verdict" in error.error
    assert "'I think it is fine'" in error.error
    assert names(events)[-2] == "run_error"


# -- DemoModel ------------------------------------------------------------------


def test_demo_model_calls_every_tool_then_answers_with_the_results() -> None:
    researcher = Agent("researcher", model=DemoModel(None), tools=[search, add])
    events = check_run_events(list(Workflow("d", steps=[researcher]).run("solar kites", stream=True)))
    tools = tool_events(events)
    assert [(e.event, getattr(e, "tool_name", None)) for e in tools] == [
        (RunEvent.tool_call_started, "search"),
        (RunEvent.tool_call_completed, "search"),
        (RunEvent.tool_call_started, "add"),
        (RunEvent.tool_call_completed, "add"),
    ]
    assert tools[0].tool_args == {"query": "solar kites"}
    assert tools[3].result == 6
    assert 'The tools found: ["solar kites #0", "solar kites #1"] / 6.' in events[-1].content


def test_demo_model_answers_in_the_schema_and_is_deterministic() -> None:
    wf = Workflow("d", steps=[Agent(model=DemoModel(None), output_schema=Verdict)])
    first, second = wf.run("a topic").content, wf.run("a topic").content
    assert first == second == Verdict(title="a topic", score=3)
