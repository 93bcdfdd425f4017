"""Adversarial review of lazy queued runs, quiet metrics and the SqliteStore doorbell: each test a defect found."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import WAIT, names
from test_queued_runs import blocked_workflow
from test_storage_sqlite_bell import FlatOut, answer, ask_as_another_process

import threadflow
from threadflow import RunHandle, RunInfo, RunStatus, Step, Workflow, _background, get_context
from threadflow.events import BaseEvent
from threadflow.storage import MemoryStore, SqliteStore
from threadflow.storage.sqlite._bell import open_bell, ring
from threadflow.storage.sqlite._remote_cancel import WATCHER
from threadflow.testing import check_run_events


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
    wf = blocked_workflow(gate)
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


def test_a_done_callback_raising_keyboard_interrupt_does_not_rob_the_callbacks_after_it() -> None:
    """``await wf.arun()`` on the same run waits on a done callback too: skipped, it would hang for ever."""
    gate = threading.Event()
    wf = blocked_workflow(gate)
    first = wf.run("first", background=True)
    handle = wf.run("queued", background=True)
    called: list[str] = []

    def interrupt(_: RunHandle) -> None:
        called.append("interrupt")
        raise KeyboardInterrupt

    handle.add_done_callback(interrupt)
    handle.add_done_callback(lambda _: called.append("after"))
    with pytest.raises(KeyboardInterrupt):
        handle.cancel()
    assert called == ["interrupt", "after"]
    gate.set()
    assert first.wait(WAIT) and handle.wait(WAIT)


class _FailingEnd(MemoryStore):
    """Its first ``run_ended`` raises, as a store that lost its connection would."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def run_ended(self, info: RunInfo) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("the store went away")
        super().run_ended(info)


@pytest.mark.parametrize("trouble", ["store", "interrupt"])
def test_shutdown_ends_every_queued_run_it_took_whatever_ending_one_of_them_raised(trouble: str) -> None:
    """shutdown() takes every queued run out at once: one it failed to end took the ones after it down too."""
    gate = threading.Event()
    store = _FailingEnd() if trouble == "store" else MemoryStore()
    wf = Workflow(
        "queued",
        steps=[Step("block", executor=lambda si: get_context().wait(gate, timeout=WAIT))],
        max_concurrent_runs=1,
        store=store,
    )
    first = wf.run("first", background=True)
    if trouble == "store":
        store.failed = True  # the first run's end is recorded; the first queued one's is not
        queued = [wf.run(i, background=True) for i in range(3)]
        store.failed = False
    else:
        queued = [wf.run(i, background=True) for i in range(3)]

        def interrupt(_: RunHandle) -> None:
            raise KeyboardInterrupt

        queued[0].add_done_callback(interrupt)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            threadflow.shutdown(WAIT)
        assert all(h.wait(WAIT) for h in queued), [h.status for h in queued]
        assert [h.status for h in queued] == [RunStatus.cancelled] * 3
        assert [wf.get_run(h.run_id) is not None for h in queued[1:]] == [True, True]
    finally:
        gate.set()
        assert first.wait(WAIT)


@pytest.mark.stress
def test_a_queued_run_cancelled_as_it_starts_reads_the_same_to_every_kind_of_follower() -> None:
    """Held under attack (kept as a guard): the lazy log, waiter and output made from six threads at once.

    A cancel, the worker starting the run, ``events()``, ``aevents()``, ``result()`` and
    ``add_done_callback`` race; whoever owns the run, every reader sees one and the same end.
    """
    outcomes: set[RunStatus] = set()
    for _ in range(100):
        gate = threading.Event()
        wf = blocked_workflow(gate)
        first = wf.run("first", background=True)
        handle = wf.run("queued", background=True)
        barrier = threading.Barrier(6)
        seen: dict[str, Any] = {}
        called: list[RunHandle] = []

        async def collect(handle: RunHandle = handle) -> list[BaseEvent]:
            return [event async for event in handle.aevents()]

        def at_once(
            name: str, work: Callable[[], object], barrier: threading.Barrier = barrier, seen: dict[str, Any] = seen
        ) -> threading.Thread:
            def go() -> None:
                barrier.wait()
                seen[name] = work()

            thread = threading.Thread(target=go)
            thread.start()
            return thread

        threads = [
            at_once("accepted", lambda handle=handle: handle.cancel("race")),
            at_once("opened", gate.set),
            at_once("events", lambda handle=handle: list(handle.events())),
            at_once("aevents", lambda collect=collect: asyncio.run(collect())),
            at_once("output", lambda handle=handle: handle.result(WAIT)),
            at_once("callback", lambda handle=handle, called=called: handle.add_done_callback(called.append)),
        ]
        for thread in threads:
            thread.join(WAIT)
        assert first.wait(WAIT) and handle.wait(WAIT)
        status = seen["output"].status
        outcomes.add(status)
        assert (status is RunStatus.cancelled) is seen["accepted"]
        events = check_run_events(seen["events"])
        assert [e.model_dump() for e in seen["aevents"]] == [e.model_dump() for e in events]
        assert events[-1].event == f"workflow_{status.value}" and called == [handle]
        info = wf.get_run(handle.run_id)
        assert info is not None and info.status is status
    assert RunStatus.cancelled in outcomes


# -- the SqliteStore doorbell -----------------------------------------------------------------------

linux_only = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and Path("/dev/shm").is_dir()), reason="the doorbell lives in /dev/shm"
)


@linux_only
def test_a_bell_owns_its_page_of_shared_memory_from_the_start() -> None:
    """A bell whose page is a hole is allocated at the first look: with /dev/shm full, that is SIGBUS."""
    bell = open_bell(secrets.token_hex(16))
    assert bell is not None
    try:
        assert os.stat(bell.path).st_blocks > 0
    finally:
        bell.remove()


@linux_only
def test_no_room_in_dev_shm_means_no_bell_and_no_file_left(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    token = secrets.token_hex(16)
    assert open_bell(token) is None
    assert not Path(f"/dev/shm/threadflow-cancel-{os.getpid()}-{token}").exists()


_FULL_SHM_RUN = """
import os, sys
fd = os.open("/dev/shm/filler", os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, b"x" * 4096)
except OSError:
    pass  # /dev/shm is full
from threadflow import Step, Workflow
from threadflow.storage import SqliteStore
def stream(step_input):
    yield from ["tok"] * 200
with SqliteStore(sys.argv[1]) as store:
    wf = Workflow("full", steps=[Step("s", executor=stream)], store=store)
    events = list(wf.run(stream=True))
print(events[-1].event)
"""


def _private_tiny_shm() -> list[str] | None:
    """The command prefix that runs a process with its own, 64 KiB, /dev/shm; None where it cannot be had."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return None
    prefix = [
        unshare,
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount -t tmpfs -o size=64k tmpfs /dev/shm && exec "$@"',
        "sh",
    ]
    probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
    return prefix if probe.returncode == 0 else None


def test_a_streaming_run_of_a_process_whose_dev_shm_is_full_is_not_killed(tmp_path: Path) -> None:
    """The defect in the flesh: the run's first look at its bell was a SIGBUS (exit -7 / 135)."""
    prefix = _private_tiny_shm()
    if prefix is None:
        pytest.skip("needs a private mount namespace (unshare -m, as root) for a full /dev/shm of its own")
    done = subprocess.run(
        [*prefix, sys.executable, "-c", _FULL_SHM_RUN, str(tmp_path / "runs.db")],
        capture_output=True,
        text=True,
        check=False,
        timeout=WAIT * 3,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "workflow_completed"), done.stderr[-2000:]


_FORKED_OWNER = """
import os, sys, threading
from threadflow import Step, Workflow, get_context
from threadflow.storage import SqliteStore

folder = sys.argv[1]
gate = threading.Event()
parent_store = SqliteStore(f"{folder}/parent.db")
blocking = Step("b", executor=lambda si: get_context().wait(gate, timeout=30))
parent_run = Workflow("parent", steps=[blocking], store=parent_store).run(background=True)
parent_store.flush()  # the run is recorded: this process's cancel watcher runs as it forks
read, write = os.pipe()
child = os.fork()
if child == 0:
    os.close(read)
    def stream(si):
        for count in range(10**9):
            yield "t"
            if count == 1000:
                os.write(write, (get_context().run_id + "\\n").encode())
    with SqliteStore(f"{folder}/child.db") as store:
        events = list(Workflow("child", steps=[Step("s", executor=stream)], store=store).run(stream=True))
    os.write(write, (events[-1].event + "\\n").encode())
    os._exit(0)
os.close(write)
lines = os.fdopen(read)
run_id = lines.readline().strip()
with SqliteStore(f"{folder}/child.db") as asker:
    answer = asker.request_cancel(run_id, "stop", timeout=5)
print(answer, flush=True)
if answer is not True:
    os.kill(child, 9)  # it streams for ever otherwise
print(lines.readline().strip() or "no end", flush=True)
os.waitpid(child, 0)
gate.set()
parent_run.wait(10)
parent_store.close()
"""


@linux_only
def test_a_process_forked_while_its_parent_watches_for_cancels_answers_its_own(tmp_path: Path) -> None:
    """The child inherited the parent's watcher state without its thread: no watcher of its own ever started."""
    done = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", _FORKED_OWNER, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=WAIT * 3,
    )
    assert done.stdout.split() == ["True", "workflow_cancelled"], (done.stdout, done.stderr[-2000:])


@linux_only
def test_a_ring_for_a_run_of_another_store_is_answered_by_the_thread_that_heard_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One doorbell per process, one store's run thread clears it: it used to look only in its own store.

    The watcher's looks are off and no datagram is sent: only a run thread that hears the bell can answer.
    """
    monkeypatch.setattr(type(WATCHER), "_round", lambda self: 0.05)  # the watcher looks nowhere
    gate = threading.Event()
    with SqliteStore(tmp_path / "a.db") as paced_store, SqliteStore(tmp_path / "b.db") as busy_store:
        waiting = Step("wait", executor=lambda si: get_context().wait(gate, timeout=WAIT * 3))
        paced = Workflow("paced", steps=[waiting], store=paced_store).run(background=True)
        step = FlatOut()
        busy = Workflow("busy", steps=[Step("stream", executor=step)], store=busy_store).run(background=True)
        try:
            assert step.reached.wait(WAIT)
            request = ask_as_another_process(paced_store.path, paced.run_id, "from elsewhere")
            owner = paced_store.owner(paced.run_id)
            assert owner is not None and owner.inbox
            ring(owner)  # the paced run's thread never looks: the busy one hears it
            assert paced.wait(WAIT) and paced.status is RunStatus.cancelled
            assert answer(paced_store.path, request) == "accepted"
        finally:
            busy.cancel()
            paced.cancel()
            gate.set()
            assert busy.wait(WAIT) and paced.wait(WAIT)
