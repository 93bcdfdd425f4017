"""Listing runs over HTTP: ``GET /runs`` pages, and the changes the live status feed sends.

The runs come from two places: this process's active runs (live records,
``threadflow.active_runs()``) and the stores (the served workflows' own and
the app's), whose records win once a run has ended. Pages are newest first,
ordered by ``(created_at, run_id)``; a cursor names the last run of the
previous page, so a page never repeats or skips a run that was listed.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from .. import RunInfo, RunStatus, active_runs
from ..storage import RunStore

__all__ = ["MAX_PAGE", "Filters", "Page", "bad_cursor", "list_page", "snapshot"]

#: The most runs one page (or the live feed's first message) holds.
MAX_PAGE = 500
_FIRST_WINDOW = 64  # records asked of a store at first; grows fourfold while a cursor skips them


_Key = tuple[float, str]  # (created_at, run_id): the order of a page, newest first


class Filters(NamedTuple):
    """What ``GET /runs`` selects: a status, and a workflow (its id or its name)."""

    status: RunStatus | None
    workflow: str | None

    def keeps(self, info: RunInfo) -> bool:
        if self.status is not None and info.status != self.status:
            return False
        return self.workflow is None or self.workflow in (info.workflow_id, info.workflow_name)


class Page(NamedTuple):
    runs: list[RunInfo]
    next_cursor: str | None


def _key(info: RunInfo) -> _Key:
    return (info.created_at, info.run_id)


def encode_cursor(info: RunInfo) -> str:
    raw = json.dumps([info.created_at, info.run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_cursor(cursor: str) -> _Key | None:
    """The ``(created_at, run_id)`` a cursor names, or None for text that is no cursor of ours."""
    try:
        created_at, run_id = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
    except (ValueError, TypeError, UnicodeError, binascii.Error, RecursionError):  # "[[[[...": too deep for json
        return None
    if isinstance(created_at, bool) or not isinstance(created_at, int | float) or not isinstance(run_id, str):
        return None
    if not math.isfinite(created_at):  # NaN / Infinity: json reads them, but no run was created then
        return None
    return (float(created_at), run_id)


def bad_cursor(cursor: str | None) -> bool:
    return cursor is not None and decode_cursor(cursor) is None


def _from_store(store: RunStore, filters: Filters, limit: int | None) -> Sequence[RunInfo]:
    lister: Callable[..., Sequence[RunInfo]] = store.list_runs
    if "workflow" in inspect.signature(lister).parameters:  # SqliteStore matches an id or a name itself
        return lister(status=filters.status, workflow=filters.workflow, limit=limit)
    return [info for info in lister(status=filters.status, limit=limit) if filters.keeps(info)]


def _older(runs: Iterable[RunInfo], before: _Key | None) -> list[RunInfo]:
    return [info for info in runs if before is None or _key(info) < before]


def _store_runs(store: RunStore, filters: Filters, before: _Key | None, wanted: int) -> list[RunInfo]:
    """At least ``wanted`` of the store's selected runs older than ``before`` (or all it has), newest first.

    Stores page by count only, so a cursor deep in the history is reached by
    asking for ever larger windows (a page costs reading the runs before it).
    """
    window = max(_FIRST_WINDOW, wanted)
    while True:
        runs = _from_store(store, filters, window)
        older = _older(runs, before)
        if len(older) >= wanted or len(runs) < window:
            return older
        window *= 4


def _merged(stores: Sequence[RunStore], filters: Filters, before: _Key | None, wanted: int) -> list[RunInfo]:
    """The selected runs older than ``before``, newest first: live records of active ones, else the stores'."""
    by_id: dict[str, RunInfo] = {}
    for store in stores:
        for info in _store_runs(store, filters, before, wanted):
            known = by_id.get(info.run_id)
            if known is None or (info.status.is_terminal and not known.status.is_terminal):
                by_id[info.run_id] = info
    for info in _older((info for info in active_runs() if filters.keeps(info)), before):
        known = by_id.get(info.run_id)
        if known is None or not known.status.is_terminal:  # the live record says more than a stored pending one
            by_id[info.run_id] = info
    return sorted(by_id.values(), key=_key, reverse=True)


def list_page(stores: Sequence[RunStore], filters: Filters, limit: int, cursor: str | None) -> Page:
    """One page of runs, newest first, and the cursor of the next one (None on the last page)."""
    before = decode_cursor(cursor) if cursor is not None else None
    runs = _merged(stores, filters, before, limit + 1)
    page = runs[:limit]
    next_cursor = encode_cursor(page[-1]) if len(runs) > limit else None
    return Page(page, next_cursor)


def snapshot(stores: Sequence[RunStore], filters: Filters, limit: int) -> dict[str, RunInfo]:
    """The newest ``limit`` selected runs by id: what the status feed compares from one look to the next."""
    return {info.run_id: info for info in _merged(stores, filters, None, limit)}


def page_json(page: Page) -> dict[str, Any]:
    return {"runs": [info.model_dump(mode="json") for info in page.runs], "next_cursor": page.next_cursor}
