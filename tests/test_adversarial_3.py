"""Adversarial review of lazy queued runs, quiet metrics and the SqliteStore doorbell: each test a defect found."""

from __future__ import annotations

import threading
from collections import deque

import pytest
from conftest import WAIT, names

from threadflow import RunHandle, RunStatus, Step, StepInput, Workflow, _background, get_context
from threadflow.events import BaseEvent


def _blocked(gate: threading.Event) -> Workflow:
    def block(si: StepInput) -> str:
        get_context().wait(gate, timeout=WAIT)
        return f"done {si.input}"

    return Workflow("queued", steps=[Step("block", executor=block)], max_concurrent_runs=1)


def _events_within(handle: RunHandle, timeout: float) -> list[BaseEvent] | None:
    """``list(handle.events())``, or None if it has not ended within ``timeout`` (the follower hangs)."""
    seen: list[BaseEvent] = []
    finished = threading.Event()

    def follow() -> None:
        seen.extend(handle.events())
        finished.set()

    threading.Thread(target=follow, daemon=True).start()
    return seen if finished.wait(timeout) else None


class _InterruptedDeque(deque):  # type: ignore[type-arg]  # any items: it never holds one
    """What the pool's compaction builds: raises KeyboardInterrupt, as Ctrl+C landing in its loop would."""

    def __init__(self, *args: object) -> None:
        raise KeyboardInterrupt


def test_ctrl_c_while_a_cancel_compacts_the_queue_still_records_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compacting 10^4 skipped slots loops for milliseconds: where a real Ctrl+C lands in a cancel.

    The cancelling thread had already taken the run out of the queue: nobody else would ever end it.
    """
    gate = threading.Event()
    wf = _blocked(gate)
    first = wf.run("first", background=True)
    handles = [wf.run(i, background=True) for i in range(100)]
    for handle in handles[:50]:
        assert handle.cancel() is True
    monkeypatch.setattr(_background, "deque", _InterruptedDeque)
    victim = handles[50]  # its cancel makes the skipped slots outnumber the queued runs: it compacts
    with pytest.raises(KeyboardInterrupt):
        victim.cancel()
    monkeypatch.undo()
    assert victim.wait(WAIT) and victim.status is RunStatus.cancelled
    events = _events_within(victim, WAIT)
    assert events is not None and names(events) == ["workflow_started", "workflow_cancelled"]
    gate.set()
    assert all(h.wait(WAIT) for h in [first, *handles])
    assert [h.status for h in handles[51:]] == [RunStatus.completed] * 49
