"""Parallel branches: the process's bounded pool of branch threads, and how one ``Parallel`` runs on it.

The nursery rule, in threads: **no branch outlives its run.** A ``Parallel``
step returns (or raises) only once every one of its branches has ended, so
the run's terminal event always comes after every branch thread has stopped
working for it. A branch that fails stops the rest of the run through
``Registry.fail`` (its siblings see a cancel at their next checkpoint, their
``on_cancel`` callbacks run) and the ``Parallel`` re-raises that failure.

Events: a branch thread puts the events its lane yields on the run's one
channel (a ``SimpleQueue``, shared by nested ``Parallel`` steps at every
depth, so one FIFO orders them as they happened). Only the run's own lane —
the consumer's thread — takes them off, numbers and records them
(``Runner.forward``) and hands them on.

Threads: branches run on one process-wide pool of at most ``max_threads``
threads (32 by default, ``THREADFLOW_BRANCH_THREADS`` or
``compose.set_max_branch_threads``), shared by every run; extra branches
wait in FIFO order. A thread of the pool that waits for branches of its own
(a ``Parallel`` nested in a branch) runs those not yet started itself, so
nesting can never leave every pool thread waiting for work queued behind it.
A branch not started when its run is cancelled or fails never starts.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Generator, Iterable, Sequence
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from ._fastevents import renumber
from ._registry import REGISTRY
from .context import cancellation_error
from .exceptions import CancellationError
from .status import CancelCause

if TYPE_CHECKING:
    from ._lane import Lane
    from ._runner import Runner
    from .events import BaseEvent
    from .steps import Step, StepInput

__all__ = ["BRANCH_THREAD_NAME", "POOL", "BranchPool", "run_branches"]

BRANCH_THREAD_NAME = "threadflow-branch"
_IDLE_EXIT_SECONDS = 5.0
# The consumer waits for branch events in slices of this: a SIGINT that lands just as it starts
# to block (the GIL handover to a branch thread makes that common) would otherwise not raise
# KeyboardInterrupt until the next branch event, perhaps never.
_POLL_SECONDS = 0.1
_local = threading.local()


class BranchPool:
    """At most ``max_threads`` threads running queued branches in FIFO order; idle threads exit."""

    def __init__(self, max_threads: int) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._tasks: deque[_Branch] = deque()
        self._threads = 0
        self._idle = 0
        self.max_threads = max_threads

    @property
    def threads(self) -> int:
        return self._threads

    def submit(self, tasks: Iterable[_Branch]) -> None:
        """Queue branches; start threads while there are more queued than idle, up to the bound."""
        with self._cond:
            self._tasks.extend(tasks)
            wanted = min(len(self._tasks) - self._idle, self.max_threads - self._threads)
            self._threads += max(0, wanted)
            self._cond.notify(len(self._tasks))
        for _ in range(wanted):
            threading.Thread(target=self._work, name=BRANCH_THREAD_NAME, daemon=True).start()

    def _work(self) -> None:
        _local.in_pool = True
        while True:
            task = self._next()
            if task is None:
                return
            task.run_if_unclaimed()

    def resize(self, max_threads: int) -> int:
        """Set the bound; threads above it exit as soon as they are between branches. The old bound."""
        with self._cond:
            previous, self.max_threads = self.max_threads, max_threads
            self._cond.notify_all()  # idle threads above the bound leave now
        return previous

    def _next(self) -> _Branch | None:
        with self._cond:
            while True:
                if self._threads > self.max_threads:  # the bound was lowered: this one goes
                    self._threads -= 1
                    return None
                if self._tasks:
                    return self._tasks.popleft()
                self._idle += 1
                woken = self._cond.wait(_IDLE_EXIT_SECONDS)
                self._idle -= 1
                if not woken and not self._tasks:
                    self._threads -= 1
                    return None


POOL = BranchPool(int(os.environ.get("THREADFLOW_BRANCH_THREADS", "32") or 32))


def in_pool_thread() -> bool:
    return getattr(_local, "in_pool", False)


class _Wake:
    """Put on the channel when a draining group's last branch has ended."""


_WAKE = _Wake()


class _Branch:
    """One step of a ``Parallel``: started by whoever claims it first (a pool thread, a helper, a cancel)."""

    __slots__ = ("claimed", "group", "index", "step")

    def __init__(self, group: _Group, index: int, step: Step) -> None:
        self.group = group
        self.index = index
        self.step = step
        self.claimed = False

    def claim(self) -> bool:
        with self.group.cond:
            if self.claimed:
                return False
            self.claimed = True
            return True

    def run_if_unclaimed(self) -> None:
        if self.claim():
            self.group.run(self)


class _Group:
    """One ``Parallel``'s branches: how many are still running, their outputs, the first failure."""

    def __init__(self, lane: Lane, steps: Sequence[Step], step_input: StepInput, path: str, draining: bool) -> None:
        root = lane.root
        if root.channel is None:
            root.channel = SimpleQueue()
        self.channel: SimpleQueue[Any] = root.channel
        self.lane, self.step_input, self.path, self.draining = lane, step_input, path, draining
        self.cond = threading.Condition(threading.Lock())
        self.branches = [_Branch(self, index, step) for index, step in enumerate(steps)]
        self.remaining = len(self.branches)
        self.outputs: dict[str, Any] = {}
        self.failure: BaseException | None = None

    def run(self, branch: _Branch) -> None:
        """Run one branch to its end in this thread; never raises."""
        lane = self.lane.branch(self.step_input, self.path)
        put = self.channel.put
        try:
            for event in lane.child(branch.index, branch.step):
                put(event)
            self.outputs[branch.step.name] = lane.content  # child() leaves the step's output there
        except CancellationError:
            pass  # the run's cancel (or a sibling's failure) stopped it: its cleanup has run
        except BaseException as error:  # noqa: BLE001 — the branch's failure: re-raised by the Parallel
            self._fail(error)
        finally:
            try:
                lane.close_aio()  # the branch's own event loop, if its async steps made one
            finally:
                self._ended()

    def _fail(self, error: BaseException) -> None:
        with self.cond:
            first = self.failure is None
            if first:
                self.failure = error
        if first:
            REGISTRY.fail(self.lane.state)  # siblings stop at their next checkpoint

    def _ended(self) -> None:
        with self.cond:
            self.remaining -= 1
            finished = not self.remaining
            if finished:
                self.cond.notify_all()
        if finished and self.draining:
            self.channel.put(_WAKE)

    def skip_unstarted(self) -> None:
        """The ``on_cancel`` callback: branches nobody has started never will."""
        for branch in self.branches:
            if branch.claim():
                self._ended()

    @property
    def finished(self) -> bool:
        return not self.remaining

    def drain(self, root: Runner) -> Generator[BaseEvent, None, None]:
        """Hand the branches' events on, in the consumer's thread, until the last branch has ended."""
        get, sink, quiet = self.channel.get, root.sink, root.quiet
        while True:
            try:
                item = get(True, _POLL_SECONDS)
            except Empty:
                continue  # back in Python for a moment: a Ctrl+C that came meanwhile is raised here
            if item is _WAKE:
                if self.finished:
                    return
                continue  # left by an earlier Parallel of the run
            # Runner.forward, inlined: this loop carries every branch event of the run.
            root.seq += 1
            if not quiet:  # a muted run's branches put UNHEARD, not events
                renumber(item, root.seq)
                if sink is not None:
                    sink(item)
            yield item

    def help_and_wait(self) -> None:
        """In a pool thread: run our own branches nobody has started, then wait for the rest."""
        for branch in self.branches:
            branch.run_if_unclaimed()
        with self.cond:
            while self.remaining:
                self.cond.wait()

    def stop(self, error: BaseException) -> None:
        """The waiting thread is leaving abnormally: stop every branch, wait for them, record their events."""
        state = self.lane.state
        if isinstance(error, GeneratorExit):
            REGISTRY.cancel(state, None, CancelCause.stream_closed)
        elif isinstance(error, KeyboardInterrupt):
            REGISTRY.cancel(state, f"interrupted ({type(error).__name__})", CancelCause.shutdown)
        else:
            REGISTRY.fail(state)
        with self.cond:
            while self.remaining:
                self.cond.wait()
        if self.draining:
            self._record_leftovers(self.lane.root)

    def _record_leftovers(self, root: Runner) -> None:
        """Events nobody will read any more still go to the store and to ``unsent``."""
        while True:
            try:
                item = self.channel.get_nowait()
            except Empty:
                return
            if item is not _WAKE:
                root.unsent.append(root.forward(item))

    def result(self) -> dict[str, Any]:
        """The outputs by step name; the first failure, or the run's cancel, raised."""
        if self.failure is not None:
            raise self.failure
        state = self.lane.state
        if state.cancel_requested:
            raise cancellation_error(state)
        return {branch.step.name: self.outputs[branch.step.name] for branch in self.branches}


def run_branches(
    lane: Lane, steps: Sequence[Step], step_input: StepInput, path: str
) -> Generator[BaseEvent, None, dict[str, Any]]:
    """Run ``steps`` as branches of the ``Parallel`` at ``path``; its output once all have ended.

    In the run's own lane this yields every branch event (of any depth) as it
    arrives; in a branch lane it only waits, helping with its own branches.
    """
    draining = lane is lane.root
    group = _Group(lane, steps, step_input, path, draining)
    state = lane.state
    REGISTRY.add_callback(state, group.skip_unstarted)
    try:
        POOL.submit(group.branches)
        if not draining:
            group.help_and_wait()
        else:
            if in_pool_thread():  # a run driven from a branch: don't wait for a pool thread we may hold
                for branch in group.branches:
                    branch.run_if_unclaimed()
            yield from group.drain(lane.root)
    except BaseException as error:
        group.stop(error)
        raise
    finally:
        REGISTRY.remove_callback(state, group.skip_unstarted)
    return group.result()
