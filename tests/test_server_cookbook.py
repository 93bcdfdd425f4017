"""The HTTP cookbook scripts (``cookbook/http_*.py``) run offline, on their own, and show what they claim.

Each is run as a user would (``python cookbook/x.py`` from the repository
root) with the network limited to the loopback interface — the environment
and runner of ``test_cookbook.py`` — and its output must carry the lines that
prove the story; nothing may reach stderr.
"""

from __future__ import annotations

import re

# The cookbook suite's loopback-only environment and script runner: one guard for every script.
from test_cookbook import offline_env, run_script

__all__ = ["offline_env"]  # a fixture, used by name


def test_http_cancel_stream(offline_env: dict[str, str]) -> None:
    out = run_script("http_cancel_stream.py", offline_env)
    assert re.search(r"serving 'research-and-write' on http://127\.0\.0\.1:\d+", out)
    assert "--- researcher ---" in out
    assert ">>> accepted: True" in out
    assert "step 'researcher' cancelled (requested)" in out
    assert "status:    cancelled" in out
    assert "cause:     requested" in out
    assert "reason:    cancelled over HTTP after 0.5s" in out
    [latency] = re.findall(r"reached the streaming client in ([\d.]+) ms", out)
    assert float(latency) < 250.0  # the next token is 25 ms away; a cancel lands before it


def test_http_polos_cancel(offline_env: dict[str, str]) -> None:
    out = run_script("http_polos_cancel.py", offline_env)
    assert "start without the key: 401" in out
    assert re.search(r'^start: 202 \{"run_id": "[^"]+", "workflow_id": "research-and-write"', out, re.M)
    assert re.search(r'^cancel: 200 \{"run_id": "[^"]+", "status": "cancelling"\}$', out, re.M)
    assert "terminal event: workflow_cancelled (cause requested, reason 'user clicked stop')" in out
    assert re.search(r'^cancel again: 409 .*"status": "cancelled"\}$', out, re.M)
    assert "cancel an unknown run: 404" in out
    assert "final record: status=cancelled cause=requested step=researcher" in out
