"""The daemon.* sites in aiohttp: every request a ``ClientSession`` sends (``aiohttp.request``
too). ``ClientSession._request`` is wrapped to put a client middleware of ours innermost,
next to the network, so that each attempt meets the faults where aiohttp meets the real
failure: aiohttp's own retry of an idempotent request, each redirect, and the app's own
middlewares above it all see what they would see.

Each fault is what aiohttp itself raises or returns for the real failure:

=============  =========================================================================
``refuse``     the attempt connects to a port nobody listens on, so the kernel refuses it:
               aiohttp's own ``ClientConnectorError`` (its ``os_error`` the real
               ``ConnectionRefusedError``; its ``host`` and ``port`` the daemon's).
``lost``       ``ServerDisconnectedError("Server disconnected")``, which aiohttp retries
               once for an idempotent method (GET, ...), as it would for the real one;
               ``lost(after=n)``: ``ClientPayloadError("Response payload is not completed:
               <TransferEncodingError ...>. ConnectionResetError(104, ...)")`` (a
               connection reset) after n SSE events, or as the body is read when the
               answer is not SSE (``<ContentLengthError ...>`` for a JSON body).
``timeout``    hangs until the client's own timeout that comes first: ``sock_read``, or what
               is left of ``total`` (the fault's duration if it is shorter, or if neither is
               set), then what aiohttp raises for that timeout: ``SocketTimeoutError("Timeout
               on reading data from socket")`` for ``sock_read`` (or no client timeout),
               ``TimeoutError`` for ``total``.
``latency``    a wait on the clock, then the real request; a wait the client's own timeout
               ends first ends there, with the error of ``timeout``.
``ratelimit``  a real ``ClientResponse``, answered by a one-shot server on 127.0.0.1: 429
``status``     with ``Retry-After`` and an OpenAI-style JSON body, or the status given (500,
``overflow``   503, ...), so ``raise_for_status()`` raises ``ClientResponseError`` as it would
               for the daemon (``resp.url`` and ``request_info`` name the daemon);
               ``overflow``: the daemon's own answer to a prompt longer than its context
               (400 ``context_length_exceeded``, or an empty 200 event stream for a
               streamed request).
``raise``      the exception, raised where aiohttp's connection errors are, so aiohttp
               handles it as its own: an ``OSError`` becomes ``ClientOSError`` (the original
               its ``__cause__``).
=============  =========================================================================

A streamed answer (``text/event-stream``) gets a ``resp.content`` of ours: an
``aiohttp.StreamReader`` fed, on demand and with no task of its own, from the real body
re-cut into whole SSE events (:func:`faults.sites.sse.aevents`), so every way of reading
it (``async for line in resp.content``, ``iter_chunked``, ``iter_any``, ``iter_chunks``,
``readline``, ``read``, ``resp.text()``, ``resp.read()``) meets the same faults:

- ``stall``: a wait on the clock; the client's ``sock_read`` (or what is left of ``total``)
  ends it first with ``SocketTimeoutError`` (``TimeoutError``), as it would;
- ``truncate``: ``data: [DONE]`` after n events, then a clean end of the body;
- ``corrupt``: each event's data is invalid JSON;
- ``lost(after=n)``, and ``daemon.process=lost(after=n)``: the daemon is SIGKILLed after n
  events and the reader gets what aiohttp really raises for it, ``ClientPayloadError
  ("Response payload is not completed: <TransferEncodingError: 400, message='Not enough data
  to satisfy transfer length header.'>")``.

``daemon.process`` acts on the real process before the attempt is sent, so aiohttp meets
the real consequences: ``lost`` (SIGKILL) a refused connection (``ClientConnectorError``),
or ``ServerDisconnectedError`` on a kept-alive connection; ``pause`` (SIGSTOP) a request that
waits until the client's own timeout; ``restart`` a new process.

Timeouts are kept on the injector's clock (``sock_read`` from the start of a wait, ``total``
from the start of the request), so they end injected waits the same way on a real loop, a
virtual one, or a real loop under a VirtualClock; aiohttp's own timers still run as usual.

What differs from aiohttp's own: a read of a faulted stream that is cancelled (a task
cancelled, an ``asyncio.timeout`` above it) ends that stream, and later reads of it raise
``ClientConnectionError("Connection closed")`` where aiohttp's reader would go on; a refused
attempt's ``os_error`` names the closed port it was sent to. aiohttp without client
middlewares (before 3.12) is not hooked.
"""

from __future__ import annotations

import asyncio
import functools
import http
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from faults.sites.base import Patch
from faults.sites.daemon import Unhookable, closed_port
from faults.sites.sse import Errors, aevents

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

    from faults.sites.base import Restorer, SiteFaults
    from faults.sites.daemon import Call, DaemonSites
    from pytest_resilience.core.clock import Clock

__all__ = ["hook"]

_READ_TIMEOUT = "Timeout on reading data from socket"
_NOT_COMPLETED = "Response payload is not completed"
_RESET = "ConnectionResetError(104, 'Connection reset by peer')"
_CHUNKED_SHORT = "Not enough data to satisfy transfer length header."
_LOCAL = "127.0.0.1"
_ABSENT = object()  # no ``timeout=`` given to the request


def hook(sites: DaemonSites, ah: ModuleType) -> list[Restorer]:
    """Patch ``ah.ClientSession._request`` (``ah`` is the aiohttp package)."""
    original = vars(ah.ClientSession).get("_request")
    if original is None or "middlewares" not in inspect.signature(original).parameters:
        raise Unhookable(f"aiohttp {ah.__version__} has no client middlewares (3.12 has)")
    return [Patch(ah.ClientSession, "_request", _Family(sites, ah).request(original))]


# ============================================================================ timeouts


@dataclass(frozen=True, slots=True)
class _Limit:
    """The client's own timeout that comes first: in how long, and what aiohttp raises."""

    seconds: float
    error: Callable[[], BaseException]


class _Budget:
    """The client's timeouts for one request (``ClientTimeout``), on the injector's clock:
    ``sock_read`` counts from now, ``total`` from the start of the request."""

    def __init__(self, ah: ModuleType, clock: Clock, timeout: Any) -> None:
        self.ah, self.clock, self.started = ah, clock, clock.now()
        self.total: float | None = timeout.total
        self.sock_read: float | None = timeout.sock_read

    def read_timeout(self) -> BaseException:
        error: BaseException = self.ah.SocketTimeoutError(_READ_TIMEOUT)
        return error

    def limit(self) -> _Limit | None:
        found: list[_Limit] = []
        if self.sock_read:
            found.append(_Limit(self.sock_read, self.read_timeout))
        if self.total:
            left = max(0.0, self.total - (self.clock.now() - self.started))
            found.append(_Limit(left, TimeoutError))
        return min(found, key=lambda limit: limit.seconds, default=None)


class _Bounded:
    """Stands in for the stream site's faults in one ``stall``: the client's own timeout, when
    it comes first, ends the stall with aiohttp's error for it."""

    def __init__(self, faults: SiteFaults, budget: _Budget) -> None:
        self.faults, self.budget = faults, budget

    def __getattr__(self, name: str) -> Any:
        return getattr(self.faults, name)

    async def ahang(self, seconds: float, kind: str) -> None:
        __tracebackhide__ = True
        limit = self.budget.limit()
        if limit is None or seconds < limit.seconds:
            await self.faults.ahang(seconds, kind)
            return
        await self.faults.ahang(limit.seconds, kind)
        raise limit.error()


# ================================================================ the one-shot server


class _OneAnswer(asyncio.Protocol):
    """One connection of the one-shot server: reads the whole request, writes the answer,
    closes (a server that closes after answering, as HTTP/1.1 allows)."""

    def __init__(self, answer: bytes, closed: asyncio.Future[None]) -> None:
        self.answer, self.closed = answer, closed
        self.request = b""
        self.answered = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self.request += data
        if not self.answered and self.transport is not None and _whole(self.request):
            self.answered = True
            self.transport.write(self.answer)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self) -> None:
        if self.transport is not None and not self.answered:
            self.transport.abort()


def _whole(request: bytes) -> bool:
    """Whether ``request`` holds a whole HTTP request (head and body)."""
    head, blank, body = request.partition(b"\r\n\r\n")
    if not blank:
        return False
    fields: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    if fields.get(b"expect") == b"100-continue":
        return True  # the client waits for us before it sends the body: answer now
    if fields.get(b"transfer-encoding", b"").endswith(b"chunked"):
        return body.endswith(b"0\r\n\r\n")
    length = fields.get(b"content-length", b"0")
    return len(body) >= (int(length) if length.isdigit() else 0)


def _http_answer(status: int, headers: dict[str, str], body: bytes) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers.items())]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# ========================================================================== the family


class _NoFlow:
    """The flow control of our readers: nothing to pause, they read on demand."""

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


class _Family:
    """The hooks of the aiohttp package."""

    def __init__(self, sites: DaemonSites, ah: ModuleType) -> None:
        self.sites, self.ah = sites, ah
        self.events_reader = _reader_class(ah)

    def client_timeout(self, session: Any, timeout: Any) -> Any:
        """The ``ClientTimeout`` aiohttp applies to a request, as ``_request`` works it out."""
        if timeout is _ABSENT or timeout is self.ah.helpers.sentinel:
            return session.timeout
        if isinstance(timeout, self.ah.ClientTimeout):
            return timeout
        return self.ah.ClientTimeout(total=timeout)

    def request(self, original: Callable[..., Any]) -> Callable[..., Any]:
        family = self

        @functools.wraps(original)
        async def _request(session: Any, method: str, str_or_url: Any, **kw: Any) -> Any:
            __tracebackhide__ = True
            timeout = family.client_timeout(session, kw.get("timeout", _ABSENT))
            budget = _Budget(family.ah, family.sites.env.clock, timeout)

            async def daemon_sites(req: Any, handler: Callable[[Any], Any]) -> Any:
                __tracebackhide__ = True
                return await family.attempt(req, handler, budget)

            theirs = kw.get("middlewares")
            theirs = session._middlewares if theirs is None else theirs
            kw["middlewares"] = (*theirs, daemon_sites)
            return await original(session, method, str_or_url, **kw)

        return _request

    async def attempt(self, req: Any, handler: Callable[[Any], Any], budget: _Budget) -> Any:
        """One attempt of a request, with the fault decided for it."""
        __tracebackhide__ = True
        call = self.sites.begin(req.url.raw_host, req.url.port)
        if call is None:
            return await handler(req)
        kind = call.kind
        if kind == "raise":
            raise call.exception()
        if kind == "timeout":
            limit = budget.limit()
            await call.await_(None if limit is None else limit.seconds)
            raise budget.read_timeout() if limit is None else limit.error()
        if kind == "latency":
            await self.late(call, budget)
        if kind in ("ratelimit", "status", "overflow"):
            return await self.answered(req, handler, call)
        if kind == "refuse":
            return await self.refused(req, handler)
        if call.lost_at_once:
            raise self.ah.ServerDisconnectedError()
        if not call.may_wrap:
            return await handler(req)
        resp = await handler(req)
        try:
            if call.answer(_is_sse(resp)) and not isinstance(
                resp.content, self.ah.streams.EmptyStreamReader
            ):
                resp.content = self.events_reader(resp, call, budget)
        except BaseException:
            resp.close()
            raise
        return resp

    async def late(self, call: Call, budget: _Budget) -> None:
        """``latency``: the wait, unless the client's own timeout ends it first."""
        __tracebackhide__ = True
        f = call.faults
        seconds, limit = f.delay(call.term), budget.limit()
        if limit is not None and seconds >= limit.seconds:
            await f.ahang(limit.seconds, "latency")
            raise limit.error()
        await f.ahang(seconds, "latency")

    async def sent_to(self, req: Any, handler: Callable[[Any], Any], url: Any) -> Any:
        """The attempt, sent to ``url`` instead; its answer names the daemon as the real one
        would."""
        __tracebackhide__ = True
        original, req.url = req.url, url
        try:
            resp = await handler(req)
        finally:
            req.url = original
        resp._request_info = req.request_info
        return resp

    async def refused(self, req: Any, handler: Callable[[Any], Any]) -> Any:
        __tracebackhide__ = True
        key = req.connection_key
        url = req.url.with_port(closed_port(req.url.raw_host or _LOCAL))
        try:
            return await self.sent_to(req, handler, url)
        except self.ah.ClientConnectorError as exc:
            exc._conn_key = key  # its host and port: the daemon's, as when it refuses
            exc.args = (key, exc.os_error)
            raise

    async def answered(self, req: Any, handler: Callable[[Any], Any], call: Call) -> Any:
        """``ratelimit``/``status``: the attempt is answered by a one-shot local server."""
        __tracebackhide__ = True
        loop = asyncio.get_running_loop()
        value = getattr(req.body, "_value", None)  # a bytes payload (json=, data=bytes)
        sent = bytes(value) if isinstance(value, bytes | bytearray) else None
        answer = _http_answer(*call.reply(sent, req.url.path))
        served: list[_OneAnswer] = []

        def serve() -> _OneAnswer:
            served.append(_OneAnswer(answer, loop.create_future()))
            return served[-1]

        server = await loop.create_server(serve, _LOCAL, 0)
        try:
            port = server.sockets[0].getsockname()[1]
            url = req.url.with_scheme("http").with_host(_LOCAL).with_port(port)
            return await self.sent_to(req, handler, url)
        finally:
            server.close()
            for one in served:
                one.abort()
            for one in served:
                await one.closed
            await server.wait_closed()


def _is_sse(resp: Any) -> bool:
    return str(resp.headers.get("Content-Type", "")).lower().startswith("text/event-stream")


def _reader_class(ah: ModuleType) -> Callable[[Any, Call, _Budget], Any]:
    """The ``resp.content`` of a faulted answer, for the aiohttp package ``ah``."""

    class EventsReader(ah.StreamReader):  # type: ignore[name-defined,misc]
        """An ``aiohttp.StreamReader`` fed from the real body as whole SSE events with the
        plan applied: each read that finds the buffer empty pulls the next event (aiohttp's
        own readers wait there for the protocol to feed them)."""

        __slots__ = ("_events", "_pulling")

        def __init__(self, resp: Any, call: Call, budget: _Budget) -> None:
            inner = resp.content
            limit = inner.get_read_buffer_limits()[0]
            loop = asyncio.get_running_loop()
            super().__init__(_NoFlow(), limit, timer=inner._timer, loop=loop)
            if inner._http_chunk_splits is not None:
                self.begin_http_chunk_receiving()
            for action in call.plan.actions:
                if action.kind == "stall":
                    action.faults = cast("SiteFaults", _Bounded(action.faults, budget))
            length = resp.headers.get("Content-Length")
            chunked = length is None or "chunked" in resp.headers.get("Transfer-Encoding", "")

            def short() -> BaseException:
                """What aiohttp's parser raises for a body that ends before it is whole."""
                if chunked or not str(length).isdigit():
                    error: BaseException = ah.http_exceptions.TransferEncodingError(_CHUNKED_SHORT)
                    return error
                received = self.total_bytes  # what the reader was given
                error = ah.http_exceptions.ContentLengthError(
                    f"Not enough data to satisfy content length header "
                    f"(received {received} of {length} bytes)."
                )
                return error

            def payload_error(reset: bool) -> BaseException:
                cause = short()
                message = f"{_NOT_COMPLETED}: {cause!r}" + (f". {_RESET}" if reset else "")
                error: BaseException = ah.ClientPayloadError(message)
                error.__cause__ = cause
                return error

            errors = Errors(
                reset=lambda: payload_error(reset=True),
                cut=lambda: payload_error(reset=False),
                transport=(ah.ClientError,),
            )
            self._events = aevents(call.plan, aiter(inner.iter_any()), errors)
            self._pulling = False

        async def _wait(self, func_name: str) -> None:
            __tracebackhide__ = True
            if self._pulling:
                raise RuntimeError(
                    f"{func_name}() called while another coroutine is already waiting for "
                    "incoming data"
                )
            self._pulling = True
            try:
                with self._timer:  # the request's total timeout, as for aiohttp's readers
                    data = await anext(self._events)
            except StopAsyncIteration:
                self.feed_eof()
                return
            except (ah.ClientError, TimeoutError) as exc:
                self.set_exception(exc)  # later reads raise it again, as aiohttp's do
                raise
            except asyncio.CancelledError:
                self.set_exception(ah.ClientConnectionError("Connection closed"))
                raise
            finally:
                self._pulling = False
            self.feed_data(data)
            if self._http_chunk_splits is not None:
                self.end_http_chunk_receiving()

        async def wait_eof(self) -> None:
            __tracebackhide__ = True
            while not self._eof:
                await self._wait("wait_eof")

    return EventsReader
