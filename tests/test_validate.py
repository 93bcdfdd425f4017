"""The core's one set of argument checks (issue 9): same rule, same message, everywhere."""

from __future__ import annotations

import math

import pytest

from threadflow import Workflow, shutdown
from threadflow._validate import check_count, check_id, check_reason, check_seconds, is_number
from threadflow.storage import MemoryStore


@pytest.mark.parametrize("bad", [True, "1", None, -1, math.nan, -0.5])
def test_seconds_reject_bools_strings_negatives_and_nan(bad: object) -> None:
    with pytest.raises(ValueError, match="x must be a non-negative number of seconds, not"):
        check_seconds("x", bad)


def test_seconds_variants() -> None:
    assert check_seconds("x", 0) == 0.0 and check_seconds("x", 2) == 2.0
    assert check_seconds("x", None, optional=True) is None
    with pytest.raises(ValueError, match="x must be a positive number of seconds or None"):
        check_seconds("x", 0, positive=True, optional=True)


def test_counts_ids_reasons_numbers() -> None:
    assert check_count("n", 0) == 0 and check_count("n", 3, minimum=1) == 3
    for bad in (True, 1.0, -1):
        with pytest.raises(ValueError, match="n must be a non-negative int"):
            check_count("n", bad)
    with pytest.raises(ValueError, match="n must be a positive int"):
        check_count("n", 0, minimum=1)
    assert check_id("id", "a") == "a"
    for bad in ("", 1, None):
        with pytest.raises(ValueError, match="id must be a non-empty str"):
            check_id("id", bad)
    check_reason(None)
    check_reason("why")
    with pytest.raises(TypeError, match="reason must be a str or None, not int"):
        check_reason(1)
    assert [is_number(v) for v in (1, 1.5, True, "1", None)] == [True, True, False, False, False]


def test_the_public_entry_points_use_them() -> None:
    with pytest.raises(ValueError, match="run_timeout must be a positive number of seconds"):
        Workflow("w", steps=[lambda si: None], run_timeout=0)
    with pytest.raises(ValueError, match="max_concurrent_runs must be a positive int"):
        Workflow("w", steps=[lambda si: None], max_concurrent_runs=True)
    with pytest.raises(ValueError, match="max_runs must be a non-negative int"):
        MemoryStore(max_runs=-1)
    with pytest.raises(ValueError, match="timeout must be a non-negative number of seconds or None"):
        shutdown(-1)
    with pytest.raises(ValueError, match="run_id must be a non-empty str"):
        Workflow("w", steps=[lambda si: None]).run(run_id="")
