"""Unblock blocking calls with ``ctx.on_cancel()``.

threadflow never injects exceptions into a thread, and Python could not
interrupt a thread blocked in a socket read anyway. A step that blocks in
foreign code registers ``ctx.on_cancel(callback)`` instead: the callback runs
in the cancelling thread right after the cancel is accepted (``cancel_run``
returns after it), and its job is to make the blocking call return.

Two runs show the two usual cases:

1. ``read_reply`` waits on a TCP connection to a local server that accepts
   and never answers (think: a hung HTTP upstream). The callback calls
   ``sock.shutdown(socket.SHUT_RDWR)``, so ``recv()`` returns at once.
2. ``next_job`` blocks in ``queue.Queue.get()`` on an empty queue. The
   callback puts a sentinel on the queue, so ``get()`` returns it.

After waking, each step calls ``ctx.check_cancellation()``, which raises
``CancellationError``; the run ends ``cancelled`` a few milliseconds after the
request, instead of never.

Run it (under a second)::

    python cookbook/on_cancel_unblock.py
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable

from threadflow import CancellationError, StepInput, Workflow, WorkflowRunOutput, get_context

CANCEL_AFTER = 0.3  # seconds
_STOP = object()  # the sentinel that wakes a queue consumer

timings: dict[str, float] = {}


def read_reply(step_input: StepInput) -> bytes:
    """Send a request to a server that never answers, and wait for the reply."""
    ctx = get_context()
    host, port = step_input.input
    with socket.create_connection((host, port)) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")

        def unblock() -> None:
            with contextlib.suppress(OSError):  # the socket is already closed: nothing to unblock
                sock.shutdown(socket.SHUT_RDWR)

        ctx.on_cancel(unblock)
        try:
            print("  read_reply: blocked in sock.recv() ...")
            data = sock.recv(4096)  # returns b"" once the callback shuts the socket down
            timings["woke"] = time.perf_counter()
            print(f"  read_reply: recv() returned {data!r}")
            ctx.check_cancellation()  # the read ended because we were cancelled: stop here
            return data
        except CancellationError:
            print("  read_reply: cleanup ran (connection closed)")
            raise


def next_job(step_input: StepInput) -> object:
    """Take the next job from a work queue that stays empty."""
    ctx = get_context()
    jobs: queue.Queue[object] = step_input.input
    ctx.on_cancel(lambda: jobs.put(_STOP))
    print("  next_job: blocked in queue.get() ...")
    job = jobs.get()  # returns the sentinel once the callback has put it
    timings["woke"] = time.perf_counter()
    print(f"  next_job: get() returned {'the sentinel' if job is _STOP else job!r}")
    ctx.check_cancellation()
    return job


def run_and_cancel(workflow: Workflow, run_input: object) -> WorkflowRunOutput:
    """Run ``workflow`` in this thread; cancel it from a timer thread after ``CANCEL_AFTER`` s."""
    run_id = f"{workflow.id}-run"
    accepted: list[bool] = []

    def cancel() -> None:
        timings["requested"] = time.perf_counter()
        accepted.append(workflow.cancel_run(run_id, reason=f"no answer after {CANCEL_AFTER:g}s"))
        timings["returned"] = time.perf_counter()

    timings.clear()
    timer = threading.Timer(CANCEL_AFTER, cancel)
    timer.start()
    output = workflow.run(run_input, run_id=run_id)
    timer.join()
    print(f"Status: {output.status.value}")
    print(f"Cause: {output.cause.value if output.cause else None}")
    print(f"Reason: {output.reason}")
    print(f"cancel_run returned {accepted[0]} in {(timings['returned'] - timings['requested']) * 1000:.2f} ms")
    print(f"Cancel landed in {(timings['woke'] - timings['requested']) * 1000:.2f} ms")
    return output


def silent_server() -> tuple[socket.socket, Callable[[], None]]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        conn, _ = server.accept()
        accepted.append(conn)
        done.wait()  # hold the connection open, say nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()

    def close() -> None:
        done.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()

    return server, close


def main() -> None:
    print("1. A step blocked reading a socket")
    server, close_server = silent_server()
    try:
        run_and_cancel(Workflow("socket reader", steps=[read_reply]), server.getsockname())
    finally:
        close_server()

    print("\n2. A step blocked on queue.Queue.get()")
    run_and_cancel(Workflow("queue consumer", steps=[next_job]), queue.Queue())


if __name__ == "__main__":
    main()
