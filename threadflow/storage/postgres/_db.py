"""Connections: a pool for queries, retried across a lost connection or a restarting server.

Every statement runs inside ``Database.transact(fn)``: ``fn(cursor)`` in one
transaction, committed on return. A connection that breaks (the server
restarted, a network blip, ``pg_terminate_backend``) is dropped by the pool;
``transact`` then tries again on a fresh one until ``retry_seconds`` pass.
Every write here is idempotent or fenced (``_sql.py``), so a transaction
retried after its commit was lost in flight changes nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from ..errors import StoreError

__all__ = ["Cursor", "Database", "Dedicated"]

logger = logging.getLogger("threadflow")

T = TypeVar("T")
Cursor = psycopg.Cursor[Any]

# A connection that broke, or a server that is restarting (admin shutdown, cannot connect now).
_RETRYABLE = (psycopg.OperationalError, psycopg.InterfaceError)


class Database:
    """The store's pool of connections to ``dsn``."""

    def __init__(self, dsn: str, *, max_size: int = 10, retry_seconds: float = 30.0) -> None:
        self.dsn = dsn
        self.retry_seconds = retry_seconds
        self._pool = ConnectionPool(
            dsn, min_size=1, max_size=max_size, open=False, name="tf-postgres", reconnect_timeout=retry_seconds
        )
        self.closed = False

    def open(self, timeout: float) -> None:
        """Connect at once, so that a bad DSN fails in the constructor (``StoreError``)."""
        try:
            self._pool.open(wait=True, timeout=timeout)
        except Exception as error:
            self._pool.close()
            raise StoreError(f"cannot connect to PostgreSQL: {error}") from error

    def transact(self, fn: Callable[[Cursor], T], *, retry: bool = True) -> T:
        """``fn(cursor)`` in one transaction; tried again on a fresh connection while the server is unreachable."""
        deadline = time.monotonic() + (self.retry_seconds if retry else 0.0)
        delay = 0.01
        while True:
            try:
                if self.closed:  # used again after close(): one connection per call, nothing kept
                    with psycopg.connect(self.dsn) as conn, conn.cursor() as cursor:
                        return fn(cursor)
                with self._pool.connection() as conn, conn.cursor() as cursor:
                    return fn(cursor)
            except _RETRYABLE as error:
                if time.monotonic() + delay > deadline:
                    raise StoreError(f"PostgreSQL is unreachable: {error}") from error
                logger.debug("threadflow: postgres: retrying after %s", error)
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def read(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """The rows of one query."""

        def query(cursor: Cursor) -> list[tuple[Any, ...]]:
            cursor.execute(sql, params)
            return cursor.fetchall()

        return self.transact(query)

    def close(self) -> None:
        """Close the pool; later calls each use a connection of their own (a closed store may still be read)."""
        self.closed = True
        self._pool.close()


class Dedicated:
    """One connection of its own for one thread's frequent transactions (a worker's claims): no pool round trip.

    Same contract as ``Database.transact``; the connection is made on first use
    and made again after it breaks.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def transact(self, fn: Callable[[Cursor], T]) -> T:
        if self.db.closed:
            return self.db.transact(fn)
        deadline = time.monotonic() + self.db.retry_seconds
        delay = 0.01
        while True:
            with self._lock:
                try:
                    return self._once(fn)
                except _RETRYABLE as error:
                    self.close_now()
                    if time.monotonic() + delay > deadline:
                        raise StoreError(f"PostgreSQL is unreachable: {error}") from error
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _once(self, fn: Callable[[Cursor], T]) -> T:
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._conn = psycopg.connect(self.db.dsn)
        try:
            with conn.cursor() as cursor:
                result = fn(cursor)
            conn.commit()
        except BaseException:
            if not conn.closed:
                try:
                    conn.rollback()
                except psycopg.Error:
                    self.close_now()
            raise
        return result

    def close_now(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self.close_now()
