"""SPEC §7 / issue 8 item 10: ``RunHandle`` reads like a ``concurrent.futures.Future`` where the two meet."""

from __future__ import annotations

import logging
import threading

import pytest
from conftest import WAIT

from threadflow import RunHandle, RunStatus, StepInput, Workflow, WorkflowError, get_context


class Gate:
    """A step that says it has started, then waits (interruptibly) to be let through."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, si: StepInput) -> str:
        self.entered.set()
        get_context().wait(self.release, timeout=WAIT)
        return "through"


def test_a_done_callback_is_given_the_handle_once_from_the_thread_that_ends_the_run() -> None:
    gate = Gate()
    handle = Workflow("f", steps=[gate]).run(background=True)
    calls: list[tuple[RunHandle, int, bool]] = []
    called = threading.Event()

    def record(h: RunHandle) -> None:
        calls.append((h, threading.get_ident(), h.done()))
        called.set()

    handle.add_done_callback(record)
    gate.release.set()
    assert called.wait(WAIT)
    handle.wait(WAIT)
    assert calls == [(handle, calls[0][1], True)]
    assert calls[0][1] != threading.get_ident()  # the worker's thread, not ours


def test_a_done_callback_added_after_the_end_is_called_at_once_in_the_callers_thread() -> None:
    handle = Workflow("f", steps=[lambda si: "ok"]).run(background=True)
    handle.result(WAIT)
    calls: list[tuple[RunHandle, int]] = []
    handle.add_done_callback(lambda h: calls.append((h, threading.get_ident())))
    assert calls == [(handle, threading.get_ident())]


def test_a_raising_done_callback_on_a_finished_run_is_logged_not_raised_into_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handle = Workflow("f", steps=[lambda si: "ok"]).run(background=True)
    handle.result(WAIT)

    def boom(h: RunHandle) -> None:
        raise RuntimeError("callback failed")

    with caplog.at_level(logging.ERROR, logger="threadflow"):
        handle.add_done_callback(boom)  # must not raise
    assert any("callback failed" in (record.exc_text or "") for record in caplog.records)


def test_running_done_and_cancelled_follow_the_run() -> None:
    gate = Gate()
    wf = Workflow("f", steps=[gate], max_concurrent_runs=1)
    first = wf.run(background=True)
    assert gate.entered.wait(WAIT)
    queued = wf.run(background=True)  # pending: the only slot is taken
    assert (first.running(), first.done(), first.cancelled()) == (True, False, False)
    assert (queued.running(), queued.done(), queued.cancelled()) == (False, False, False)

    assert first.cancel("stop") is True
    first.wait(WAIT)
    assert (first.running(), first.done(), first.cancelled()) == (False, True, True)
    assert first.result().status is RunStatus.cancelled  # unlike a Future: the output, not CancelledError

    gate.release.set()
    queued.result(WAIT)
    assert (queued.running(), queued.done(), queued.cancelled()) == (False, True, False)


def test_a_queued_run_cancelled_before_it_starts_never_reads_as_running() -> None:
    gate = Gate()
    wf = Workflow("f", steps=[gate], max_concurrent_runs=1)
    first = wf.run(background=True)
    assert gate.entered.wait(WAIT)
    queued = wf.run(background=True)
    assert queued.cancel() is True
    assert queued.running() is False  # cancelling, but it never started
    gate.release.set()
    assert queued.result(WAIT).status is RunStatus.cancelled and queued.cancelled()
    assert first.result(WAIT).status is RunStatus.completed and not first.cancelled()


def test_exception_is_the_failing_steps_exception_the_same_object_result_chains() -> None:
    error = ValueError("bad input")

    def fails(si: StepInput) -> None:
        raise error

    handle = Workflow("f", steps=[fails]).run(background=True)
    assert handle.exception(WAIT) is error
    with pytest.raises(WorkflowError) as raised:
        handle.result()
    assert raised.value.__cause__ is handle.exception()
    assert handle.cancelled() is False


def test_exception_is_none_for_completed_and_cancelled_runs() -> None:
    assert Workflow("f", steps=[lambda si: "ok"]).run(background=True).exception(WAIT) is None
    gate = Gate()
    handle = Workflow("f", steps=[gate]).run(background=True)
    assert gate.entered.wait(WAIT)
    handle.cancel()
    assert handle.exception(WAIT) is None


def test_exception_raises_timeout_error_if_the_run_has_not_ended_in_time() -> None:
    gate = Gate()
    handle = Workflow("f", steps=[gate]).run(background=True)
    with pytest.raises(TimeoutError):
        handle.exception(timeout=0.01)
    gate.release.set()
    assert handle.exception(WAIT) is None
