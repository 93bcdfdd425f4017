"""Traces (OpenTelemetry) and metrics (Prometheus), both opt-in and free until turned on.

``instrument(tracer_provider=None)`` (``pip install 'threadflow[otel]'``):
every run is a span ``threadflow.run`` and every step a child span
``threadflow.step``, with the attributes ``threadflow.run_id``,
``threadflow.workflow_id``, ``threadflow.step_name``, ``threadflow.status``,
``threadflow.cause`` and ``threadflow.reason``. Retries, cancel requests and
tool calls are span events. A cancelled run is not an error; a failed one
is (status ERROR). A run's span is a child of the span that was current
where the run was started — in the caller's thread, even when the run itself
goes on in a worker thread. ``uninstrument()`` stops making spans for runs
started afterwards.

``enable_metrics()`` (the ``threadflow[server]`` extra has
``prometheus_client``; ``create_app`` calls it and serves ``GET /metrics``):
``threadflow_runs_started_total`` (label ``workflow``),
``threadflow_runs_ended_total`` (labels ``workflow``, ``status``,
``cause``), ``threadflow_active_runs``, ``threadflow_queue_depth`` (runs
enqueued, not yet started), ``threadflow_cancel_latency_seconds``
(histogram: accepted cancel → terminal event) and
``threadflow_events_streamed_total`` (events the HTTP server sent as SSE).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import _observe
from .control import active_runs
from .events import BaseEvent
from .status import CancelCause, RunStatus

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["enable_metrics", "instrument", "metrics_text", "uninstrument"]

EventSink = Callable[[BaseEvent], None]
_STEP_EVENTS = frozenset({"step_started", "step_completed", "step_retrying"})


class _Observers:
    """What is installed in the core: the tracer, the metrics, or both, each given every run."""

    def __init__(self) -> None:
        self.tracer: _Tracing | None = None
        self.metrics: _Metrics | None = None

    def parts(self) -> list[Any]:
        return [part for part in (self.tracer, self.metrics) if part is not None]

    @property
    def watches_events(self) -> bool:
        """Only the traces need a run's events; the metrics count its start and end (``ends``)."""
        return self.tracer is not None

    def traceparent(self) -> str | None:
        tracer = self.tracer
        return None if tracer is None else tracer.traceparent()

    def watch(self, run_id: str, workflow_id: str, traceparent: str | None = None) -> EventSink | None:
        tracer = self.tracer
        return None if tracer is None else tracer.watch(run_id, workflow_id, traceparent)

    def ends(self) -> _Metrics | None:
        """The metrics count runs from their start and end alone: a run nobody else hears stays quiet."""
        return self.metrics

    def steps(self, run_id: str) -> _RunSpans | None:
        tracer = self.tracer
        return None if tracer is None else tracer.runs.get(run_id)

    def cancel_requested(self, run_id: str, cause: CancelCause, reason: str | None) -> None:
        for part in self.parts():
            part.cancel_requested(run_id, cause, reason)

    def install(self) -> None:
        _observe.set_observer(self if self.parts() else None)


_OBSERVERS = _Observers()
_LOCK = threading.Lock()


# -- metrics -------------------------------------------------------------------------


class _Metrics:
    """Prometheus metrics in a registry of their own (``metrics_text`` renders it)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.started_total = Counter("threadflow_runs_started", "Runs started", ["workflow"], registry=self.registry)
        labels = ["workflow", "status", "cause"]
        self.ended_total = Counter("threadflow_runs_ended", "Runs ended", labels, registry=self.registry)
        self.cancel_latency = Histogram(
            "threadflow_cancel_latency_seconds",
            "From an accepted cancel to the run's terminal event",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.streamed = Counter("threadflow_events_streamed", "Events sent as SSE", registry=self.registry)
        self.registry.register(_LiveRuns())
        self._cancels: dict[str, float] = {}  # run id → when its cancel was accepted (monotonic)
        # The counters' children by label values, looked up once (``labels()`` costs a lock and a tuple).
        self._started: dict[str, Any] = {}
        self._ends: dict[tuple[str, RunStatus, CancelCause | None], Any] = {}

    def started(self, workflow_id: str) -> None:
        counter = self._started.get(workflow_id)
        if counter is None:
            counter = self._started[workflow_id] = self.started_total.labels(workflow_id)
        counter.inc()

    def ended(self, run_id: str, workflow_id: str, status: RunStatus, cause: CancelCause | None) -> None:
        key = (workflow_id, status, cause)
        counter = self._ends.get(key)
        if counter is None:
            labels = (workflow_id, str(status), str(cause) if cause is not None else "")
            counter = self._ends[key] = self.ended_total.labels(*labels)
        counter.inc()
        accepted = self._cancels.pop(run_id, None)
        if accepted is not None:
            self.cancel_latency.observe(time.monotonic() - accepted)

    def cancel_requested(self, run_id: str, cause: CancelCause, reason: str | None) -> None:
        self._cancels[run_id] = time.monotonic()


class _LiveRuns:
    """Active runs and queue depth, read from the run table when scraped (nothing to keep up to date)."""

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        runs = active_runs()
        queued = sum(1 for info in runs if info.status is RunStatus.pending)
        yield GaugeMetricFamily("threadflow_active_runs", "Runs not ended in this process", value=len(runs))
        yield GaugeMetricFamily("threadflow_queue_depth", "Runs waiting for a worker to start them", value=queued)


def enable_metrics() -> CollectorRegistry:
    """Count runs from now on (idempotent); the registry holding the metrics. Needs ``prometheus_client``."""
    with _LOCK:
        if _OBSERVERS.metrics is None:
            _OBSERVERS.metrics = _Metrics()
            _OBSERVERS.install()
        return _OBSERVERS.metrics.registry


def metrics_text() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type (enables the metrics if they were not)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(enable_metrics()), CONTENT_TYPE_LATEST


def count_streamed(events: int) -> None:
    """``events`` more were sent as SSE (no-op unless the metrics are enabled)."""
    metrics = _OBSERVERS.metrics
    if metrics is not None:
        metrics.streamed.inc(events)


# -- traces --------------------------------------------------------------------------


def instrument(tracer_provider: Any = None) -> None:
    """Make a span per run and per step from now on, with ``tracer_provider`` (default: the global one).

    Raises ``ImportError`` naming the extra when OpenTelemetry is not installed.
    """
    try:
        from opentelemetry import trace
    except ModuleNotFoundError as missing:
        raise ImportError("threadflow.telemetry.instrument needs: pip install 'threadflow[otel]'") from missing
    from . import __version__

    tracer = trace.get_tracer("threadflow", __version__, tracer_provider=tracer_provider)
    with _LOCK:
        _OBSERVERS.tracer = _Tracing(tracer)
        _OBSERVERS.install()


def uninstrument() -> None:
    """Stop making spans for runs started from now on (runs already going finish their spans)."""
    with _LOCK:
        _OBSERVERS.tracer = None
        _OBSERVERS.install()


class _Tracing:
    def __init__(self, tracer: Any) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.tracer = tracer
        self.runs: dict[str, _RunSpans] = {}
        self._propagator = TraceContextTextMapPropagator()

    def traceparent(self) -> str | None:
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)  # nothing when no valid span is current
        return carrier.get("traceparent")

    def watch(self, run_id: str, workflow_id: str, traceparent: str | None) -> EventSink:
        from opentelemetry import context

        if traceparent is not None:  # created elsewhere (enqueued, or begun by a worker now gone)
            parent = self._propagator.extract({"traceparent": traceparent}, context.Context())
        else:
            parent = context.get_current()  # the caller's context: the run may go on elsewhere
        spans = _RunSpans(self, parent)
        self.runs[run_id] = spans
        return spans.on_event

    def cancel_requested(self, run_id: str, cause: CancelCause, reason: str | None) -> None:
        spans = self.runs.get(run_id)
        if spans is not None:
            spans.cancel_requested(cause, reason)

    def forget(self, run_id: str, spans: _RunSpans) -> None:
        if self.runs.get(run_id) is spans:
            del self.runs[run_id]


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class _RunSpans:
    """One run's spans: ``threadflow.run`` and a ``threadflow.step`` child per step (by ``step_path``)."""

    def __init__(self, tracing: _Tracing, parent: Any) -> None:
        self.tracing = tracing
        self.parent = parent
        self.run: Any = None
        self.steps: dict[Any, Any] = {}  # step key → its open span
        # Branch threads open and end their steps' spans themselves (``emitted``), so that step code
        # always finds its span open; the consumer then skips those events (by identity: each is held
        # here until then, so that its id is never another event's).
        self._lock = threading.Lock()
        self._done: dict[int, BaseEvent] = {}

    def on_event(self, event: BaseEvent) -> None:
        name = str(event.event)
        if name == "run_content":  # the per-token path: nothing to do
            return
        if self.run is None:  # workflow_started, or the end of a queued run cancelled before it started
            self._start_run(event)
        if name in _STEP_EVENTS:
            with self._lock:
                if self._done and self._done.pop(id(event), None) is event:
                    return
                self._step_event(name, event)
        elif event.terminal:
            self._end_run(event)
        elif name.startswith("tool_call"):
            self._span_for(event).add_event(f"threadflow.{name}", _attributes(event), _ns(event.created_at))

    def _start_run(self, event: BaseEvent) -> None:
        attributes = {"threadflow.run_id": event.run_id, "threadflow.workflow_id": event.workflow_id}
        self.run = self.tracing.tracer.start_span(
            "threadflow.run", context=self.parent, attributes=attributes, start_time=_ns(event.created_at)
        )

    def emitted(self, event: BaseEvent) -> None:
        name = str(event.event)
        if name in _STEP_EVENTS and self.run is not None:
            with self._lock:
                self._step_event(name, event)
                self._done[id(event)] = event

    def enter(self, step_path: str) -> Any:
        from opentelemetry import context, trace

        key = tuple(step_path.split("/"))
        with self._lock:
            span = self.steps.get(key) or self._parent_of(key)
        return None if span is None else context.attach(trace.set_span_in_context(span))

    def leave(self, token: Any) -> None:
        if token is not None:
            from opentelemetry import context

            context.detach(token)

    def _key(self, event: BaseEvent) -> Any:
        path = getattr(event, "step_path", None)
        if path is None:
            return (getattr(event, "step_name", None),)
        return tuple(path) if isinstance(path, list | tuple) else tuple(str(path).split("/"))

    def _parent_of(self, key: Any) -> Any:
        for end in range(len(key) - 1, 0, -1):  # the nearest open composite step, else the run
            span = self.steps.get(key[:end])
            if span is not None:
                return span
        return self.run

    def _span_for(self, event: BaseEvent) -> Any:
        return self.steps.get(self._key(event)) or self.run

    def _step_event(self, name: str, event: BaseEvent) -> None:
        from opentelemetry import trace

        key = self._key(event)
        if name == "step_started":
            attributes = {
                "threadflow.run_id": event.run_id,
                "threadflow.workflow_id": event.workflow_id,
                "threadflow.step_name": getattr(event, "step_name", ""),
            }
            context = trace.set_span_in_context(self._parent_of(key))
            span = self.tracing.tracer.start_span(
                "threadflow.step", context=context, attributes=attributes, start_time=_ns(event.created_at)
            )
            self.steps[key] = span
        elif name == "step_retrying":
            self._span_for(event).add_event("threadflow.step_retrying", _attributes(event), _ns(event.created_at))
        else:
            span = self.steps.pop(key, None)
            if span is not None:
                span.set_attribute("threadflow.status", RunStatus.completed.value)
                span.end(_ns(event.created_at))

    def cancel_requested(self, cause: CancelCause, reason: str | None) -> None:
        if self.run is not None:
            attributes = {"threadflow.cause": cause.value} | ({"threadflow.reason": reason} if reason else {})
            self.run.add_event("threadflow.cancel_requested", attributes)

    def _end_run(self, event: BaseEvent) -> None:
        from opentelemetry.trace import Status, StatusCode

        status = str(getattr(event, "status", ""))
        outcome: dict[str, Any] = {"threadflow.status": status}
        for field in ("cause", "reason"):
            value = getattr(event, field, None)
            if value is not None:
                outcome[f"threadflow.{field}"] = str(value)
        failed = status == RunStatus.error.value
        error = Status(StatusCode.ERROR, f"{getattr(event, 'error_type', '')}: {getattr(event, 'error', '')}")
        end = _ns(event.created_at)
        with self._lock:
            open_steps, self.steps = list(self.steps.values()), {}
        for span in reversed(open_steps):  # the steps still open end with the run
            span.set_attributes(outcome)
            if failed:
                span.set_status(error)
            span.end(end)
        self.run.set_attributes(outcome)
        if failed:
            self.run.set_status(error)
        self.run.end(end)
        self.tracing.forget(event.run_id, self)


def _attributes(event: BaseEvent) -> dict[str, Any]:
    """An event's scalar fields as span-event attributes (others as text)."""
    skipped = {"event", "run_id", "workflow_id", "workflow_name", "created_at"}
    attributes: dict[str, Any] = {}
    for name in type(event).model_fields:
        value = getattr(event, name)
        if name in skipped or value is None:
            continue
        attributes[f"threadflow.{name}"] = value if isinstance(value, str | int | float | bool) else str(value)
    return attributes
