"""Async steps: coroutines and async generators run on an event loop private to the run.

A step whose executor returns a coroutine (an ``async def`` executor, or a
plain function returning one) has it awaited; one returning an async
generator is driven by a plain generator, so the runner streams it like any
generator step — cancel thrown in at its ``yield``, shields, abandon on
``break`` all apply unchanged.

The loop is made on the first async step, runs in whichever thread drives the
run at that moment (the consumer's, or a background worker), is reused by the
run's later async steps, and is closed when the run ends. Each step's code
runs as one task on it, in a copy of the run's ambient context, so
``get_context()`` works there.

A cancel interrupts the task at its current ``await``: an ``on_cancel``
callback asks the loop, from the cancelling thread, to ``task.cancel()``. The
step sees asyncio's own ``CancelledError`` there (asyncio's ``timeout()``,
``TaskGroup`` and libraries' cleanup rely on exactly that exception), once —
asyncio's cancellation is edge-triggered, so cleanup in ``finally`` may
await. Inside ``shield()`` the task is not cancelled; when the outermost
shield exits with a cancel pending, the task is cancelled then and the cancel
lands at its next ``await``. Whatever the step makes of it, the run ends
``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, TypeVar

from ._registry import REGISTRY, RunState
from .context import RunContext, cancellation_error, unshield_hook_var
from .exceptions import CancellationError

__all__ = ["AsyncSteps", "is_async"]

T = TypeVar("T")

logger = logging.getLogger("threadflow")

_UNSHIELD = unshield_hook_var()


# What most plain steps return; answered without inspect's ABC checks, on every step's hot path.
_PLAIN = frozenset({type(None), str, int, float, bool, bytes, list, dict, tuple})


def is_async(result: object) -> bool:
    """True for what an async step hands back: an awaitable or an async generator."""
    return type(result) not in _PLAIN and (inspect.isawaitable(result) or inspect.isasyncgen(result))


class AsyncSteps:
    """One run's private event loop: made on first use, reused, closed by ``close()``."""

    __slots__ = ("_ctx", "_loop", "_spawned", "_state")

    def __init__(self, state: RunState, ctx: RunContext) -> None:
        self._state = state
        self._ctx = ctx  # whose shields hold the cancel back
        self._loop: asyncio.AbstractEventLoop | None = None
        # Tasks the steps' own code created (held, as asyncio asks, until the step ends).
        self._spawned: set[asyncio.Task[Any]] = set()

    def settle(self, step_name: str, result: Any) -> Any:
        """``result`` with its async part resolved: awaited, or an async generator as a plain one.

        A coroutine that returns another awaitable has that awaited too, so
        no step ever completes with a coroutine as its content.
        """
        if inspect.isasyncgen(result):
            return self._drive(step_name, result)
        try:
            while inspect.isawaitable(result):
                result = self.run(step_name, _await(result))
        finally:
            self._reap()
        return result

    def run(self, step_name: str, coro: Coroutine[Any, Any, T], *, cancellable: bool = True) -> T:
        """Run ``coro`` as a task on the run's loop until it is done; a cancel of the run cancels it.

        Raises ``CancellationError`` when the task ended cancelled by the run's
        cancel, and ``RuntimeError`` when something else cancelled it.
        """
        task: asyncio.Task[T] | None = None
        try:  # whatever interrupts this, the coroutine is neither left unawaited nor its task unowned
            loop = self._loop or self._open()
            context = contextvars.copy_context()
            delivery = _Delivery(self._ctx, loop)
            context.run(_UNSHIELD.set, delivery.land if cancellable else None)
            task = asyncio.Task(coro, loop=loop, context=context)  # not through the factory: not "spawned"
            delivery.task = task
            if cancellable:
                REGISTRY.add_callback(self._state, delivery.request)
            return _run_until_complete(loop, task)
        except asyncio.CancelledError as error:
            if self._state.cancel_requested:
                raise cancellation_error(self._state) from None
            raise RuntimeError(f"step {step_name!r} was cancelled by asyncio, not by its run") from error
        finally:
            if task is not None and cancellable:
                REGISTRY.remove_callback(self._state, delivery.request)
            if task is None:  # interrupted before the task took it: closed, never "never awaited"
                coro.close()
            elif not task.done():  # Ctrl+C (or SystemExit) escaped the loop mid-task
                _unwind(loop, task)

    def close(self) -> None:
        """Finish the loop's async generators and executor threads, then close it. Idempotent."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            _run_until_complete(loop, loop.create_task(_shut_down(loop)))
        finally:
            loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop, while the run has one open (for tests and diagnostics)."""
        return self._loop

    def _open(self) -> asyncio.AbstractEventLoop:
        loop = self._loop = asyncio.new_event_loop()
        spawned = self._spawned

        # asyncio.all_tasks() walks every task of the process: too slow to ask after every step.
        def spawn(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            task = asyncio.Task(coro, loop=loop, **kwargs)
            spawned.add(task)
            return task

        loop.set_task_factory(spawn)
        return loop

    def _reap(self) -> None:
        """Cancel the tasks a step left behind and let them finish, as ``asyncio.run`` does."""
        loop = self._loop
        while loop is not None and self._spawned:
            leftovers = [task for task in self._spawned if not task.done()]
            self._spawned.clear()
            if not leftovers:
                return
            for task in leftovers:
                task.cancel()
            _run_until_complete(loop, asyncio.gather(*leftovers, return_exceptions=True))

    def _drive(self, step_name: str, agen: Any) -> Generator[Any, None, None]:
        """A plain generator over ``agen``: each ``next`` runs one ``__anext__`` on the loop.

        A ``CancellationError`` thrown in at our ``yield`` reaches ``agen`` at
        its ``yield`` as ``asyncio.CancelledError``; closing us closes it.
        """
        try:
            chunk = self.run(step_name, _anext(agen))
            while chunk is not _DONE:
                try:
                    yield chunk
                except CancellationError:
                    chunk = self.run(step_name, _athrow(agen), cancellable=False)
                else:
                    chunk = self.run(step_name, _anext(agen))
        except BaseException:
            self._close_agen(step_name, agen, quiet=True)  # must not replace what is propagating
            raise
        self._close_agen(step_name, agen)

    def _close_agen(self, step_name: str, agen: Any, *, quiet: bool = False) -> None:
        """``aclose()`` the step's async generator and reap its tasks; ``quiet``: log what that raises."""
        try:
            try:
                self.run(step_name, _await(agen.aclose()), cancellable=False)
            finally:
                self._reap()
        except Exception:
            if not quiet:
                raise
            logger.debug("threadflow: closing async generator step %r raised", step_name, exc_info=True)


async def _shut_down(loop: asyncio.AbstractEventLoop) -> None:
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()


class _Done:
    """What ``_anext``/``_athrow`` return when the async generator has finished."""


_DONE = _Done()


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _anext(agen: Any) -> Any:
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        return _DONE


async def _athrow(agen: Any) -> Any:
    try:
        return await agen.athrow(asyncio.CancelledError())
    except StopAsyncIteration:
        return _DONE


class _Delivery:
    """Cancels one task for its run's cancel: at most once, never inside a shield."""

    __slots__ = ("ctx", "delivered", "loop", "task")

    def __init__(self, ctx: RunContext, loop: asyncio.AbstractEventLoop) -> None:
        self.ctx = ctx
        self.loop = loop
        self.task: asyncio.Task[Any] | None = None
        self.delivered = False

    def request(self) -> None:
        """The ``on_cancel`` callback, in the cancelling thread: have the loop land the cancel."""
        try:
            self.loop.call_soon_threadsafe(self.land)
        except RuntimeError:
            pass  # the loop is closed: the step, and its run, have already ended

    def land(self) -> None:
        """On the loop's thread (the shield's state is that thread's): cancel the task unless shielded."""
        task = self.task
        if self.delivered or task is None or task.done() or self.ctx.shield_depth:
            return
        self.delivered = True
        task.cancel()


def _unwind(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    """Cancel a task left suspended by an exception out of the loop, and run its cleanup to the end.

    Left as it is, the task would be destroyed pending with the loop: its
    ``finally`` run by the garbage collector, outside the loop, where it
    cannot ``await``.
    """
    task.cancel()
    _run_until_complete(loop, asyncio.gather(task, return_exceptions=True))


def _run_until_complete(loop: asyncio.AbstractEventLoop, task: Awaitable[T]) -> T:
    """``loop.run_until_complete``, also when this thread is already inside another loop.

    A synchronous ``wf.run()`` called from a coroutine (a notebook, an async
    handler) blocks that outer loop anyway; asyncio would refuse to run a
    second loop in the thread, so the outer one is set aside meanwhile.
    """
    outer = asyncio._get_running_loop()
    if outer is None:
        return loop.run_until_complete(task)
    asyncio._set_running_loop(None)
    try:
        return loop.run_until_complete(task)
    finally:
        asyncio._set_running_loop(outer)
