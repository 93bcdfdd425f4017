"""Strings (SPEC §7): a ``str`` subclass a step yields is a string; anything else is a step error."""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum

import pytest

from threadflow import RunStatus, StepInput, Workflow, WorkflowError
from threadflow.events import RunContentEvent

pytestmark = pytest.mark.usefixtures("no_leaked_runs")


class Markup(str):
    def __str__(self) -> str:  # a subclass may render itself differently; its value is what counts
        return f"<{super().__str__()}>"


class Color(str, Enum):  # noqa: UP042 — its str() is "Color.red", not its value: the case str() gets wrong
    red = "red"


def test_a_str_subclass_yielded_by_a_step_is_streamed_as_a_plain_str() -> None:
    def chunks(si: StepInput) -> Iterator[str]:
        yield Markup("bold")
        yield " and "
        yield Color.red

    stream = Workflow("s", steps=[chunks]).run(stream=True)
    contents = [e.content for e in stream if isinstance(e, RunContentEvent)]
    assert contents == ["bold", " and ", "red"]
    assert all(type(c) is str for c in contents)
    assert stream.output is not None and stream.output.content == "bold and red"


@pytest.mark.parametrize("chunk", [b"bytes", 42, None, ["list"]])
def test_a_non_str_chunk_is_a_type_error_naming_the_step_and_the_type(chunk: object) -> None:
    closed: list[bool] = []

    def bad(si: StepInput) -> Iterator[object]:
        try:
            yield "fine"
            yield chunk
        finally:
            closed.append(True)

    with pytest.raises(WorkflowError) as raised:
        Workflow("s", steps=[bad]).run()
    cause = raised.value.__cause__
    assert isinstance(cause, TypeError)
    assert "'bad'" in str(cause) and type(chunk).__name__ in str(cause)
    assert raised.value.output.status is RunStatus.error
    assert closed == [True]
