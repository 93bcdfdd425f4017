"""Benchmarks must keep running: each one's --quick smoke run exits 0 and prints its baselines."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).parent.parent / "benchmarks"

EXPECTED = {
    "bench_concurrency.py": [
        "background run + consumer thread",
        "run(stream=True) in its own thread",
        "+events",
        "bare threads: flag between sleeps",
        "p99",
    ],
    "bench_compose.py": ["bare threads", "threadflow Parallel", "p99", "events per second"],
    "bench_core.py": ["baseline A", "baseline B", "bare loop", "p99", "registry 0"],
    "bench_runcontrol.py": ["bare Thread start", "never cancelled (baseline)", "late"],
    "bench_queued.py": ["pending cf futures (floor)", "queued threadflow runs", "threadflow.shutdown()", "so: yes"],
    "bench_store.py": ["MemoryStore", "SqliteStore", "rounds", "p99"],
    "bench_http.py": ["in-process", "p99", "events per second"],
    "bench_http_load.py": ["floor", "time to first event", "p99", "5xx answers or cut streams: floor 0, threadflow 0"],
    "bench_http_disconnect.py": ["concurrent streams", "p99", "completed after their client left: 0 of 20"],
    "bench_telemetry.py": ["off (no observer)", "metrics", "µs/streamed event", "plain run() with metrics on"],
    "bench_postgres.py": ["bare NOTIFY", "bare SKIP LOCKED", "claims/s", "cross-host cancel", "resume after SIGKILL"],
    "bench_models.py": ["mid-stream", "waiting for headers", "p99", "response.close()", "21/21 connections closed"],
}


def test_every_benchmark_is_smoke_tested() -> None:
    assert {path.name for path in BENCHMARKS.glob("bench_*.py")} == set(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_benchmark_quick_run(script: str, request: pytest.FixtureRequest) -> None:
    env = dict(os.environ)
    if script == "bench_postgres.py":  # the server the tests use (see conftest.pg_server)
        env["THREADFLOW_TEST_PG_DSN"] = request.getfixturevalue("pg_server")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    for needle in EXPECTED[script]:
        assert needle in result.stdout, f"{script} --quick printed no {needle!r}:\n{result.stdout}"


def _has_tag(tag: str) -> bool:
    found = subprocess.run(
        ["git", "-C", str(BENCHMARKS.parent), "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}"],
        capture_output=True,
        check=False,
    )
    return found.returncode == 0


@pytest.mark.skipif(not _has_tag("v0.1.0"), reason="needs the git tag v0.1.0 (a git checkout of the repository)")
def test_compare_quick_installs_the_tag_and_prints_both() -> None:
    """compare.py --quick really installs v0.1.0 into a temporary venv and runs both versions."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "compare.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "installed v0.1.0 into a temporary venv" in result.stdout
    header = next(line for line in result.stdout.splitlines() if line.startswith("benchmark"))
    assert "this tree" in header and "v0.1.0" in header
    for name in ("run_1_step", "run_10_steps", "stream_100 ", "stream_100000"):
        assert any(line.startswith(name) for line in result.stdout.splitlines()), name


def test_the_compare_worker_runs_against_this_tree(tmp_path: pathlib.Path) -> None:
    """The pyperf script itself, on the working tree: it writes a pyperf JSON with every benchmark."""
    import pyperf

    output = tmp_path / "out.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "_compare_worker.py"), "--debug-single-value", "-o", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    names = {bench.get_name() for bench in pyperf.BenchmarkSuite.load(str(output)).get_benchmarks()}
    assert names == {"run_1_step", "run_10_steps", "stream_100", "stream_1000", "stream_10000", "stream_100000"}
