"""``threadflow.shutdown()`` and interpreter exit (SPEC §1, §3 rule 10, issue 3).

Every background run still active is cancelled with cause ``shutdown`` and
recorded as ``cancelled``: none is left ``running``, nothing stays registered.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

import threadflow
from threadflow import CancelCause, CancellationError, RunStatus, StepInput, Workflow, get_context
from threadflow._registry import REGISTRY, Registry, RunState
from threadflow.testing import check_run_events

pytestmark = pytest.mark.usefixtures("no_leaked_runs")

WAIT = 10.0


class Parked:
    """Steps that park until cancelled, recording the cause their cleanup saw."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.entered: list[Any] = []
        self.cleanup: dict[Any, CancelCause] = {}

    def step(self, si: StepInput) -> str:
        with self._cond:
            self.entered.append(si.input)
            self._cond.notify_all()
        try:
            get_context().wait()
        except CancellationError as cancelled:
            self.cleanup[si.input] = cancelled.cause
            raise
        return "unreachable"

    def wait_for(self, count: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.entered) >= count, WAIT)


def blocked_in_foreign_code(si: StepInput) -> str:
    """Blocks where no checkpoint can reach it; its on_cancel callback is what unblocks it."""
    unblock = threading.Event()
    get_context().on_cancel(unblock.set)
    unblock.wait(WAIT)
    return "late result"


def test_shutdown_cancels_every_run_in_flight_running_or_queued() -> None:
    parked = Parked()
    wf = Workflow("s", steps=[parked.step], max_concurrent_runs=2)
    blocking = Workflow("s2", steps=[blocked_in_foreign_code])
    handles = [wf.run(i, background=True) for i in range(5)]
    handles.append(blocking.run("foreign", background=True))
    assert parked.wait_for(2)  # runs 0 and 1 execute; 2, 3, 4 are queued
    assert [h.status for h in handles[2:5]] == [RunStatus.pending] * 3

    assert threadflow.shutdown(WAIT) is True

    assert all(h.done() for h in handles)
    for handle in handles:
        output = handle.result(0)
        assert output.status is RunStatus.cancelled
        assert output.cause is CancelCause.shutdown
        assert isinstance(output.reason, str)
        check_run_events(handle.events())
    assert parked.cleanup == {0: CancelCause.shutdown, 1: CancelCause.shutdown}
    assert sorted(parked.entered) == [0, 1]  # the queued runs never started
    for queued in handles[2:5]:
        assert [str(e.event) for e in queued.events()] == ["workflow_started", "workflow_cancelled"]
    assert handles[-1].result(0).content is None
    assert threadflow.active_runs() == []
    assert len(REGISTRY) == 0


def test_shutdown_records_runs_as_cancelled_for_get_run() -> None:
    parked = Parked()
    wf = Workflow("s", steps=[parked.step])
    handle = wf.run("x", background=True)
    assert parked.wait_for(1)

    assert threadflow.shutdown(WAIT) is True

    info = threadflow.get_run(handle.run_id)
    assert info is not None
    assert (info.status, info.cause) == (RunStatus.cancelled, CancelCause.shutdown)


def test_shutdown_returns_false_when_a_run_does_not_end_in_time_and_still_records_it() -> None:
    entered, release = threading.Event(), threading.Event()

    def stubborn(si: StepInput) -> str:
        entered.set()
        release.wait(WAIT)  # ignores the cancel (no checkpoint, no on_cancel)
        return "discarded"

    handle = Workflow("s", steps=[stubborn]).run(background=True)
    assert entered.wait(WAIT)

    assert threadflow.shutdown(timeout=0.1) is False

    assert handle.status is RunStatus.cancelling
    release.set()
    output = handle.result(WAIT)
    assert (output.status, output.cause) == (RunStatus.cancelled, CancelCause.shutdown)


def test_shutdown_with_nothing_running_returns_true_at_once() -> None:
    Workflow("s", steps=[lambda si: "ok"]).run(background=True).result(WAIT)
    assert threadflow.shutdown(0) is True


def test_shutdown_rejects_a_negative_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"):
        threadflow.shutdown(-1)


def test_background_runs_work_again_after_a_shutdown() -> None:
    assert threadflow.shutdown(WAIT) is True
    handle = Workflow("s", steps=[lambda si: "ok"]).run(background=True)
    assert handle.result(WAIT).content == "ok"


def test_shutdown_reaches_a_run_whose_id_was_reused_while_the_previous_run_was_ending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run id is free again as soon as the registry drops it; its old worker must not forget the new run.

    The interleaving is forced: the first run's worker is held just after it has
    left the registry, while the same id is started again.
    """
    left_registry, reused = threading.Event(), threading.Event()
    remove = Registry.remove

    def remove_then_hold(self: Registry, state: RunState) -> None:
        remove(self, state)
        if state.run_id == "reused" and not left_registry.is_set():
            left_registry.set()
            reused.wait(WAIT)

    monkeypatch.setattr(Registry, "remove", remove_then_hold)
    parked = Parked()
    wf = Workflow("s", steps=[lambda si: "first" if si.input == "first" else parked.step(si)])
    first = wf.run("first", background=True, run_id="reused")
    assert left_registry.wait(WAIT)
    second = wf.run("second", background=True, run_id="reused")
    reused.set()
    assert first.result(WAIT).content == "first"
    assert parked.wait_for(1)

    assert threadflow.shutdown(WAIT) is True

    assert second.wait(WAIT), "shutdown did not cancel the run that reused the id"
    assert second.result(0).cause is CancelCause.shutdown


# -- interpreter exit --------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import atexit, os, threading

    handles = []

    def say(text):
        os.write(1, (text + "\\n").encode())  # one write: lines from several threads do not interleave

    def report():
        # registered before threadflow is imported, so it runs after threadflow's own exit hook
        for h in handles:
            out = h.result(0)
            say(f"final {h.run_id} {out.status.value} {out.cause.value if out.cause else None}")

    atexit.register(report)

    import threadflow
    from threadflow import CancellationError, Workflow, get_context

    entered = threading.Barrier(4)

    def parked(si):
        ctx = get_context()
        try:
            entered.wait(10)
            ctx.wait()
        except CancellationError as cancelled:
            say(f"cleanup {si.input} {cancelled.cause.value}")
            raise

    def foreign(si):
        ctx = get_context()
        unblock = threading.Event()
        ctx.on_cancel(unblock.set)
        try:
            entered.wait(10)
            unblock.wait(60)
        finally:
            say(f"finally {si.input} {ctx.cancel_cause.value}")

    wf = Workflow("exit", steps=[parked], max_concurrent_runs=1)
    handles.append(wf.run("a", background=True, run_id="run-a"))
    handles.append(wf.run("queued", background=True, run_id="run-queued"))
    handles.append(Workflow("exit2", steps=[foreign]).run("b", background=True, run_id="run-b"))
    handles.append(Workflow("exit3", steps=[parked]).run("c", background=True, run_id="run-c"))
    entered.wait(10)
    say("main thread done")
    """
)


def test_interpreter_exit_cancels_background_runs_and_their_cleanup_runs() -> None:
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=30, check=False)

    assert child.returncode == 0, child.stderr
    assert "Traceback" not in child.stderr, child.stderr
    lines = child.stdout.splitlines()
    assert lines[0] == "main thread done"
    assert sorted(lines[1:4]) == ["cleanup a shutdown", "cleanup c shutdown", "finally b shutdown"]
    assert sorted(lines[4:]) == [
        "final run-a cancelled shutdown",
        "final run-b cancelled shutdown",
        "final run-c cancelled shutdown",
        "final run-queued cancelled shutdown",
    ]
