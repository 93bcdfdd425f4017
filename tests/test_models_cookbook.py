"""The seed Agno example with tools (cookbook/agno_seed_tools.py): offline, and over HTTP to FakeOpenAIServer."""

from __future__ import annotations

import re

from conftest import WAIT
from test_cookbook import FAST_CANCEL_MS, assert_in_order, numbers, offline_env, run_script

from threadflow.testing import FakeOpenAIServer, FakeReply, ToolCall

__all__ = ["offline_env"]  # the fixture, imported for its use below


def check_story(out: str) -> None:
    found = re.search(r"Workflow run started: ([0-9a-f-]{36})$", out, flags=re.MULTILINE)
    assert found is not None, out
    assert_in_order(
        out,
        "--- step: research ---",
        "[tool] search_web(",
        "[tool] -> ['Result 1 about",
        "--- step: write ---",
        f"Cancelling workflow run: {found[1]}",
        "Writer Agent was cancelled (requested)",
        f"Workflow run was cancelled: {found[1]}",
        "RESULTS: status=cancelled",
    )
    assert numbers(r"\(([\d.]+) ms after cancel_run\)", out)[0] < FAST_CANCEL_MS


def test_seed_example_offline(offline_env: dict[str, str]) -> None:
    env = {k: v for k, v in offline_env.items() if not k.startswith("OPENAI_")}
    check_story(run_script("agno_seed_tools.py", env))


def test_seed_example_against_an_openai_compatible_server(offline_env: dict[str, str]) -> None:
    researcher_call = FakeReply(tokens=[], tool_calls=[ToolCall("call_1", "search_web", '{"query": "dragons"}')])
    researcher_answer = FakeReply(tokens=["Dragons ", "can ", "code."])
    writer = FakeReply(tokens=[f"word{i} " for i in range(400)], pace=0.02)
    with FakeOpenAIServer(researcher_call, researcher_answer, default=writer) as server:
        env = {**offline_env, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-cookbook-test"}
        out = run_script("agno_seed_tools.py", env, "--model", "openai")
        assert server.client_disconnected.wait(WAIT)  # the writer's HTTP stream was aborted
    check_story(out)
    assert "Dragons can code." in out
    assert server.requests[0]["tools"][0]["function"]["name"] == "search_web"
    assert server.request_headers[0]["authorization"] == "Bearer sk-cookbook-test"
