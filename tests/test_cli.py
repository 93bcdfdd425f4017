"""The ``threadflow`` command line's parsing and errors, driven through ``main()`` in this process (issues 8, 9).

Only public names are used: ``threadflow.cli.main``, and where a test needs a
store or a server that behaves a certain way, it replaces the public
``threadflow.storage.SqliteStore`` or ``threadflow.server.serve_target`` that
the CLI looks up when a command runs.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import threadflow
import threadflow.storage
from threadflow import RunInfo, RunStatus, StepInput, Workflow
from threadflow.cli import main
from threadflow.events import Event
from threadflow.storage import SqliteStore

PACKAGE = Path(threadflow.__file__).resolve().parent
TIMEOUT = 60.0


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``threadflow ARGV...`` in this process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *argv: str) -> str:
    """The command exits ``code`` with exactly one line on stderr (no usage block, no traceback); that line."""
    got, out, err = cli(capsys, *argv)
    assert got == code, f"exit {got}\n{out}\n{err}"
    assert len(err.splitlines()) == 1, err
    return err.strip()


@pytest.fixture(autouse=True)
def no_db_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset ``$THREADFLOW_DB``, and unset it again afterwards: ``serve --db`` sets it in this process."""
    monkeypatch.setenv("THREADFLOW_DB", "")  # recorded, so undone after the test even if set meanwhile
    monkeypatch.delenv("THREADFLOW_DB")


# -- --db before or after the command (issue 8, item 16) ---------------------------------


def tokens(step_input: StepInput) -> Iterator[str]:
    yield from ("one ", "two")


def record_runs(path: Path, *run_ids: str) -> None:
    with SqliteStore(path) as store:
        workflow = Workflow("recorded", steps=[tokens], store=store)
        for run_id in run_ids:
            workflow.run(run_id=run_id)


def stored_workflows(path: Path) -> list[str]:
    with SqliteStore(path, create=False) as store:
        return [info.workflow_id for info in store.list_runs()]


def test_db_after_demo_as_the_readme_writes_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    code, out, err = cli(capsys, "demo", "--no-cancel", "--tokens-per-second", "5000", "--db", str(db))
    assert (code, err) == (0, ""), err
    assert "status:  completed" in out
    assert stored_workflows(db) == ["research-and-write"]


def test_db_after_serve_reaches_the_server(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    not_a_history = tmp_path / "notes.db"
    not_a_history.write_bytes(os.urandom(4096))  # the server refuses it before importing the target
    line = one_line_error(capsys, 1, "serve", "no_such_module:app", "--db", str(not_a_history))
    assert "not a threadflow run history" in line


def test_db_after_runs_and_after_its_sub_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    record_runs(db, "only-run")
    for argv in (["runs", "--db", str(db), "list", "--json"], ["runs", "list", "--json", "--db", str(db)]):
        code, out, err = cli(capsys, *argv)
        assert (code, err) == (0, "")
        assert [run["run_id"] for run in json.loads(out)] == ["only-run"]


def test_the_last_db_given_wins(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    first, last = tmp_path / "first.db", tmp_path / "last.db"
    record_runs(first, "in-first")
    record_runs(last, "in-last")
    for argv in (
        ["--db", str(first), "runs", "--db", str(last), "list", "--json"],
        ["--db", str(first), "runs", "list", "--db", str(last), "--json"],
        ["runs", "--db", str(first), "list", "--db", str(last), "--json"],
    ):
        code, out, _ = cli(capsys, *argv)
        assert code == 0
        assert [run["run_id"] for run in json.loads(out)] == ["in-last"], argv
    demo = ["demo", "--no-cancel", "--tokens-per-second", "5000"]
    code, _, _ = cli(capsys, "--db", str(tmp_path / "absent.db"), *demo, "--db", str(last))
    assert code == 0
    assert not (tmp_path / "absent.db").exists()
    assert stored_workflows(last) == ["research-and-write", "recorded"]


def test_the_flag_beats_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_db, flag_db = tmp_path / "env.db", tmp_path / "flag.db"
    record_runs(env_db, "from-env")
    record_runs(flag_db, "from-flag")
    monkeypatch.setenv("THREADFLOW_DB", str(env_db))
    assert [run["run_id"] for run in json.loads(cli(capsys, "runs", "list", "--json")[1])] == ["from-env"]
    out = cli(capsys, "runs", "list", "--json", "--db", str(flag_db))[1]
    assert [run["run_id"] for run in json.loads(out)] == ["from-flag"]


# -- bad values: one line naming the flag, exit 2 (item 17) --------------------------------

BAD_VALUES = [
    (["serve", "app:wf", "--port", "99999"], "--port"),
    (["serve", "app:wf", "--port", "-1"], "--port"),
    (["serve", "app:wf", "--port", "http"], "--port"),
    (["serve", "app:wf", "--max-body-bytes", "0"], "--max-body-bytes"),
    (["demo", "--cancel-after", "nan"], "--cancel-after"),
    (["demo", "--cancel-after", "inf"], "--cancel-after"),
    (["demo", "--cancel-after", "-1"], "--cancel-after"),
    (["demo", "--tokens-per-second", "0"], "--tokens-per-second"),
    (["demo", "--tokens-per-second", "nan"], "--tokens-per-second"),
    (["demo", "--tokens-per-second", "abc"], "--tokens-per-second"),
    (["runs", "list", "--limit", "0"], "--limit"),
    (["runs", "list", "--limit", "2.5"], "--limit"),
    (["runs", "list", "--status", "finished"], "--status"),
    (["runs", "cancel", "some-run", "--timeout", "nan"], "--timeout"),
    (["runs", "cancel", "some-run", "--timeout", "inf"], "--timeout"),
    (["runs", "cancel", "some-run", "--timeout", "0"], "--timeout"),
]


@pytest.mark.parametrize(("argv", "flag"), BAD_VALUES, ids=[" ".join(argv) for argv, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_the_flag(
    capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
) -> None:
    line = one_line_error(capsys, 2, *argv)
    assert f"argument {flag}:" in line and argv[-1] in line


@pytest.mark.parametrize(
    "argv",
    [["no-such-command"], [], ["runs"], ["runs", "status"], ["demo", "--no-such-flag"], ["serve"]],
    ids=repr,
)
def test_other_usage_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert "error:" in one_line_error(capsys, 2, *argv)


def test_cancel_after_zero_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "demo", "--cancel-after", "0", "--tokens-per-second", "50")
    assert code == 0
    assert "status:  cancelled" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "--version") == (0, f"threadflow {threadflow.__version__}\n", "")


HELP_PAGES = [
    [],
    ["demo"],
    ["serve"],
    ["runs"],
    ["runs", "list"],
    ["runs", "status"],
    ["runs", "logs"],
    ["runs", "cancel"],
]


@pytest.mark.parametrize("command", HELP_PAGES, ids=lambda command: " ".join(["threadflow", *command]))
def test_help_is_plain_text(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, err = cli(capsys, *command, "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: threadflow")
    for markup in ("``", "::", ":class:", ":func:"):
        assert markup not in out


def test_help_says_where_db_goes_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    out = cli(capsys, "--help")[1]
    assert "the last one wins" in out and "Exit codes: 0 success" in out


# -- run id prefixes (item 19) --------------------------------------------------------------


class PrefixStore(SqliteStore):
    """A SQLite history with ``run_ids_with_prefix``, as the store is getting it (newest first)."""

    def run_ids_with_prefix(self, prefix: str, *, limit: int = 2) -> list[str]:
        return [info.run_id for info in self.list_runs() if info.run_id.startswith(prefix)][:limit]


class ExactOnlyStore:
    """A ``RunStore`` without prefix lookup: only the protocol's methods, handed on to a SQLite history."""

    records_events = True

    def __init__(self, path: str, *, create: bool = True) -> None:
        self._store = SqliteStore(path, create=create)

    def get_run(self, run_id: str) -> RunInfo | None:
        return self._store.get_run(run_id)

    def list_runs(
        self, *, status: RunStatus | None = None, workflow_id: str | None = None, limit: int | None = None
    ) -> Sequence[RunInfo]:
        return self._store.list_runs(status=status, workflow_id=workflow_id, limit=limit)

    def events(self, run_id: str, after_seq: int = 0) -> Sequence[Event]:
        return self._store.events(run_id, after_seq)

    def request_cancel(self, run_id: str, reason: str | None = None) -> bool | None:
        return self._store.request_cancel(run_id, reason)

    def close(self) -> None:
        self._store.close()


@pytest.fixture
def prefixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A history whose ids share prefixes, opened by the CLI as a store with prefix lookup; its path."""
    db = tmp_path / "runs.db"
    record_runs(db, "abc", "abcdef-1111", "abcdef-2222", "fed-3333")
    monkeypatch.setattr(threadflow.storage, "SqliteStore", PrefixStore)
    return str(db)


@pytest.mark.parametrize("command", ["status", "logs"])
def test_a_unique_prefix_names_its_run(capsys: pytest.CaptureFixture[str], prefixed: str, command: str) -> None:
    code, out, err = cli(capsys, "--db", prefixed, "runs", command, "fe", "--json")
    assert (code, err) == (0, "")
    if command == "logs":  # one event a line
        assert {json.loads(line)["run_id"] for line in out.splitlines()} == {"fed-3333"}
    else:
        assert json.loads(out)["run_id"] == "fed-3333"


def test_cancel_by_prefix_acts_on_the_full_id(capsys: pytest.CaptureFixture[str], prefixed: str) -> None:
    line = one_line_error(capsys, 1, "--db", prefixed, "runs", "cancel", "abcdef-2")
    assert line == "threadflow runs cancel: run abcdef-2222 is not cancellable: it has ended (completed)"


def test_an_exact_id_wins_over_longer_ids(capsys: pytest.CaptureFixture[str], prefixed: str) -> None:
    code, out, _ = cli(capsys, "--db", prefixed, "runs", "status", "abc", "--json")
    assert (code, json.loads(out)["run_id"]) == (0, "abc")


@pytest.mark.parametrize("command", ["status", "logs", "cancel"])
def test_an_ambiguous_prefix_is_exit_1_listing_candidates(
    capsys: pytest.CaptureFixture[str], prefixed: str, command: str
) -> None:
    line = one_line_error(capsys, 1, "--db", prefixed, "runs", command, "abcd")
    assert "ambiguous" in line and "abcdef-1111" in line and "abcdef-2222" in line


def test_no_match_is_exit_1(capsys: pytest.CaptureFixture[str], prefixed: str) -> None:
    assert "no run 'zzz'" in one_line_error(capsys, 1, "--db", prefixed, "runs", "status", "zzz")


def test_a_store_without_prefix_lookup_finds_exact_ids_only(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "runs.db"
    record_runs(db, "abcdef-1111")
    monkeypatch.setattr(threadflow.storage, "SqliteStore", ExactOnlyStore)
    assert "no run 'abc'" in one_line_error(capsys, 1, "--db", str(db), "runs", "status", "abc")
    code, out, _ = cli(capsys, "--db", str(db), "runs", "status", "abcdef-1111", "--json")
    assert (code, json.loads(out)["status"]) == (0, "completed")
    code, out, _ = cli(capsys, "--db", str(db), "runs", "list", "--workflow", "recorded", "--json")
    assert (code, [run["run_id"] for run in json.loads(out)]) == (0, ["abcdef-1111"])


# -- which store --db names ------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["runs", "list"], ["demo", "--no-cancel"]], ids=lambda argv: argv[0])
def test_an_unreachable_postgres_url_is_one_line_and_never_echoes_the_password(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    pytest.importorskip("psycopg")
    # port 1 on loopback refuses at once: no network is touched
    line = one_line_error(capsys, 1, *argv, "--db", "postgresql://admin:s3cret@127.0.0.1:1/runs?connect_timeout=2")
    assert "PostgreSQL" in line and "s3cret" not in line


@pytest.mark.parametrize("argv", [["runs", "list"], ["serve", "app:wf"]], ids=lambda argv: argv[0])
def test_an_unknown_kind_of_database_url_is_a_usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    line = one_line_error(capsys, 2, *argv, "--db", "mysql://admin:s3cret@127.0.0.1/runs")
    assert "mysql" in line and "s3cret" not in line


# -- serve ---------------------------------------------------------------------------------


def test_serve_without_the_server_extra_names_the_install_command() -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None; from threadflow.cli import main; sys.exit(main(['serve', 'a:b']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "pip install 'threadflow[server]'" in proc.stderr


def test_serve_passes_its_options_to_the_server(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = pytest.importorskip("threadflow.server")
    calls: list[dict[str, Any]] = []

    def serve_target(target: str, **options: Any) -> int:
        calls.append({"target": target, **options})
        return 0

    monkeypatch.setattr(server, "serve_target", serve_target)
    assert cli(capsys, "serve", "app:wf", "--port", "0", "--max-body-bytes", "1024", "--db", "x.db")[0] == 0
    assert cli(capsys, "serve", "app:wf")[0] == 0
    assert calls == [
        {"target": "app:wf", "host": "127.0.0.1", "port": 0, "api_key": None, "db": "x.db", "max_body_bytes": 1024},
        {"target": "app:wf", "host": "127.0.0.1", "port": 8000, "api_key": None, "db": None},
    ]


def test_serve_max_body_bytes_needs_a_server_that_has_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = pytest.importorskip("threadflow.server")

    def serve_target(target: str, *, host: str, port: int, api_key: str | None, db: str | None) -> int:
        raise AssertionError("not to be called")

    monkeypatch.setattr(server, "serve_target", serve_target)
    assert "--max-body-bytes" in one_line_error(capsys, 2, "serve", "app:wf", "--max-body-bytes", "10")


# -- the package (issue 9) -----------------------------------------------------------------

PUBLIC = {"threadflow", "threadflow.events", "threadflow.status", "threadflow.exceptions", "threadflow.storage"}
PUBLIC |= {"threadflow.models", "threadflow.server"}


def _imported_modules(path: Path) -> Iterator[str]:
    """The threadflow modules ``path`` (a module of threadflow.cli) imports, as absolute names."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level >= 2:  # out of threadflow.cli
            yield ".".join(["threadflow", *filter(None, [node.module])])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("threadflow"):
            yield node.module or ""
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("threadflow"))


def test_the_cli_uses_public_modules_only() -> None:
    files = sorted((PACKAGE / "cli").glob("*.py"))
    assert files, "threadflow/cli/ is a package"
    for path in files:
        for module in _imported_modules(path):
            assert module in PUBLIC, f"cli/{path.name} imports {module}, which is not public"


@pytest.mark.parametrize("how", ["module", "script"])
def test_python_m_and_the_console_script(how: str) -> None:
    script = Path(sys.executable).parent / "threadflow"  # installed beside this interpreter
    command = [sys.executable, "-m", "threadflow"] if how == "module" else [str(script)]
    proc = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"threadflow {threadflow.__version__}\n", "")
