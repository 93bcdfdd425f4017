"""Async steps: ``async def`` and async generators, cancelled at their ``await``.

A research workflow written with asyncio:

1. ``fetch_sources`` is an ``async def`` step that fetches three (simulated)
   sources concurrently with ``asyncio.gather``; its upstream is flaky, so it
   is retried with a ``RetryPolicy`` built from tenacity's own strategies.
   ``write_summary`` is an async generator that streams its text token by
   token — each yielded string is a ``run_content`` event, as for a sync
   generator. The run completes.
2. The same workflow in the background, with a source that never answers. The
   main thread waits until the step is suspended in its ``await``, then
   cancels the run: the step sees ``asyncio.CancelledError`` at that
   ``await`` at once, its ``finally`` closes the connection, and the run ends
   ``cancelled``.
3. ``async with shield():`` around a write that must not stop half-way: a
   cancel that arrives meanwhile waits until the shield exits, then lands at
   the next ``await``.

Every step runs on an event loop private to its run, in the thread that drives
the run; the loop is closed when the run ends. Nothing touches the network.

Run it (well under a second)::

    python cookbook/async_steps.py
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import tenacity

from threadflow import RetryPolicy, Step, StepInput, Workflow, get_context, shield
from threadflow.events import RunContentEvent, StepRetryingEvent

calls = {"fetch": 0}
awaiting_source = threading.Event()  # example 2: the step is suspended in its await
in_shield = threading.Event()  # example 3: the step is inside its shielded write


async def fetch_one(name: str, delay: float) -> str:
    await asyncio.sleep(delay)
    return f"{name} says hello"


async def fetch_sources(si: StepInput) -> list[str]:
    calls["fetch"] += 1
    if calls["fetch"] == 1:
        raise ConnectionError("upstream reset the connection")
    return list(await asyncio.gather(fetch_one("wiki", 0.02), fetch_one("news", 0.01), fetch_one("blog", 0.03)))


async def write_summary(si: StepInput) -> AsyncIterator[str]:
    for source in si.previous_step_content:
        await asyncio.sleep(0.005)  # a model producing tokens
        yield f"[{source}] "


async def fetch_forever(si: StepInput) -> str:
    print("fetch_forever: connected, awaiting a source that never answers ...")
    try:
        awaiting_source.set()
        await asyncio.sleep(3600)
        return "never"
    except asyncio.CancelledError:
        print("fetch_forever: asyncio.CancelledError at the await")
        raise
    finally:
        print("fetch_forever: cleanup ran (connection closed)")


async def save_report(si: StepInput) -> str:
    ctx = get_context()
    async with shield():
        in_shield.set()
        while not ctx.cancel_requested:  # the cancel arrives during the write ...
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.02)  # ... which still finishes: the shield holds the cancel back
        print(f"save_report: report written in full (cancel requested meanwhile: {ctx.cancel_requested})")
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        print("save_report: the cancel landed at the first await after the shield")
        raise
    return "never"


def example_1() -> None:
    print("1. async def + async generator, with a RetryPolicy")
    policy = RetryPolicy(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential(multiplier=0.05),
        retry=tenacity.retry_if_exception_type(ConnectionError),
    )
    wf = Workflow("research", steps=[Step("fetch_sources", executor=fetch_sources, retry=policy), write_summary])
    stream = wf.run(stream=True)
    for event in stream:
        if isinstance(event, StepRetryingEvent):
            print(f"step_retrying: attempt {event.attempt} failed ({event.error}); next attempt in {event.delay}s")
        elif isinstance(event, RunContentEvent):
            print(f"run_content: {event.content!r}")
    assert stream.output is not None
    print(f"Status: {stream.output.status.value}")
    print(f"Content: {stream.output.content}")


def example_2() -> None:
    print("\n2. Cancel an async step at its await, from another thread")
    handle = Workflow("research", steps=[fetch_forever, write_summary]).run(background=True)
    awaiting_source.wait(10)
    start = time.perf_counter()
    print(f"cancel returned {handle.cancel('the user closed the tab')}")
    output = handle.result(10)
    print(f"Cancel landed in {(time.perf_counter() - start) * 1000:.1f} ms")
    print(f"Status: {output.status.value}")
    print(f"Cause: {output.cause.value if output.cause else None}")
    print(f"Reason: {output.reason}")


def example_3() -> None:
    print("\n3. async with shield()")
    handle = Workflow("report", steps=[save_report]).run(background=True)
    in_shield.wait(10)
    print(f"cancel returned {handle.cancel('stop the report')}")
    output = handle.result(10)
    print(f"Status: {output.status.value}")


if __name__ == "__main__":
    example_1()
    example_2()
    example_3()
