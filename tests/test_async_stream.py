"""`arun(stream=True)` starts on first iteration; an un-iterated one is recorded like a dropped RunStream."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

import threadflow
from threadflow import CancelCause, DuplicateRunError, RunStatus, StepInput, Workflow


def test_arun_stream_does_nothing_until_iterated_and_is_recorded_when_dropped() -> None:
    ran = threading.Event()
    wf = Workflow("w", steps=[lambda si: ran.set()])

    async def main() -> str:
        stream = wf.arun(stream=True, run_id="lazy")
        with pytest.raises(DuplicateRunError):
            wf.arun(stream=True, run_id="lazy")  # registered at once
        assert threadflow.get_run("lazy").status is RunStatus.pending  # type: ignore[union-attr]
        run_id = stream.run_id
        del stream
        gc.collect()
        return run_id

    run_id = asyncio.run(main())
    assert not ran.is_set()
    info = threadflow.get_run(run_id)
    assert info is not None and (info.status, info.cause) == (RunStatus.cancelled, CancelCause.stream_closed)


def test_arun_stream_iterates_the_events_and_await_returns_the_same_stream() -> None:
    def step(si: StepInput) -> str:
        return "value"

    wf = Workflow("w", steps=[step])

    async def main() -> list[str]:
        stream = await wf.arun(stream=True)
        names = [str(event.event) async for event in stream]
        assert stream.output is not None and stream.output.content == "value"
        return names

    assert asyncio.run(main()) == ["workflow_started", "step_started", "step_completed", "workflow_completed"]


def test_arun_without_await_never_starts() -> None:
    ran = threading.Event()
    wf = Workflow("w", steps=[lambda si: ran.set()])
    coroutine = wf.arun()
    coroutine.close()  # never awaited
    assert not ran.is_set() and threadflow.active_runs() == []
