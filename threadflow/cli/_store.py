"""Which run history a command uses: ``--db`` or ``$THREADFLOW_DB``, opened by ``open_store``."""

from __future__ import annotations

import argparse
import os

from ..storage import RunStore
from ._args import DB_ENV, EXIT_USAGE, CommandError

__all__ = ["check_db", "db_from", "open_store"]

_POSTGRES_SCHEMES = frozenset({"postgres", "postgresql"})


def db_from(args: argparse.Namespace) -> str | None:
    """The history the command line names: ``--db`` (the last one given), else ``$THREADFLOW_DB``, else None."""
    return getattr(args, "db", None) or os.environ.get(DB_ENV) or None


def check_db(db: str) -> None:
    """Raise ``CommandError`` (exit 2) when ``db`` names a kind of store this threadflow cannot open."""
    scheme, separator, _ = db.partition("://")
    if separator and scheme.lower() not in _POSTGRES_SCHEMES:
        # never echo the URL: it may carry a password
        raise CommandError(
            f"--db: unknown kind of database {scheme!r}://; give a SQLite path or a postgresql:// URL", EXIT_USAGE
        )


def is_postgres(db: str) -> bool:
    scheme, separator, _ = db.partition("://")
    return bool(separator) and scheme.lower() in _POSTGRES_SCHEMES


def open_store(db: str, *, create: bool = True) -> RunStore:
    """The store ``db`` names — the one place that chooses a store by the ``--db`` value.

    A ``postgresql://`` (or ``postgres://``) URL is a ``PostgresStore`` (the
    extra ``threadflow[postgres]``; ``CommandError`` when it is missing);
    anything else is a SQLite file path (``create=False``: the file must
    already be a history; ``StoreError`` otherwise).
    """
    check_db(db)
    if is_postgres(db):
        try:
            from ..storage import PostgresStore
        except ImportError as error:
            raise CommandError(
                f"--db: PostgreSQL needs psycopg: pip install 'threadflow[postgres]' ({error})", EXIT_USAGE
            ) from error
        return PostgresStore(db)
    from ..storage import SqliteStore

    return SqliteStore(db, create=create)
