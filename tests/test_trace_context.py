"""Traces that continue: the W3C traceparent in the run record, and step code inside its step's span.

A run created inside a span keeps that span's traceparent in its record, so a
worker that claims it (or resumes it after its worker died) makes the run's
span a child of it; and code a step runs makes its spans under the step's.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import WAIT
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from threadflow import Parallel, StepInput, Worker, Workflow, telemetry
from threadflow.storage import MemoryStore, SqliteStore
from threadflow.storage.sqlite import SCHEMA_VERSION
from threadflow.storage.sqlite._liveness import this_process

PROVIDER = TracerProvider()
EXPORTER = InMemorySpanExporter()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
TRACER = PROVIDER.get_tracer("tests")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    telemetry.instrument(PROVIDER)
    try:
        yield EXPORTER
    finally:
        telemetry.uninstrument()
        EXPORTER.clear()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "trace.db"


def double(step_input: StepInput) -> int:
    return int(step_input.input) * 2


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in spans.get_finished_spans() if span.name == name]


def traceparent_of(span: Any) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


# -- the traceparent in the record ----------------------------------------------------------------


def test_a_run_enqueued_inside_a_span_runs_as_its_child_on_the_worker(spans: InMemorySpanExporter, db: Path) -> None:
    with SqliteStore(db) as front, SqliteStore(db) as back:
        with TRACER.start_as_current_span("request") as request:
            handle = Workflow("double", steps=[double], store=front).enqueue(21)
        assert handle.info().traceparent == traceparent_of(request)
        with Worker(Workflow("double", steps=[double], store=back), back):
            assert handle.result(WAIT).content == 42
    (run,) = named(spans, "threadflow.run")
    assert run.parent is not None
    assert (run.context.trace_id, run.parent.span_id) == (request.get_span_context().trace_id, request.context.span_id)
    (step,) = named(spans, "threadflow.step")
    assert step.parent is not None and step.parent.span_id == run.context.span_id


def test_a_run_enqueued_outside_any_span_starts_its_own_trace(spans: InMemorySpanExporter, db: Path) -> None:
    with SqliteStore(db) as front, SqliteStore(db) as back:
        handle = Workflow("double", steps=[double], store=front).enqueue(1)
        assert handle.info().traceparent is None
        with Worker(Workflow("double", steps=[double], store=back), back):
            handle.result(WAIT)
    (run,) = named(spans, "threadflow.run")
    assert run.parent is None


def test_the_traceparent_survives_a_store_round_trip(spans: InMemorySpanExporter, db: Path) -> None:
    with SqliteStore(db) as store, TRACER.start_as_current_span("caller") as caller:
        Workflow("double", steps=[double], store=store).run(2, run_id="local-1")
    expected = traceparent_of(caller)
    with SqliteStore(db) as reopened:
        assert reopened.get_run("local-1").traceparent == expected  # type: ignore[union-attr]
        assert [info.traceparent for info in reopened.list_runs()] == [expected]


def test_without_telemetry_no_traceparent_is_kept(db: Path) -> None:
    with SqliteStore(db) as store, TRACER.start_as_current_span("caller"):
        Workflow("double", steps=[double], store=store).run(2, run_id="plain")
        assert store.get_run("plain").traceparent is None  # type: ignore[union-attr]


def test_a_run_resumed_after_its_worker_died_continues_the_trace(spans: InMemorySpanExporter, db: Path) -> None:
    if not this_process().start:
        pytest.skip("needs /proc to tell a dead owner from a live one")
    with SqliteStore(db) as front, SqliteStore(db) as back:
        with TRACER.start_as_current_span("request") as request:
            handle = Workflow("double", steps=[double], store=front).enqueue(5)
        _claimed_by_a_dead_worker(db, handle.run_id)
        with Worker(Workflow("double", steps=[double], store=back), back):
            assert handle.result(WAIT).content == 10
    assert handle.info().attempt == 2
    (run,) = named(spans, "threadflow.run")
    assert run.parent is not None and run.parent.span_id == request.get_span_context().span_id
    assert run.context.trace_id == request.get_span_context().trace_id


def _claimed_by_a_dead_worker(db: Path, run_id: str) -> None:
    """The run looks claimed by a process of this host that has exited (its pid now someone else's)."""
    me = this_process()
    conn = sqlite3.connect(db)
    try:
        conn.execute(
            "UPDATE runs SET status = 'running', owner_host = ?, owner_pid = ?, owner_start = 'gone', owner_ns = ?"
            " WHERE run_id = ?",
            (me.host, me.pid, me.ns, run_id),
        )
        conn.commit()
    finally:
        conn.close()


def test_a_version_3_file_migrates_and_keeps_traceparents_from_then_on(spans: InMemorySpanExporter, db: Path) -> None:
    with SqliteStore(db) as store:
        Workflow("double", steps=[double], store=store).run(1, run_id="old")
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE runs DROP COLUMN traceparent")
    conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with SqliteStore(db) as store, TRACER.start_as_current_span("caller") as caller:
        assert store.get_run("old").traceparent is None  # type: ignore[union-attr]
        Workflow("double", steps=[double], store=store).run(1, run_id="new")
        assert store.get_run("new").traceparent == traceparent_of(caller)  # type: ignore[union-attr]
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    finally:
        conn.close()


# -- step code inside its step's span ---------------------------------------------------------------


def inner_span(step_input: StepInput) -> str:
    with TRACER.start_as_current_span(f"inside-{step_input.step_name}"):
        return "ok"


def inner_span_streamed(step_input: StepInput) -> Iterator[str]:
    with TRACER.start_as_current_span("inside-stream"):
        yield "a"
    yield "b"


def step_of(spans: InMemorySpanExporter, name: str) -> ReadableSpan:
    (step,) = [s for s in named(spans, "threadflow.step") if s.attributes["threadflow.step_name"] == name]  # type: ignore[index]
    return step


def assert_child(spans: InMemorySpanExporter, inner: str, step_name: str) -> None:
    (span,) = named(spans, inner)
    step = step_of(spans, step_name)
    assert span.parent is not None and span.parent.span_id == step.context.span_id, (inner, step_name)


def test_a_span_a_step_starts_is_a_child_of_the_step_span(spans: InMemorySpanExporter) -> None:
    Workflow("nest", steps=[inner_span], store=MemoryStore()).run()
    assert_child(spans, "inside-inner_span", "inner_span")


def test_a_streaming_step_s_span_is_a_child_and_never_leaks_to_the_consumer(spans: InMemorySpanExporter) -> None:
    workflow = Workflow("nest", steps=[inner_span_streamed], store=MemoryStore())
    seen = []
    for _ in workflow.run(stream=True):
        seen.append(trace.get_current_span().get_span_context().is_valid)  # at the consumer: no step span
    assert not any(seen)
    assert_child(spans, "inside-stream", "inner_span_streamed")


def test_a_branch_step_s_span_is_a_child_of_its_step_span(spans: InMemorySpanExporter) -> None:
    def left(step_input: StepInput) -> str:
        return inner_span(step_input)

    def right(step_input: StepInput) -> str:
        return inner_span(step_input)

    Workflow("fan", steps=[Parallel(left, right, name="both")], store=MemoryStore()).run()
    assert_child(spans, "inside-left", "left")
    assert_child(spans, "inside-right", "right")
    both = step_of(spans, "both")
    assert step_of(spans, "left").parent.span_id == both.context.span_id  # type: ignore[union-attr]


def test_an_async_step_s_span_is_a_child_of_the_step_span(spans: InMemorySpanExporter) -> None:
    async def awaited(step_input: StepInput) -> str:
        with TRACER.start_as_current_span("inside-async"):
            return "ok"

    Workflow("nest", steps=[awaited], store=MemoryStore()).run()
    assert_child(spans, "inside-async", "awaited")


def test_without_telemetry_step_code_sees_no_step_span() -> None:
    current: list[bool] = []

    def look(step_input: StepInput) -> None:
        current.append(trace.get_current_span().get_span_context().is_valid)

    Workflow("plain", steps=[look], store=MemoryStore()).run()
    assert current == [False]


def test_step_code_in_a_background_run_is_inside_its_step_span(spans: InMemorySpanExporter) -> None:
    done = threading.Event()

    def marked(step_input: StepInput) -> str:
        result = inner_span(step_input)
        done.set()
        return result

    handle = Workflow("bg", steps=[marked], store=MemoryStore()).run(background=True)
    handle.result(WAIT)
    assert done.is_set()
    assert_child(spans, "inside-marked", "marked")


# -- PostgreSQL ---------------------------------------------------------------------------------------


def test_postgres_a_run_enqueued_inside_a_span_runs_as_its_child(spans: InMemorySpanExporter, pg_dsn: str) -> None:
    from threadflow.storage import PostgresStore

    with PostgresStore(pg_dsn) as front, PostgresStore(pg_dsn) as back:
        with TRACER.start_as_current_span("request") as request:
            handle = Workflow("double", steps=[double], store=front).enqueue(4)
        assert handle.info().traceparent == traceparent_of(request)
        with Worker(Workflow("double", steps=[double], store=back), back):
            assert handle.result(WAIT).content == 8
        assert [info.traceparent for info in back.list_runs()] == [traceparent_of(request)]
    (run,) = named(spans, "threadflow.run")
    assert run.parent is not None and run.parent.span_id == request.get_span_context().span_id
    assert run.context.trace_id == request.get_span_context().trace_id


def test_postgres_a_version_1_database_migrates(spans: InMemorySpanExporter, pg_dsn: str) -> None:
    import psycopg

    from threadflow.storage import PostgresStore
    from threadflow.storage.postgres import SCHEMA_VERSION as PG_VERSION

    with PostgresStore(pg_dsn) as store:
        Workflow("double", steps=[double], store=store).run(1, run_id="old")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE threadflow_runs DROP COLUMN traceparent")
        conn.execute("UPDATE threadflow_meta SET value = '1' WHERE key = 'schema_version'")
    with PostgresStore(pg_dsn) as store, TRACER.start_as_current_span("caller") as caller:
        assert store.get_run("old").traceparent is None  # type: ignore[union-attr]
        Workflow("double", steps=[double], store=store).run(1, run_id="new")
        assert store.get_run("new").traceparent == traceparent_of(caller)  # type: ignore[union-attr]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT value FROM threadflow_meta WHERE key = 'schema_version'").fetchone()
        assert row == (str(PG_VERSION),)
