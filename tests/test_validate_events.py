"""Issue 8 item 21: ``THREADFLOW_VALIDATE_EVENTS=1`` checks every event ``make_event`` builds.

The suite runs with it on (conftest.py sets it before threadflow is imported);
the "off" behaviour is checked in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from threadflow import _fastevents, _lane, _registry
from threadflow._fastevents import EventValidationError
from threadflow.events import RunContentEvent, StepRetryingEvent, WorkflowCancelledEvent, WorkflowStartedEvent
from threadflow.status import CancelCause, RunInfo, RunStatus

BASE: dict[str, Any] = {"run_id": "r", "workflow_id": "w", "workflow_name": "w", "seq": 1, "created_at": 1.5}


def test_the_suite_runs_with_validation_on() -> None:
    if os.environ.get("THREADFLOW_VALIDATE_EVENTS") == "0":
        pytest.skip("turned off for this session")
    assert _fastevents.VALIDATE_EVENTS
    assert _lane.make_event is _fastevents._make_event_validated
    assert _registry.make_exact is _fastevents._make_exact_validated


def test_a_correct_event_is_the_fast_one_unchanged() -> None:
    fields = {**BASE, "reason": "r", "cause": CancelCause.timeout, "step_name": "s"}
    event = _fastevents.make_event(WorkflowCancelledEvent, fields)
    assert event == WorkflowCancelledEvent(**fields)
    assert event.model_dump_json() == WorkflowCancelledEvent(**fields).model_dump_json()


def test_a_missing_required_field_names_the_class_and_the_field() -> None:
    fields = dict(BASE)
    del fields["run_id"]
    with pytest.raises(EventValidationError, match=r"WorkflowStartedEvent(.|\n)*run_id"):
        _fastevents.make_event(WorkflowStartedEvent, fields)


def test_a_wrongly_typed_field_names_the_class_and_the_field() -> None:
    with pytest.raises(EventValidationError, match=r"RunContentEvent(.|\n)*seq"):
        _fastevents.make_event(RunContentEvent, {**BASE, "seq": "one", "step_name": "s", "step_index": 0})


def test_a_value_pydantic_would_convert_is_a_mismatch() -> None:
    """A plain str where an enum belongs validates, but the fast event would keep the str."""
    fields = {**BASE, "reason": None, "cause": "timeout", "step_name": "s"}
    with pytest.raises(EventValidationError, match=r"WorkflowCancelledEvent\.cause: built as 'timeout' \(str\)"):
        _fastevents.make_event(WorkflowCancelledEvent, fields)
    retrying = {**BASE, "step_name": "s", "step_index": 0, "attempt": 1, "error": "e", "error_type": "E", "delay": 1}
    with pytest.raises(EventValidationError, match=r"StepRetryingEvent\.delay: built as 1 \(int\)"):
        _fastevents.make_event(StepRetryingEvent, retrying)


def test_an_unknown_field_names_the_class_and_the_field() -> None:
    with pytest.raises(EventValidationError, match=r"WorkflowStartedEvent: unknown field\(s\) colour"):
        _fastevents.make_event(WorkflowStartedEvent, {**BASE, "colour": "red"})


def test_run_info_is_checked_too() -> None:
    fields = {"run_id": "r", "workflow_id": "w", "workflow_name": "w", "status": "running", "created_at": 1.0}
    with pytest.raises(EventValidationError, match=r"RunInfo\.status"):
        _fastevents.make_event(RunInfo, fields)
    info = _fastevents.make_event(RunInfo, {**fields, "status": RunStatus.running})
    assert info.status is RunStatus.running


def run_python(code: str, **env: str) -> str:
    environment = {key: value for key, value in os.environ.items() if key != "THREADFLOW_VALIDATE_EVENTS"}
    environment.update(env)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


OFF_CHECK = """
    from threadflow import _fastevents, _lane
    from threadflow.events import WorkflowStartedEvent
    fast = _fastevents.make_event is _fastevents._make_event_fast and _lane.make_event is _fastevents._make_event_fast
    event = _fastevents.make_event(WorkflowStartedEvent, {"seq": "not checked"})  # no error: nothing is checked
    print(fast, event.run_id, event.seq)
"""


@pytest.mark.parametrize("value", [None, "", "0"])
def test_off_make_event_is_the_fast_function_itself(value: str | None) -> None:
    env = {} if value is None else {"THREADFLOW_VALIDATE_EVENTS": value}
    assert run_python(OFF_CHECK, **env) == "True None not checked"


def test_on_in_a_fresh_interpreter() -> None:
    code = """
        from threadflow import _fastevents
        from threadflow.events import WorkflowStartedEvent
        try:
            _fastevents.make_event(WorkflowStartedEvent, {"seq": "x"})
        except _fastevents.EventValidationError as error:
            print(type(error).__name__, "seq" in str(error))
    """
    assert run_python(code, THREADFLOW_VALIDATE_EVENTS="1") == "EventValidationError True"


def test_make_exact_takes_a_template_as_is_and_checks_its_fields_and_order() -> None:
    values = _fastevents.template(WorkflowCancelledEvent, {**BASE, "reason": "r", "cause": CancelCause.timeout})
    expected = WorkflowCancelledEvent(**BASE, reason="r", cause=CancelCause.timeout)
    event = _fastevents.make_exact(WorkflowCancelledEvent, dict(values))
    assert event == expected
    assert event.model_dump_json() == expected.model_dump_json()
    shuffled = dict(reversed(list(values.items())))
    with pytest.raises(_fastevents.EventValidationError, match="WorkflowCancelledEvent: fields"):
        _fastevents._make_exact_validated(WorkflowCancelledEvent, shuffled)
    missing = {k: v for k, v in values.items() if k != "reason"}
    with pytest.raises(_fastevents.EventValidationError, match="WorkflowCancelledEvent: fields"):
        _fastevents._make_exact_validated(WorkflowCancelledEvent, missing)
