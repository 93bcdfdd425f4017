"""Metrics count runs from their start and end alone: a plain run() with metrics on builds no event."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from threadflow import RunStatus, StepInput, Workflow, WorkflowError, _fastevents, _lane, get_context, telemetry
from threadflow.storage import MemoryStore

WAIT = 10.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples() -> Samples:
    text = telemetry.metrics_text()[0].decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[type]]:
    """The classes of the events the runner builds (its one constructor, ``make_event``)."""
    telemetry.enable_metrics()
    made: list[type] = []
    real = _fastevents.make_event

    def counting(cls: type, fields: dict[str, Any]) -> Any:
        made.append(cls)
        return real(cls, fields)

    monkeypatch.setattr(_lane, "make_event", counting)
    yield made


def test_a_plain_run_with_metrics_on_builds_no_event_and_is_counted(built: list[type]) -> None:
    def tokens(si: StepInput) -> Iterator[str]:
        yield "a"
        yield "b"

    def boom(si: StepInput) -> None:
        raise ValueError("boom")

    wf = Workflow("quiet-metered", steps=[tokens], store=MemoryStore())
    failing = Workflow("quiet-failing", steps=[boom], store=MemoryStore())
    before = samples()
    assert wf.run(None).status is RunStatus.completed
    with pytest.raises(WorkflowError):
        failing.run(None)
    after = samples()
    assert built == []  # metrics alone leave a plain run quiet (they used to make it build every event)
    assert grew(before, after, "threadflow_runs_started_total", workflow="quiet-metered") == 1
    assert (
        grew(before, after, "threadflow_runs_ended_total", workflow="quiet-metered", status="completed", cause="") == 1
    )
    assert grew(before, after, "threadflow_runs_ended_total", workflow="quiet-failing", status="error", cause="") == 1


def test_metrics_count_a_cancelled_run_and_its_cancel_latency(built: list[type]) -> None:
    gate = threading.Event()
    wf = Workflow("quiet-cancelled", steps=[lambda si: get_context().wait(gate)], store=MemoryStore())
    before = samples()
    stream = wf.run(None, stream=True)
    first = next(stream)  # a stream is heard: its events are built
    assert first.event == "workflow_started"
    assert wf.cancel_run(stream.run_id, "stop") is True
    assert [e.event for e in stream][-1] == "workflow_cancelled"
    after = samples()
    labels = {"workflow": "quiet-cancelled", "status": "cancelled", "cause": "requested"}
    assert grew(before, after, "threadflow_runs_ended_total", **labels) == 1
    assert grew(before, after, "threadflow_cancel_latency_seconds_count") == 1


def test_metrics_count_a_queued_run_cancelled_before_it_started(built: list[type]) -> None:
    gate = threading.Event()
    wf = Workflow("quiet-queued", steps=[lambda si: get_context().wait(gate)], max_concurrent_runs=1)
    before = samples()
    first = wf.run("first", background=True)
    queued = wf.run("queued", background=True)
    assert queued._runner is None  # metrics alone need no runner made at submit
    assert queued.cancel("not now") is True
    assert queued._runner is None  # ...nor to count it cancelled
    assert queued.result(0).status is RunStatus.cancelled
    assert [e.event for e in queued.events()] == ["workflow_started", "workflow_cancelled"]
    gate.set()
    assert first.result(WAIT).status is RunStatus.completed
    after = samples()
    assert grew(before, after, "threadflow_runs_started_total", workflow="quiet-queued") == 2
    labels = {"workflow": "quiet-queued", "status": "cancelled", "cause": "requested"}
    assert grew(before, after, "threadflow_runs_ended_total", **labels) == 1
    assert (
        grew(before, after, "threadflow_runs_ended_total", workflow="quiet-queued", status="completed", cause="") == 1
    )


def test_while_traces_are_on_a_queued_run_is_made_at_once_and_its_cancel_is_traced() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.instrument(provider)
    try:
        gate = threading.Event()
        wf = Workflow("traced-queued", steps=[lambda si: get_context().wait(gate)], max_concurrent_runs=1)
        first = wf.run("first", background=True)
        queued = wf.run("queued", background=True)
        assert queued._runner is not None  # watched from the submitting thread, as any run
        assert queued.cancel() is True
        gate.set()
        assert first.wait(WAIT) and queued.wait(WAIT)
    finally:
        telemetry.uninstrument()
    runs = [s for s in exporter.get_finished_spans() if s.name == "threadflow.run"]
    assert {s.attributes["threadflow.run_id"] for s in runs if s.attributes} >= {first.run_id, queued.run_id}
