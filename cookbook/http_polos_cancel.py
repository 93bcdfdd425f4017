"""Polos-style: start a run over HTTP, then cancel it with a plain ``httpx.post(.../cancel)``.

Polos documents cancelling a run as one HTTP call::

    httpx.post(f"{API}/workflows/{workflow_id}/runs/{run_id}/cancel", headers=AUTH)

and threadflow's server answers it the same way: 200 ``{"run_id", "status"}``
when the cancel is accepted (the run will end ``cancelled``), 409 naming the
status when the run has already ended, 404 for a run it does not know. The
same call with curl::

    curl -X POST -H "Authorization: Bearer $THREADFLOW_API_KEY" \\
         -d '{"reason": "user clicked stop"}' \\
         http://127.0.0.1:8000/workflows/research-and-write/runs/$RUN_ID/cancel

This script serves the demo workflow with an API key on 127.0.0.1 (a free
port), starts a background run with ``POST /workflows/{id}/runs``, cancels
it, then shows the 409 and 404 answers and the run's final record. No
threadflow client code is involved: only httpx. It runs offline.

Run it (about a second)::

    python cookbook/http_polos_cancel.py
"""

from __future__ import annotations

import json
import secrets
import sys
import threading

from threadflow import Agent, Workflow
from threadflow.models import DemoModel

try:
    import httpx

    from threadflow.server import create_app, running_server
except ImportError as missing:  # the server extra is not installed: say so, no traceback
    sys.exit(f"this example needs the server extra: pip install 'threadflow[server]' ({missing})")


def demo_workflow(tokens_per_second: float) -> Workflow:
    """The workflow of ``threadflow demo``: a researcher agent feeding a writer agent, offline."""
    researcher = Agent("researcher", model=DemoModel(tokens_per_second, seed=1, max_tokens=60))
    writer = Agent("writer", model=DemoModel(tokens_per_second, seed=2, max_tokens=90))
    return Workflow("research and write", steps=[researcher, writer])


def show(label: str, response: httpx.Response) -> None:
    print(f"{label}: {response.status_code} {json.dumps(response.json())}")


def main() -> None:
    api_key = secrets.token_urlsafe(16)
    auth = {"Authorization": f"Bearer {api_key}"}
    workflow = demo_workflow(40)
    with running_server(create_app(workflow, api_key=api_key)) as api:
        print(f"serving {workflow.id!r} on {api} (bearer-token auth)")
        runs = f"{api}/workflows/{workflow.id}/runs"

        show("start without the key", httpx.post(runs, json={"input": "a topic"}))
        started = httpx.post(runs, json={"input": "why cancelling over HTTP matters"}, headers=auth)
        show("start", started)
        run_id = started.json()["run_id"]
        threading.Event().wait(0.3)  # let it stream a few tokens
        show("status", httpx.get(f"{runs}/{run_id}", headers=auth))

        # The Polos-style call: cancel by id, from anywhere that can reach the server.
        response = httpx.post(f"{runs}/{run_id}/cancel", json={"reason": "user clicked stop"}, headers=auth)
        show("cancel", response)
        if response.status_code == 200:
            print(f"run {run_id} is being cancelled; it will end 'cancelled'")

        # Wait for the end: the run's events (server-sent events) end with its terminal event.
        # SSE lines end at "\n" only (not at every break str.splitlines() knows), hence split("\n").
        events = httpx.get(f"{runs}/{run_id}/events", headers=auth, timeout=30).text
        last = [line for line in events.split("\n") if line.startswith("data: ")][-1]
        terminal = json.loads(last.removeprefix("data: "))
        print(f"terminal event: {terminal['event']} (cause {terminal['cause']}, reason {terminal['reason']!r})")

        show("cancel again", httpx.post(f"{runs}/{run_id}/cancel", headers=auth))
        show("cancel an unknown run", httpx.post(f"{runs}/no-such-run/cancel", headers=auth))
        record = httpx.get(f"{runs}/{run_id}", headers=auth).json()
        print(f"final record: status={record['status']} cause={record['cause']} step={record['step_name']}")


if __name__ == "__main__":
    main()
