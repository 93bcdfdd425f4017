"""Property-based fuzzing of the HTTP API: no body, path id or query makes a 500 (issue 5 §4).

Whatever arrives, the answer is one of the documented statuses, and every
error is JSON with a ``detail``.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from threadflow import Workflow
from threadflow.events import WorkflowCompletedEvent, parse_event
from threadflow.server import create_app, running_server
from threadflow.storage import SqliteStore


def echo(step_input: Any) -> Any:
    return step_input.input


ECHO = Workflow("fuzz-echo", steps=[echo])

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text a URL or JSON can carry (lone surrogates cannot be UTF-8 encoded by the client at all).
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(["input", "run_id", "stream", "reason"]) | text
json_bodies = st.dictionaries(field_names, json_values, max_size=4).map(lambda d: json.dumps(d).encode())
# json.dumps writes any str, lone surrogates included, as ASCII \u escapes: valid bytes, odd text.
escaped_bodies = st.dictionaries(field_names, st.text(max_size=10), max_size=3).map(lambda d: json.dumps(d).encode())
raw_bodies = st.binary(max_size=200) | json_bodies | escaped_bodies | json_values.map(lambda v: json.dumps(v).encode())
path_ids = text.map(lambda s: quote(s, safe=""))
# Seqs are SQLite integers (at most 2**63 - 1); the edges, and integers of any size.
MAX_SEQ = 2**63 - 1
seqs = (
    st.integers(min_value=-2, max_value=8)
    | st.integers(min_value=MAX_SEQ - 2, max_value=MAX_SEQ + 2)
    | st.integers(min_value=MAX_SEQ, max_value=10**60)
    | st.integers()
)
seq_texts = seqs.map(str) | text

DOCUMENTED = {200, 202, 404, 405, 409, 422}


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with running_server(create_app(ECHO)) as url, httpx.Client(base_url=url, timeout=10.0) as client:
        yield client


def check(response: httpx.Response) -> None:
    assert response.status_code in DOCUMENTED, (response.status_code, response.text)
    if response.status_code >= 400 and response.status_code != 405:
        assert "detail" in response.json()


@FUZZ
@given(body=raw_bodies, content_type=st.sampled_from(["application/json", "text/plain", ""]))
def test_start_bodies_never_500(http: httpx.Client, body: bytes, content_type: str) -> None:
    check(http.post("/workflows/fuzz-echo/runs", content=body, headers={"content-type": content_type}))


@FUZZ
@given(body=raw_bodies)
def test_cancel_bodies_never_500(http: httpx.Client, body: bytes) -> None:
    check(http.post("/workflows/fuzz-echo/runs/some-run/cancel", content=body))


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    """A client of an app whose workflow keeps its runs in SQLite, and a finished run served from there."""
    path = pathlib.Path(tmp_path_factory.mktemp("fuzz")) / "runs.db"
    with SqliteStore(path) as store:
        workflow = Workflow("fuzz-stored", steps=[echo], store=store)
        run_id = workflow.run("x").run_id  # not started through the app: /events reads the store
        with running_server(create_app(workflow)) as url, httpx.Client(base_url=url, timeout=10.0) as client:
            yield client, run_id


@FUZZ
@given(after_seq=st.none() | seqs, last_event_id=st.none() | seqs)
def test_seqs_of_any_size_are_a_stream_or_a_422(
    stored: tuple[httpx.Client, str], after_seq: int | None, last_event_id: int | None
) -> None:
    http, run_id = stored
    params = {} if after_seq is None else {"after_seq": str(after_seq)}
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    response = http.get(f"/workflows/fuzz-stored/runs/{run_id}/events", params=params, headers=headers)
    check(response)
    # The query is checked (422); a Last-Event-ID that names no seq number is ignored (SSE sends back any id).
    given_seqs = [seq for seq in (after_seq, last_event_id) if seq is not None and 0 <= seq <= MAX_SEQ]
    if after_seq is None or 0 <= after_seq <= MAX_SEQ:
        assert response.status_code == 200
        events = [parse_event(line[6:]) for line in response.text.split("\n") if line.startswith("data: ")]
        assert [e.seq for e in events] == [seq for seq in range(1, 5) if seq > max(given_seqs, default=0)]
    else:
        assert response.status_code == 422


@FUZZ
@given(workflow_id=path_ids, run_id=path_ids, after_seq=seq_texts)
def test_path_ids_and_queries_never_500(http: httpx.Client, workflow_id: str, run_id: str, after_seq: str) -> None:
    run = f"/workflows/{workflow_id}/runs/{run_id}"
    check(http.get(run))
    check(http.get(f"{run}/events", params={"after_seq": after_seq}))
    check(http.post(f"{run}/cancel", json={"reason": after_seq}))
    check(http.post(f"/workflows/{workflow_id}/runs", json={"run_id": run_id or None}))


@FUZZ
@given(run_id=text.filter(bool), stream=st.booleans(), run_input=json_values)
def test_valid_starts_always_run_and_can_be_read_back(
    http: httpx.Client, run_id: str, stream: bool, run_input: Any
) -> None:
    response = http.post("/workflows/fuzz-echo/runs", json={"input": run_input, "run_id": run_id, "stream": stream})
    check(response)
    if "/" in run_id or run_id in {".", ".."}:
        assert response.status_code == 422
    elif response.status_code != 409:  # 409: the same id drawn again while its run is still active
        assert response.status_code == (200 if stream else 202)
        assert http.get(f"/workflows/fuzz-echo/runs/{quote(run_id, safe='')}").status_code == 200
    if stream and response.status_code == 200:
        events = [parse_event(line[6:]) for line in response.text.split("\n") if line.startswith("data: ")]
        terminal = events[-1]
        assert isinstance(terminal, WorkflowCompletedEvent) and terminal.content == run_input
