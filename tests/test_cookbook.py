"""Every cookbook script runs offline, on its own, and does what its docstring claims.

Each script is executed as a user would run it (``python cookbook/x.py`` from
the repository root) in a subprocess whose network access is limited to the
loopback interface, and its output is checked for the lines that prove the
story it tells: the status, the cause, the cleanup, how fast the cancel landed.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COOKBOOK = ROOT / "cookbook"
SCRIPT_TIMEOUT = 30.0  # seconds; every script finishes in a few
FAST_CANCEL_MS = 250.0  # "at once": far below every wait the scripts would otherwise sit through

TESTED = {
    "agno_seed_tools.py",  # run by test_models_cookbook.py
    "async_background.py",
    "async_steps.py",
    "cancel_run.py",
    "cleanup_and_shield.py",
    "cooperative_checks.py",
    "cross_process_cancel.py",  # run by test_cli_runs.py
    "draft_review_loop.py",
    "http_cancel_stream.py",  # run by test_server_cookbook.py
    "http_polos_cancel.py",  # run by test_server_cookbook.py
    "on_cancel_unblock.py",
    "parallel_research.py",
    "retry_backoff.py",
    "router.py",
    "scale_out.py",  # run by test_postgres_hosts.py (needs a PostgreSQL server)
    "store_history.py",  # run by test_cli_runs.py
    "timeout_waits.py",
}

# Imported at interpreter start-up through PYTHONPATH: any attempt to resolve or
# connect to something other than the loopback interface fails loudly.
_OFFLINE_GUARD = textwrap.dedent(
    """
    import socket

    _LOCAL = {None, "localhost", "127.0.0.1", "::1", ""}
    _getaddrinfo = socket.getaddrinfo
    _connect = socket.socket.connect

    def _refuse(what):
        raise OSError(f"cookbook scripts must run offline; tried to reach {what!r}")

    def getaddrinfo(host, *args, **kwargs):
        if host not in _LOCAL:
            _refuse(host)
        return _getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL:
            _refuse(address)
        return _connect(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect
    """
)


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    guard_dir = tmp_path_factory.mktemp("offline")
    (guard_dir / "sitecustomize.py").write_text(_OFFLINE_GUARD)
    env = {key: value for key, value in os.environ.items() if not key.startswith("THREADFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(guard_dir), env.get("PYTHONPATH")]))
    env["PYTHONWARNINGS"] = "default"  # a warning would show up on stderr, which must stay empty
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def run_script(name: str, env: dict[str, str], *args: str) -> str:
    """Run ``cookbook/<name> [args]`` from the repository root; its stdout, once it exited cleanly."""
    proc = subprocess.run(
        [sys.executable, f"cookbook/{name}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{name} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    assert proc.stderr == "", f"{name} wrote to stderr:\n{proc.stderr}"
    return proc.stdout


def lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines()]


def numbers(pattern: str, output: str) -> list[float]:
    """Every number captured by ``pattern``'s one group, in order."""
    return [float(found) for found in re.findall(pattern, output)]


def assert_in_order(output: str, *fragments: str) -> None:
    """Each fragment occurs in ``output``, after the previous one."""
    position = 0
    for fragment in fragments:
        found = output.find(fragment, position)
        assert found >= 0, f"{fragment!r} missing (or out of order) after position {position} in:\n{output}"
        position = found + len(fragment)


# -- the scripts are what the cookbook promises --------------------------------


def test_offline_guard_refuses_the_network(offline_env: dict[str, str]) -> None:
    probe = "import socket; socket.create_connection(('example.com', 80), timeout=1)"
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        check=False,
        env=offline_env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    assert proc.returncode != 0
    assert "cookbook scripts must run offline" in proc.stderr


def test_every_cookbook_script_is_tested() -> None:
    scripts = {path.name for path in COOKBOOK.glob("*.py")}
    assert scripts - TESTED == set(), "every cookbook script needs a test here (STYLE.md, habit 9)"
    assert TESTED - scripts == set(), "a tested script is missing from cookbook/"


@pytest.mark.parametrize("name", sorted(TESTED))
def test_script_is_documented_and_uses_the_public_api(name: str) -> None:
    tree = ast.parse((COOKBOOK / name).read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree)
    assert docstring, f"{name} needs a module docstring"
    assert f"python cookbook/{name}" in docstring, f"{name}'s docstring should say how to run it"
    public = {"threadflow", "threadflow.events", "threadflow.models", "threadflow.server", "threadflow.client"}
    public.add("threadflow.storage")  # SPEC §5: RunStore, MemoryStore, SqliteStore
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("threadflow"):
            assert node.module in public, f"{name} imports the private module {node.module}"
            assert not any(alias.name.startswith("_") for alias in node.names), f"{name} imports a private name"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("threadflow"):
                    assert alias.name in public, f"{name} imports the private module {alias.name}"


# -- issue 2: cancellation core -------------------------------------------------


def test_cancel_run(offline_env: dict[str, str]) -> None:
    out = run_script("cancel_run.py", offline_env)
    found = re.search(r"Workflow run started: ([0-9a-f-]{36})$", out, flags=re.MULTILINE)
    assert found is not None, out
    run_id = found[1]
    # Only causal order is asserted: the two threads print concurrently.
    assert_in_order(
        out,
        "--- step: research ---",
        f"Cancelling workflow run: {run_id}",  # printed before cancel_run is called
        "was cancelled (requested)",  # run_cancelled, then
        f"Workflow run was cancelled: {run_id}",  # workflow_cancelled
        "RESULTS:",
        "Status: cancelled",
        f"Run ID: {run_id}",
        "Was Cancelled: True",
        "Cause: requested",
        "Reason: cancelled after 2s",
        "Content Preview: About ",
        "SUCCESS: Workflow run was successfully cancelled!",
    )
    assert f"Workflow run {run_id} marked for cancellation\n" in out
    assert "WARNING" not in out


def test_cleanup_and_shield(offline_env: dict[str, str]) -> None:
    out = run_script("cleanup_and_shield.py", offline_env)
    first, second = out.split("Order 1002")
    assert "Status: completed" in first
    assert "Ledger: reserve -> charge-start -> charge-done -> placed -> confirm" in lines(first)
    assert_in_order(
        second,
        "payment charged in full (cancel requested meanwhile: True)",
        "cancel landed: run order-1002 cancelled (requested): customer cancelled the order",
        "cleanup ran: refunded charge-1002",
        "cleanup ran: released reservation of 1 x MS-7",
        "Status: cancelled",
        "Cause: requested",
        "Reason: customer cancelled the order",
        "Stopped in step: place_order",
    )
    # the shield let the charge finish first; the confirmation step never ran
    ledger = [
        "reserve",
        "charge-start",
        "cancel-requested",
        "cancel-returned",
        "charge-done",
        "cancel-landed",
        "refund",
        "release",
    ]
    assert f"Ledger: {' -> '.join(ledger)}" in lines(second)
    assert "confirmation sent" not in second
    (after_shield,) = numbers(r"then landed ([\d.]+) ms after it", second)
    assert after_shield < FAST_CANCEL_MS


def test_cooperative_checks(offline_env: dict[str, str]) -> None:
    out = run_script("cooperative_checks.py", offline_env)
    assert_in_order(
        out,
        "step cleanup: processed",
        "cancel_run('batch-1') returned True",
        "Status: cancelled",
        "Cause: requested",
        "Reason: operator stopped the batch",
    )
    (processed,) = numbers(r"Processed: (\d+) of 20000 items", out)
    assert 0 < processed < 20_000
    assert f"step cleanup: processed {processed:.0f} of 20000 items" in lines(out)
    assert re.search(r"Cancel landed in ctx\.(check_cancellation|sleep)\(\)", out), out
    (latency,) = numbers(r"Cancel latency: ([\d.]+) ms", out)
    assert latency < FAST_CANCEL_MS


def test_on_cancel_unblock(offline_env: dict[str, str]) -> None:
    out = run_script("on_cancel_unblock.py", offline_env)
    socket_part, queue_part = out.split("2. A step blocked on queue.Queue.get()")
    assert_in_order(
        socket_part,
        "read_reply: blocked in sock.recv() ...",
        "read_reply: recv() returned b''",
        "read_reply: cleanup ran (connection closed)",
        "Status: cancelled",
        "Cause: requested",
    )
    assert_in_order(
        queue_part,
        "next_job: blocked in queue.get() ...",
        "next_job: get() returned 'the sentinel'",
        "Status: cancelled",
        "Cause: requested",
    )
    assert out.count("cancel_run returned True") == 2
    landed = numbers(r"Cancel landed in ([\d.]+) ms", out)
    assert len(landed) == 2
    assert max(landed) < FAST_CANCEL_MS


# -- issue 3: run control -------------------------------------------------------


def test_async_background(offline_env: dict[str, str]) -> None:
    out = run_script("async_background.py", offline_env)
    example_1, example_2, example_3, example_4 = re.split(r"Example \d: ", out)[1:]
    assert "Final status: completed" in example_1
    assert "poll #1: " in example_1
    assert_in_order(
        example_2,
        "poll #4: running",
        "Cancel result: True",
        "Final status: cancelled (step: researcher), cause: requested, reason: user pressed stop",
        "Cancelling again: False (the run has ended)",
    )
    assert_in_order(
        example_3,
        ": pending",
        "Cancel result: True",
        "Queued run final status: cancelled (step: None), cause: requested, reason: no longer needed",
        "It emitted: ['workflow_started', 'workflow_cancelled']",
    )
    assert_in_order(
        example_4,
        "The task was cancelled",
        "Run essay-1 final status: cancelled",
        "reason: the awaiting asyncio task was cancelled",
    )
    assert "handler got" not in example_4
    assert "All examples completed!" in out


def test_timeout_waits(offline_env: dict[str, str]) -> None:
    out = run_script("timeout_waits.py", offline_env)
    waits, busy = out.split("2. Busy work over budget")
    assert_in_order(
        waits,
        "manager: the run is waiting; approving",
        "Status: completed",
        "Content: approved and processed",
    )
    (elapsed,) = numbers(r"Elapsed: ([\d.]+) s", waits)
    assert elapsed > 1.0  # twice the 0.5 s budget, yet it completed: waiting did not count
    assert_in_order(
        busy,
        "crunch_numbers: cleanup ran (run crunch-1 cancelled (timeout)",
        "Status: cancelled",
        "Cause: timeout",
        "Reason: run_timeout of 0.5s exceeded",
    )
    (elapsed,) = numbers(r"Elapsed: ([\d.]+) s", busy)
    assert elapsed < 5.0  # stopped well before its 5 s of work


def test_retry_backoff(offline_env: dict[str, str]) -> None:
    out = run_script("retry_backoff.py", offline_env)
    fixed, exponential, cancelled = re.split(r"^\d\. ", out, flags=re.MULTILINE)[1:]
    assert numbers(r"step_retrying: attempt \d failed .*; next attempt in ([\d.]+)s", fixed) == [0.1, 0.1]
    assert_in_order(fixed, "attempt 1 failed with ConnectionError", "workflow_completed: answer after 3 calls")
    assert "Status: completed" in fixed
    assert numbers(r"step_retrying: attempt \d failed .*; next attempt in ([\d.]+)s", exponential) == [0.05, 0.1, 0.2]
    assert_in_order(exponential, "call #4 (attempt 4)", "workflow_completed: answer after 4 calls")
    assert "Status: completed" in exponential
    assert_in_order(
        cancelled,
        "step_retrying: attempt 1 failed; next attempt in 30s",
        "workflow_cancelled: cause requested, reason 'user gave up on the upstream'",
        "Status: cancelled",
    )
    assert "call #2" not in cancelled  # no second attempt: the cancel ended the backoff
    (landed,) = numbers(r"Cancel landed ([\d.]+) ms after the request", cancelled)
    assert landed < FAST_CANCEL_MS


# -- SPEC §7: async steps ---------------------------------------------------------


def test_async_steps(offline_env: dict[str, str]) -> None:
    out = run_script("async_steps.py", offline_env)
    streamed, cancelled, shielded = re.split(r"^\d\. ", out, flags=re.MULTILINE)[1:]
    assert_in_order(
        streamed,
        "step_retrying: attempt 1 failed (upstream reset the connection); next attempt in 0.05s",
        "run_content: '[wiki says hello] '",
        "run_content: '[news says hello] '",
        "run_content: '[blog says hello] '",
        "Status: completed",
        "Content: [wiki says hello] [news says hello] [blog says hello]",
    )
    # Only causal order: the step's thread prints while the main thread cancels.
    assert_in_order(
        cancelled,
        "fetch_forever: connected, awaiting a source that never answers",
        "fetch_forever: asyncio.CancelledError at the await",
        "fetch_forever: cleanup ran (connection closed)",
        "Status: cancelled",
        "Cause: requested",
        "Reason: the user closed the tab",
    )
    assert "cancel returned True" in cancelled
    (landed,) = numbers(r"Cancel landed in ([\d.]+) ms", cancelled)
    assert landed < FAST_CANCEL_MS
    assert_in_order(
        shielded,
        "save_report: report written in full (cancel requested meanwhile: True)",
        "save_report: the cancel landed at the first await after the shield",
        "Status: cancelled",
    )


# -- issue 10: composition -------------------------------------------------------


def test_parallel_research_cancels_every_branch(offline_env: dict[str, str]) -> None:
    out = run_script("parallel_research.py", offline_env)
    assert_in_order(out, "step_started    fanout\n", "fanout/web", "fanout/papers", "fanout/news")
    for source in ("web", "papers", "news"):
        assert f"[{source}] on_cancel: aborting the request" in out
        assert_in_order(out, f"run_cancelled   fanout/{source}", "workflow_cancelled", f"  {source}: closed its stream")
    assert "workflow_cancelled (every branch had stopped: True)" in out
    assert_in_order(
        out,
        "RESULTS",
        "cancel_run returned: True",
        "status: cancelled, cause: requested, reason: the user changed the question",
    )
    assert "did not clean up" not in out


def test_router(offline_env: dict[str, str]) -> None:
    out = lines(run_script("router.py", offline_env))
    assert out[0].startswith("'What is 12 times 7?' -> route/math: About What is 12 times 7?")
    assert out[1].startswith("'A haiku about autumn, please' -> route/writer: About")


def test_draft_review_loop(offline_env: dict[str, str]) -> None:
    out = run_script("draft_review_loop.py", offline_env)
    paths = [line.split()[0] for line in lines(out) if line.startswith("review[")]
    assert paths == [f"review[{i}]/{step}" for i in (1, 2, 3) for step in ("draft", "critique")]
    assert "review[3]/critique APPROVED" in out and "done: workflow_completed, APPROVED" in out
