"""The HTTP API over a ``SqliteStore``: events replayed and followed from the store, and a cancel
sent over HTTP that reaches a run owned by another process (SPEC §5).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from threadflow import CancellationError, Workflow, get_context
from threadflow.client import Client
from threadflow.events import WorkflowCancelledEvent, WorkflowCompletedEvent
from threadflow.server import create_app, running_server
from threadflow.storage import SqliteStore

WAIT = 10.0

release = threading.Event()
inside = threading.Event()


def parked(step_input: Any) -> Iterator[str]:
    yield "ready"
    inside.set()
    get_context().wait(release)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("sqlite") / "runs.db"


@pytest.fixture(scope="module")
def store(db: pathlib.Path) -> Iterator[SqliteStore]:
    with SqliteStore(db) as opened:
        yield opened


@pytest.fixture(scope="module")
def workflow(store: SqliteStore) -> Workflow:
    return Workflow("parked", steps=[parked], store=store)


@pytest.fixture(scope="module")
def client(workflow: Workflow) -> Iterator[Client]:
    with running_server(create_app(workflow)) as url, Client(url) as c:
        yield c


def test_events_of_a_run_not_started_here_come_from_the_store(client: Client, workflow: Workflow) -> None:
    handle = workflow.run("x", background=True, run_id="sq-1")  # in-process, but not through the app
    assert inside.wait(WAIT)
    with client.events("parked", "sq-1") as events:
        first = next(events)  # replayed from the store while the run waits
        assert first.event == "workflow_started"
        release.set()
        rest = list(events)  # then followed (polling the store) to the end
    assert handle.wait(WAIT)
    assert isinstance(rest[-1], WorkflowCompletedEvent)
    assert [e.seq for e in [first, *rest]] == list(range(1, len(rest) + 2))
    assert list(client.events("parked", "sq-1", after_seq=2)) == rest[1:]


OWNER = textwrap.dedent(
    """
    import sys
    from threadflow import CancellationError, Workflow, get_context
    from threadflow.storage import SqliteStore

    def parked(step_input):
        try:
            yield "ready"
            print("inside", flush=True)
            get_context().wait()
        except CancellationError:
            print("cleaned up", flush=True)
            raise

    workflow = Workflow("parked", steps=[parked], store=SqliteStore(sys.argv[1]))
    handle = workflow.run(None, background=True, run_id=sys.argv[2])
    handle.wait(30)
    print("ended", handle.status.value, handle.output.cause.value, handle.output.reason, flush=True)
    """
)


def test_a_cancel_over_http_reaches_a_run_of_another_process(client: Client, db: pathlib.Path) -> None:
    command = [sys.executable, "-c", OWNER, str(db), "sq-remote"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as owner:
        try:
            assert owner.stdout is not None
            assert owner.stdout.readline() == "inside\n"
            info = client.get_run("parked", "sq-remote")  # the store's record of the other process's run
            assert info is not None and not info.status.is_terminal
            assert client.cancel_run("parked", "sq-remote", reason="from the HTTP server") is True
            out, err = owner.communicate(timeout=WAIT)
        except BaseException:
            owner.kill()
            raise
    assert owner.returncode == 0, err
    assert out.splitlines() == ["cleaned up", "ended cancelled requested from the HTTP server"]
    terminal = list(client.events("parked", "sq-remote"))[-1]
    assert isinstance(terminal, WorkflowCancelledEvent) and terminal.reason == "from the HTTP server"
    assert client.cancel_run("parked", "sq-remote") is False  # it has ended: 409


def test_cleanup_is_recorded_when_a_run_is_cancelled_here(client: Client, store: SqliteStore) -> None:
    cleaned = threading.Event()

    def step(step_input: Any) -> Iterator[str]:
        try:
            yield "x"
            get_context().wait()
        except CancellationError:
            cleaned.set()
            raise

    other = Workflow("parked", steps=[step], store=store)
    with running_server(create_app(other)) as url, Client(url) as mine:
        with mine.stream("parked", run_id="sq-closed") as stream:
            next(stream)
        assert cleaned.wait(WAIT)
        terminal = list(mine.events("parked", "sq-closed"))[-1]
    assert isinstance(terminal, WorkflowCancelledEvent) and terminal.cause == "stream_closed"
    assert client.get_run("parked", "sq-closed").cause == "stream_closed"  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def finished(store: SqliteStore) -> str:
    """A finished run of ``parked`` that the app did not start: its events come from the store."""
    done = Workflow("parked", steps=[lambda step_input: "ok"], store=store).run(None, run_id="sq-finished")
    assert done.completed
    return done.run_id


@pytest.mark.parametrize(
    ("params", "headers", "where"),
    [
        ({"after_seq": str(2**63)}, {}, ["query", "after_seq"]),
        ({"after_seq": str(10**30)}, {}, ["query", "after_seq"]),
        ({"after_seq": "1" + "0" * 5000}, {}, ["query", "after_seq"]),
    ],
)
def test_a_seq_beyond_what_the_store_can_hold_is_422(
    client: Client, finished: str, params: dict[str, str], headers: dict[str, str], where: list[str]
) -> None:
    """Seqs are SQLite integers: a bigger one is a 422 naming it, not a stream that breaks off."""
    url = f"{client.base_url}/workflows/parked/runs/{finished}/events"
    response = httpx.get(url, params=params, headers=headers, timeout=WAIT)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == where
    largest = httpx.get(url, params={"after_seq": str(2**63 - 1)}, timeout=WAIT)
    assert (largest.status_code, largest.text) == (200, "")  # the largest seq is fine: nothing after it


def test_a_last_event_id_beyond_any_seq_is_ignored(client: Client, finished: str) -> None:
    """The header is whatever id the client saw last (SSE): one that is no seq number replays everything."""
    url = f"{client.base_url}/workflows/parked/runs/{finished}/events"
    response = httpx.get(url, headers={"Last-Event-ID": str(2**64)}, timeout=WAIT)
    assert response.status_code == 200
    assert response.text.count("data: ") == len(list(client.events("parked", finished)))
