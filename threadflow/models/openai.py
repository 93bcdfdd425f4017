"""``OpenAIChat``: streaming chat completions from any OpenAI-compatible server, cancellable mid-read.

Built on httpx directly, not on the openai SDK: the one thing this adapter
must do well — stop a blocked read the instant a run is cancelled — needs the
socket, and the SDK hides it behind its own client and adds retries that a
cancel cannot interrupt. ``threadflow.models._abort`` explains the mechanism.

Failures, each a clear ``OpenAIError`` (so the step ends ``run_error``), never a hang:

- 429 and 5xx: retried ``max_retries`` times, waiting what ``Retry-After``
  says or else an exponential backoff with jitter (tenacity's); the wait is
  the run's own ``sleep``, so a cancel ends it at once.
- 401 / 403: not retried; the message names the key that was used (masked).
- connection refused, a timeout, a stream cut mid-body, malformed SSE data, an
  ``error`` object in the stream.
"""

from __future__ import annotations

import email.utils
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import tenacity

from ..agents import ToolCall
from ..context import get_context
from ..retry import RetryPolicy
from ._abort import Abort, AbortableTransport

__all__ = ["OpenAIChat", "OpenAIError"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIError(Exception):
    """The server said no, could not be reached, or sent something that is not a chat stream.

    ``status`` is the HTTP status when there was one.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Retryable(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(status)
        self.retry_after = retry_after


class OpenAIChat:
    """A ``Model`` streaming ``POST {base_url}/chat/completions`` with ``"stream": true``.

    ``api_key`` / ``base_url`` default to ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``
    (then to OpenAI's own URL); with no key, no ``Authorization`` header is
    sent (local servers need none). ``timeout`` bounds connecting and each
    read (seconds, or an ``httpx.Timeout``). ``extra_body`` is merged into every
    request body. A cancel of the run shuts the request's socket down from the
    cancelling thread: the read returns at once and no later token is
    emitted. One instance can serve many runs and threads at once (one
    connection pool); ``close()`` releases it.
    """

    def __init__(
        self,
        id: str,  # noqa: A002 — the public name, as in OpenAI's API and Agno's OpenAIChat(id=...)
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float | httpx.Timeout = 60.0,
        max_retries: int = 2,
        extra_body: dict[str, Any] | None = None,
        max_retry_after: float = 60.0,
    ) -> None:
        if not isinstance(id, str) or not id:
            raise ValueError(f"OpenAIChat needs a model id (a non-empty str), not {id!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative int, not {max_retries!r}")
        self.id = id
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self._key_source = "api_key=" if api_key is not None else "OPENAI_API_KEY"
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or None
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self.extra_body = dict(extra_body or {})
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._url = f"{self.base_url}/chat/completions"
        self._client = httpx.Client(transport=AbortableTransport(), timeout=self.timeout, headers=self._headers())

    # -- the Model protocol -----------------------------------------------------

    def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> Iterator[str | ToolCall]:
        """Yield the answer's text pieces as they arrive, then any ``ToolCall``s the model made."""
        body: dict[str, Any] = {"model": self.id, "messages": messages, "stream": True}
        for key, value in (
            ("temperature", self.temperature),
            ("max_tokens", self.max_tokens),
            ("tools", tools or None),
            ("response_format", response_format),
        ):
            if value is not None:
                body[key] = value
        body.update(self.extra_body)
        return self._stream(body)

    def close(self) -> None:
        """Close the connection pool; the model cannot be used afterwards."""
        self._client.close()

    def __enter__(self) -> OpenAIChat:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenAIChat({self.id!r}, base_url={self.base_url!r})"

    # -- one request ---------------------------------------------------------------

    def _stream(self, body: dict[str, Any]) -> Iterator[str | ToolCall]:
        abort = Abort()
        forget = _on_cancel(abort.abort)  # the cancelling thread shuts our socket down
        try:
            response = self._open(body, abort)
            try:
                yield from self._read(response, abort)
            finally:
                response.close()
        finally:
            if forget is not None:
                forget()

    def _open(self, body: dict[str, Any], abort: Abort) -> httpx.Response:
        """Send the request until it is answered 2xx, retrying 429/5xx as the class docstring says."""
        policy = RetryPolicy(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=tenacity.wait_random_exponential(multiplier=0.5, max=8.0),
            retry=tenacity.retry_if_exception_type(_Retryable),
        )
        attempts = policy.attempts(_sleep)
        while True:
            response = self._send(body, abort)
            if response.is_success:
                return response
            error = self._refusal(response, abort)
            if isinstance(error, OpenAIError):
                raise error
            delay = attempts.failed(error)
            if delay is None:
                raise self._gave_up(error)
            attempts.sleep(error.retry_after if error.retry_after is not None else delay)

    def _send(self, body: dict[str, Any], abort: Abort) -> httpx.Response:
        request = self._client.build_request("POST", self._url, json=body)
        try:
            with abort.active():
                return self._client.send(request, stream=True)
        except httpx.TimeoutException as error:
            raise self._broken(abort, error, f"no answer from {self._url} within the timeout ({error})") from error
        except httpx.HTTPError as error:
            raise self._broken(abort, error, f"could not reach {self._url}: {error}") from error

    def _refusal(self, response: httpx.Response, abort: Abort) -> OpenAIError | _Retryable:
        """What a non-2xx answer means: retry later, or an error to raise."""
        status = response.status_code
        try:
            with abort.active():
                response.read()
        except httpx.HTTPError as error:
            return self._broken(abort, error, f"{status} from {self._url}, and its body was cut: {error}")
        finally:
            response.close()
        message = _server_message(response)
        if status in (401, 403):
            refused = f"{status} from {self._url}: {self._describe_key()} was refused: {message}"
            return OpenAIError(refused, status=status)
        if status == 429 or status >= 500:
            retry_after = _retry_after(response.headers)
            if retry_after is None or retry_after <= self.max_retry_after:
                return _Retryable(status, retry_after)
            message = f"{message} (the server asks to retry after {retry_after:g} s, over max_retry_after)"
        return OpenAIError(f"{status} from {self._url}: {message}", status=status)

    def _gave_up(self, error: _Retryable) -> OpenAIError:
        status: int = error.args[0]
        return OpenAIError(
            f"{status} from {self._url} after {self.max_retries + 1} attempt(s); giving up", status=status
        )

    def _read(self, response: httpx.Response, abort: Abort) -> Iterator[str | ToolCall]:
        """Parse the SSE body: text as it comes, tool calls once assembled; an error if it is cut."""
        lines = response.iter_lines()
        calls: dict[int, dict[str, str]] = {}
        complete = False
        while True:
            try:
                with abort.active():
                    line = next(lines, None)
            except httpx.TimeoutException as error:
                raise self._broken(abort, error, f"{self._url} sent nothing within the timeout ({error})") from error
            except httpx.HTTPError as error:
                raise self._broken(abort, error, f"the stream from {self._url} was cut: {error}") from error
            if abort.aborted:
                raise self._broken(abort, None, "aborted")  # not one token after the cancel
            if line is None:
                break
            if not line.startswith("data:"):
                continue  # blank separators, ": keep-alive" comments, "event:" lines
            data = line[5:].strip()
            if data == "[DONE]":
                complete = True
                break
            pieces, finished = _chunk(_parse(data, self._url), calls, self._url)
            complete = complete or finished
            yield from pieces
        if not complete:
            raise OpenAIError(f"the stream from {self._url} ended before the answer was complete (no [DONE])")
        for index in sorted(calls):
            call = calls[index]
            yield ToolCall(id=call["id"] or f"call_{index}", name=call["name"], arguments=call["arguments"] or "{}")

    def _broken(self, abort: Abort, error: Exception | None, message: str) -> OpenAIError:
        """The exception for a failed read: a cancellation if our own cancel caused it."""
        if abort.aborted:
            get_context().check_cancellation()  # raises CancellationError (outside a shield)
            return OpenAIError(f"the request to {self._url} was aborted by a cancel")
        return OpenAIError(message)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", "User-Agent": "threadflow"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _describe_key(self) -> str:
        if not self.api_key:
            return "the request without an API key (set OPENAI_API_KEY or pass api_key=)"
        return f"the API key from {self._key_source} ({_mask(self.api_key)})"


def _on_cancel(callback: Any) -> Any:
    """Register ``callback`` with the current run (None outside a run)."""
    try:
        ctx = get_context()
    except RuntimeError:
        return None
    return ctx.on_cancel(callback)


def _sleep(seconds: float) -> None:
    """The backoff: the run's interruptible sleep inside a run, a plain one outside."""
    try:
        ctx = get_context()
    except RuntimeError:
        time.sleep(seconds)
        return
    ctx.sleep(seconds)


def _parse(data: str, url: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        chunk = None
    if not isinstance(chunk, dict):
        raise OpenAIError(f"malformed server-sent event from {url}: data: {data[:200]!r}")
    return chunk


def _chunk(chunk: dict[str, Any], calls: dict[int, dict[str, str]], url: str) -> tuple[list[str], bool]:
    """One chunk's text pieces, and whether it ends the answer; tool-call fragments go into ``calls``."""
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise OpenAIError(f"{url} reported an error mid-stream: {message}")
    pieces: list[str] = []
    finished = False
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str) and delta["content"]:
            pieces.append(delta["content"])
        for fragment in delta.get("tool_calls") or []:
            _add_fragment(calls, fragment)
        finished = finished or bool(choice.get("finish_reason"))
    return pieces, finished


def _add_fragment(calls: dict[int, dict[str, str]], fragment: dict[str, Any]) -> None:
    """Tool calls arrive in pieces: the id and name first, the arguments' JSON text in slices."""
    call = calls.setdefault(int(fragment.get("index", 0)), {"id": "", "name": "", "arguments": ""})
    function = fragment.get("function") or {}
    call["id"] = fragment.get("id") or call["id"]
    call["name"] += function.get("name") or ""
    call["arguments"] += function.get("arguments") or ""


def _server_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    except (ValueError, AttributeError):
        pass  # not a JSON error object: show the text
    return response.text[:300] or response.reason_phrase


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass  # malformed: fall back to Retry-After
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass  # not seconds: an HTTP date
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _mask(key: str) -> str:
    return f"{key[:3]}...{key[-4:]}" if len(key) > 10 else "***"
