"""Background runs from asyncio: start, poll, cancel by run id.

A port of Agno's async background-execution examples to threadflow.
``await workflow.arun(x, background=True)`` starts the run on a worker thread
and hands back a ``RunHandle`` at once, without blocking the event loop; the
loop stays free to poll ``workflow.get_run(run_id)`` and to cancel the run by
its id with ``workflow.cancel_run(run_id)`` (or ``threadflow.cancel_run``,
for any workflow of the process).

Four short examples:

1. a background run polled until it completes;
2. a background run cancelled by run id after about a second;
3. a queued run (``max_concurrent_runs=1``) cancelled before it starts: it
   never runs, and is recorded ``cancelled`` at once;
4. ``await workflow.arun(x)`` in a task, and the task cancelled: cancelling the
   awaiting asyncio task cancels the run.

All agents use the offline ``DemoModel``. Run it (about three seconds)::

    python cookbook/async_background.py
"""

from __future__ import annotations

import asyncio

import threadflow
from threadflow import Agent, RunHandle, RunInfo, Workflow
from threadflow.models import DemoModel

POLL_EVERY = 0.25  # seconds


def content_workflow(tokens_per_second: float, *, max_tokens: int, max_concurrent_runs: int = 32) -> Workflow:
    """A researcher agent feeding a planner agent, both offline."""
    researcher = Agent("researcher", model=DemoModel(tokens_per_second, seed=1, max_tokens=max_tokens))
    planner = Agent(
        "content planner",
        model=DemoModel(tokens_per_second, seed=2, max_tokens=max_tokens),
        instructions="Plan a content schedule over 4 weeks for the provided research.",
    )
    return Workflow("content creation", steps=[researcher, planner], max_concurrent_runs=max_concurrent_runs)


def describe(info: RunInfo | None) -> str:
    if info is None:
        return "not found"
    text = f"{info.status.value} (step: {info.step_name})"
    if info.cause is not None:
        text += f", cause: {info.cause.value}, reason: {info.reason}"
    return text


async def wait_for_end(handle: RunHandle, timeout: float = 10.0) -> None:
    """Wait for a background run to end without blocking the event loop."""
    if not await asyncio.to_thread(handle.wait, timeout):
        raise TimeoutError(f"run {handle.run_id} is still {handle.status.value} after {timeout}s")


async def example_poll_until_complete() -> None:
    print("=" * 60)
    print("Example 1: background run, polled until it completes")
    print("=" * 60)
    workflow = content_workflow(200.0, max_tokens=40)
    handle = await workflow.arun("AI trends in 2024", background=True)
    print(f"Run ID: {handle.run_id}")
    print(f"Initial status: {handle.status.value}")
    for poll in range(1, 41):
        await asyncio.sleep(POLL_EVERY)
        info = workflow.get_run(handle.run_id)
        print(f"  poll #{poll}: {describe(info)}")
        if info is not None and info.status.is_terminal:
            break
    output = handle.result(timeout=5)
    print(f"Final status: {output.status.value}")
    print(f"Content: {str(output.content)[:80]}...")


async def example_cancel_by_run_id() -> None:
    print("\n" + "=" * 60)
    print("Example 2: cancel a background run by its id")
    print("=" * 60)
    workflow = content_workflow(50.0, max_tokens=300)  # about 12 s if left alone
    handle = await workflow.arun("The history of computing, in detail", background=True)
    run_id = handle.run_id
    print(f"Run ID: {run_id}")
    print(f"Initial status: {handle.status.value}")
    for poll in range(1, 5):
        await asyncio.sleep(POLL_EVERY)
        print(f"  poll #{poll}: {describe(workflow.get_run(run_id))}")
    print("Cancelling run...")
    print(f"Cancel result: {workflow.cancel_run(run_id, reason='user pressed stop')}")
    await wait_for_end(handle)
    print(f"Final status: {describe(workflow.get_run(run_id))}")
    print(f"Cancelling again: {workflow.cancel_run(run_id)} (the run has ended)")


async def example_cancel_before_start() -> None:
    print("\n" + "=" * 60)
    print("Example 3: cancel a queued run before it starts")
    print("=" * 60)
    workflow = content_workflow(50.0, max_tokens=300, max_concurrent_runs=1)
    first = await workflow.arun("first in line", background=True)
    queued = await workflow.arun("second in line", background=True)
    print(f"Queued run {queued.run_id}: {queued.status.value}")
    print(f"Cancel result: {threadflow.cancel_run(queued.run_id, reason='no longer needed')}")
    await wait_for_end(queued)
    print(f"Queued run final status: {describe(workflow.get_run(queued.run_id))}")
    print(f"It emitted: {[event.event.value for event in queued.events()]}")
    first.cancel("example finished")
    await wait_for_end(first)


async def example_cancel_awaiting_task() -> None:
    print("\n" + "=" * 60)
    print("Example 4: cancelling the awaiting asyncio task cancels the run")
    print("=" * 60)
    workflow = content_workflow(50.0, max_tokens=300)

    async def handle_request() -> None:
        """A request handler that awaits the whole run (about 12 s if left alone)."""
        output = await workflow.arun("a long essay", run_id="essay-1")
        print(f"handler got: {output.status.value}")

    task = asyncio.create_task(handle_request())
    await asyncio.sleep(0.5)
    print("The client went away: cancelling the handler's task")
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        print("The task was cancelled")
    info = workflow.get_run("essay-1")
    while info is not None and not info.status.is_terminal:
        await asyncio.sleep(0.01)
        info = workflow.get_run("essay-1")
    print(f"Run essay-1 final status: {describe(info)}")


async def main() -> None:
    await example_poll_until_complete()
    await example_cancel_by_run_id()
    await example_cancel_before_start()
    await example_cancel_awaiting_task()
    print("\nAll examples completed!")


if __name__ == "__main__":
    asyncio.run(main())
