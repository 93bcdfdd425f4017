"""Property test: whatever the steps do and whenever the cancel or the break comes,
every run keeps the SPEC §2/§3 invariants."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

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
