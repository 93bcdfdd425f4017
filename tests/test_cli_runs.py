"""``threadflow runs ...`` exercised as a user would: separate processes (SPEC §5, §6; issue 4).

Real second processes cancel a run, a process killed with SIGKILL leaves a run
that the next reader records as ended, several processes write one database
at once, and both cookbook scripts run.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from threadflow import RunStatus, Step, StepInput, Workflow, WorkflowError
from threadflow.events import RunContentEvent, WorkflowCancelledEvent, parse_event
from threadflow.storage import SqliteStore
from threadflow.testing import check_run_events

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0  # seconds, for any one child process


def threadflow_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m threadflow ARGS...`` in a new process; never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", "threadflow", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=TIMEOUT,
        check=False,
        env=env if env is not None else clean_env(),
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("THREADFLOW_")}
    env["PYTHONIOENCODING"] = "utf-8"
    return {**env, **extra}


def ok(*args: str) -> str:
    proc = threadflow_cli(*args)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stderr == ""
    return proc.stdout


def fails(code: int, *args: str, env: dict[str, str] | None = None) -> str:
    """The command exits ``code`` with one line on stderr and no traceback; that line."""
    proc = threadflow_cli(*args, env=env)
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # usage errors too: no usage block
    return proc.stderr.strip()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- a recorded history ------------------------------------------------------------


def tokens(step_input: StepInput) -> Iterator[str]:
    yield from ("one ", "two ", "three")


def refuse(step_input: StepInput) -> str:
    raise PermissionError("not today")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A closed database with four runs of two workflows: completed, cancelled, error, completed."""
    path = tmp_path_factory.mktemp("history") / "runs.db"
    ids: dict[str, str] = {}
    with SqliteStore(path) as store:
        writer = Workflow("Writer Bot", steps=[tokens], store=store)
        ids["first"] = writer.run().run_id
        stream = writer.run(stream=True)
        for event in stream:
            if isinstance(event, RunContentEvent):
                writer.cancel_run(stream.run_id, "stop please")
        ids["cancelled"] = stream.run_id
        reviewer = Workflow("reviewer", steps=[tokens, Step("refuse", executor=refuse)], store=store)
        with pytest.raises(WorkflowError) as raised:
            reviewer.run()
        ids["error"] = raised.value.output.run_id
        ids["last"] = writer.run().run_id
        events = {run_id: list(store.events(run_id)) for run_id in ids.values()}
    return {"db": str(path), "ids": ids, "events": events}


def test_runs_list_prints_a_table_newest_first(history: dict[str, Any]) -> None:
    out = ok("--db", history["db"], "runs", "list").splitlines()
    assert out[0].split() == ["RUN", "ID", "WORKFLOW", "STATUS", "STEP", "CREATED", "DURATION", "DETAIL"]
    ids = history["ids"]
    assert [line.split()[0] for line in out[1:]] == [ids["last"], ids["error"], ids["cancelled"], ids["first"]]
    assert "requested: stop please" in out[3] and "cancelled" in out[3]
    assert "PermissionError: not today" in out[2] and "error" in out[2]


def test_runs_list_json_filters_and_limits(history: dict[str, Any]) -> None:
    db, ids = history["db"], history["ids"]
    everything = json.loads(ok("--db", db, "runs", "list", "--json"))
    assert [run["run_id"] for run in everything] == [ids["last"], ids["error"], ids["cancelled"], ids["first"]]
    assert set(everything[0]) >= {"run_id", "workflow_id", "status", "cause", "reason", "step_name", "created_at"}
    cancelled = json.loads(ok("--db", db, "runs", "list", "--status", "cancelled", "--json"))
    assert [(run["run_id"], run["reason"]) for run in cancelled] == [(ids["cancelled"], "stop please")]
    by_id = json.loads(ok("--db", db, "runs", "list", "--workflow", "writer-bot", "--json"))
    by_name = json.loads(ok("--db", db, "runs", "list", "--workflow", "Writer Bot", "--json"))
    assert (
        [run["run_id"] for run in by_id]
        == [run["run_id"] for run in by_name]
        == [
            ids["last"],
            ids["cancelled"],
            ids["first"],
        ]
    )
    assert [run["run_id"] for run in json.loads(ok("--db", db, "runs", "list", "--limit", "1", "--json"))] == [
        ids["last"]
    ]
    assert json.loads(ok("--db", db, "runs", "list", "--status", "pending", "--json")) == []
    assert ok("--db", db, "runs", "list", "--status", "pending").strip() == "no runs"


def test_runs_status(history: dict[str, Any]) -> None:
    db, run_id = history["db"], history["ids"]["cancelled"]
    record = json.loads(ok("--db", db, "runs", "status", run_id, "--json"))
    assert (record["status"], record["cause"], record["reason"]) == ("cancelled", "requested", "stop please")
    text = ok("--db", db, "runs", "status", run_id)
    assert f"run id:    {run_id}" in text and "status:    cancelled" in text and "reason:    stop please" in text


def test_runs_logs_replays_every_event(history: dict[str, Any]) -> None:
    db = history["db"]
    for run_id, events in history["events"].items():
        lines = ok("--db", db, "runs", "logs", run_id, "--json").splitlines()
        assert [parse_event(line) for line in lines] == events
        text = ok("--db", db, "runs", "logs", run_id).splitlines()
        assert len(text) == len(events)
        assert text[-1].split()[2] == events[-1].event.value


def test_the_db_option_and_environment_variable(history: dict[str, Any]) -> None:
    after = json.loads(ok("runs", "list", "--db", history["db"], "--json"))
    proc = threadflow_cli("runs", "list", "--json", env=clean_env(THREADFLOW_DB=history["db"]))
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == after
    assert len(after) == 4


def test_unknown_runs_are_exit_1(history: dict[str, Any]) -> None:
    db = history["db"]
    for command in ("status", "logs", "cancel"):
        assert "no run 'nope'" in fails(1, "--db", db, "runs", command, "nope")


@pytest.mark.skipif(
    not hasattr(SqliteStore, "run_ids_with_prefix"), reason="needs SqliteStore.run_ids_with_prefix (storage)"
)
def test_a_run_id_prefix_names_the_run(history: dict[str, Any]) -> None:
    db, run_id = history["db"], history["ids"]["cancelled"]
    prefix = run_id[:13]  # 52 random bits: unique among the four runs
    assert json.loads(ok("--db", db, "runs", "status", prefix, "--json"))["run_id"] == run_id
    assert [parse_event(line) for line in ok("--db", db, "runs", "logs", prefix, "--json").splitlines()] == (
        history["events"][run_id]
    )
    assert f"run {run_id} is not cancellable" in fails(1, "--db", db, "runs", "cancel", prefix)


def test_an_ended_run_is_not_cancellable(history: dict[str, Any]) -> None:
    line = fails(1, "--db", history["db"], "runs", "cancel", history["ids"]["first"])
    assert "not cancellable" in line and "completed" in line


def test_usage_errors_are_exit_2(history: dict[str, Any], tmp_path: Path) -> None:
    db = history["db"]
    assert "--db PATH or set THREADFLOW_DB" in fails(2, "runs", "list", env=clean_env())
    assert "required: SUBCOMMAND" in fails(2, "--db", db, "runs")
    assert "argument --status: invalid choice: 'finished'" in fails(
        2, "--db", db, "runs", "list", "--status", "finished"
    )
    assert "argument --limit:" in fails(2, "--db", db, "runs", "list", "--limit", "0")
    assert "required: RUN_ID" in fails(2, "--db", db, "runs", "status")
    assert "argument --timeout:" in fails(2, "--db", db, "runs", "cancel", "x", "--timeout", "-1")


# -- bad files ------------------------------------------------------------------------


def test_a_missing_database_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.db"
    for command in (["list"], ["status", "x"], ["logs", "x"], ["cancel", "x"]):
        assert "does not exist" in fails(1, "--db", str(missing), "runs", *command)
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_database_is_an_error_and_is_not_changed(tmp_path: Path) -> None:
    corrupt = tmp_path / "runs.db"
    corrupt.write_bytes(os.urandom(8192))
    before = digest(corrupt)
    assert "not a threadflow run history" in fails(1, "--db", str(corrupt), "runs", "list")
    assert "not a threadflow run history" in fails(1, "--db", str(corrupt), "demo", "--no-cancel")
    assert digest(corrupt) == before


def test_a_newer_schema_is_an_error_and_is_not_changed(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    before = digest(path)
    line = fails(1, "--db", str(path), "runs", "list")
    assert "newer threadflow" in line and "999" in line
    assert digest(path) == before


def test_a_schema_version_below_one_is_an_error_and_is_not_changed(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("CREATE TABLE runs (x)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '0')")
    conn.commit()
    conn.close()
    before = digest(path)
    assert "unknown schema version 0" in fails(1, "--db", str(path), "runs", "list")
    assert digest(path) == before


def test_another_programs_database_holding_only_a_view_is_not_changed(tmp_path: Path) -> None:
    path = tmp_path / "theirs.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE VIEW v AS SELECT 1 AS one")
    conn.commit()
    conn.close()
    before = digest(path)
    assert "no threadflow tables" in fails(1, "--db", str(path), "demo", "--no-cancel")
    assert "no threadflow tables" in fails(1, "--db", str(path), "runs", "list")
    assert digest(path) == before


# -- text that is not UTF-8 ---------------------------------------------------------------


def test_a_token_with_a_lone_surrogate_is_printed_as_json(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"

    def odd(step_input: StepInput) -> Iterator[str]:
        yield from ("ok ", "bad \ud800 token")

    with SqliteStore(path) as store:
        run_id = Workflow("odd", steps=[odd], store=store).run().run_id
        events = list(store.events(run_id))
    lines = ok("--db", str(path), "runs", "logs", run_id, "--json").splitlines()
    assert [parse_event(json.loads(line)) for line in lines] == events
    assert "'bad \\ud800 token'" in ok("--db", str(path), "runs", "logs", run_id)


# -- the demo ---------------------------------------------------------------------------


def test_the_demo_stores_its_run(tmp_path: Path) -> None:
    path = tmp_path / "demo.db"
    ok("--db", str(path), "demo", "--no-cancel", "--tokens-per-second", "5000")
    proc = threadflow_cli(
        "demo", "--cancel-after", "0.02", "--tokens-per-second", "200", env=clean_env(THREADFLOW_DB=str(path))
    )
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(ok("--db", str(path), "runs", "list", "--json"))
    assert [(run["workflow_id"], run["status"]) for run in runs] == [
        ("research-and-write", "cancelled"),
        ("research-and-write", "completed"),
    ]


# -- other processes ---------------------------------------------------------------------

_LONG_RUN = textwrap.dedent(
    """
    import sys
    from threadflow import Workflow, get_context
    from threadflow.events import RunContentEvent
    from threadflow.storage import SqliteStore

    def endless(step_input):
        ctx = get_context()
        for i in range(10**9):
            yield f"{i} "
            ctx.sleep(0.002)

    stream = Workflow("long", steps=[endless], store=SqliteStore(sys.argv[1])).run(stream=True)
    for event in stream:
        if isinstance(event, RunContentEvent) and event.content == "2 ":
            print("ready", stream.run_id, flush=True)
        if event.terminal:
            print(event.model_dump_json(), flush=True)
    """
)


@pytest.fixture
def long_run(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """A process streaming an endless stored run; (the process, the database, the run id)."""
    db = str(tmp_path / "runs.db")
    with subprocess.Popen(
        [sys.executable, "-c", _LONG_RUN, db], stdout=subprocess.PIPE, text=True, env=clean_env()
    ) as child:
        try:
            assert child.stdout is not None
            ready = child.stdout.readline().split()
            assert ready[:1] == ["ready"], ready
            yield child, db, ready[1]
        finally:
            child.kill()


def test_another_process_cancels_a_run(long_run: tuple[subprocess.Popen[str], str, str]) -> None:
    child, db, run_id = long_run
    assert json.loads(ok("--db", db, "runs", "status", run_id, "--json"))["status"] == "running"
    out = ok("--db", db, "runs", "cancel", run_id, "--reason", "from another process")
    assert out.strip() == f"cancelling run {run_id} (from another process)"
    assert child.stdout is not None
    terminal = parse_event(child.stdout.readline())
    assert isinstance(terminal, WorkflowCancelledEvent)
    assert (terminal.cause.value, terminal.reason) == ("requested", "from another process")
    assert child.wait(TIMEOUT) == 0
    record = json.loads(ok("--db", db, "runs", "status", run_id, "--json"))
    assert (record["status"], record["reason"]) == ("cancelled", "from another process")
    assert "not cancellable" in fails(1, "--db", db, "runs", "cancel", run_id)


def test_logs_follow_ends_at_the_terminal_event(long_run: tuple[subprocess.Popen[str], str, str]) -> None:
    child, db, run_id = long_run
    command = [sys.executable, "-m", "threadflow", "--db", db, "runs", "logs", run_id, "--follow", "--json"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=clean_env()) as follower:
        assert follower.stdout is not None
        first = parse_event(follower.stdout.readline())
        assert first.seq == 1  # following: it printed the start, and is waiting for more
        ok("--db", db, "runs", "cancel", run_id, "--json")
        rest = [parse_event(line) for line in follower.stdout.read().splitlines()]
        assert follower.wait(TIMEOUT) == 0
    events = check_run_events([first, *rest])
    assert isinstance(events[-1], WorkflowCancelledEvent)
    assert child.wait(TIMEOUT) == 0


def test_runs_cancel_with_an_undecodable_reason(long_run: tuple[subprocess.Popen[str], str, str]) -> None:
    child, db, run_id = long_run
    out = ok("--db", db, "runs", "cancel", run_id, "--reason", os.fsdecode(b"stop \xff"))  # how argv decodes it
    assert out.strip() == f"cancelling run {run_id} (stop ?)"
    assert child.stdout is not None
    terminal = parse_event(child.stdout.readline())
    assert isinstance(terminal, WorkflowCancelledEvent) and terminal.reason == "stop ?"
    assert child.wait(TIMEOUT) == 0
    assert json.loads(ok("--db", db, "runs", "status", run_id, "--json"))["reason"] == "stop ?"


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_owner_leaves_no_run_running(long_run: tuple[subprocess.Popen[str], str, str]) -> None:
    child, db, run_id = long_run
    child.send_signal(signal.SIGKILL)
    child.wait(TIMEOUT)
    runs = json.loads(ok("--db", db, "runs", "list", "--json"))
    assert [(run["run_id"], run["status"], run["error"]) for run in runs] == [(run_id, "error", "owner process exited")]
    assert "owner process exited" in ok("--db", db, "runs", "list")
    events = check_run_events(
        [parse_event(line) for line in ok("--db", db, "runs", "logs", run_id, "--json").split("\n") if line]
    )
    assert events[-1].event.value == "workflow_error"
    assert "not cancellable" in fails(1, "--db", db, "runs", "cancel", run_id)


_WRITER = textwrap.dedent(
    """
    import sys
    from threadflow import Workflow
    from threadflow.storage import SqliteStore

    def tokens(step_input):
        for i in range(int(sys.argv[3])):
            yield f"{sys.argv[2]}:{i} "

    workflow = Workflow(f"writer {sys.argv[2]}", steps=[tokens], store=SqliteStore(sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    for _ in range(int(sys.argv[4])):
        workflow.run()
    """
)


def test_several_processes_write_one_database(tmp_path: Path) -> None:
    db, processes, runs_each, tokens_each = str(tmp_path / "shared.db"), 4, 5, 400
    SqliteStore(db).close()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, db, str(n), str(tokens_each), str(runs_each)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        for n in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.close()
        assert [child.wait(TIMEOUT) for child in children] == [0] * processes
    finally:
        for child in children:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
    with SqliteStore(db, create=False) as store:
        runs = store.list_runs()
        assert len(runs) == processes * runs_each
        assert {info.status for info in runs} == {RunStatus.completed}
        for info in runs:
            events = check_run_events(store.events(info.run_id))
            assert len([event for event in events if isinstance(event, RunContentEvent)]) == tokens_each


# -- the cookbook ---------------------------------------------------------------------------


def cookbook(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, f"cookbook/{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        check=False,
        env=clean_env(PYTHONWARNINGS="default"),
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert proc.stderr == ""
    return proc.stdout


def test_cookbook_store_history() -> None:
    out = cookbook("store_history.py")
    assert "$ threadflow --db runs.db runs list" in out
    assert "PermissionError: legal review rejected the draft" in out
    assert "cancelled in step 'researcher' because 'the editor changed the topic'" in out
    assert "workflow_cancelled" in out and "replayed" in out


def test_cookbook_cross_process_cancel() -> None:
    out = cookbook("cross_process_cancel.py")
    assert "cancelling run" in out
    assert "worker: run ended cancelled (requested: an operator stopped it)" in out
    assert "is not cancellable: it has ended (cancelled)" in out
