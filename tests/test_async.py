"""``Workflow.arun`` (SPEC §1, issue 3): awaiting, streaming and cancelling runs from asyncio.

Each test drives its own loop with ``asyncio.run``; nothing here needs an
asyncio pytest plugin. Step code runs on worker threads, so a test that blocks
the loop by mistake shows up as a step that never sees the loop's signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from conftest import WAIT, names

from threadflow import (
    CancelCause,
    CancellationError,
    RunHandle,
    RunStatus,
    Step,
    StepInput,
    Workflow,
    WorkflowError,
    get_context,
)
from threadflow._background import active_handles
from threadflow.testing import check_run_events


def handle_of(run_id: str) -> RunHandle:
    """The background handle behind an ``await wf.arun(...)``, found while the run is active."""
    (handle,) = [h for h in active_handles() if h.run_id == run_id]
    return handle


async def in_thread(event: threading.Event) -> bool:
    """Wait for a threading.Event without blocking the loop."""
    return await asyncio.to_thread(event.wait, WAIT)


def echo(si: StepInput) -> str:
    return f"echo {si.input}"


def test_await_arun_returns_the_output() -> None:
    wf = Workflow("aw", steps=[echo])

    async def main() -> Any:
        return await wf.arun("x")

    output = asyncio.run(main())
    assert output.status is RunStatus.completed
    assert output.content == "echo x"


def test_arun_is_a_coroutine_for_asyncio_run_and_create_task() -> None:
    """SPEC §1 declares ``async arun(...)``: its result is a coroutine, usable wherever asyncio wants one."""
    wf = Workflow("aw", steps=[echo])

    output = asyncio.run(wf.arun("direct"))
    assert output.content == "echo direct"

    async def main() -> list[Any]:
        tasks = [asyncio.create_task(wf.arun(i)) for i in range(3)]
        return await asyncio.gather(*tasks)

    assert [out.content for out in asyncio.run(main())] == ["echo 0", "echo 1", "echo 2"]


def test_await_arun_does_not_block_the_loop_while_the_run_executes() -> None:
    started, from_loop = threading.Event(), threading.Event()

    def needs_the_loop(si: StepInput) -> str:
        started.set()
        # The loop sets from_loop only while this run is being awaited.
        return "loop was free" if get_context().wait(from_loop, timeout=WAIT) else "loop was blocked"

    wf = Workflow("aw", steps=[needs_the_loop])

    async def signal_when_started() -> None:
        assert await in_thread(started)
        from_loop.set()

    async def main() -> Any:
        output, _ = await asyncio.gather(wf.arun(), signal_when_started())
        return output

    assert asyncio.run(main()).content == "loop was free"


def test_await_arun_background_returns_a_handle_at_once() -> None:
    gate = threading.Event()
    wf = Workflow("aw", steps=[lambda si: "done" if get_context().wait(gate, timeout=WAIT) else "timed out"])

    async def main() -> tuple[RunHandle, bool, Any]:
        handle = await wf.arun(background=True)
        done_before_gate = handle.done()
        gate.set()  # only reachable if the await above did not wait for the run
        output = await asyncio.to_thread(handle.result, WAIT)
        return handle, done_before_gate, output

    handle, done_before_gate, output = asyncio.run(main())
    assert isinstance(handle, RunHandle)
    assert done_before_gate is False
    assert output.content == "done"


def test_await_arun_of_a_failed_run_raises_workflow_error() -> None:
    raised: list[BaseException] = []

    def broken(si: StepInput) -> None:
        raised.append(KeyError("missing"))
        raise raised[0]

    wf = Workflow("aw", steps=[broken])

    async def main() -> None:
        await wf.arun()

    with pytest.raises(WorkflowError) as info:
        asyncio.run(main())
    assert info.value.__cause__ is raised[0]
    assert info.value.output.status is RunStatus.error
    assert info.value.output.error_type == "KeyError"


def test_async_for_over_a_stream_gets_the_same_events_as_the_sync_stream() -> None:
    def chunks(si: StepInput) -> Iterator[str]:
        yield "a "
        yield "b "

    wf = Workflow("aw", steps=[Step("chunks", executor=chunks), echo])

    async def main() -> list[Any]:
        return [event async for event in wf.arun("x", stream=True)]

    async_events = check_run_events(asyncio.run(main()))
    sync_events = check_run_events(wf.run("x", stream=True))
    assert names(async_events) == names(sync_events)
    assert [getattr(e, "content", None) for e in async_events] == [getattr(e, "content", None) for e in sync_events]
    assert names(async_events)[-1] == "workflow_completed"


def test_async_stream_does_not_block_the_loop_between_events() -> None:
    first_sent, from_loop = threading.Event(), threading.Event()

    def chunks(si: StepInput) -> Iterator[str]:
        yield "first"
        first_sent.set()
        yield "loop was free" if get_context().wait(from_loop, timeout=WAIT) else "loop was blocked"

    wf = Workflow("aw", steps=[Step("chunks", executor=chunks)])

    async def other_task() -> None:
        assert await in_thread(first_sent)
        from_loop.set()

    async def main() -> list[Any]:
        helper = asyncio.create_task(other_task())
        events = [event async for event in wf.arun(stream=True)]
        await helper
        return events

    contents = [e.content for e in asyncio.run(main()) if str(e.event) == "run_content"]
    assert contents == ["first", "loop was free"]


# -- cancelling the awaiting task ------------------------------------------------------


def test_cancelling_the_awaiting_task_cancels_the_run_and_the_task_ends_without_waiting_for_it() -> None:
    parked, in_cleanup, finish_cleanup = threading.Event(), threading.Event(), threading.Event()
    cleanup: list[CancelCause] = []

    def step(si: StepInput) -> str:
        try:
            parked.set()
            get_context().wait()  # only a cancel ends this
        except CancellationError as cancelled:
            cleanup.append(cancelled.cause)
            in_cleanup.set()
            finish_cleanup.wait(WAIT)  # slow cleanup: the task must not wait for it
            raise
        return "unreachable"

    wf = Workflow("aw", steps=[step])

    async def main() -> tuple[RunHandle, RunStatus]:
        task = asyncio.ensure_future(wf.arun(run_id="awaited"))
        assert await in_thread(parked)
        handle = handle_of("awaited")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT)
        assert await in_thread(in_cleanup)
        return handle, handle.status

    handle, status_when_task_ended = asyncio.run(main())
    assert status_when_task_ended is RunStatus.cancelling  # the task did not wait for the cleanup
    finish_cleanup.set()
    output = handle.result(WAIT)
    assert (output.status, output.cause) == (RunStatus.cancelled, CancelCause.requested)
    assert cleanup == [CancelCause.requested]


def test_wait_for_timeout_on_arun_cancels_the_run() -> None:
    parked = threading.Event()

    def forever(si: StepInput) -> None:
        parked.set()
        get_context().wait()

    wf = Workflow("aw", steps=[forever])

    async def main() -> RunHandle:
        awaited = asyncio.ensure_future(asyncio.wait_for(wf.arun(run_id="bounded"), 0.05))
        assert await in_thread(parked)
        handle = handle_of("bounded")
        with pytest.raises(TimeoutError):
            await awaited
        return handle

    output = asyncio.run(main()).result(WAIT)
    assert (output.status, output.cause) == (RunStatus.cancelled, CancelCause.requested)


def test_cancelling_the_task_iterating_an_async_stream_cancels_the_run() -> None:
    cleaned = threading.Event()

    def chunks(si: StepInput) -> Iterator[str]:
        try:
            yield "one"
            get_context().wait()
            yield "never"
        finally:
            cleaned.set()

    wf = Workflow("aw", steps=[Step("chunks", executor=chunks)])
    received: list[Any] = []

    async def main() -> RunHandle:
        got_one = asyncio.Event()

        async def consume() -> None:
            async for event in wf.arun(stream=True, run_id="streamed"):
                received.append(event)
                if str(event.event) == "run_content":
                    got_one.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_one.wait(), WAIT)
        handle = handle_of("streamed")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT)
        return handle

    handle = asyncio.run(main())
    output = handle.result(WAIT)
    assert (output.status, output.cause) == (RunStatus.cancelled, CancelCause.requested)
    assert cleaned.is_set()
    events = check_run_events(handle.events())
    assert names(events)[-2:] == ["run_cancelled", "workflow_cancelled"]
    assert received == events[: len(received)]


def test_leaving_an_async_stream_early_cancels_with_stream_closed() -> None:
    cleaned = threading.Event()

    def chunks(si: StepInput) -> Iterator[str]:
        try:
            while True:
                yield "tick"
                get_context().sleep(0.001)
        finally:
            cleaned.set()

    wf = Workflow("aw", steps=[Step("chunks", executor=chunks)])

    async def main() -> RunHandle:
        stream: AsyncIterator[Any] = aiter(wf.arun(stream=True, run_id="left"))
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for event in stream:
                if str(event.event) == "run_content":
                    handle = handle_of("left")
                    break
        return handle

    output = asyncio.run(main()).result(WAIT)
    assert (output.status, output.cause) == (RunStatus.cancelled, CancelCause.stream_closed)
    assert cleaned.is_set()


def test_await_arun_of_a_cancelled_run_returns_its_output() -> None:
    parked = threading.Event()

    def step(si: StepInput) -> None:
        parked.set()
        get_context().wait()

    wf = Workflow("aw", steps=[step])

    async def main() -> Any:
        awaited = asyncio.ensure_future(wf.arun(run_id="cancelled-elsewhere"))
        assert await in_thread(parked)
        assert wf.cancel_run("cancelled-elsewhere", "from another caller") is True
        return await asyncio.wait_for(awaited, WAIT)

    output = asyncio.run(main())
    assert (output.status, output.cause, output.reason) == (
        RunStatus.cancelled,
        CancelCause.requested,
        "from another caller",
    )


def test_breaking_out_of_async_for_cancels_the_run_once_the_loop_closes_the_stream() -> None:
    cleaned = threading.Event()

    def ticks(si: StepInput) -> Iterator[str]:
        try:
            while True:
                yield "tick"
                get_context().sleep(0.001)
        finally:
            cleaned.set()

    wf = Workflow("aw", steps=[Step("ticks", executor=ticks)])

    async def main() -> RunHandle:
        async for event in wf.arun(stream=True, run_id="broken-off"):
            if str(event.event) == "run_content":
                handle = handle_of("broken-off")
                break
        # asyncio closes the abandoned async generator on the loop; waiting here lets it
        assert await asyncio.to_thread(handle.wait, WAIT)
        return handle

    output = asyncio.run(main()).result(0)
    assert (output.status, output.cause) == (RunStatus.cancelled, CancelCause.stream_closed)
    assert cleaned.is_set()
