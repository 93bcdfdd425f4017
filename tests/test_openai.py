"""OpenAIChat (SPEC §9) against FakeOpenAIServer and an independent server (tests/openai_wire.py).

Cancels are synchronised on the servers' events (a request arrived, the body
started, the client left); timing bounds are far below the waits a
non-aborted read would sit through (a 30 s token gap, a 30 s header delay).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import WAIT, names
from openai_wire import WireReply, WireServer
from pydantic import BaseModel

from threadflow import Agent, RunStatus, Workflow, WorkflowError, get_context
from threadflow.models import OpenAIChat, OpenAIError
from threadflow.testing import FakeOpenAIServer, FakeReply, ToolCall, check_run_events

PROMPT = [{"role": "user", "content": "hi"}]
PROMPT_CANCEL_S = 1.0  # "at once": the slow server would hold the read for 30 s


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def wire() -> Iterator[WireServer]:
    with WireServer() as server:
        yield server


def model_for(server: Any, **options: Any) -> OpenAIChat:
    options.setdefault("api_key", "sk-test-0123456789")
    return OpenAIChat("test-model", base_url=server.base_url, **options)


def cancel_when(event: threading.Event, wf: Workflow, run_id: str, stamps: list[float]) -> threading.Thread:
    def cancel() -> None:
        assert event.wait(WAIT)
        stamps.append(time.perf_counter())
        wf.cancel_run(run_id, "user pressed stop")

    thread = threading.Thread(target=cancel, name="canceller")
    thread.start()
    return thread


# -- the protocol ------------------------------------------------------------------


def test_tokens_arrive_in_order_with_the_right_request(fake: FakeOpenAIServer) -> None:
    fake.script(FakeReply(tokens=["a", "b", "c"]))
    with model_for(fake, temperature=0.2, max_tokens=50, extra_body={"seed": 7}) as model:
        assert list(model.stream(PROMPT)) == ["a", "b", "c"]
    body, headers = fake.requests[0], fake.request_headers[0]
    assert body == {
        "model": "test-model",
        "messages": PROMPT,
        "stream": True,
        "temperature": 0.2,
        "max_tokens": 50,
        "seed": 7,
    }
    assert headers["authorization"] == "Bearer sk-test-0123456789"
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "text/event-stream"


def test_the_independent_server_agrees(wire: WireServer) -> None:
    wire.replies.append(WireReply(tokens=["x", "y"], tool_calls=[("t1", "search", '{"q": 1}')]))
    with model_for(wire) as model:
        assert list(model.stream(PROMPT, tools=[{"type": "function"}])) == [
            "x",
            "y",
            ToolCall("t1", "search", '{"q": 1}'),
        ]
    line, headers, body = wire.requests[0]
    assert line == "POST /v1/chat/completions HTTP/1.1"
    assert headers["authorization"] == "Bearer sk-test-0123456789"
    assert body["stream"] is True and body["tools"] == [{"type": "function"}]


def test_environment_variables_give_key_and_url(fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    with OpenAIChat("m") as model:
        assert "".join(str(t) for t in model.stream(PROMPT)) == "Hello from the fake server."
    assert fake.request_headers[0]["authorization"] == "Bearer sk-from-the-environment"


def test_no_key_sends_no_authorization(fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with OpenAIChat("m", base_url=fake.base_url) as model:
        list(model.stream(PROMPT))
    assert "authorization" not in fake.request_headers[0]


# -- failures ------------------------------------------------------------------------


def test_429_is_retried_after_retry_after(fake: FakeOpenAIServer) -> None:
    fake.script(FakeReply(status=429, retry_after=0.3), FakeReply(tokens=["ok"]))
    with model_for(fake) as model:
        started = time.perf_counter()
        assert list(model.stream(PROMPT)) == ["ok"]
        assert time.perf_counter() - started >= 0.3
    assert len(fake.requests) == 2


def test_5xx_is_retried_then_given_up(fake: FakeOpenAIServer) -> None:
    fake.script(*[FakeReply(status=503, retry_after=0) for _ in range(3)])
    with model_for(fake, max_retries=2) as model, pytest.raises(OpenAIError, match=r"503 .* after 3 attempt") as info:
        list(model.stream(PROMPT))
    assert info.value.status == 503 and len(fake.requests) == 3


def test_a_retry_after_beyond_the_limit_is_not_waited_for(fake: FakeOpenAIServer) -> None:
    fake.script(FakeReply(status=429, retry_after=3600))
    with model_for(fake) as model, pytest.raises(OpenAIError, match="retry after 3600 s"):
        list(model.stream(PROMPT))
    assert len(fake.requests) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_name_the_key_and_are_not_retried(fake: FakeOpenAIServer, status: int) -> None:
    fake.script(FakeReply(status=status, message="Incorrect API key provided"))
    with model_for(fake) as model, pytest.raises(OpenAIError) as info:
        list(model.stream(PROMPT))
    message = str(info.value)
    assert f"{status} from" in message and "API key from api_key= (sk-...6789)" in message
    assert "Incorrect API key provided" in message and "0123456789" not in message
    assert len(fake.requests) == 1


def test_connection_refused_is_a_run_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    with OpenAIChat("m", base_url=f"http://127.0.0.1:{port}/v1", api_key="k", timeout=5) as model:
        events = check_run_events(list(Workflow("r", steps=[Agent(model=model)]).run("q", stream=True)))
    assert names(events)[-2:] == ["run_error", "workflow_error"]
    assert "could not reach http://127.0.0.1:" in events[-1].error


def test_a_cut_stream_is_a_run_error(fake: FakeOpenAIServer, wire: WireServer) -> None:  # both framings
    fake.script(FakeReply(tokens=["a", "b", "c"], cut_after=2))
    wire.replies.append(WireReply(tokens=["a", "b", "c"], cut_after=2))
    for server, expected in ((fake, "was cut"), (wire, "ended before the answer was complete")):
        with model_for(server) as model:
            events = check_run_events(list(Workflow("c", steps=[Agent(model=model)]).run("q", stream=True)))
        assert names(events)[-2:] == ["run_error", "workflow_error"]
        assert expected in events[-1].error


def test_malformed_sse_is_a_run_error(fake: FakeOpenAIServer) -> None:
    fake.script(FakeReply(tokens=["a"], malformed=True))
    with model_for(fake) as model, pytest.raises(WorkflowError, match="malformed server-sent event"):
        Workflow("m", steps=[Agent(model=model)]).run("q")


def test_a_stream_without_an_end_is_an_error(fake: FakeOpenAIServer) -> None:
    fake.script(FakeReply(tokens=["a"], done=False))
    with model_for(fake) as model, pytest.raises(OpenAIError, match="no \\[DONE\\]"):
        list(model.stream(PROMPT))


def test_a_read_timeout_is_an_error_not_a_hang(fake: FakeOpenAIServer) -> None:
    fake.script(FakeReply(tokens=["a", "b"], pace=30))
    with model_for(fake, timeout=0.3) as model, pytest.raises(OpenAIError, match="within the timeout"):
        list(model.stream(PROMPT))


# -- cancel aborts the HTTP stream ----------------------------------------------------------


def test_cancel_mid_stream_aborts_the_read(fake: FakeOpenAIServer) -> None:
    fake.script(FakeReply(tokens=["first", "second"], pace=30))
    fake.default = FakeReply(tokens=["after"])
    with model_for(fake) as model:
        wf = Workflow("mid", steps=[Agent(model=model)])
        stream = wf.run("q", stream=True)
        stamps: list[float] = []
        canceller = cancel_when(fake.request_received, wf, stream.run_id, stamps)
        events = list(stream)
        ended = time.perf_counter()
        canceller.join(WAIT)
        check_run_events(events)
        assert ended - stamps[0] < PROMPT_CANCEL_S
        assert names(events)[-2:] == ["run_cancelled", "workflow_cancelled"]
        assert "run_content" not in names(events)  # no token after the cancel
        assert fake.client_disconnected.wait(WAIT)  # the server saw the connection closed
        # the pool is still usable for the next run
        assert Workflow("next", steps=[Agent(model=model)]).run("q").content == "after"


def consume_then_cancel(wf: Workflow, after: str, stalled: threading.Event) -> tuple[list[Any], float]:
    """Run ``wf``; once the consumer has the token ``after`` and the server stalls, cancel from another thread.

    Returns the events and how long the run took to end after the cancel request.
    """
    events: list[Any] = []
    stamps: list[float] = []
    canceller: threading.Thread | None = None
    with wf.run("q", stream=True) as stream:
        for event in stream:
            events.append(event)
            if event.event == "run_content" and event.content == after:
                canceller = cancel_when(stalled, wf, stream.run_id, stamps)
    ended = time.perf_counter()
    assert canceller is not None
    canceller.join(WAIT)
    return check_run_events(events), ended - stamps[0]


def test_cancel_after_some_tokens_emits_none_after_it(fake: FakeOpenAIServer) -> None:
    fake.script(FakeReply(tokens=["one", "two", "three", "four"], hang_after=2))
    with model_for(fake) as model:
        events, took = consume_then_cancel(Workflow("some", steps=[Agent(model=model)]), "two", fake.hanging)
    assert took < PROMPT_CANCEL_S
    assert [e.content for e in events if e.event == "run_content"] == ["one", "two"]
    assert names(events)[-2:] == ["run_cancelled", "workflow_cancelled"]
    assert fake.client_disconnected.wait(WAIT)


def test_cancel_while_waiting_for_the_headers(fake: FakeOpenAIServer) -> None:
    fake.script(FakeReply(header_delay=30))
    with model_for(fake) as model:
        wf = Workflow("headers", steps=[Agent(model=model)])
        handle = wf.run("q", background=True)
        assert fake.request_received.wait(WAIT)
        started = time.perf_counter()
        assert handle.cancel() is True
        assert handle.wait(WAIT)
        assert time.perf_counter() - started < PROMPT_CANCEL_S
        assert handle.result().status is RunStatus.cancelled
        assert fake.client_disconnected.wait(WAIT)
        assert list(model.stream(PROMPT)) == ["Hello", " from", " the", " fake", " server."]


def test_cancel_mid_stream_against_the_independent_server(wire: WireServer) -> None:
    wire.replies.append(WireReply(tokens=["a", "b", "c"], gate_after=1))
    with model_for(wire) as model:
        events, took = consume_then_cancel(Workflow("wire", steps=[Agent(model=model)]), "a", wire.gated)
        assert took < PROMPT_CANCEL_S
        assert [e.content for e in events if e.event == "run_content"] == ["a"]
        assert wire.client_left.wait(WAIT)
        assert list(model.stream(PROMPT)) == ["wire", " says", " hi"]


def test_cancel_during_the_retry_backoff(fake: FakeOpenAIServer) -> None:
    fake.script(FakeReply(status=429, retry_after=30))
    with model_for(fake) as model:
        handle = Workflow("backoff", steps=[Agent(model=model)]).run("q", background=True)
        assert fake.request_received.wait(WAIT)
        fake.request_received.clear()
        time_cancel = time.perf_counter()
        handle.cancel()
        assert handle.wait(WAIT)
        assert time.perf_counter() - time_cancel < PROMPT_CANCEL_S
        assert handle.result().status is RunStatus.cancelled
        assert len(fake.requests) == 1  # no retry after the cancel


def test_cancel_during_a_tool_between_two_requests(fake: FakeOpenAIServer) -> None:
    entered = threading.Event()

    def slow_lookup(topic: str) -> str:
        """Look something up slowly."""
        entered.set()
        get_context().sleep(30)
        return "never"

    fake.script(FakeReply(tokens=[], tool_calls=[ToolCall("call_1", "slow_lookup", '{"topic": "x"}')]))
    with model_for(fake) as model:
        handle = Workflow("tool", steps=[Agent(model=model, tools=[slow_lookup])]).run("q", background=True)
        assert entered.wait(WAIT)
        started = time.perf_counter()
        handle.cancel()
        assert handle.wait(WAIT)
        assert time.perf_counter() - started < PROMPT_CANCEL_S
        assert names(handle.events())[-3:] == ["tool_call_started", "run_cancelled", "workflow_cancelled"]
        assert len(fake.requests) == 1


def test_many_cancelled_runs_leave_the_pool_usable(fake: FakeOpenAIServer) -> None:
    with model_for(fake) as model:
        wf = Workflow("pool", steps=[Agent(model=model)])
        for _ in range(5):
            fake.script(FakeReply(pace=30))
            fake.request_received.clear()
            handle = wf.run("q", background=True)
            assert fake.request_received.wait(WAIT)
            handle.cancel()
            assert handle.wait(WAIT) and handle.result().status is RunStatus.cancelled
        assert wf.run("q").content == "Hello from the fake server."


# -- tools and schemas over HTTP ------------------------------------------------------------


def test_tool_rounds_over_http_send_back_matching_ids(fake: FakeOpenAIServer) -> None:
    def lookup(topic: str) -> str:
        """Look a topic up."""
        return f"facts about {topic}"

    fake.script(
        FakeReply(
            tokens=[],
            tool_calls=[ToolCall("call_a", "lookup", '{"topic": "x"}'), ToolCall("call_b", "lookup", '{"topic": "y"}')],
        ),
        FakeReply(tokens=["fin"]),
    )
    with model_for(fake) as model:
        events = check_run_events(list(Workflow("t", steps=[Agent(model=model, tools=[lookup])]).run("q", stream=True)))
    assert events[-1].content == "fin"
    assert fake.requests[0]["tools"][0]["function"]["name"] == "lookup"
    sent = fake.requests[1]["messages"]
    assert [m.get("tool_call_id") for m in sent if m["role"] == "tool"] == ["call_a", "call_b"]
    assert [m["content"] for m in sent if m["role"] == "tool"] == ["facts about x", "facts about y"]
    assert sent[-3]["tool_calls"][1]["function"] == {"name": "lookup", "arguments": '{"topic": "y"}'}


class Answer(BaseModel):
    answer: str
    confidence: float


def test_output_schema_over_http(fake: FakeOpenAIServer) -> None:
    fake.script(FakeReply(tokens=['{"answer": "42",', ' "confidence": 0.9}']))
    with model_for(fake) as model:
        out = Workflow("s", steps=[Agent(model=model, output_schema=Answer)]).run("q")
    assert out.content == Answer(answer="42", confidence=0.9)
    assert fake.requests[0]["response_format"]["json_schema"]["name"] == "Answer"


def test_the_fake_server_stops_cleanly_with_a_client_still_connected() -> None:
    before = set(threading.enumerate())
    server = FakeOpenAIServer(FakeReply(pace=30))
    model = model_for(server, timeout=5)
    tokens = model.stream(PROMPT)
    reader_error: list[BaseException] = []

    def read() -> None:
        try:
            list(tokens)
        except OpenAIError as error:
            reader_error.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    assert server.request_received.wait(WAIT)
    server.stop()
    reader.join(WAIT)
    assert not reader.is_alive() and reader_error
    model.close()
    assert set(threading.enumerate()) - before == set()
