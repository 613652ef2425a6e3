"""What passes between :class:`~.client.DaemonBackend` and the server, read and checked:
server-sent events parsed into completion text (a stream must end with ``data: [DONE]``),
JSON answers, and a non-2xx status mapped to the core's errors (429 to RateLimited with its
Retry-After, 5xx to ServerError, anything else to :class:`RequestRejected`). Malformed
bodies and chunks raise InvalidOutput. An error event inside a stream or a 200 answer
(``{"error": {"message", "type", "code"}}``, as OpenAI-compatible servers report a failure
once their answer has begun) raises what its ``code`` says: RequestRejected for a 4xx
(a context overflow will not fit on a retry either), else ServerError. httpx itself is imported
by ``_httpx()`` on first use, never when this module is imported.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
from typing import TYPE_CHECKING, Any

from ...core.errors import (
    BackendError,
    InvalidOutput,
    RateLimited,
    ServerError,
    StreamInterrupted,
)

if TYPE_CHECKING:
    from types import ModuleType

    import httpx

__all__ = ["RequestRejected"]


def _httpx() -> ModuleType:
    import httpx  # noqa: PLC0415 - optional dependency, imported on first use

    return httpx


class RequestRejected(BackendError):
    """The server refused the request (a 4xx other than 429, or an unexpected status)."""

    def __init__(self, status: int, message: str = "") -> None:
        self.status = status  # read by classify(): a 4xx is permanent
        super().__init__(f"HTTP {status}" + (f": {message}" if message else ""))


class _Progress:
    """Text received so far; parses server-sent events into completion text.

    Shared by the sync and async streams (and used with no stream for whole answers).
    """

    __slots__ = ("_data", "chunks", "done", "finish_reason", "streaming", "text")

    def __init__(self, *, streaming: bool) -> None:
        self.streaming = streaming
        self.text = ""
        self.chunks = 0
        self.done = False
        self.finish_reason: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> str:
        """Take one SSE line; the text of the event it completes ("" if none)."""
        if line:
            if not line.startswith(":"):  # ":" starts a comment, e.g. a keep-alive ping
                field, _, value = line.partition(":")
                if field == "data":
                    self._data.append(value.removeprefix(" "))
            return ""
        return self._dispatch()

    def end(self) -> None:
        """The body ended: raise StreamInterrupted unless ``[DONE]`` arrived."""
        self._dispatch()
        if not self.done:
            raise StreamInterrupted("the daemon ended the stream without [DONE]", self.text)

    def _dispatch(self) -> str:
        if not self._data:
            return ""
        data, self._data = "\n".join(self._data), []
        if data == "[DONE]":
            self.done = True
            return ""
        text, reason = _choice_text(_loads(data), streaming=True)
        self.chunks += 1
        self.finish_reason = reason or self.finish_reason
        self.text += text
        return text


def _loads(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidOutput(f"the daemon sent invalid JSON: {data[:200]!r}") from exc


def _choice_text(answer: object, *, streaming: bool = False) -> tuple[str, str | None]:
    """(text, finish_reason) of a completion or of one stream chunk."""
    if isinstance(answer, dict) and "error" in answer:
        raise _in_band(answer)  # an error event inside a stream
    try:
        choice = answer["choices"][0]  # type: ignore[index]
        text = choice["text"]
        reason = choice.get("finish_reason")
    except (TypeError, KeyError, IndexError, AttributeError) as exc:
        what = "stream chunk" if streaming else "completion"
        raise InvalidOutput(f"malformed {what} from the daemon: {answer!r:.200}") from exc
    if not isinstance(text, str):
        raise InvalidOutput(f"completion text is {type(text).__name__}, not str")
    return text, reason if isinstance(reason, str) else None


def _in_band(answer: dict[str, Any]) -> BackendError:
    """The error of an error event: its ``code`` when that is an HTTP status (a 4xx is
    the request's fault), else a server error."""
    error = answer.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    message = f"the daemon sent an error instead of a completion: {_message_of(answer)}"
    if isinstance(code, int) and 400 <= code < 500:
        return RequestRejected(code, message)
    return ServerError(code if isinstance(code, int) and 500 <= code < 600 else 500, message)


def _message_of(body: object) -> str:
    """The server's own words from an error body (OpenAI, FastAPI or plain text)."""
    if isinstance(body, dict):
        error = body.get("error", body.get("detail"))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return str(error)[:500]
    return str(body)[:500]


def _retry_after(headers: httpx.Headers) -> float | None:
    """Retry-After in seconds: a number, or an HTTP date measured against the ``Date``
    header (the server's own clock), never against ours.
    """
    raw = headers.get("retry-after")
    if raw is None:
        return None
    with contextlib.suppress(ValueError):
        seconds = float(raw)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    sent = headers.get("date")
    try:
        until = email.utils.parsedate_to_datetime(raw)
        now = email.utils.parsedate_to_datetime(sent) if sent else None
    except (TypeError, ValueError):
        return None
    return None if now is None else max(0.0, (until - now).total_seconds())


def _check_status(response: httpx.Response) -> None:
    """Raise RateLimited / ServerError / RequestRejected for a non-2xx response (read)."""
    status = response.status_code
    if 200 <= status < 300:
        return
    try:
        body: object = response.json()
    except ValueError:
        body = response.text
    message = _message_of(body)
    if status == 429:
        raise RateLimited(
            f"rate limited: {message}" if message else "rate limited",
            retry_after=_retry_after(response.headers),
        )
    if status >= 500:
        raise ServerError(status, message)
    raise RequestRejected(status, message)
