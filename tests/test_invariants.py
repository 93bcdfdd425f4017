"""Property test: whatever the steps do and whenever the cancel or the break comes,
every run keeps the SPEC §2/§3 invariants."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import event as note_outcome
from hypothesis import given, settings
from hypothesis import strategies as st

import threadflow
from threadflow import CancellationError, RunStatus, Step, StepInput, Workflow, shield
from threadflow._registry import REGISTRY
from threadflow.testing import check_run_events


def fn_ok(si: StepInput) -> str:
    return "ok"


def fn_fail(si: StepInput) -> None:
    raise ValueError("step failed")


def gen_ok(si: StepInput) -> Iterator[str]:
    yield "a"
    yield "b"
    yield "c"


def gen_fail(si: StepInput) -> Iterator[str]:
    yield "a"
    raise RuntimeError("mid-stream failure")


def gen_swallow(si: StepInput) -> Iterator[str]:
    for chunk in "xyz":
        try:
            yield chunk
        except CancellationError:
            pass


def gen_shielded(si: StepInput) -> Iterator[str]:
    with shield():
        yield "s1"
        yield "s2"
    yield "after"


KINDS: dict[str, Callable[[StepInput], Any]] = {
    "fn_ok": fn_ok,
    "fn_fail": fn_fail,
    "gen_ok": gen_ok,
    "gen_fail": gen_fail,
    "gen_swallow": gen_swallow,
    "gen_shielded": gen_shielded,
}


@settings(max_examples=300, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=4),
    action=st.sampled_from(["none", "cancel", "break"]),
    at=st.integers(min_value=0, max_value=14),
)
def test_every_run_keeps_the_invariants(kinds: list[str], action: str, at: int) -> None:
    steps = [Step(f"{kind}_{i}", executor=KINDS[kind]) for i, kind in enumerate(kinds)]
    wf = Workflow("prop", steps=steps)
    stream = wf.run(stream=True)
    answer = None
    if action == "cancel" and at == 0:
        answer = wf.cancel_run(stream.run_id, "before start")
    seen = []
    for index, event in enumerate(stream, start=1):
        seen.append(event)
        if index == at and action == "cancel":
            answer = wf.cancel_run(stream.run_id, "mid-run")
        if index == at and action == "break":
            break
    stream.close()
    output = stream.output
    assert output is not None
    if action == "break" and len(seen) == at and not seen[-1].terminal:
        assert (output.status, output.cause) == (RunStatus.cancelled, threadflow.CancelCause.stream_closed)
    else:
        events = check_run_events(seen)
        assert events[-1].status is output.status  # type: ignore[attr-defined]
    if answer is True:
        assert output.status is RunStatus.cancelled
    if answer is False:
        assert seen and seen[-1].terminal and index == at  # it had already ended
    assert len(REGISTRY) == 0
    info = threadflow.get_run(stream.run_id)
    assert info is not None and info.status is output.status


# -- the same invariants with another thread cancelling, retries and timeouts (issue 8 item 21) --------
#
# The test above cancels from the consuming thread, at an exact event. This one cancels from another
# thread while the run goes on (so the cancel lands wherever the two threads happen to be), mixes in
# retries, step timeouts and run timeouts, and drives runs both as streams and in the background. The
# suite runs with THREADFLOW_VALIDATE_EVENTS=1 (conftest.py), so every event built here is also
# checked against pydantic's validation.


def fn_flaky(si: StepInput) -> str:
    if threadflow.get_context().attempt == 1:
        raise ValueError("first attempt fails")
    return "recovered"


def fn_sleep(si: StepInput) -> str:
    threadflow.get_context().sleep(0.002)
    return "slept"


def gen_busy(si: StepInput) -> Iterator[str]:
    """Streams for up to 30 ms, long enough for a short timeout or the other thread to land."""
    deadline = time.monotonic() + 0.03
    while time.monotonic() < deadline:
        yield "."


def fn_busy(si: StepInput) -> str:
    ctx = threadflow.get_context()
    deadline = time.monotonic() + 0.03
    while time.monotonic() < deadline:
        ctx.check_cancellation()
    return "busy"


MORE_KINDS: dict[str, Callable[[StepInput], Any]] = {
    **KINDS,
    "fn_flaky": fn_flaky,
    "fn_sleep": fn_sleep,
    "gen_busy": gen_busy,
    "fn_busy": fn_busy,
}

step_specs = st.tuples(
    st.sampled_from(sorted(MORE_KINDS)),
    st.integers(min_value=0, max_value=2),  # max_retries
    st.sampled_from([None, 0.005, 0.02, 1.0]),  # Step(timeout=)
)


@settings(max_examples=100, deadline=None)
@given(
    specs=st.lists(step_specs, min_size=1, max_size=4),
    background=st.booleans(),
    run_timeout=st.sampled_from([None, 0.01, 0.05, 1.0]),
    cancel_after=st.one_of(st.none(), st.integers(min_value=0, max_value=8)),
)
def test_runs_cancelled_from_another_thread_with_retries_and_timeouts_keep_the_invariants(
    specs: list[tuple[str, int, float | None]], background: bool, run_timeout: float | None, cancel_after: int | None
) -> None:
    steps = [
        Step(f"{kind}_{i}", executor=MORE_KINDS[kind], max_retries=retries, timeout=timeout)
        for i, (kind, retries, timeout) in enumerate(specs)
    ]
    wf = Workflow("prop-threads", steps=steps)
    seen_enough, answers = threading.Event(), []

    def canceller(run_id: str) -> None:
        seen_enough.wait(10)
        answers.append(wf.cancel_run(run_id, "from another thread"))

    if background:
        handle = wf.run(background=True, run_timeout=run_timeout)
        run_id, events_source = handle.run_id, handle.events()
    else:
        stream = wf.run(stream=True, run_timeout=run_timeout)
        run_id, events_source = stream.run_id, iter(stream)
    thread = threading.Thread(target=canceller, args=(run_id,))
    thread.start()
    events = []
    try:
        for index, event in enumerate(events_source):
            if index == cancel_after:
                seen_enough.set()  # the cancel comes while this thread carries on
            events.append(event)
    finally:
        seen_enough.set()
        thread.join(10)
    if background:
        assert handle.wait(10)
        output = handle.output
    else:
        output = stream.output
    assert output is not None

    events = check_run_events(events)
    note_outcome(f"{output.status.value} {output.cause.value if output.cause else ''}")  # --hypothesis-show-statistics
    terminal = events[-1]
    assert terminal.status is output.status  # type: ignore[attr-defined]
    info = threadflow.get_run(run_id)
    assert info is not None and info.status is output.status
    if answers == [True]:
        assert output.status is RunStatus.cancelled
    if output.status is RunStatus.cancelled:
        assert output.cause in (threadflow.CancelCause.requested, threadflow.CancelCause.timeout)
        if output.cause is threadflow.CancelCause.timeout:
            assert output.reason is not None and "timeout" in output.reason
    assert len(REGISTRY) == 0
    assert threadflow.active_runs() == []
