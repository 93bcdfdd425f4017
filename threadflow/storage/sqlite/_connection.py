"""The store's shared connection: every thread but the writer's reads (and writes a little) through it."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ._schema import open_history, transaction

__all__ = ["SharedConnection"]


class SharedConnection:
    """One connection behind one lock, opened on first use (and again on use after ``close()``).

    Whether it is read-only is decided by the first open (``open_history``)
    and kept: a read-only history is never written, by any later open either.
    """

    def __init__(self, path: Path, *, create: bool, timeout: float, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self._create = create
        self._timeout = timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        """Open it now (``StoreError`` for a bad file)."""
        with self._lock:
            self._connection()

    def read(self, sql: str, params: Sequence[Any] = (), *, reopen: bool = True) -> list[Any]:
        """The rows ``sql`` selects; with ``reopen=False``, [] once closed (the file is not touched again)."""
        with self._lock:
            if self._conn is None and not reopen:
                return []
            try:
                return self._connection().execute(sql, params).fetchall()
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: cannot read the run history ({error})") from error

    def transact(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``work`` in one write transaction."""
        with self._lock:
            conn = self._writable()
            try:
                with transaction(conn):
                    return work(conn)
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: cannot write the run history ({error})") from error

    def autocommit(self, work: Callable[[sqlite3.Connection], Any], *, reopen: bool = True) -> Any:
        """Run ``work``, each statement its own transaction; with ``reopen=False``, None once closed."""
        with self._lock:
            if self._conn is None and not reopen:
                return None
            try:
                return work(self._writable())
            except sqlite3.Error as error:
                raise StoreError(f"{self.path}: cannot write the run history ({error})") from error

    def close(self) -> None:
        with self._lock:
            self.close_now()

    def close_now(self) -> None:
        """Close without the lock: for the finaliser of a store nobody can use any more."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn, self.readonly = open_history(
                self.path, create=self._create, timeout=self._timeout, readonly=self.readonly
            )
            self._create = True  # the file exists now; reopening after close() may recreate it
        return self._conn

    def _writable(self) -> sqlite3.Connection:
        conn = self._connection()
        if self.readonly:
            raise StoreError(f"{self.path}: the run history is opened read-only")
        return conn
