"""A client for threadflow's HTTP API (``pip install 'threadflow[server]'``), on httpx.

::

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        run_id = client.start("research-and-write", "a topic")        # background run
        with client.stream("research-and-write", "a topic") as events:  # a run, streamed
            for event in events:                                          # typed events
                ...
        client.cancel_run("research-and-write", run_id, reason="enough")  # True / False

Errors: an HTTP error answer raises ``httpx.HTTPStatusError`` (its message
carries the server's ``detail``), except where a method documents another
answer — ``get_run`` gives ``None`` for an unknown run, ``cancel_run`` gives
``False`` for an unknown or finished run, and starting a run with an id that
is still active raises ``DuplicateRunError``. Transport failures raise
``httpx.TransportError`` — as does a stream that the server ends before its
run has ended because it is stopping (``httpx.RemoteProtocolError`` naming the
last ``seq`` received, to resume from with ``Client.events``).
"""

from __future__ import annotations

import json
import os
import re
import weakref
from collections.abc import Generator, Iterator
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote

import httpx

from ._validate import check_reason
from .events import Event, parse_event
from .exceptions import DuplicateRunError
from .status import RunInfo

__all__ = ["Client", "EventStream"]

_API_KEY_ENV = "THREADFLOW_API_KEY"
_RUN_ID_HEADER = "x-threadflow-run-id"
# The server sends a keep-alive comment every 15 s, so a minute of silence means a dead connection.
_STREAM_READ_TIMEOUT = 60.0
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_INTERRUPTED = b"stream_interrupted"  # the SSE event type of a stopping server's last message


class EventStream:
    """The events of one run, read from a server-sent-event response as you iterate.

    ``run_id`` is known at once. Iteration ends after the run's terminal
    event (or where the server's answer ends: after an ``after_seq`` past the
    end, nothing); ``httpx.TransportError`` if the connection breaks or the
    server stops first. ``close()`` — or the ``with`` block's end, or dropping the stream —
    closes the connection; for a stream that started the run
    (``Client.stream``) that cancels the run, cause ``stream_closed``.
    """

    def __init__(self, response: httpx.Response, run_id: str) -> None:
        self.run_id = run_id
        self._response = response
        self._events = _parse_sse(response, run_id)
        weakref.finalize(self, response.close)

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        self._events.close()
        self._response.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EventStream {self.run_id}>"


def _parse_sse(response: httpx.Response, run_id: str) -> Generator[Event, None, None]:
    """The events in ``data:`` fields, one per SSE message; ends at the terminal event or the end of the body.

    A ``stream_interrupted`` message (the server is stopping) raises ``httpx.RemoteProtocolError``.
    """
    data: list[bytes] = []
    kind = b""
    last_seq = 0
    try:
        for line in _sse_lines(response.iter_bytes()):
            if line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])
            elif not line:
                if kind == _INTERRUPTED:
                    raise _interrupted(response, run_id, b"\n".join(data), last_seq)
                if data:
                    event = parse_event(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
                    last_seq = event.seq
                    yield event
                    if event.terminal:
                        return
                kind = b""
            elif line.startswith(b"event:"):
                kind = line[6:].strip()
            # comments (keep-alives), "id:" and "retry:" carry nothing the event does not
    finally:
        response.close()


def _interrupted(response: httpx.Response, run_id: str, data: bytes, last_seq: int) -> httpx.RemoteProtocolError:
    try:
        detail = json.loads(data)["detail"]
    except (ValueError, TypeError, KeyError):
        detail = data.decode(errors="replace")
    received = f"last seq received: {last_seq}" if last_seq else "no event received"
    message = f"the stream of run {run_id!r} was interrupted: {detail} ({received})"
    return httpx.RemoteProtocolError(message, request=response.request)


def _sse_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Lines as SSE defines them: split at CRLF, LF or CR only.

    Not ``str.splitlines()`` (nor httpx's ``iter_lines()``, which follows it):
    that also splits at U+2028, U+0085 and others, which event JSON may hold
    raw. Bytes throughout: UTF-8 never puts CR or LF inside a character, and
    ``parse_event`` reads bytes.
    """
    rest = b""
    for chunk in chunks:
        held = chunk.endswith(b"\r")  # may be the first half of a CRLF split across chunks
        *lines, rest = _LINE_BREAK.split(rest + (chunk[:-1] if held else chunk))
        if held:
            rest += b"\r"
        yield from lines
    if rest:
        yield from _LINE_BREAK.split(rest)


class Client:
    """Start, stream, inspect and cancel runs on a threadflow server. Thread-safe.

    ``api_key`` (default ``$THREADFLOW_API_KEY``) is sent as a bearer token.
    ``timeout`` bounds each request; a stream waits as long as its run takes.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        api_key = api_key if api_key is not None else os.environ.get(_API_KEY_ENV) or None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    # -- runs -----------------------------------------------------------------

    def list_workflows(self) -> list[dict[str, Any]]:
        """The served workflows: ``[{id, name, description, steps}]``."""
        workflows: list[dict[str, Any]] = _checked(self._http.get("/workflows")).json()
        return workflows

    def start(self, workflow_id: str, input: Any = None, *, run_id: str | None = None) -> str:  # noqa: A002
        """Start a background run of ``input`` (any JSON); returns its run id.

        ``DuplicateRunError`` if ``run_id`` is active on the server.
        """
        response = self._http.post(_runs(workflow_id), json=_start_body(input, run_id, stream=False))
        _raise_duplicate(response, run_id)
        run_id_: str = _checked(response).json()["run_id"]
        return run_id_

    def stream(self, workflow_id: str, input: Any = None, *, run_id: str | None = None) -> EventStream:  # noqa: A002
        """Start a run and stream its events; closing the stream early cancels the run (``stream_closed``).

        The request is made here, so ``DuplicateRunError`` and HTTP errors raise at once.
        """
        body = _start_body(input, run_id, stream=True)
        request = self._http.build_request("POST", _runs(workflow_id), json=body, timeout=self._stream_timeout())
        return self._open_stream(request, run_id)

    def events(self, workflow_id: str, run_id: str, after_seq: int = 0) -> EventStream:
        """A run's events after ``after_seq``: replayed, then live to the end. Closing it leaves the run alone."""
        url = f"{_run(workflow_id, run_id)}/events"
        request = self._http.build_request("GET", url, params={"after_seq": after_seq}, timeout=self._stream_timeout())
        return self._open_stream(request, run_id)

    def get_run(self, workflow_id: str, run_id: str) -> RunInfo | None:
        """The run's record, or ``None`` if the server does not know it."""
        response = self._http.get(_run(workflow_id, run_id))
        if response.status_code == 404:
            return None
        return RunInfo.model_validate_json(_checked(response).content)

    def cancel_run(self, workflow_id: str, run_id: str, reason: str | None = None) -> bool:
        """Cancel the run: True if the server accepted (it ends ``cancelled``); False if unknown or already ended.

        Raises only for transport and authentication errors (and other
        unexpected answers); ``TypeError`` for a non-str reason.
        """
        check_reason(reason)
        response = self._http.post(f"{_run(workflow_id, run_id)}/cancel", json={"reason": reason})
        if response.status_code in (404, 409):
            return False
        _checked(response)
        return True

    # -- plumbing ---------------------------------------------------------------

    def _stream_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self._timeout, read=max(self._timeout, _STREAM_READ_TIMEOUT))

    def _open_stream(self, request: httpx.Request, run_id: str | None) -> EventStream:
        response = self._http.send(request, stream=True)
        if response.status_code != 200:
            response.read()
            response.close()
            _raise_duplicate(response, run_id)
            _checked(response)
        header = response.headers.get(_RUN_ID_HEADER)
        return EventStream(response, unquote(header) if header is not None else run_id or "")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"


def _runs(workflow_id: str) -> str:
    return f"/workflows/{quote(workflow_id, safe='')}/runs"


def _run(workflow_id: str, run_id: str) -> str:
    return f"{_runs(workflow_id)}/{quote(run_id, safe='')}"


def _start_body(run_input: Any, run_id: str | None, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"input": run_input, "stream": stream}
    if run_id is not None:
        body["run_id"] = run_id
    return body


def _raise_duplicate(response: httpx.Response, run_id: str | None) -> None:
    if response.status_code == 409 and run_id is not None:
        raise DuplicateRunError(run_id)


def _checked(response: httpx.Response) -> httpx.Response:
    """``response`` if it is a success; else ``httpx.HTTPStatusError`` naming the server's ``detail``."""
    if response.is_success:
        return response
    try:
        body = response.json()
    except ValueError:
        body = response.text
    detail = body.get("detail", body) if isinstance(body, dict) else body
    message = f"{response.status_code} {response.reason_phrase} from {response.request.url}: {detail}"
    raise httpx.HTTPStatusError(message, request=response.request, response=response)
