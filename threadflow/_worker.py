"""``Worker``: runs the queued runs of some workflows from a shared store, on this host.

One claiming thread takes pending runs (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL) up to ``concurrency`` at once, each run then executing on its
own thread exactly as a background run does. It sleeps while nothing is
queued: a NOTIFY from ``enqueue`` wakes it, and it also looks every
``poll_interval`` seconds. Every third of ``lease_seconds`` it also looks
for runs whose owner stopped renewing its lease and resumes them after their
last completed step.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from ._registry import LOCAL_RUNS, REGISTRY
from ._runner import Runner
from ._validate import check_count, check_seconds
from .events import StepCompletedEvent
from .status import CancelCause
from .storage._defaults import track_store
from .workflow import Workflow

__all__ = ["Worker"]

logger = logging.getLogger("threadflow")


class _Unresumable(Exception):
    """The run's log cannot be resumed from (the message says why)."""


class Worker:
    """Takes queued runs of ``workflows`` from ``store`` and runs them, ``concurrency`` at a time.

    ``store`` must be shared by the processes that enqueue (a
    ``PostgresStore``, or a ``SqliteStore`` for processes on one host); ``lease_seconds`` is how long its runs stay this
    worker's after it stops renewing (it dies, or loses the database):
    then another worker resumes them. ``start()`` returns at once;
    ``stop(timeout)`` stops claiming, lets the runs finish — for at most
    ``timeout`` seconds when given, after which they are cancelled with cause
    ``shutdown`` — and returns True if none had to be cancelled. Use as a
    context manager to start and stop it.
    """

    #: Seconds between looks at the queue when no NOTIFY came.
    poll_interval: float = 1.0

    def __init__(
        self,
        workflows: Workflow | Sequence[Workflow],
        store: Any,
        *,
        concurrency: int = 8,
        lease_seconds: float = 15.0,
    ) -> None:
        flows = [workflows] if isinstance(workflows, Workflow) else list(workflows)
        if not flows or not all(isinstance(wf, Workflow) for wf in flows):
            raise TypeError("workflows must be a Workflow or a non-empty sequence of them")
        if not hasattr(store, "claim"):
            raise ValueError(f"a Worker needs a store with a run queue (PostgresStore), not {type(store).__name__}")
        self.concurrency = check_count("concurrency", concurrency, minimum=1)
        self.lease_seconds = float(check_seconds("lease_seconds", lease_seconds, positive=True) or lease_seconds)
        self.store = store
        track_store(store, LOCAL_RUNS)  # cancels asked through the store reach this process's runs
        self.workflows = {wf.id: wf for wf in flows}
        self._ids = list(self.workflows)
        # A store that cannot wake idle workers (SQLite has no NOTIFY) says how often to look instead.
        self.poll_interval = float(getattr(store, "queue_poll_interval", self.poll_interval))
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[str, Runner] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.ran: list[str] = []  # run ids this worker executed, in claim order (for tests and the cookbook)

    def __repr__(self) -> str:
        return f"Worker({self._ids}, concurrency={self.concurrency})"

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- starting and stopping -------------------------------------------------

    def start(self) -> None:
        """Start claiming (once); returns at once."""
        if self._thread is not None:
            return
        self.store.lease_seconds = self.lease_seconds
        self.store.hold(self._on_queued)
        atexit.register(self._at_exit)
        self._thread = threading.Thread(target=self._loop, name="threadflow-queue-claimer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop claiming; wait for the runs (up to ``timeout``), then cancel the rest (``shutdown``) and wait.

        True if every run ended by itself. Idempotent.
        """
        check_seconds("timeout", timeout, optional=True)
        atexit.unregister(self._at_exit)
        self._stopping = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        finished = self._join(timeout)
        if not finished:
            with self._lock:
                runners = list(self._active.values())
            for runner in runners:
                REGISTRY.cancel(runner.state, "the worker is stopping", CancelCause.shutdown)
            self._join(None)
        if self._thread is not None:
            self.store.unhold(self._on_queued)
            self._thread = None
        return finished

    def _at_exit(self) -> None:
        """Interpreter exit with the worker running: its runs are cancelled (``shutdown``) and recorded, as
        ``threadflow.shutdown()`` does for background runs — never left ``running`` for a lease to expire."""
        self.stop(timeout=0)

    def _join(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._threads):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
        self._threads = [t for t in self._threads if t.is_alive()]
        return not self._threads

    @property
    def active(self) -> int:
        """How many runs this worker is executing."""
        with self._lock:
            return len(self._active)

    # -- claiming ---------------------------------------------------------------

    def _on_queued(self, workflow_id: str) -> None:
        if workflow_id in self.workflows:
            self._wake.set()

    def _loop(self) -> None:
        next_sweep = 0.0
        while not self._stopping:
            self._wake.clear()
            try:
                claimed = self._claim(orphans=time.monotonic() >= next_sweep)
            except Exception:  # the database is restarting, say: look again after a pause
                logger.warning("threadflow: worker could not claim runs (will retry)", exc_info=True)
                claimed = 0
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + min(self.lease_seconds / 3, self.poll_interval)
            if claimed and self.active < self.concurrency:
                continue  # there may be more waiting
            self._wake.wait(min(self.poll_interval, max(0.0, next_sweep - time.monotonic()) + 0.01))

    def _claim(self, *, orphans: bool) -> int:
        free = self.concurrency - self.active
        claims = self.store.claim(self._ids, free)
        if orphans:
            claims += self.store.claim(self._ids, free - len(claims), orphans=True)
            self.store.end_orphans()
        for claim in claims:
            self._launch(claim)
        return len(claims)

    def _launch(self, claim: Any) -> None:
        thread = threading.Thread(target=self._execute, args=(claim,), name="threadflow-queue-run", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        self.ran.append(claim.run_id)
        thread.start()

    # -- running one claimed run -------------------------------------------------

    def _execute(self, claim: Any) -> None:
        try:
            runner = self._runner(claim)
        except _Unresumable as why:
            self.store.release(claim.run_id)
            self.store.fail_claim(claim, f"the run cannot be resumed: {why}", "ResumeError")
            return
        except Exception as error:
            logger.exception("threadflow: worker could not start run %s", claim.run_id)
            self.store.release(claim.run_id)
            self.store.fail_claim(claim, f"the worker could not start the run: {error}", type(error).__name__)
            return
        with self._lock:
            self._active[claim.run_id] = runner
        try:
            self.store.adopt(claim)  # registered first: a cancel that arrives now is answered
            for _ in runner.events():
                pass
        except BaseException:
            logger.exception("threadflow: queued run %s crashed", claim.run_id)
            runner.abandon()
        finally:
            with self._lock:
                self._active.pop(claim.run_id, None)
            self.store.release(claim.run_id)
            self._wake.set()

    def _runner(self, claim: Any) -> Runner:
        workflow = self.workflows[claim.workflow_id]
        run_input = json.loads(claim.input) if claim.input is not None else None
        resume = self._resume_point(claim) if claim.resumed else None
        runner = workflow._new_runner(
            run_input,
            claim.run_id,
            claim.run_timeout,
            background=True,
            create=False,
            store=self.store,
            traceparent=getattr(claim, "traceparent", None),
        )
        runner.state.attempt = claim.attempt
        if resume is not None:
            outputs, last_seq = resume
            runner.resume(outputs, last_seq=last_seq, attempt=claim.attempt, previous_owner=claim.previous_owner)
        return runner

    def _resume_point(self, claim: Any) -> tuple[dict[str, Any], int]:
        """The outputs of the steps the log shows completed, and its last ``seq``."""
        outputs: dict[str, Any] = {}
        last_seq = 0
        for event, exact in self.store.resume_log(claim.run_id):
            last_seq = event.seq
            if isinstance(event, StepCompletedEvent):
                if not exact:
                    raise _Unresumable(f"the output of step {event.step_name!r} is not JSON data")
                outputs[event.step_name] = event.content
        return outputs, last_seq
