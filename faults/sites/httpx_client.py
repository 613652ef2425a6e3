"""The daemon.* sites in httpx and httpx2 (the official ``openai`` client sends with
httpx2, ``ollama`` with httpx): ``Client.send`` and ``AsyncClient.send`` of the package.

Each fault is what the package itself raises or returns for the real failure:

=============  =========================================================================
``refuse``     the request is sent to a port nobody listens on, so the kernel refuses it
               (``ConnectError``).
``lost``       ``RemoteProtocolError("Server disconnected without sending a response.")``;
               a sync request through the fault proxy gets a real reset instead;
               ``lost(after=n)``: ``ReadError`` (connection reset) after n SSE chunks,
               or as the body is read when the answer is not SSE (JSON, NDJSON).
``timeout``    hangs until the request's own read timeout (or the fault's duration, if
               shorter), then ``ReadTimeout``. ``latency`` longer than the read timeout
               ends the same way.
``ratelimit``  a 429 answer with ``Retry-After`` and an OpenAI-style JSON error body;
``status``     the same with the status given (500, 503, ...), so ``openai`` raises its
               own ``RateLimitError`` / ``InternalServerError`` and retries as it would.
``overflow``   the daemon's own answer to a prompt longer than its context
               (:func:`~faults.sites.daemon.overflow_answer`): 400 with its
               ``context_length_exceeded`` body (``openai``: ``BadRequestError``), or,
               for a streamed request, a 200 event stream without a single event.
``latency``    a wait on the clock, then the real request. ``raise``: the exception.
=============  =========================================================================

A streamed answer's body is re-cut into whole SSE events (:func:`faults.sites.sse.events`);
a daemon killed mid-answer is read to the real error httpx raises for it, and a ``stall``
longer than the request's read timeout ends with ``ReadTimeout`` there.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from faults.sites.base import Patch, Restorer
from faults.sites.daemon import closed_port
from faults.sites.sse import Errors, aevents, events

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from types import ModuleType

    from faults.sites.daemon import Call, DaemonSites

__all__ = ["hook"]

_CUT_BODY = "peer closed connection without sending complete message body (incomplete chunked read)"
_NO_ANSWER = "Server disconnected without sending a response."


def hook(sites: DaemonSites, hx: ModuleType) -> list[Restorer]:
    """Patch ``hx.Client.send`` and ``hx.AsyncClient.send`` (``hx`` is httpx or httpx2)."""
    family = _Family(sites, hx)
    done: list[Restorer] = [Patch(hx.Client, "send", family.sync_send(vars(hx.Client)["send"]))]
    try:
        original = vars(hx.AsyncClient)["send"]
        done.append(Patch(hx.AsyncClient, "send", family.async_send(original)))
    except BaseException:
        done[0].restore()
        raise
    return done


def _read_timeout(request: Any) -> float | None:
    timeout = request.extensions.get("timeout", {})
    value = timeout.get("read") if isinstance(timeout, dict) else None
    return float(value) if isinstance(value, int | float) else None


class _Family:
    """The hooks of one package (httpx or httpx2)."""

    def __init__(self, sites: DaemonSites, hx: ModuleType) -> None:
        self.sites, self.hx = sites, hx
        self.errors = errors = Errors(
            reset=lambda: hx.ReadError("[Errno 104] Connection reset by peer"),
            cut=lambda: hx.RemoteProtocolError(_CUT_BODY),
            transport=(hx.TransportError,),
            timeout=lambda: hx.ReadTimeout("timed out"),
        )

        class SyncEvents(hx.SyncByteStream):  # type: ignore[name-defined,misc]
            """The body as whole SSE events with the plan applied (httpx checks the type)."""

            def __init__(self, inner: Any, call: Call) -> None:
                self.inner, self.call = inner, call

            def __iter__(self) -> Iterator[bytes]:
                return events(self.call.plan, iter(self.inner), errors)

            def close(self) -> None:
                self.inner.close()

        class AsyncEvents(hx.AsyncByteStream):  # type: ignore[name-defined,misc]
            def __init__(self, inner: Any, call: Call) -> None:
                self.inner, self.call = inner, call

            def __aiter__(self) -> AsyncIterator[bytes]:
                return aevents(self.call.plan, aiter(self.inner), errors)

            async def aclose(self) -> None:
                await self.inner.aclose()

        self.sync_events, self.async_events = SyncEvents, AsyncEvents

    def ratelimited(self, request: Any, call: Call) -> Any:
        try:
            sent: bytes | None = request.content
        except self.hx.RequestNotRead:
            sent = None
        status, headers, body = call.reply(sent, request.url.path)
        return self.hx.Response(status, headers=headers, content=body, request=request)

    def refused_url(self, request: Any) -> Any:
        return request.url.copy_with(port=closed_port(request.url.host or "127.0.0.1"))

    def disconnected(self, request: Any) -> BaseException:
        error: BaseException = self.hx.RemoteProtocolError(_NO_ANSWER, request=request)
        return error

    def sync_send(self, original: Callable[..., Any]) -> Callable[..., Any]:
        sites, hx = self.sites, self.hx

        @functools.wraps(original)
        def send(client: Any, request: Any, *, stream: bool = False, **kw: Any) -> Any:
            __tracebackhide__ = True
            call = sites.begin(request.url.host, request.url.port)
            if call is None:
                return original(client, request, stream=stream, **kw)
            kind = call.kind
            if kind == "raise":
                raise call.exception()
            if kind in ("timeout", "latency") and call.wait(_read_timeout(request)):
                raise hx.ReadTimeout(f"fault injected at {call.site}", request=request)
            if kind in ("ratelimit", "status", "overflow"):
                return self.ratelimited(request, call)
            if kind == "refuse":
                url, request.url = request.url, self.refused_url(request)
                try:
                    return original(client, request, stream=stream, **kw)
                finally:
                    request.url = url
            if call.lost_at_once:
                if not sites.via_proxy(request.url.host, request.url.port):
                    raise self.disconnected(request)
                from faults.proxy import ResetAfter  # noqa: PLC0415 - only for this fault

                assert sites.env.proxy is not None  # via_proxy checked it
                with sites.env.proxy.toxic(ResetAfter(0), "upstream"):
                    return original(client, request, stream=stream, **kw)
            if not call.may_wrap:
                return original(client, request, stream=stream, **kw)
            response = original(client, request, stream=True, **kw)
            try:
                call.plan.read_timeout = _read_timeout(request)
                if call.answer(_is_sse(response)):
                    response.stream = self.sync_events(response.stream, call)
                if not stream:
                    response.read()
            except BaseException:
                response.close()
                raise
            return response

        return send

    def async_send(self, original: Callable[..., Any]) -> Callable[..., Any]:
        sites, hx = self.sites, self.hx

        @functools.wraps(original)
        async def send(client: Any, request: Any, *, stream: bool = False, **kw: Any) -> Any:
            __tracebackhide__ = True
            call = sites.begin(request.url.host, request.url.port)
            if call is None:
                return await original(client, request, stream=stream, **kw)
            kind = call.kind
            if kind == "raise":
                raise call.exception()
            if kind in ("timeout", "latency") and await call.await_(_read_timeout(request)):
                raise hx.ReadTimeout(f"fault injected at {call.site}", request=request)
            if kind in ("ratelimit", "status", "overflow"):
                return self.ratelimited(request, call)
            if kind == "refuse":
                url, request.url = request.url, self.refused_url(request)
                try:
                    return await original(client, request, stream=stream, **kw)
                finally:
                    request.url = url
            if call.lost_at_once:
                raise self.disconnected(request)
            if not call.may_wrap:
                return await original(client, request, stream=stream, **kw)
            response = await original(client, request, stream=True, **kw)
            try:
                call.plan.read_timeout = _read_timeout(request)
                if call.answer(_is_sse(response)):
                    response.stream = self.async_events(response.stream, call)
                if not stream:
                    await response.aread()
            except BaseException:
                await response.aclose()
                raise
            return response

        return send


def _is_sse(response: Any) -> bool:
    return str(response.headers.get("content-type", "")).startswith("text/event-stream")
