"""SPEC §1, §2, §6: workflows, steps, agents, outputs, errors and bad input."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from conftest import names

import threadflow
from threadflow import (
    Agent,
    DuplicateRunError,
    RunStatus,
    Step,
    StepInput,
    Workflow,
    WorkflowError,
    WorkflowRunOutput,
)
from threadflow.events import (
    RunContentEvent,
    RunErrorEvent,
    RunStartedEvent,
    StepCompletedEvent,
    WorkflowCompletedEvent,
    WorkflowErrorEvent,
)
from threadflow.models import DemoModel
from threadflow.storage import MemoryStore
from threadflow.testing import ScriptedModel, check_run_events


def test_function_steps_chain_their_outputs() -> None:
    def double(si: StepInput) -> int:
        return si.input * 2

    def add_one(si: StepInput) -> int:
        assert si.get_step_content("double") == si.previous_step_content
        return si.previous_step_content + 1

    wf = Workflow("Math Flow", steps=[double, add_one])
    out = wf.run(5)
    assert isinstance(out, WorkflowRunOutput)
    assert (out.status, out.content, out.step_outputs) == (RunStatus.completed, 11, {"double": 10, "add_one": 11})
    assert wf.id == "math-flow" and wf.name == "Math Flow"
    assert out.workflow_id == "math-flow"
    assert out.started_at is not None and out.ended_at is not None and out.ended_at >= out.started_at


def test_function_steps_emit_no_run_events() -> None:
    wf = Workflow("w", steps=[lambda si: "x"])
    assert names(check_run_events(wf.run(stream=True))) == [
        "workflow_started",
        "step_started",
        "step_completed",
        "workflow_completed",
    ]


def test_generator_step_streams_and_joins_its_output() -> None:
    def words(si: StepInput) -> Iterator[str]:
        yield "hello "
        yield "world"

    wf = Workflow("w", steps=[words])
    events = check_run_events(wf.run(stream=True))
    assert names(events) == [
        "workflow_started",
        "step_started",
        "run_started",
        "run_content",
        "run_content",
        "run_completed",
        "step_completed",
        "workflow_completed",
    ]
    content = [e for e in events if isinstance(e, RunContentEvent)]
    assert [e.content for e in content] == ["hello ", "world"]
    assert all(e.step_name == "words" and e.step_index == 0 and e.agent_name is None for e in content)
    assert isinstance(events[-1], WorkflowCompletedEvent) and events[-1].content == "hello world"


def test_generator_return_value_is_the_output() -> None:
    def step(si: StepInput) -> Iterator[str]:
        yield "partial"
        return {"structured": True}  # type: ignore[misc]

    assert Workflow("w", steps=[step]).run().content == {"structured": True}


def test_yielding_a_non_string_is_a_step_error_naming_step_and_type() -> None:
    def bad(si: StepInput) -> Iterator[object]:
        yield "ok"
        yield 42

    wf = Workflow("w", steps=[bad])
    events = check_run_events(wf.run(stream=True))
    assert names(events)[-2:] == ["run_error", "workflow_error"]
    error = events[-1]
    assert isinstance(error, WorkflowErrorEvent)
    assert error.error_type == "TypeError" and "'bad'" in error.error and "int" in error.error
    with pytest.raises(WorkflowError) as info:
        wf.run()
    assert isinstance(info.value.__cause__, TypeError)


def test_agent_streams_its_model_and_takes_the_previous_output_as_prompt() -> None:
    model = ScriptedModel(["one ", "two"])
    wf = Workflow(
        "w",
        steps=[lambda si: "research notes", Agent("writer", model=model, instructions="be brief")],
    )
    events = check_run_events(wf.run("topic", stream=True))
    started = [e for e in events if isinstance(e, RunStartedEvent)]
    assert started and started[0].agent_name == "writer" and started[0].step_name == "writer"
    assert [e.content for e in events if isinstance(e, RunContentEvent)] == ["one ", "two"]
    assert model.calls == [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "research notes"}]]
    assert events[-1].content == "one two"  # type: ignore[attr-defined]


def test_first_agent_answers_the_workflow_input() -> None:
    model = ScriptedModel(["x"])
    Workflow("w", steps=[Agent(model=model)]).run("the input")
    assert model.calls[0] == [{"role": "user", "content": "the input"}]


def test_model_raising_mid_stream_is_run_error_then_workflow_error() -> None:
    model = ScriptedModel(["a", "b", "c"], fail_after=2, error=ConnectionError("provider went away"))
    wf = Workflow("w", steps=[Agent("writer", model=model)])
    events = check_run_events(wf.run(stream=True))
    assert names(events)[-2:] == ["run_error", "workflow_error"]
    run_error = events[-2]
    assert isinstance(run_error, RunErrorEvent) and run_error.error_type == "ConnectionError"
    assert isinstance(events[-1], WorkflowErrorEvent) and events[-1].step_name == "writer"
    assert model.closed == 1


def test_step_exception_raises_workflow_error_with_output_and_cause() -> None:
    ran_after: list[str] = []

    def broken(si: StepInput) -> None:
        raise KeyError("missing")

    wf = Workflow("w", steps=[lambda si: "ok", broken, lambda si: ran_after.append("x")])
    with pytest.raises(WorkflowError) as info:
        wf.run()
    error = info.value
    assert isinstance(error.__cause__, KeyError)
    assert error.output.status is RunStatus.error
    assert (error.output.error_type, error.output.step_name) == ("KeyError", "broken")
    assert "missing" in (error.output.error or "") and "broken" in str(error)
    assert error.output.step_outputs == {"<lambda>": "ok"}
    assert ran_after == []
    info_ = threadflow.get_run(error.output.run_id)
    assert info_ is not None and info_.status is RunStatus.error and info_.error_type == "KeyError"


def test_streamed_step_exception_ends_with_workflow_error() -> None:
    def broken(si: StepInput) -> None:
        raise ValueError("bad value")

    events = check_run_events(Workflow("w", steps=[broken]).run(stream=True))
    last = events[-1]
    assert isinstance(last, WorkflowErrorEvent)
    assert (last.error, last.error_type, last.step_name, last.status) == (
        "bad value",
        "ValueError",
        "broken",
        RunStatus.error,
    )


def test_run_stream_knows_its_id_before_iterating_and_its_output_after() -> None:
    wf = Workflow("w", steps=[lambda si: "v"])
    stream = wf.run(stream=True, run_id="my-run")
    assert stream.run_id == "my-run" and stream.output is None
    events = list(stream)
    assert all(e.run_id == "my-run" for e in events)
    assert stream.output is not None and stream.output.content == "v"


def test_step_completed_carries_each_output() -> None:
    wf = Workflow("w", steps=[Step("a", executor=lambda si: 1), Step("b", executor=lambda si: 2)])
    completed = [e for e in wf.run(stream=True) if isinstance(e, StepCompletedEvent)]
    assert [(e.step_name, e.step_index, e.content) for e in completed] == [("a", 0, 1), ("b", 1, 2)]


def test_get_run_answers_for_active_and_finished_runs() -> None:
    wf = Workflow("w", steps=[lambda si: 1])
    stream = wf.run(stream=True)
    info = wf.get_run(stream.run_id)
    assert info is not None and info.status is RunStatus.pending and info.workflow_id == "w"
    list(stream)
    info = wf.get_run(stream.run_id)
    assert info is not None and info.status is RunStatus.completed and info.ended_at is not None
    assert Workflow("other", steps=[lambda si: 1]).get_run(stream.run_id) is None
    assert wf.get_run("unknown") is None


def test_memory_store_keeps_only_the_most_recent_finished_runs() -> None:
    store = MemoryStore(max_runs=3)
    wf = Workflow("w", steps=[lambda si: 1], store=store)
    ids = [wf.run().run_id for _ in range(5)]
    assert len(store) == 3
    assert [wf.get_run(i) is not None for i in ids] == [False, False, True, True, True]
    assert [info.run_id for info in store.list_runs()] == ids[:1:-1]


def test_demo_model_is_deterministic_and_offline() -> None:
    model = DemoModel(tokens_per_second=0, seed=3, max_tokens=30)
    messages = [{"role": "user", "content": "cats"}]
    first, second = "".join(model.stream(messages)), "".join(model.stream(messages))
    assert first == second and len(first.split()) == 30
    assert "".join(DemoModel(0, seed=4, max_tokens=30).stream(messages)) != first


def test_demo_model_pause_is_interrupted_by_cancel() -> None:
    started = threading.Event()
    wf = Workflow("w", steps=[lambda si: started.set(), Agent(model=DemoModel(tokens_per_second=0.01))])
    handle = wf.run("x", background=True)
    assert started.wait(5)
    handle.cancel()
    assert handle.result(10).status is RunStatus.cancelled  # not the 100 s a token would take


# -- §6 bad input ---------------------------------------------------------------


def test_step_needs_exactly_one_of_executor_and_agent() -> None:
    with pytest.raises(ValueError, match="neither"):
        Step("s")
    with pytest.raises(ValueError, match="both"):
        Step("s", executor=lambda si: 1, agent=Agent(model=ScriptedModel([])))


def test_bad_workflow_definitions_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least one step"):
        Workflow("w", steps=[])
    with pytest.raises(ValueError, match="unique"):
        Workflow("w", steps=[Step("a", executor=lambda si: 1), Step("a", executor=lambda si: 2)])
    derived = Workflow("w", steps=[lambda si: 1, lambda si: 2, Step("<lambda>_2", executor=lambda si: 3)])
    assert [s.name for s in derived.steps] == ["<lambda>", "<lambda>_3", "<lambda>_2"]
    with pytest.raises(TypeError, match="Step, an Agent or a callable"):
        Workflow("w", steps=[42])
    with pytest.raises(ValueError, match="max_concurrent_runs"):
        Workflow("w", steps=[lambda si: 1], max_concurrent_runs=0)
    with pytest.raises(ValueError, match="run_timeout"):
        Workflow("w", steps=[lambda si: 1], run_timeout=-1)
    with pytest.raises(TypeError, match="stream"):
        Agent(model=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_retries"):
        Step("s", executor=lambda si: 1, max_retries=-1)


def test_duplicate_active_run_id_is_rejected_and_reusable_after_it_ends() -> None:
    wf = Workflow("w", steps=[lambda si: 1])
    stream = wf.run(stream=True, run_id="same")
    with pytest.raises(DuplicateRunError, match="same"):
        wf.run(run_id="same")
    with pytest.raises(ValueError):  # DuplicateRunError is a ValueError
        Workflow("other", steps=[lambda si: 1]).run(stream=True, run_id="same")
    list(stream)
    assert wf.run(run_id="same").status is RunStatus.completed
    with pytest.raises(ValueError, match="run_id"):
        wf.run(run_id="")


def test_an_unnamed_workflow_gets_a_stable_id_from_its_steps() -> None:
    """Issue 8 item 19: the id of an unnamed workflow survives a restart, so stored runs stay findable."""

    def fetch(si: StepInput) -> int:
        return 1

    def summarize(si: StepInput) -> int:
        return 2

    a, b = Workflow(steps=[fetch, summarize]), Workflow(steps=[fetch, summarize])
    assert a.id == b.id == "fetch-summarize-" + hashlib.sha256(b"fetch\0summarize").hexdigest()[:8]
    assert a.name == a.id
    assert Workflow(steps=[summarize, fetch]).id != a.id
    assert Workflow("!!!", steps=[fetch]).id == Workflow(steps=[fetch]).id  # a name with nothing to slug
    code = "from threadflow import Workflow; print(Workflow(steps=[Workflow.__init__]).id)"
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
           for _ in range(2)}  # fmt: skip
    assert len(ids) == 1  # the same in every process (no per-process hash seed)


def test_step_input_reports_unknown_steps_clearly() -> None:
    def step(si: StepInput) -> None:
        si.get_step_content("nope")

    with pytest.raises(WorkflowError) as info:
        Workflow("w", steps=[step]).run()
    assert "nope" in str(info.value.__cause__)


def test_debug_mode_logs_every_event_as_json(caplog: pytest.LogCaptureFixture) -> None:
    wf = Workflow("w", steps=[lambda si: "x"], debug_mode=True)
    with caplog.at_level("DEBUG", logger="threadflow.events"):
        out = wf.run()
    logged = [r.getMessage() for r in caplog.records if r.name == "threadflow.events"]
    assert len(logged) == 4 and all(out.run_id in line for line in logged)
    assert '"event":"workflow_completed"' in logged[-1]


def test_ctx_wait_rejects_what_is_not_a_threading_event() -> None:
    def step(si: StepInput) -> None:
        threadflow.get_context().wait(object(), timeout=1)  # type: ignore[arg-type]

    with pytest.raises(WorkflowError) as info:
        Workflow("w", steps=[step]).run()
    assert isinstance(info.value.__cause__, TypeError)
    assert "threading.Event" in str(info.value.__cause__)


def test_keyboard_interrupt_in_a_step_propagates_and_the_run_is_recorded_cancelled() -> None:
    cleaned: list[str] = []

    def interrupted(si: StepInput) -> Iterator[str]:
        try:
            yield "a"
            raise KeyboardInterrupt  # Ctrl+C lands inside the step
        finally:
            cleaned.append("finally")

    wf = Workflow("w", steps=[interrupted])
    stream = wf.run(stream=True)
    with pytest.raises(KeyboardInterrupt):
        list(stream)
    info = threadflow.get_run(stream.run_id)
    assert info is not None and info.status is RunStatus.cancelled
    assert info.cause is threadflow.CancelCause.shutdown and info.reason == "interrupted (KeyboardInterrupt)"
    assert cleaned == ["finally"]
    assert threadflow.active_runs() == []
