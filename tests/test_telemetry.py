"""Telemetry: OpenTelemetry spans (the SDK's in-memory exporter) and the Prometheus metrics at ``GET /metrics``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families

from threadflow import CancellationError, Step, Workflow, WorkflowError, _observe, get_context, telemetry
from threadflow.server import create_app
from threadflow.storage import MemoryStore

WAIT = 10.0


def tokens(step_input: Any) -> Iterator[str]:
    yield "a"
    yield "b"


def upper(step_input: Any) -> str:
    return str(step_input.previous_step_content or "").upper()


def boom(step_input: Any) -> None:
    raise ValueError("boom")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.instrument(provider)
    try:
        yield exporter
    finally:
        telemetry.uninstrument()


def test_a_run_is_a_span_and_each_step_a_child(spans: InMemorySpanExporter) -> None:
    workflow = Workflow("traced", steps=[tokens, upper], store=MemoryStore())
    workflow.run("x", run_id="t-1")
    finished = spans.get_finished_spans()
    (run,) = [span for span in finished if span.name == "threadflow.run"]
    steps = [span for span in finished if span.name == "threadflow.step"]
    assert [span.attributes["threadflow.step_name"] for span in steps] == ["tokens", "upper"]
    assert all(span.parent is not None and span.parent.span_id == run.context.span_id for span in steps)
    assert run.attributes == {
        "threadflow.run_id": "t-1",
        "threadflow.workflow_id": "traced",
        "threadflow.status": "completed",
    }
    assert run.status.status_code is StatusCode.UNSET


def test_a_failed_run_is_an_error_with_its_retries_as_events(spans: InMemorySpanExporter) -> None:
    workflow = Workflow("failing", steps=[Step("boom", executor=boom, max_retries=1)], store=MemoryStore())
    with pytest.raises(WorkflowError):
        workflow.run(None)
    finished = {span.name: span for span in spans.get_finished_spans()}
    run, step = finished["threadflow.run"], finished["threadflow.step"]
    assert run.status.status_code is StatusCode.ERROR and "ValueError: boom" in (run.status.description or "")
    assert step.status.status_code is StatusCode.ERROR
    assert [event.name for event in step.events] == ["threadflow.step_retrying"]
    assert step.events[0].attributes is not None and step.events[0].attributes["threadflow.attempt"] == 1


def test_a_cancelled_run_is_not_an_error_and_its_cancel_request_is_an_event(spans: InMemorySpanExporter) -> None:
    inside = threading.Event()

    def parked(step_input: Any) -> None:
        inside.set()
        try:
            get_context().wait()
        except CancellationError:
            raise

    workflow = Workflow("parked", steps=[parked], store=MemoryStore())
    handle = workflow.run(None, background=True)
    assert inside.wait(WAIT)
    handle.cancel("enough")
    handle.wait(WAIT)
    (run,) = [span for span in spans.get_finished_spans() if span.name == "threadflow.run"]
    assert run.status.status_code is StatusCode.UNSET
    assert run.attributes is not None
    assert (run.attributes["threadflow.status"], run.attributes["threadflow.cause"]) == ("cancelled", "requested")
    assert run.attributes["threadflow.reason"] == "enough"
    (event,) = run.events
    assert event.name == "threadflow.cancel_requested" and event.attributes == {
        "threadflow.cause": "requested",
        "threadflow.reason": "enough",
    }


def test_a_background_run_continues_the_callers_trace(spans: InMemorySpanExporter) -> None:
    from opentelemetry import trace

    tracer = trace.get_tracer("test", tracer_provider=spans_provider(spans))
    workflow = Workflow("bg", steps=[upper], store=MemoryStore())
    with tracer.start_as_current_span("request") as request:
        handle = workflow.run("x", background=True)
    handle.wait(WAIT)
    (run,) = [span for span in spans.get_finished_spans() if span.name == "threadflow.run"]
    assert run.parent is not None and run.parent.span_id == request.get_span_context().span_id
    assert run.context.trace_id == request.get_span_context().trace_id


def spans_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_uninstrument_stops_the_spans_and_frees_the_hook(spans: InMemorySpanExporter) -> None:
    telemetry.uninstrument()
    Workflow("quiet", steps=[upper], store=MemoryStore()).run("x")
    assert spans.get_finished_spans() == ()
    assert _observe.OBSERVER is None or telemetry._OBSERVERS.tracer is None


# -- metrics -----------------------------------------------------------------------


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_runs_cancels_and_streamed_events() -> None:
    inside = threading.Event()

    def parked(step_input: Any) -> None:
        inside.set()
        get_context().wait()

    metered = Workflow("metered", steps=[tokens], store=MemoryStore())
    held = Workflow("held", steps=[parked], store=MemoryStore())
    with TestClient(create_app([metered, held])) as client:
        before = _samples(client)
        metered.run(None)
        handle = held.run(None, background=True)
        assert inside.wait(WAIT)
        live = _samples(client)
        assert live[("threadflow_active_runs", ())] >= 1
        handle.cancel("done")
        handle.wait(WAIT)
        streamed = client.post("/workflows/metered/runs", json={"stream": True})
        sent = streamed.text.count("data: ")  # started, step and run started, a, b, ... completed
        assert sent >= 6
        after = _samples(client)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("threadflow_runs_started_total", workflow="metered") == 2
    assert grew("threadflow_runs_ended_total", workflow="metered", status="completed", cause="") == 2
    assert grew("threadflow_runs_ended_total", workflow="held", status="cancelled", cause="requested") == 1
    assert grew("threadflow_cancel_latency_seconds_count") == 1
    assert grew("threadflow_events_streamed_total") == sent
    assert ("threadflow_queue_depth", ()) in after
