"""Worker threads for the requests that control runs, apart from anyio's shared pool.

anyio admits at most 40 blocking calls at once to its default pool, and
everything on the loop shares it: the app's plain-function routes, and each
poll of a stream that follows a run through a store (every 50 ms per
stream). With many such streams open, a cancel queued behind their polls
would wait its turn; so starting, cancelling and looking up runs are
admitted by a limiter of their own, and are answered however busy the
shared pool is. (The threads themselves are anyio's: a limiter only admits.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

__all__ = ["CONTROL_THREADS", "on_control_thread"]

_T = TypeVar("_T")

#: Admits the blocking part of starts, cancels and run lookups (a store may do I/O there). Measured
#: with 200 clients starting at once, interleaved: with 32, runs started in waves a busy loop turn
#: (~100 ms) apart, and the p99 of the first token (1.6-2.3 s) and of a cancel (0.9-4.2 s) were
#: 1.5-10x those with 256 (0.75-1.2 s, 0.16-0.86 s). anyio's idle threads exit after 10 s.
CONTROL_THREADS = anyio.CapacityLimiter(256)


async def on_control_thread(fn: Callable[..., _T], *args: object) -> _T:
    """``fn(*args)`` on a worker thread admitted by ``CONTROL_THREADS``, not by the shared pool."""
    return await anyio.to_thread.run_sync(fn, *args, limiter=CONTROL_THREADS)
