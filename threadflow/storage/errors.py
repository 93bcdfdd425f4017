"""``StoreError``: a run history that cannot be used.

It lives apart from any one store (and imports nothing heavy) so that
``threadflow.storage.StoreError`` is importable without loading ``sqlite3``.
"""

from __future__ import annotations

__all__ = ["StoreError"]


class StoreError(Exception):
    """The run history cannot be used: missing, not a threadflow database, newer than this threadflow, or unwritable."""
