"""Issue 14 goal 3: a streaming step's code runs in a contextvars.Context of its own, entered per resumption."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator

import pytest

from threadflow import RunStatus, StepInput, Workflow, get_context

REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")


def _outside_a_step() -> bool:
    try:
        get_context()
    except RuntimeError:
        return True
    return False


def test_the_run_context_is_ambient_only_while_the_step_runs() -> None:
    seen: list[str] = []

    def chunks(step_input: StepInput) -> Iterator[str]:
        for i in range(3):
            seen.append(get_context().run_id)
            yield str(i)

    stream = Workflow("ctx-ambient", steps=[chunks]).run(stream=True)
    for _ in stream:
        assert _outside_a_step()  # restored before every event reaches the consumer
    assert seen == [stream.run_id] * 3


def test_a_step_sees_the_consumers_variables_and_keeps_its_own_across_yields() -> None:
    observed: list[tuple[str, str]] = []

    def chunks(step_input: StepInput) -> Iterator[str]:
        before = REQUEST.get()
        REQUEST.set("set by the step")
        yield "a"
        observed.append((before, REQUEST.get()))
        yield "b"

    token = REQUEST.set("set by the consumer")
    try:
        for _ in Workflow("ctx-vars", steps=[chunks]).run(stream=True):
            assert REQUEST.get() == "set by the consumer"  # the step's own setting does not leak out
    finally:
        REQUEST.reset(token)
    assert observed == [("set by the consumer", "set by the step")]


@pytest.mark.parametrize("how", ["break", "plain run cancelled"])
def test_a_steps_cleanup_runs_in_its_own_context(how: str) -> None:
    cleanup: list[tuple[str, str]] = []

    def chunks(step_input: StepInput) -> Iterator[str]:
        REQUEST.set("the step's")
        try:
            while True:
                yield "tok"
                if how != "break":
                    get_context().check_cancellation()
        finally:
            cleanup.append((REQUEST.get(), get_context().run_id))

    wf = Workflow(f"ctx-cleanup-{how.replace(' ', '-')}", steps=[chunks])
    if how == "break":
        stream = wf.run(stream=True)
        for event in stream:
            if event.event == "run_content":
                break
        stream.close()
        run_id = stream.run_id
        assert stream.status is RunStatus.cancelled
    else:
        handle = wf.run(background=True)
        for event in handle.events():
            if event.event == "run_content":
                handle.cancel("enough")
                break
        assert handle.result(10).status is RunStatus.cancelled
        run_id = handle.run_id
    assert cleanup == [("the step's", run_id)]
