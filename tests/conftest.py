"""Fixtures shared by the test modules (keep this small; add, don't rewrite)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import threadflow
from threadflow._registry import REGISTRY


@pytest.fixture
def no_leaked_runs() -> Iterator[None]:
    """Fail a test that leaves a run registered; cancel leftovers so the next test starts clean."""
    yield
    leaked = threadflow.active_runs()
    registered = len(REGISTRY)
    if leaked or registered:
        threadflow.shutdown(10)
        for info in threadflow.active_runs():  # runs shutdown() cannot see, e.g. streams
            threadflow.cancel_run(info.run_id, "leaked by a test")
    assert leaked == [], "a run was still active when the test ended"
    assert registered == 0, "the registry still holds an entry"
