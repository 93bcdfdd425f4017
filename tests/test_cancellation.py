"""SPEC §3: the cancellation contract, as a user hits it from another thread."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import names

import threadflow
from threadflow import (
    Agent,
    CancelCause,
    CancellationError,
    RunStatus,
    Step,
    StepInput,
    Workflow,
    get_context,
    shield,
)
from threadflow._registry import REGISTRY
from threadflow.events import BaseEvent, RunContentEvent, WorkflowCancelledEvent
from threadflow.testing import ScriptedModel, check_run_events


def cancel_from_thread(wf: Workflow, run_id: str, reason: str | None = None) -> bool:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(wf.cancel_run(run_id, reason)))
    thread.start()
    thread.join()
    return result[0]


# -- rule 1: cancel_run's answer ------------------------------------------------


def test_cancel_before_first_next_never_starts_a_step() -> None:
    ran = threading.Event()
    wf = Workflow("w", steps=[lambda si: ran.set()])
    stream = wf.run("x", stream=True)
    assert threadflow.get_run(stream.run_id).status is RunStatus.pending  # type: ignore[union-attr]
    assert cancel_from_thread(wf, stream.run_id, "early") is True
    events = check_run_events(stream)
    assert names(events) == ["workflow_started", "workflow_cancelled"]
    assert not ran.is_set()
    final = events[-1]
    assert isinstance(final, WorkflowCancelledEvent)
    assert (final.cause, final.reason, final.step_name) == (CancelCause.requested, "early", None)
    assert stream.output is not None and stream.output.status is RunStatus.cancelled


def test_cancel_answers_false_for_unknown_terminal_and_foreign_runs() -> None:
    wf = Workflow("a", steps=[lambda si: 1])
    other = Workflow("b", steps=[lambda si: 1])
    assert wf.cancel_run("no-such-run") is False
    assert threadflow.cancel_run("no-such-run") is False
    out = wf.run()
    assert wf.cancel_run(out.run_id) is False
    stream = wf.run(stream=True)
    assert other.cancel_run(stream.run_id) is False  # belongs to another workflow
    assert stream.status is RunStatus.pending
    stream.close()


def test_non_string_reason_is_a_type_error_even_for_unknown_ids() -> None:
    wf = Workflow("w", steps=[lambda si: 1])
    with pytest.raises(TypeError, match="reason"):
        wf.cancel_run("unknown", reason=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reason"):
        threadflow.cancel_run("unknown", reason=b"bytes")  # type: ignore[arg-type]


def test_first_accepted_request_fixes_cause_and_reason() -> None:
    gate, inside = threading.Event(), threading.Event()

    def step(si: StepInput) -> Iterator[str]:
        inside.set()
        get_context().wait(gate)
        yield "never"

    wf = Workflow("w", steps=[step])
    handle = wf.run(background=True)
    assert inside.wait(5)
    assert handle.cancel("first") is True
    assert threadflow.cancel_run(handle.run_id, "second") is True  # still active: True again
    assert handle.status is not RunStatus.running
    out = handle.result(10)
    assert (out.status, out.cause, out.reason) == (RunStatus.cancelled, CancelCause.requested, "first")
    assert wf.cancel_run(handle.run_id, "third") is False


# -- rule 4: checkpoints, delivered inside the step -----------------------------


def test_cancel_during_generator_step_runs_its_cleanup() -> None:
    cleanup: list[str] = []

    def step(si: StepInput) -> Iterator[str]:
        try:
            for i in range(10_000):
                yield f"{i} "
        except CancellationError as error:
            cleanup.append(f"cancelled:{error.reason}:{error.cause}")
            raise
        finally:
            cleanup.append("finally")

    wf = Workflow("w", steps=[step])
    stream = wf.run(stream=True)
    seen: list[BaseEvent] = []
    for event in stream:
        seen.append(event)
        if isinstance(event, RunContentEvent) and event.content == "3 ":
            assert cancel_from_thread(wf, stream.run_id, "enough") is True
    check_run_events(seen)
    assert names(seen)[-2:] == ["run_cancelled", "workflow_cancelled"]
    contents = [e.content for e in seen if isinstance(e, RunContentEvent)]
    assert contents == ["0 ", "1 ", "2 ", "3 "]  # nothing is handed over after the cancel
    assert cleanup == ["cancelled:enough:requested", "finally"]


def test_ctx_sleep_wakes_at_once_on_cancel() -> None:
    asleep = threading.Event()
    woke: list[float] = []

    def step(si: StepInput) -> str:
        asleep.set()
        started = time.monotonic()
        try:
            get_context().sleep(60)
        finally:
            woke.append(time.monotonic() - started)
        return "slept"

    wf = Workflow("w", steps=[step])
    handle = wf.run(background=True)
    assert asleep.wait(5)
    assert handle.cancel() is True
    assert handle.wait(10)
    assert handle.status is RunStatus.cancelled
    assert woke and woke[0] < 10  # not the 60 s it asked for


def test_ctx_wait_returns_on_event_or_timeout_and_raises_on_cancel() -> None:
    results: list[Any] = []
    ready = threading.Event()
    parked = threading.Event()

    def step(si: StepInput) -> str:
        ctx = get_context()
        ready.set()
        results.append(ctx.wait(ready, timeout=5))  # already set: True at once
        results.append(ctx.wait(threading.Event(), timeout=0.01))  # times out: False
        parked.set()
        ctx.wait(threading.Event())  # only a cancel ends this
        return "unreachable"

    wf = Workflow("w", steps=[step])
    handle = wf.run(background=True)
    assert parked.wait(5)
    assert handle.cancel() is True
    assert handle.result(10).status is RunStatus.cancelled
    assert results == [True, False]


def test_status_is_waiting_inside_ctx_sleep() -> None:
    asleep = threading.Event()

    def step(si: StepInput) -> None:
        asleep.set()
        get_context().sleep(60)

    wf = Workflow("w", steps=[step])
    handle = wf.run(background=True)
    assert asleep.wait(5)
    # set() precedes the status change by a few instructions: wait for it, bounded
    assert threadflow.testing.wait_until(lambda: handle.status is RunStatus.waiting)
    handle.cancel()
    assert handle.result(10).status is RunStatus.cancelled


def test_agent_stream_is_cancelled_at_the_next_token_and_closed() -> None:
    gate = threading.Event()
    model = ScriptedModel(["a ", "b ", "c ", "d "], gate=gate, gate_after=2)
    wf = Workflow("w", steps=[Agent("writer", model=model)])
    handle = wf.run("topic", background=True)
    assert model.reached.wait(5)
    assert handle.cancel("stop") is True
    gate.set()
    assert handle.wait(10)
    events = check_run_events(handle.events())
    assert names(events)[-2:] == ["run_cancelled", "workflow_cancelled"]
    assert [e.content for e in events if isinstance(e, RunContentEvent)] == ["a ", "b "]
    assert model.closed == 1


# -- rule 5: swallowing does not stop it ----------------------------------------


def test_function_step_that_swallows_still_ends_cancelled() -> None:
    inside, go = threading.Event(), threading.Event()
    after: list[str] = []

    def stubborn(si: StepInput) -> str:
        inside.set()
        go.wait(5)
        try:
            get_context().check_cancellation()
        except CancellationError:
            pass  # swallowed
        return "result that must be discarded"

    wf = Workflow("w", steps=[stubborn, lambda si: after.append("next step ran")])
    handle = wf.run(background=True)
    assert inside.wait(5)
    assert handle.cancel() is True
    go.set()
    out = handle.result(10)
    assert out.status is RunStatus.cancelled
    assert out.content is None and after == []


def test_generator_step_that_swallows_is_thrown_in_again_and_ends_cancelled() -> None:
    throws: list[int] = []

    def stubborn(si: StepInput) -> Iterator[str]:
        for i in range(5):
            try:
                yield f"{i}"
            except CancellationError:
                throws.append(i)  # swallowed every time
        return "ignored"

    wf = Workflow("w", steps=[stubborn])
    stream = wf.run(stream=True)
    seen = []
    for event in stream:
        seen.append(event)
        if isinstance(event, RunContentEvent):
            assert wf.cancel_run(stream.run_id) is True
    check_run_events(seen)
    assert [e.content for e in seen if isinstance(e, RunContentEvent)] == ["0"]
    assert throws == [0, 1]  # thrown in again at the next checkpoint, then closed
    assert stream.output is not None and stream.output.status is RunStatus.cancelled


@pytest.mark.parametrize("leave", ["cancel", "break"])
def test_a_step_swallowing_the_cancel_for_ever_is_closed(leave: str) -> None:
    closed = threading.Event()

    def endless(si: StepInput) -> Iterator[str]:
        try:
            while True:
                try:
                    yield "x"
                except CancellationError:
                    pass  # swallowed, every time
        finally:
            closed.set()

    wf = Workflow("w", steps=[endless])
    stream = wf.run(stream=True)
    for event in stream:
        if isinstance(event, RunContentEvent):
            if leave == "break":
                break
            wf.cancel_run(stream.run_id)
    assert closed.is_set()
    assert stream.output is not None and stream.output.status is RunStatus.cancelled


def test_cancellation_error_is_not_an_exception() -> None:
    caught: list[str] = []
    reached: list[str] = []

    def step(si: StepInput) -> None:
        assert threadflow.cancel_run(si.run_id)  # cancelled while the step runs
        try:
            reached.append("checkpoint")
            get_context().check_cancellation()
        except Exception:
            caught.append("swallowed by except Exception")
        reached.append("after")  # never: the CancellationError went past except Exception

    wf = Workflow("w", steps=[step])
    stream = wf.run(stream=True)
    list(stream)
    assert reached == ["checkpoint"]
    assert caught == []
    assert stream.output is not None and stream.output.status is RunStatus.cancelled
    assert issubclass(CancellationError, BaseException) and not issubclass(CancellationError, Exception)


# -- rule 6: shield -------------------------------------------------------------


def test_shield_postpones_cancel_until_the_outermost_shield_exits() -> None:
    log: list[str] = []
    in_shield, release = threading.Event(), threading.Event()

    def step(si: StepInput) -> Iterator[str]:
        ctx = get_context()
        with shield():
            in_shield.set()
            release.wait(5)
            with shield():
                ctx.check_cancellation()  # no raise: shielded
                yield "inner"
            ctx.check_cancellation()  # still shielded by the outer one
            yield "outer"
            log.append("shield finished")
        try:
            yield "after"
        except CancellationError:
            log.append("landed after shield")
            raise

    wf = Workflow("w", steps=[step])
    handle = wf.run(background=True)
    assert in_shield.wait(5)
    assert handle.cancel() is True
    assert handle.status is RunStatus.cancelling
    release.set()
    events = check_run_events(handle.events())
    assert [e.content for e in events if isinstance(e, RunContentEvent)] == ["inner", "outer"]
    assert log == ["shield finished", "landed after shield"]
    assert handle.result(10).status is RunStatus.cancelled


def test_shielded_sleep_runs_its_full_length() -> None:
    in_shield = threading.Event()
    slept: list[float] = []

    def step(si: StepInput) -> None:
        ctx = get_context()
        with shield():
            in_shield.set()
            ctx.wait(ctx.cancel_event, timeout=5)  # parks until the cancel is accepted
            started = time.monotonic()
            ctx.sleep(0.05)
            slept.append(time.monotonic() - started)
        ctx.check_cancellation()

    wf = Workflow("w", steps=[step])
    handle = wf.run(background=True)
    assert in_shield.wait(5)
    handle.cancel()
    assert handle.result(10).status is RunStatus.cancelled
    assert slept and slept[0] >= 0.045


def test_shield_outside_a_run_is_a_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="outside"), shield():
        pass


# -- rule 7: on_cancel ----------------------------------------------------------


def test_on_cancel_runs_once_in_the_cancelling_thread_before_cancel_run_returns() -> None:
    calls: list[str] = []
    registered = threading.Event()

    def step(si: StepInput) -> None:
        ctx = get_context()
        ctx.on_cancel(lambda: calls.append(threading.current_thread().name))
        registered.set()
        ctx.wait()

    wf = Workflow("w", steps=[step])
    handle = wf.run(background=True)
    assert registered.wait(5)
    result: list[bool] = []

    def cancel() -> None:
        result.append(wf.cancel_run(handle.run_id))
        result.append(calls == ["canceller"])  # already ran when cancel_run returned
        wf.cancel_run(handle.run_id)  # a second request calls nothing again

    thread = threading.Thread(target=cancel, name="canceller")
    thread.start()
    thread.join()
    assert result == [True, True]
    assert handle.result(10).status is RunStatus.cancelled
    assert calls == ["canceller"]


def test_on_cancel_after_the_request_runs_at_once_and_raising_callbacks_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    registered = threading.Event()

    def boom() -> None:
        raise RuntimeError("callback failed")

    def step(si: StepInput) -> None:
        ctx = get_context()
        with shield():
            ctx.on_cancel(boom)
            registered.set()
            ctx.wait(ctx.cancel_event)
            ctx.on_cancel(lambda: calls.append("late"))  # already cancelled: runs now
            calls.append("after registration")

    wf = Workflow("w", steps=[step])
    handle = wf.run(background=True)
    with caplog.at_level(logging.ERROR, logger="threadflow"):
        assert registered.wait(5)
        assert handle.cancel() is True
    assert handle.result(10).status is RunStatus.cancelled
    assert calls == ["late", "after registration"]
    assert any("callback failed" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_on_cancel_unblocks_a_socket_read() -> None:
    import socket

    reading = threading.Event()
    errors: list[str] = []

    def step(si: StepInput) -> bytes:
        a, b = socket.socketpair()
        try:
            get_context().on_cancel(lambda: a.shutdown(socket.SHUT_RDWR))
            reading.set()
            try:
                return a.recv(1)  # blocks: nobody ever writes
            except OSError as error:
                errors.append(type(error).__name__)
                raise
        finally:
            a.close()
            b.close()

    wf = Workflow("w", steps=[step])
    handle = wf.run(background=True)
    assert reading.wait(5)
    assert handle.cancel() is True
    out = handle.result(10)
    assert out.status is RunStatus.cancelled  # the OSError it raised is the cancel's doing
    assert out.error is None


def test_on_cancel_registrations_end_with_their_step() -> None:
    calls: list[str] = []
    second = threading.Event()

    def first(si: StepInput) -> None:
        get_context().on_cancel(lambda: calls.append("first step's callback"))

    def blocker(si: StepInput) -> None:
        second.set()
        get_context().wait()

    wf = Workflow("w", steps=[first, blocker])
    handle = wf.run(background=True)
    assert second.wait(5)
    handle.cancel()
    assert handle.result(10).status is RunStatus.cancelled
    assert calls == []


# -- rule 8: the consumer leaving -----------------------------------------------


def test_break_cancels_with_stream_closed_and_runs_cleanup() -> None:
    cleanup = threading.Event()

    def step(si: StepInput) -> Iterator[str]:
        try:
            while True:
                yield "x"
        finally:
            cleanup.set()

    wf = Workflow("w", steps=[step])
    run_id = None
    for event in wf.run(stream=True):
        run_id = event.run_id
        if isinstance(event, RunContentEvent):
            break
    assert cleanup.is_set()
    assert run_id is not None
    info = threadflow.get_run(run_id)
    assert info is not None
    assert (info.status, info.cause) == (RunStatus.cancelled, CancelCause.stream_closed)


def test_break_while_still_holding_the_stream_cancels_it() -> None:
    cleanup = threading.Event()

    def step(si: StepInput) -> Iterator[str]:
        try:
            while True:
                yield "x"
        finally:
            cleanup.set()

    wf = Workflow("w", steps=[step])
    stream = wf.run(stream=True)
    for event in stream:
        if isinstance(event, RunContentEvent):
            break
    assert cleanup.is_set()  # the stream is still referenced here, and yet the run has ended
    assert stream.output is not None
    assert (stream.output.status, stream.output.cause) == (RunStatus.cancelled, CancelCause.stream_closed)


def test_close_and_with_block_cancel_with_stream_closed() -> None:
    wf = Workflow("w", steps=[lambda si: iter(["a", "b"]) and (yield "a")])  # a generator step
    stream = wf.run(stream=True)
    next(stream)
    stream.close()
    assert stream.output is not None and stream.output.cause is CancelCause.stream_closed
    with wf.run(stream=True) as s2:
        next(iter(s2))
    assert s2.output is not None and s2.output.status is RunStatus.cancelled
    stream.close()  # closing twice is harmless


def test_unstarted_stream_that_is_dropped_is_recorded_cancelled() -> None:
    wf = Workflow("w", steps=[lambda si: 1])
    stream = wf.run(stream=True)
    run_id = stream.run_id
    assert threadflow.get_run(run_id).status is RunStatus.pending  # type: ignore[union-attr]
    del stream
    gc.collect()
    info = threadflow.get_run(run_id)
    assert info is not None
    assert (info.status, info.cause) == (RunStatus.cancelled, CancelCause.stream_closed)


def test_consumer_leaving_inside_a_shield_lets_the_shielded_code_finish() -> None:
    log: list[str] = []

    def step(si: StepInput) -> Iterator[str]:
        with shield():
            yield "in shield"
            log.append("shielded work finished")
        try:
            yield "after"
            log.append("not reached")
        except CancellationError as error:
            log.append(f"cancel landed: {error.cause}")
            raise

    wf = Workflow("w", steps=[step])
    stream = wf.run(stream=True)
    for event in stream:
        if isinstance(event, RunContentEvent):
            break
    stream.close()
    assert log == ["shielded work finished", "cancel landed: stream_closed"]
    assert stream.output is not None and stream.output.status is RunStatus.cancelled


# -- rule 2: True means cancelled, even racing the last step -------------------


@pytest.mark.stress
def test_cancel_racing_completion_true_means_cancelled() -> None:
    outcomes = {True: 0, False: 0}
    for _ in range(400):
        barrier = threading.Barrier(2)

        def last(si: StepInput, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            return "done"

        wf = Workflow("race", steps=[last])
        stream = wf.run(stream=True)
        answer: list[bool] = []

        def cancel(
            barrier: threading.Barrier = barrier,
            wf: Workflow = wf,
            answer: list[bool] = answer,
            run_id: str = stream.run_id,
        ) -> None:
            barrier.wait()
            answer.append(wf.cancel_run(run_id))

        thread = threading.Thread(target=cancel)
        thread.start()
        events = check_run_events(stream)
        thread.join()
        assert stream.output is not None
        if answer[0]:
            assert stream.output.status is RunStatus.cancelled, "cancel_run said True but the run completed"
        else:
            assert stream.output.status is RunStatus.completed
        assert events[-1].status is stream.output.status  # type: ignore[attr-defined]
        outcomes[answer[0]] += 1
    assert len(REGISTRY) == 0
    assert sum(outcomes.values()) == 400


# -- rule 12: context -----------------------------------------------------------


def test_get_context_outside_a_run_raises() -> None:
    with pytest.raises(RuntimeError, match="outside"):
        get_context()


def test_interleaved_streams_in_one_thread_see_their_own_context() -> None:
    def step(si: StepInput) -> Iterator[str]:
        for _ in range(20):
            ctx = get_context()
            assert ctx.run_id == si.run_id
            yield ctx.run_id

    wf = Workflow("w", steps=[step])
    a, b = iter(wf.run(stream=True)), iter(wf.run(stream=True))
    seen: dict[str, set[str]] = {}
    for ea, eb in zip(a, b, strict=True):
        for event in (ea, eb):
            if isinstance(event, RunContentEvent):
                seen.setdefault(event.run_id, set()).add(event.content)
            with pytest.raises(RuntimeError):
                get_context()  # nothing leaks into the consumer
    assert all(contents == {run_id} for run_id, contents in seen.items())
    assert len(seen) == 2


def test_context_attributes() -> None:
    seen: dict[str, Any] = {}

    def step(si: StepInput) -> None:
        ctx = get_context()
        seen.update(
            run_id=ctx.run_id,
            workflow_id=ctx.workflow_id,
            step_name=ctx.step_name,
            attempt=ctx.attempt,
            cancel_requested=ctx.cancel_requested,
            cancel_reason=ctx.cancel_reason,
        )
        assert not ctx.cancel_event.is_set()

    wf = Workflow("Ctx Flow", steps=[Step("only", executor=step)])
    out = wf.run()
    assert seen == {
        "run_id": out.run_id,
        "workflow_id": "ctx-flow",
        "step_name": "only",
        "attempt": 1,
        "cancel_requested": False,
        "cancel_reason": None,
    }
