"""Async steps (SPEC §7): ``async def`` and async-generator executors on a loop private to the run."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import pytest

import threadflow
from threadflow import (
    CancelCause,
    RunStatus,
    Step,
    StepInput,
    Workflow,
    WorkflowError,
    get_context,
    shield,
)
from threadflow._background import active_handles
from threadflow.events import RunContentEvent
from threadflow.testing import check_run_events

pytestmark = pytest.mark.usefixtures("no_leaked_runs")

WAIT = 30.0  # what a step would sit through if a cancel did not interrupt it
PROMPT = 5.0  # a cancel that lands "at once" lands well within this, even on a loaded machine


@pytest.fixture
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert set(threading.enumerate()) - before == set(), "a test left a thread behind"


def names(events: list[Any]) -> list[str]:
    return [str(e.event) for e in events]


class Awaiting:
    """An async step that signals once it is suspended in a long ``await``, and logs its cleanup."""

    def __init__(self) -> None:
        self.awaiting = threading.Event()
        self.log: list[str] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, si: StepInput) -> str:
        self.loop = asyncio.get_running_loop()
        try:
            self.awaiting.set()
            await asyncio.sleep(WAIT)
            self.log.append("woke up")
            return "slept through"
        except asyncio.CancelledError:
            self.log.append("cancelled at await")
            raise
        finally:
            self.log.append("finally")


# -- results and streams --------------------------------------------------------


def test_an_async_def_step_completes_with_its_awaited_result(no_leaked_threads: None) -> None:
    async def fetch(si: StepInput) -> str:
        await asyncio.sleep(0)
        return f"fetched {si.input}"

    out = Workflow("a", steps=[fetch, lambda si: si.previous_step_content.upper()]).run("x")
    assert (out.status, out.content) == (RunStatus.completed, "FETCHED X")
    assert out.step_outputs["fetch"] == "fetched x"


def test_a_sync_executor_returning_a_coroutine_has_it_awaited() -> None:
    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return 2 * n

    async def returns_a_coroutine(si: StepInput) -> Coroutine[Any, Any, int]:
        return double(21)  # awaited too: no step completes with a coroutine as its content

    wf = Workflow("a", steps=[Step("lam", executor=lambda si: double(si.input)), returns_a_coroutine])
    out = wf.run(4)
    assert out.step_outputs == {"lam": 8, "returns_a_coroutine": 42}
    assert not any(asyncio.iscoroutine(v) for v in out.step_outputs.values())


def test_an_async_generator_streams_run_content_events_like_a_sync_one() -> None:
    async def words(si: StepInput) -> AsyncIterator[str]:
        for word in ["one ", "two ", "three"]:
            await asyncio.sleep(0)
            yield word

    stream = Workflow("a", steps=[words]).run(stream=True)
    events = check_run_events(stream)
    assert names(events) == [
        "workflow_started",
        "step_started",
        "run_started",
        "run_content",
        "run_content",
        "run_content",
        "run_completed",
        "step_completed",
        "workflow_completed",
    ]
    assert [e.content for e in events if isinstance(e, RunContentEvent)] == ["one ", "two ", "three"]
    assert stream.output is not None and stream.output.content == "one two three"


def test_an_async_generator_yielding_a_non_str_is_a_step_error_naming_step_and_type() -> None:
    async def numbers(si: StepInput) -> AsyncIterator[Any]:
        yield "fine"
        yield 42

    with pytest.raises(WorkflowError) as raised:
        Workflow("a", steps=[numbers]).run()
    assert raised.value.output.status is RunStatus.error
    assert isinstance(raised.value.__cause__, TypeError)
    assert "'numbers'" in str(raised.value.__cause__) and "int" in str(raised.value.__cause__)


def test_get_context_works_in_async_steps_and_async_generators() -> None:
    seen: list[tuple[str | None, str]] = []

    async def coro(si: StepInput) -> str:
        await asyncio.sleep(0)
        seen.append((get_context().step_name, get_context().run_id))
        return "ok"

    async def agen(si: StepInput) -> AsyncIterator[str]:
        await asyncio.sleep(0)
        seen.append((get_context().step_name, get_context().run_id))
        yield "x"
        seen.append((get_context().step_name, get_context().run_id))

    out = Workflow("a", steps=[coro, agen]).run(run_id="ctx-run")
    assert out.status is RunStatus.completed
    assert seen == [("coro", "ctx-run"), ("agen", "ctx-run"), ("agen", "ctx-run")]


def test_a_step_raising_is_a_step_error_with_its_exception() -> None:
    async def broken(si: StepInput) -> str:
        await asyncio.sleep(0)
        raise ValueError("bad input")

    with pytest.raises(WorkflowError) as raised:
        Workflow("a", steps=[broken]).run()
    assert isinstance(raised.value.__cause__, ValueError)
    assert raised.value.output.error_type == "ValueError"


def test_a_foreign_asyncio_cancel_is_a_step_error_not_a_cancellation() -> None:
    async def cancels_itself(si: StepInput) -> str:
        raise asyncio.CancelledError

    with pytest.raises(WorkflowError) as raised:
        Workflow("a", steps=[cancels_itself]).run()
    assert raised.value.output.status is RunStatus.error
    assert "cancels_itself" in str(raised.value.__cause__)


# -- the private loop -----------------------------------------------------------


def test_one_loop_per_run_reused_by_its_async_steps_and_closed_at_the_end(no_leaked_threads: None) -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    threads: list[int] = []

    async def record(si: StepInput) -> None:
        loops.append(asyncio.get_running_loop())
        threads.append(threading.get_ident())

    async def record_stream(si: StepInput) -> AsyncIterator[str]:
        await record(si)
        yield "x"

    wf = Workflow(
        "a", steps=[Step("a", executor=record), Step("b", executor=record_stream), Step("c", executor=record)]
    )
    wf.run()
    wf.run()
    assert loops[0] is loops[1] is loops[2]
    assert loops[3] is loops[4] is loops[5]
    assert loops[0] is not loops[3]
    assert all(loop.is_closed() for loop in loops)
    assert set(threads) == {threading.get_ident()}  # the thread that drives the run, no new thread


def test_a_sync_run_called_from_inside_a_running_loop_still_runs_async_steps() -> None:
    async def step(si: StepInput) -> str:
        await asyncio.sleep(0)
        return "inner"

    wf = Workflow("a", steps=[step])

    async def main() -> Any:
        out = wf.run()  # blocks this loop, as any sync call does; must not refuse to run
        await asyncio.sleep(0)  # the outer loop is intact afterwards
        return out.content

    assert asyncio.run(main()) == "inner"


def test_tasks_a_step_left_behind_are_cancelled_when_it_ends() -> None:
    log: list[str] = []

    async def orphan() -> None:
        try:
            await asyncio.sleep(WAIT)
        finally:
            log.append("orphan cleaned up")

    async def spawns(si: StepInput) -> str:
        asyncio.get_running_loop().create_task(orphan())
        await asyncio.sleep(0)
        return "done"

    start = time.monotonic()
    assert Workflow("a", steps=[spawns, lambda si: list(log)]).run().content == ["orphan cleaned up"]
    assert time.monotonic() - start < PROMPT


# -- cancellation ---------------------------------------------------------------


def test_a_cancel_from_another_thread_interrupts_the_await_and_cleanup_runs(no_leaked_threads: None) -> None:
    step = Awaiting()
    wf = Workflow("a", steps=[step, lambda si: "never"])
    result: list[Any] = []
    runner = threading.Thread(target=lambda: result.append(wf.run(run_id="c1")))
    runner.start()
    assert step.awaiting.wait(PROMPT)
    start = time.monotonic()
    assert wf.cancel_run("c1", "stop now") is True
    runner.join(PROMPT)
    assert not runner.is_alive()
    assert time.monotonic() - start < PROMPT
    (out,) = result
    assert (out.status, out.cause, out.reason, out.step_name) == (
        RunStatus.cancelled,
        CancelCause.requested,
        "stop now",
        "Awaiting",
    )
    assert step.log == ["cancelled at await", "finally"]
    assert step.loop is not None and step.loop.is_closed()


def test_background_async_step_cancelled_by_its_handle(no_leaked_threads: None) -> None:
    step = Awaiting()
    handle = Workflow("a", steps=[Step("wait", executor=step)]).run(background=True)
    assert step.awaiting.wait(PROMPT)
    assert handle.cancel("bye") is True
    out = handle.result(PROMPT)
    assert (out.status, out.reason) == (RunStatus.cancelled, "bye")
    assert step.log == ["cancelled at await", "finally"]
    assert step.loop is not None and step.loop.is_closed()
    threadflow.shutdown(PROMPT)  # the background worker, so no thread is left behind


def test_arun_runs_async_steps_and_cancelling_the_awaiting_task_cancels_at_the_await() -> None:
    async def add(si: StepInput) -> int:
        await asyncio.sleep(0)
        return int(si.input) + 1

    assert asyncio.run(Workflow("a", steps=[add]).arun(1)).content == 2

    step = Awaiting()
    wf = Workflow("a", steps=[Step("wait", executor=step)])

    async def main() -> Any:
        task = asyncio.create_task(wf.arun(run_id="arun-1"))
        assert await asyncio.to_thread(step.awaiting.wait, PROMPT)
        (handle,) = [h for h in active_handles() if h.run_id == "arun-1"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return handle

    # The task's CancelledError does not wait for the run's cleanup (a documented decision): wait for it here.
    assert asyncio.run(main()).wait(PROMPT)
    info = wf.get_run("arun-1")
    assert info is not None and info.status is RunStatus.cancelled
    assert step.log == ["cancelled at await", "finally"]


def test_arun_background_handle_cancels_an_async_step() -> None:
    step = Awaiting()
    wf = Workflow("a", steps=[Step("wait", executor=step)])

    async def main() -> Any:
        handle = await wf.arun(background=True)
        assert await asyncio.to_thread(step.awaiting.wait, PROMPT)
        assert handle.cancel() is True
        return await asyncio.to_thread(handle.result, PROMPT)

    assert asyncio.run(main()).status is RunStatus.cancelled
    assert step.log == ["cancelled at await", "finally"]
    threadflow.shutdown(PROMPT)


def test_run_timeout_fires_during_an_await() -> None:
    step = Awaiting()
    start = time.monotonic()
    out = Workflow("a", steps=[Step("wait", executor=step)], run_timeout=0.2).run()
    assert (out.status, out.cause) == (RunStatus.cancelled, CancelCause.timeout)
    assert time.monotonic() - start < PROMPT
    assert step.log == ["cancelled at await", "finally"]


def test_ctx_asleep_does_not_count_toward_run_timeout_and_is_interruptible() -> None:
    async def patient(si: StepInput) -> str:
        await get_context().asleep(0.4)  # twice the budget, yet not counted
        return "rested"

    assert Workflow("a", steps=[patient], run_timeout=0.2).run().content == "rested"

    asleep = threading.Event()
    log: list[str] = []

    async def sleeper(si: StepInput) -> str:
        try:
            asleep.set()
            await get_context().asleep(WAIT)
            return "woke"
        except asyncio.CancelledError:
            log.append("cancelled in asleep")
            raise

    handle = Workflow("a", steps=[sleeper]).run(background=True)
    assert asleep.wait(PROMPT)
    assert handle.cancel() is True
    assert handle.result(PROMPT).status is RunStatus.cancelled
    assert log == ["cancelled in asleep"]


def test_async_with_shield_holds_the_cancel_until_the_outermost_shield_exits() -> None:
    shielded = threading.Event()
    log: list[str] = []

    async def commit(si: StepInput) -> str:
        ctx = get_context()
        async with shield():
            shielded.set()
            while not ctx.cancel_requested:
                await asyncio.sleep(0.001)
            log.append("cancel seen inside the shield")
            with shield():  # nested, the sync form: exiting it must not land the cancel
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.01)  # still shielded: this await completes
            log.append("shielded work finished")
        try:
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            log.append("cancel landed at the first await after the shield")
            raise
        return "not reached"

    handle = Workflow("a", steps=[commit]).run(background=True)
    assert shielded.wait(PROMPT)
    assert handle.cancel() is True
    out = handle.result(PROMPT)
    assert out.status is RunStatus.cancelled
    assert log == [
        "cancel seen inside the shield",
        "shielded work finished",
        "cancel landed at the first await after the shield",
    ]


def test_a_cancel_before_an_async_step_starts_never_runs_its_body() -> None:
    ran: list[str] = []

    async def second(si: StepInput) -> str:
        ran.append("second")
        return "x"

    def first(si: StepInput) -> str:
        threadflow.cancel_run(si.run_id)
        return "first"

    out = Workflow("a", steps=[first, second]).run()
    assert out.status is RunStatus.cancelled
    assert ran == []


def test_a_cancel_is_thrown_into_an_async_generator_at_its_yield() -> None:
    log: list[str] = []

    async def tokens(si: StepInput) -> AsyncIterator[str]:
        try:
            for i in range(100):
                await asyncio.sleep(0)
                yield f"t{i} "
        except asyncio.CancelledError:
            log.append("cancelled at yield")
            raise
        finally:
            log.append("finally")

    stream = Workflow("a", steps=[tokens]).run(stream=True)
    seen = []
    for event in stream:
        seen.append(str(event.event))
        if isinstance(event, RunContentEvent):
            assert threadflow.cancel_run(stream.run_id, "enough") is True
    assert seen[-2:] == ["run_cancelled", "workflow_cancelled"]
    assert seen.count("run_content") == 1
    assert log == ["cancelled at yield", "finally"]


def test_an_async_generator_that_swallows_the_cancel_still_ends_cancelled() -> None:
    async def stubborn(si: StepInput) -> AsyncIterator[str]:
        while True:
            try:
                yield "x"
            except asyncio.CancelledError:
                pass  # swallowed, on purpose

    stream = Workflow("a", steps=[stubborn]).run(stream=True)
    for event in stream:
        if isinstance(event, RunContentEvent):
            threadflow.cancel_run(stream.run_id)
    assert stream.output is not None and stream.output.status is RunStatus.cancelled


def test_breaking_out_during_an_async_generator_runs_its_cleanup_and_records_stream_closed(
    no_leaked_threads: None,
) -> None:
    log: list[str] = []
    loops: list[asyncio.AbstractEventLoop] = []

    async def tokens(si: StepInput) -> AsyncIterator[str]:
        loops.append(asyncio.get_running_loop())
        try:
            yield "first"
            await asyncio.sleep(WAIT)
            yield "never"
        finally:
            await asyncio.sleep(0)  # cleanup may await
            log.append("cleanup ran")

    wf = Workflow("a", steps=[tokens])
    stream = wf.run(stream=True, run_id="brk")
    for event in stream:
        if isinstance(event, RunContentEvent):
            break
    stream.close()
    assert log == ["cleanup ran"]
    info = wf.get_run("brk")
    assert info is not None and (info.status, info.cause) == (RunStatus.cancelled, CancelCause.stream_closed)
    assert loops[0].is_closed()


def test_a_cancel_during_a_long_await_in_an_async_generator_lands_at_once() -> None:
    awaiting = threading.Event()
    log: list[str] = []

    async def tokens(si: StepInput) -> AsyncIterator[str]:
        yield "a"
        try:
            awaiting.set()
            await asyncio.sleep(WAIT)
        finally:
            log.append("finally")
        yield "b"

    handle = Workflow("a", steps=[tokens]).run(background=True)
    assert awaiting.wait(PROMPT)
    assert handle.cancel() is True
    assert handle.result(PROMPT).status is RunStatus.cancelled
    assert log == ["finally"]
    assert [str(e.event) for e in handle.events()][-2:] == ["run_cancelled", "workflow_cancelled"]


@pytest.mark.stress
def test_true_means_cancelled_when_racing_an_async_step_to_completion() -> None:
    async def quick(si: StepInput) -> str:
        await asyncio.sleep(0)
        return "done"

    wf = Workflow("a", steps=[quick])
    for i in range(200):
        handle = wf.run(background=True, run_id=f"race-{i}")
        accepted = handle.cancel()
        out = handle.result(PROMPT)
        if accepted:
            assert out.status is RunStatus.cancelled, f"iteration {i}: cancel returned True, run {out.status}"
        else:
            assert out.status is RunStatus.completed
    threadflow.shutdown(PROMPT)


def test_sync_checkpoints_inside_an_async_step_raise_cancellation_error() -> None:
    log: list[str] = []
    sleeping = threading.Event()

    async def mixed(si: StepInput) -> str:
        ctx = get_context()
        try:
            sleeping.set()
            ctx.sleep(WAIT)  # blocks the loop's thread, yet wakes on the cancel
        except threadflow.CancellationError:
            log.append("CancellationError from ctx.sleep")
        try:
            await asyncio.sleep(WAIT)  # swallowed above, the cancel still interrupts the next await
        except asyncio.CancelledError:
            log.append("CancelledError at the next await")
        try:
            ctx.check_cancellation()  # and the sync checkpoints stay level-triggered
        except threadflow.CancellationError:
            log.append("CancellationError from check_cancellation")
            raise
        return "not reached"

    handle = Workflow("a", steps=[mixed]).run(background=True)
    assert sleeping.wait(PROMPT)
    assert handle.cancel() is True
    assert handle.result(PROMPT).status is RunStatus.cancelled
    assert log == [
        "CancellationError from ctx.sleep",
        "CancelledError at the next await",
        "CancellationError from check_cancellation",
    ]
    threadflow.shutdown(PROMPT)


def test_arun_stream_of_an_async_generator_step() -> None:
    async def words(si: StepInput) -> AsyncIterator[str]:
        for word in ["a", "b"]:
            await asyncio.sleep(0)
            yield word

    wf = Workflow("a", steps=[words])

    async def main() -> list[str]:
        stream = await wf.arun(stream=True)
        return [e.content async for e in stream if isinstance(e, RunContentEvent)]

    assert asyncio.run(main()) == ["a", "b"]


@pytest.mark.stress
def test_once_an_arun_stream_has_ended_its_run_id_is_free_again() -> None:
    # Regression: the stream ended on the terminal event, which is logged before the run
    # leaves the registry, so reusing the id at once could raise DuplicateRunError.
    async def words(si: StepInput) -> AsyncIterator[str]:
        yield "a"

    wf = Workflow("a", steps=[words])

    async def consume(run_id: str) -> list[str]:
        return [str(e.event) async for e in wf.arun(run_id=run_id, stream=True)]

    for i in range(40):
        assert asyncio.run(consume(f"again-{i}"))[-1] == "workflow_completed"
        assert wf.run(run_id=f"again-{i}").status is RunStatus.completed
