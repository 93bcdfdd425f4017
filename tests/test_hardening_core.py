"""Regression tests for defects found by review and fault injection in the core.

Each test reproduces one defect deterministically (threads are paused at the
exact point of the race with Events or a line tracer, never with sleeps).
"""

from __future__ import annotations

import gc
import linecache
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

import threadflow
from threadflow import CancellationError, RunStatus, Workflow, _timer, get_context
from threadflow._background import active_handles
from threadflow._gcdefer import drain


def test_a_deadline_armed_while_the_timer_thread_decides_to_exit_still_fires(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 1: the idle timer thread forgot itself only after releasing its lock."""
    from threadflow._registry import RunState

    monkeypatch.setattr(_timer, "_IDLE_EXIT_SECONDS", 0.01)
    timer = _timer._Timer()
    exiting, proceed = threading.Event(), threading.Event()
    original = timer._next_expired

    def paused_on_exit() -> Any:
        expired = original()
        if expired is None:  # this thread has decided to exit: hold it right there
            exiting.set()
            proceed.wait(10)
        return expired

    monkeypatch.setattr(timer, "_next_expired", paused_on_exit)
    first = RunState("first", "wf", "wf", timeout=0.001)
    timer.resume(first)
    assert first.cancel_event.wait(10), "the first deadline never fired"
    assert exiting.wait(10)
    second = RunState("second", "wf", "wf", timeout=0.001)
    timer.resume(second)  # armed while the old thread is between "exit" and forgetting itself
    proceed.set()
    assert second.cancel_event.wait(10), "a deadline armed while the timer thread exited never fired"
    assert second.cause is threadflow.CancelCause.timeout


def test_break_in_one_thread_is_finished_at_once_while_another_thread_collects_garbage() -> None:
    """Defect 2: the 'collecting' flag was process-wide, deferring every thread's cleanup."""
    cleaned = threading.Event()

    def stream(_: object) -> Iterator[str]:
        try:
            while True:
                yield "x"
        finally:
            cleaned.set()

    collecting, release = threading.Event(), threading.Event()

    def hold_collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and threading.current_thread().name == "collector":
            collecting.set()
            release.wait(10)

    gc.callbacks.append(hold_collection)
    collector = threading.Thread(target=gc.collect, name="collector")
    try:
        collector.start()
        assert collecting.wait(10)
        wf = Workflow("gc", steps=[stream])
        s = wf.run(stream=True)
        for event in s:
            if event.event == "run_content":
                break
        assert cleaned.is_set(), "the step's finally waited for another thread's garbage collection"
        assert threadflow.get_run(s.run_id).status is RunStatus.cancelled  # type: ignore[union-attr]
    finally:
        release.set()
        collector.join(10)
        gc.callbacks.remove(hold_collection)


def test_a_blocking_on_cancel_callback_delays_only_its_own_runs_timeout() -> None:
    """Defect 6: the shared timer thread ran on_cancel callbacks inline."""
    release, callback_entered = threading.Event(), threading.Event()

    def stuck_callback() -> None:
        callback_entered.set()
        release.wait(30)

    def slow(_: object) -> None:
        ctx = get_context()
        ctx.on_cancel(stuck_callback)
        release.wait(30)  # blocked in "foreign" code: the time counts toward run_timeout

    def other(_: object) -> None:
        ctx = get_context()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # busy: only the timer can cancel it
            ctx.check_cancellation()

    slow_wf = Workflow("slow callback", steps=[slow], run_timeout=0.01)
    other_wf = Workflow("other", steps=[other], run_timeout=0.05)
    a = slow_wf.run(background=True)
    try:
        assert callback_entered.wait(10)
        b = other_wf.run(background=True)
        assert b.wait(10), "another run's timeout waited for a blocked callback"
        assert b.status is RunStatus.cancelled
        assert threadflow.get_run(b.run_id).cause is threadflow.CancelCause.timeout  # type: ignore[union-attr]
    finally:
        release.set()
        assert a.wait(10)
    assert a.status is RunStatus.cancelled


def _cancel_at_line(k: int) -> tuple[float, bool]:
    """Run ``ctx.sleep(5)`` and accept a cancel at the k-th line executed inside the wait machinery."""
    from threadflow import context

    targets = {context._wait_for.__code__}
    outcome: dict[str, Any] = {}

    def step(_: object) -> None:
        ctx = get_context()
        lines = 0

        def local(frame: FrameType, event: str, arg: object) -> Any:
            nonlocal lines
            if event == "line":
                lines += 1
                if lines == k:
                    threadflow.cancel_run(ctx.run_id, "at a line")
            return local

        def tracer(frame: FrameType, event: str, arg: object) -> Any:
            return local if frame.f_code in targets else None

        start = time.monotonic()
        sys.settrace(tracer)
        try:
            ctx.sleep(5)
        except CancellationError:
            outcome["cancelled"] = True
            raise
        finally:
            sys.settrace(None)
            outcome["elapsed"] = time.monotonic() - start

    Workflow("line cancel", steps=[step]).run()
    return outcome["elapsed"], outcome.get("cancelled", False)


@pytest.mark.parametrize("k", range(1, 9))
def test_ctx_sleep_wakes_at_once_whichever_line_the_cancel_lands_on(k: int) -> None:
    """Defect 9: a cancel between two reads of the run's state was taken for a shielded one."""
    elapsed, cancelled = _cancel_at_line(k)
    assert elapsed < 2.5, f"a cancel landing at line {k} of the wait left ctx.sleep asleep for {elapsed:.2f}s"
    assert cancelled


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


def test_an_unprintable_output_does_not_fail_a_debug_mode_run(caplog: pytest.LogCaptureFixture) -> None:
    """Defect 8: debug logging of an output whose repr raises failed the run."""
    wf = Workflow("unprintable", steps=[lambda _: _Unprintable()], debug_mode=True)
    with caplog.at_level("DEBUG", logger="threadflow.events"):
        out = wf.run()
    assert out.status is RunStatus.completed
    assert isinstance(out.content, _Unprintable)
    assert any("unprintable _Unprintable object" in r.getMessage() for r in caplog.records)


def test_an_exception_whose_str_raises_is_still_recorded_as_the_steps_error() -> None:
    """Defect 8: str(error) raising inside the runner left the run unrecorded."""

    def fails(_: object) -> None:
        raise _UnprintableError

    wf = Workflow("unprintable error", steps=[fails])
    with pytest.raises(threadflow.WorkflowError) as caught:
        wf.run()
    output = caught.value.output
    assert output.status is RunStatus.error
    assert output.error_type == "_UnprintableError"
    assert output.error == "<unprintable _UnprintableError object>"
    assert threadflow.active_runs() == []


def test_memory_store_lists_runs_by_a_status_given_as_a_plain_string() -> None:
    """Defect 10: MemoryStore compared statuses with `is`, so "completed" matched nothing."""
    store = threadflow.storage.MemoryStore()
    wf = Workflow("listing", steps=[lambda _: 1], store=store)
    run_id = wf.run().run_id
    listed = store.list_runs(status="completed")  # type: ignore[arg-type]  # what a CLI or HTTP layer passes
    assert [info.run_id for info in listed] == [run_id]


def test_a_stream_closed_before_anyone_iterates_it_yields_its_recorded_end() -> None:
    """Defect 4: iterating a stream closed before it started gave zero events; it now gives the run's end."""
    ran = threading.Event()
    wf = Workflow("closed early", steps=[lambda _: ran.set()])
    s = wf.run(stream=True)
    s.close()
    events = list(s)
    assert [e.event for e in events] == ["workflow_started", "workflow_cancelled"]
    assert events[-1].cause is threadflow.CancelCause.stream_closed  # type: ignore[union-attr]
    assert [e.seq for e in events] == [1, 2]
    assert not ran.is_set()
    assert list(s) == []  # read once: a second loop finds nothing more
    assert threadflow.get_run(s.run_id).status is RunStatus.cancelled  # type: ignore[union-attr]


def test_a_consumer_that_comes_back_after_break_reads_the_run_end() -> None:
    def stream(_: object) -> Iterator[str]:
        yield "a"
        yield "b"

    s = Workflow("come back", steps=[stream]).run(stream=True)
    for event in s:
        if event.event == "run_content":
            break
    rest = [e.event for e in s]
    assert rest == ["run_cancelled", "workflow_cancelled"]


@pytest.mark.stress
def test_close_from_another_thread_racing_the_first_next_never_raises_and_always_cancels() -> None:
    """Defect 3: close() racing the first next() raised 'generator already executing' and lost the cancel."""
    for _ in range(2000):
        _race_close_against_first_next()


def _race_close_against_first_next() -> None:
    go = threading.Event()
    s = Workflow("race", steps=[lambda _: go.wait(10)]).run(stream=True)
    barrier = threading.Barrier(2)
    seen: list[Any] = []
    failures: list[BaseException] = []

    def consume() -> None:
        barrier.wait()
        try:
            seen.extend(s)
        except BaseException as error:
            failures.append(error)

    consumer = threading.Thread(target=consume)
    consumer.start()
    barrier.wait()
    s.close()  # must never raise
    go.set()
    consumer.join(10)
    assert not consumer.is_alive()
    assert failures == []
    assert [e.event for e in seen][-1] == "workflow_cancelled"
    assert sum(e.terminal for e in seen) == 1
    assert seen[-1].cause is threadflow.CancelCause.stream_closed
    assert threadflow.active_runs() == []


def _raise_cancellation(_: object) -> None:
    raise CancellationError("some-other-run", "not ours", threadflow.CancelCause.requested)


def _stream_then_raise_cancellation(_: object) -> Iterator[str]:
    yield "a"
    raise CancellationError("some-other-run", "not ours", threadflow.CancelCause.requested)


def _raise_generator_exit(_: object) -> None:
    raise GeneratorExit


def _stream_then_raise_generator_exit(_: object) -> Iterator[str]:
    yield "a"
    raise GeneratorExit


@pytest.mark.parametrize(
    ("step", "error_type", "streams"),
    [
        (_raise_cancellation, "CancellationError", False),
        (_stream_then_raise_cancellation, "CancellationError", True),
        (_raise_generator_exit, "GeneratorExit", False),
        (_stream_then_raise_generator_exit, "GeneratorExit", True),
    ],
)
def test_a_step_raising_cancellation_or_generator_exit_on_its_own_is_a_step_error(
    step: Any, error_type: str, streams: bool
) -> None:
    """Defect 7: a foreign CancellationError ended the run cancelled; a GeneratorExit escaped the loop."""
    wf = Workflow("foreign", steps=[step])
    events = list(wf.run(stream=True))  # must not raise out of the consumer's loop
    names = [e.event for e in events]
    assert names[-1] == "workflow_error"
    assert events[-1].error_type == error_type  # type: ignore[union-attr]
    assert ("run_error" in names) is streams
    assert "run_cancelled" not in names
    with pytest.raises(threadflow.WorkflowError) as caught:
        wf.run()
    assert caught.value.output.status is RunStatus.error
    assert caught.value.output.cause is None
    assert type(caught.value.__cause__).__name__ == error_type


@pytest.fixture
def small_heap() -> Iterator[None]:
    """These tests collect garbage after every line they interrupt: leave the suite's own heap out of it.

    Late in a full suite the heap is large, and a full collection per line then
    takes long enough on a busy machine to run into the test's timeout.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _interrupt_at_line(targets: set[Any], k: int, call: Any) -> bool:
    """Call ``call()`` with a KeyboardInterrupt raised at the k-th line executed in ``targets``; True if it hit."""
    lines = 0
    hit = False

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal lines, hit
        # Not at a `with` header: there CPython itself can leave __enter__ done and __exit__ never
        # called (python/cpython#74174, bpo-29988) — a gap in the language, not in threadflow.
        if event == "line" and not linecache.getline(frame.f_code.co_filename, frame.f_lineno).lstrip().startswith(
            "with "
        ):
            lines += 1
            if lines == k:
                hit = True
                raise KeyboardInterrupt
        return local

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code in targets else None

    sys.settrace(tracer)
    try:
        call()
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)
    return hit


def _registration_and_ending_code() -> set[Any]:
    from threadflow._registry import Registry
    from threadflow._runner import Runner
    from threadflow.handles import RunStream

    return {
        Workflow.run.__code__,
        Workflow._new_runner.__code__,
        Workflow._new_state.__code__,
        Workflow._register.__code__,
        Runner._finish.__code__,
        Registry.add.__code__,
        Registry.finish.__code__,
        Registry.remove.__code__,
        RunStream.__init__.__code__,
    }


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.usefixtures("small_heap")
def test_an_interrupt_at_any_line_of_registering_or_ending_a_run_leaks_nothing(stream: bool) -> None:
    """Defect 5: Ctrl+C between registering a run and its try (or deciding its end and recording it) leaked it."""
    from threadflow._registry import REGISTRY

    targets = _registration_and_ending_code()
    wf = Workflow("interrupted", steps=[lambda _: 1])
    for k in range(1, 200):

        def call() -> None:
            if stream:
                list(wf.run(stream=True, run_id="the-id"))
            else:
                wf.run(run_id="the-id")

        hit = _interrupt_at_line(targets, k, call)
        gc.collect()
        assert threadflow.active_runs() == [], f"interrupt at line {k} leaked the run"  # also a safe point
        assert REGISTRY.get("the-id") is None, f"interrupt at line {k} left a registry entry"
        assert wf.run(run_id="the-id").status is RunStatus.completed  # the id is free again
        if not hit:
            return  # k ran past the last line: every line has been tried
    raise AssertionError("more lines than expected")


@pytest.mark.usefixtures("small_heap")
def test_an_interrupt_at_any_line_of_starting_a_background_run_leaks_nothing() -> None:
    """A queued run has no runner yet (made when it starts): its handle is the safety net instead."""
    from threadflow._registry import REGISTRY
    from threadflow.handles import RunHandle

    targets = {
        Workflow.run.__code__,
        Workflow._start_background.__code__,
        Workflow._background_handle.__code__,
        Workflow._new_state.__code__,
        Workflow._register.__code__,
        RunHandle.__init__.__code__,
        type(REGISTRY).add.__code__,
    }
    wf = Workflow("interrupted in the background", steps=[lambda _: 1])
    for k in range(1, 200):
        hit = _interrupt_at_line(targets, k, lambda: wf.run(background=True, run_id="the-id").wait(10))
        gc.collect()
        drain()  # a safe point: what the collection left to finish is finished here
        for handle in active_handles():  # interrupted after it was submitted: it runs on, to its end
            assert handle.wait(10)
        assert REGISTRY.get("the-id") is None, f"interrupt at line {k} left a registry entry"
        assert threadflow.active_runs() == [], f"interrupt at line {k} leaked the run"
        assert wf.run(background=True, run_id="the-id").result(10).status is RunStatus.completed
        if not hit:
            return  # k ran past the last line: every line has been tried
    raise AssertionError("more lines than expected")


def test_ctrl_c_in_a_plain_run_is_recorded_as_a_shutdown_cancel_and_still_raised() -> None:
    """Defect 18: Ctrl+C during run() in the main thread was recorded as error: KeyboardInterrupt."""
    cleaned: list[str] = []

    def step(_: object) -> None:
        try:
            raise KeyboardInterrupt  # what Ctrl+C does while the step runs
        finally:
            cleaned.append("finally")

    wf = Workflow("ctrl c", steps=[step, lambda _: cleaned.append("never")])
    with pytest.raises(KeyboardInterrupt):
        wf.run(run_id="ctrl-c")
    info = threadflow.get_run("ctrl-c")
    assert info is not None
    assert (info.status, info.cause) == (RunStatus.cancelled, threadflow.CancelCause.shutdown)
    assert info.reason == "interrupted (KeyboardInterrupt)"
    assert cleaned == ["finally"]


def test_ctrl_c_between_two_events_of_a_plain_run_is_a_shutdown_cancel() -> None:
    """Defect 18, second half: Ctrl+C in run()'s own loop, between two events, not inside the step."""
    import inspect

    cleaned = threading.Event()

    def step(_: object) -> Iterator[str]:
        try:
            yield "a"
            yield "b"
        finally:
            cleaned.set()

    source, first = inspect.getsourcelines(Workflow.run)
    loop_body = first + next(i for i, line in enumerate(source) if line.strip() == "pass")
    passes = 0

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal passes
        if event == "line" and frame.f_lineno == loop_body:
            passes += 1
            if passes == 4:  # after workflow_started, step_started, run_started, the first chunk
                raise KeyboardInterrupt
        return local

    sys.settrace(lambda frame, event, arg: local if frame.f_code is Workflow.run.__code__ else None)
    try:
        with pytest.raises(KeyboardInterrupt):
            Workflow("ctrl c between", steps=[step]).run(run_id="between")
    finally:
        sys.settrace(None)
    assert passes == 4
    info = threadflow.get_run("between")
    assert info is not None
    assert (info.status, info.cause) == (RunStatus.cancelled, threadflow.CancelCause.shutdown)
    assert cleaned.is_set()
