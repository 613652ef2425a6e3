"""The daemon.* sites in urllib3, and so in ``requests`` (its ``HTTPAdapter`` sends with
urllib3) and anything else built on it: ``HTTPConnectionPool.urlopen``.

Every request goes through it: ``PoolManager.urlopen``, ``urllib3.request()`` and
``requests`` all end in a pool's ``urlopen``, and urlopen calls itself again for each retry
and redirect it makes, so each attempt is a request of its own to the daemon.* sites, as
it is on the wire. The pool knows where it sends (``pool.host``, ``pool.port``).

Each fault is what urllib3 itself raises or returns for the real failure, handed to the
app's own ``Retry`` as urllib3 hands it the real one (``retries.increment``): a ``Retry``
that allows it retries (a new request, counted, decided again), one that is spent raises
``MaxRetryError``, and one that does not retry that failure raises it as it is. What
``requests`` raises follows from urllib3's exception, by requests' own mapping:

=============  ===========================================================================
kind           urllib3                              → requests
=============  ===========================================================================
``refuse``     one connect of a throwaway connection (the pool's own class, no retries of
               its own) to a closed port, refused by the kernel: urllib3's
               ``NewConnectionError`` naming the daemon's address (a connect error to
               ``Retry``; ``MaxRetryError`` once spent)  → ``ConnectionError``
``lost``       ``ProtocolError('Connection aborted.', RemoteDisconnected('Remote end
               closed connection without response'))`` (a read error to ``Retry``:
               re-raised as is for POST or ``read=False``, as urllib3 does)
               → ``ConnectionError``; through the fault proxy, a real reset instead
``timeout``    a hang until the request's read timeout (or the fault's duration, if
               shorter), then ``ReadTimeoutError(pool, url, "Read timed out. (read
               timeout=...)")`` (a read error)  → ``ReadTimeout``. ``latency`` longer
               than the read timeout ends the same way.
``ratelimit``  an ``HTTPResponse`` 429 with ``Retry-After`` and an OpenAI-style JSON error
``status``     body (the status given: 500, 503, ...), through urllib3's status retries
               (``status_forcelist``, ``Retry-After``; ``MaxRetryError(ResponseError)``
               once spent)  → a ``Response`` with that status and body, or ``RetryError``
``overflow``   the daemon's own answer to a prompt longer than its context, as an
               ``HTTPResponse``: 400 with its ``context_length_exceeded`` body, or 200 with
               an event stream without a single event for a streamed request
               → a ``Response`` with that status and body
``latency``    a wait on the clock, then the real request. ``raise``: the exception.
lost(after=n)  reading the body fails after n SSE events (at once for an answer that is
               not SSE): ``ProtocolError("Connection broken: ConnectionResetError(104,
               'Connection reset by peer')")``  → ``ChunkedEncodingError``
=============  ===========================================================================

daemon.stream and daemon.process faults act on the real daemon and its real answer: a
daemon killed mid-answer (``lost(after=n)``) is read to the real end urllib3 sees
(``ProtocolError('Response ended prematurely')`` → ``ChunkedEncodingError``);
``truncate`` ends the body cleanly after ``data: [DONE]``; ``corrupt`` makes each event's
data invalid JSON; ``stall`` holds the next event back on the clock (in the cancel scope):
past the request's read timeout, the read fails as a socket timeout does (urllib3's
``ReadTimeoutError``, ``ConnectionError`` from requests' ``iter_content``), and a deadline
above it raises its own ``DeadlineExceeded``.

How: the answer's body is re-cut into whole SSE events (:func:`faults.sites.sse.events`)
below urllib3, in the socket file under the ``http.client`` response, and served again in
its transfer framing (:mod:`faults.sites.urllib3_body`); every read urllib3 offers
(``stream``, ``read``, ``read1``, ``read_chunked``, iteration, ``.data``, requests'
``iter_content``) goes through urllib3's own code and error handling. A body cut short
leaves its connection closed, never reused.

The waits ``Retry`` asks for between attempts after an injected fault (``backoff_factor``,
``Retry-After``) are on the injector's clock, like every injected wait (a ``Retry`` whose
class overrides ``sleep`` sleeps its own way).
"""

from __future__ import annotations

import errno
import functools
import http
import http.client
import inspect
import io
import logging
import weakref
from typing import TYPE_CHECKING, Any

from faults.sites.base import Patch, Restorer, seconds_of
from faults.sites.daemon import closed_port
from faults.sites.sse import Errors, events
from faults.sites.urllib3_body import Body, Ended, Reframed, unmask_read, unmask_stream

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

    from faults.sites.base import SiteFaults
    from faults.sites.daemon import Call, DaemonSites

__all__ = ["hook"]

_NO_ANSWER = "Remote end closed connection without response"
_REFUSED = "Failed to establish a new connection: [Errno 111] Connection refused"
_SLEEPS = ("sleep", "sleep_for_retry", "_sleep_backoff")
_log = logging.getLogger("urllib3.connectionpool")  # urllib3's own, for its retry warnings


def hook(sites: DaemonSites, urllib3: ModuleType) -> list[Restorer]:
    """Patch ``urllib3.HTTPConnectionPool.urlopen`` (HTTPS pools inherit it)."""
    pool = urllib3.HTTPConnectionPool
    family = _Family(sites, urllib3)
    return [Patch(pool, "urlopen", family.urlopen(vars(pool)["urlopen"]))]


class _Request:
    """The arguments of one ``urlopen`` call by name (urllib3 passes them either way)."""

    __slots__ = ("arguments",)

    def __init__(self, signature: inspect.Signature, pool: Any, args: Any, kwargs: Any) -> None:
        bound = signature.bind(pool, *args, **kwargs)
        bound.apply_defaults()
        arguments: dict[str, Any] = {}
        for name, param in signature.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(bound.arguments.get(name, {}))
            elif name in bound.arguments:
                arguments[name] = bound.arguments[name]
        del arguments[next(iter(signature.parameters))]  # the pool
        self.arguments = arguments

    def get(self, name: str, default: Any = None) -> Any:
        return self.arguments.get(name, default)

    @property
    def method(self) -> str:
        return str(self.arguments["method"])

    @property
    def url(self) -> str:
        return str(self.arguments["url"])

    @property
    def preload(self) -> bool:
        return bool(self.get("preload_content", True))

    def again(self, **changes: Any) -> dict[str, Any]:
        """The keyword arguments of the same call with ``changes``."""
        return {**self.arguments, **changes}


class _Family:
    """The hook, and what it needs of the urllib3 package it was given."""

    def __init__(self, sites: DaemonSites, urllib3: ModuleType) -> None:
        self.sites, self.u3 = sites, urllib3
        self.x = urllib3.exceptions
        self.claimed: weakref.WeakSet[Any] = weakref.WeakSet()  # answers a hook has handled
        response = inspect.signature(urllib3.HTTPResponse)
        self.version_string = "version_string" in response.parameters
        self.errors = Errors(
            reset=lambda: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
            cut=Ended,
            transport=(OSError,),
            timeout=lambda: TimeoutError("timed out"),  # a socket's: urllib3 makes it its own
        )

    # ------------------------------------------------------------------ the hook

    def urlopen(self, original: Callable[..., Any]) -> Callable[..., Any]:
        sites, signature = self.sites, inspect.signature(original)

        @functools.wraps(original)
        def urlopen(pool: Any, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            call = sites.begin(pool.host, _port(pool))
            if call is None:
                return original(pool, *args, **kwargs)
            if call.kind == "off" and not call.may_wrap:
                return self.claim(original(pool, *args, **kwargs))
            return self.faulted(original, pool, call, _Request(signature, pool, args, kwargs))

        return urlopen

    def claim(self, response: Any) -> Any:
        """Mark an answer as handled, so that the urlopen it returns through (an attempt that
        urllib3 retried or redirected) leaves it alone."""
        self.claimed.add(response)
        return response

    def faulted(self, original: Callable[..., Any], pool: Any, call: Call, req: _Request) -> Any:
        __tracebackhide__ = True
        kind = call.kind
        if kind == "raise":
            raise call.exception()
        retries = req.get("retries")
        if not isinstance(retries, self.u3.Retry):
            retries = self.u3.Retry.from_int(
                retries, redirect=req.get("redirect", True), default=pool.retries
            )
        if kind in ("timeout", "latency"):
            read_timeout = self.read_timeout(pool, req)
            if call.wait(read_timeout):
                shown = seconds_of(call.term, "duration") if read_timeout is None else read_timeout
                message = f"Read timed out. (read timeout={shown})"
                error = self.x.ReadTimeoutError(pool, req.url, message)
                return self.retry(pool, req, retries, error)
        if kind in ("ratelimit", "status", "overflow"):
            return self.statused(pool, req, retries, self.error_answer(pool, req, retries, call))
        if kind == "refuse":
            return self.retry(pool, req, retries, self.refusal(pool, req))
        if call.lost_at_once:
            if self.sites.via_proxy(pool.host, _port(pool)):
                return self.reset_by_proxy(original, pool, req, retries)
            gone = http.client.RemoteDisconnected(_NO_ANSWER)
            lost = self.x.ProtocolError("Connection aborted.", gone)
            return self.retry(pool, req, retries, lost)
        if not call.may_wrap:
            return self.claim(original(pool, **req.again()))
        return self.answered(original, pool, req, retries, call)

    # ------------------------------------------------------------------ urllib3's retries

    def retry(self, pool: Any, req: _Request, retries: Any, error: Exception) -> Any:
        """What urlopen does with the failure of an attempt: count it against the app's
        ``Retry`` (which raises ``MaxRetryError``, or the error itself, when it will not
        retry), wait as it asks, and send the request again."""
        __tracebackhide__ = True
        retries = retries.increment(
            req.method, req.url, error=error, _pool=pool, _stacktrace=error.__traceback__
        )
        self.back_off(retries, None)
        _log.warning(
            "Retrying (%r) after connection broken by '%r': %s",
            retries,
            error,
            req.url,
            extra={"__urllib3-retry-warning": {"host": pool.host}},
        )
        return pool.urlopen(**req.again(retries=retries))

    def statused(self, pool: Any, req: _Request, retries: Any, response: Any) -> Any:
        """What urlopen does with an answer whose status its ``Retry`` may retry."""
        __tracebackhide__ = True
        has_retry_after = bool(response.headers.get("Retry-After"))
        if not retries.is_retry(req.method, response.status, has_retry_after):
            return response
        try:
            after = retries.increment(req.method, req.url, response=response, _pool=pool)
        except self.x.MaxRetryError:
            if retries.raise_on_status:
                response.drain_conn()
                raise
            return response
        response.drain_conn()
        self.back_off(after, response)
        _log.debug("Retry: %s", req.url)
        return pool.urlopen(**req.again(retries=after))

    def back_off(self, retries: Any, response: Any) -> None:
        """``retries.sleep(response)``, on the injector's clock unless the app's ``Retry``
        sleeps its own way."""
        __tracebackhide__ = True
        base, own = self.u3.Retry, type(retries)
        f = self.clocked()
        if f is None or any(getattr(own, n) is not getattr(base, n) for n in _SLEEPS):
            if response is None:
                retries.sleep()
            else:
                retries.sleep(response)
            return
        seconds = None
        if retries.respect_retry_after_header and response is not None:
            seconds = retries.get_retry_after(response)
        if not seconds:
            seconds = retries.get_backoff_time()
        if seconds > 0:
            f.hang(seconds, "Retry backoff")

    def clocked(self) -> SiteFaults | None:
        s = self.sites
        return s.request or s.stream or s.process

    # ------------------------------------------------------------------ the faults

    def read_timeout(self, pool: Any, req: _Request) -> float | None:
        timeout = pool._get_timeout(req.arguments["timeout"])
        timeout.start_connect()
        value = timeout.read_timeout
        return float(value) if isinstance(value, int | float) else None

    def refusal(self, pool: Any, req: _Request) -> Exception:
        """A real refusal by the kernel: a throwaway connection of the pool's own class to a
        port nobody listens on (one attempt, no retries of its own: the app's ``Retry``
        decides on it, and each retry is a new request, decided again)."""
        timeout = pool._get_timeout(req.arguments["timeout"])
        conn = pool.ConnectionCls(
            host=pool.host,
            port=closed_port(pool.host),
            timeout=self.u3.Timeout.resolve_default_timeout(timeout.connect_timeout),
            **pool.conn_kw,
        )
        try:
            conn.connect()
        except self.x.ConnectTimeoutError as exc:  # NewConnectionError, as urllib3 raises it
            return self.named(exc, conn, pool.port)
        finally:
            conn.close()
        taken: Exception = self.x.NewConnectionError(conn, _REFUSED)  # someone took the port
        return taken

    def named(self, refused: Exception, conn: Any, port: int | None) -> Exception:
        """The refusal as urllib3 reports it for the daemon's own address (not the closed
        port). The tracebacks of the throwaway attempt are dropped: their frames (the
        injector's, up to the app's) would stay alive with the error in ``Retry.history``."""
        cause = refused.__cause__  # the kernel's ConnectionRefusedError
        for error in (refused, cause):
            if error is not None:
                error.__traceback__ = None
        message = getattr(refused, "_message", None)
        if type(refused) is not self.x.NewConnectionError or not isinstance(message, str):
            return refused
        conn.port = port
        named: Exception = self.x.NewConnectionError(conn, message)
        named.__cause__ = cause
        return named

    def reset_by_proxy(
        self, original: Callable[..., Any], pool: Any, req: _Request, retries: Any
    ) -> Any:
        """``lost`` through the fault proxy: one attempt that the proxy really resets."""
        __tracebackhide__ = True
        from faults.proxy import ResetAfter  # noqa: PLC0415 - only for this fault

        proxy = self.sites.env.proxy
        assert proxy is not None  # via_proxy checked it
        try:
            with proxy.toxic(ResetAfter(0), "upstream"):
                response = original(pool, **req.again(retries=False))
        except (self.x.ProtocolError, self.x.TimeoutError) as exc:
            return self.retry(pool, req, retries, exc)
        return self.claim(response)

    def error_answer(self, pool: Any, req: _Request, retries: Any, call: Call) -> Any:
        """The 429 or error status, as urllib3 builds an answer (body read as asked)."""
        sent = req.get("body")
        sent = sent.encode() if isinstance(sent, str) else sent
        path = req.url.split("?", 1)[0]
        status, headers, body = call.reply(sent if isinstance(sent, bytes) else None, path)
        try:
            reason: str | None = http.HTTPStatus(status).phrase
        except ValueError:
            reason = None
        extra = {"version_string": "HTTP/1.1"} if self.version_string else {}
        return self.u3.HTTPResponse(
            body=io.BytesIO(body),
            headers={**headers, "content-length": str(len(body))},
            status=status,
            version=11,
            reason=reason,
            preload_content=req.preload,
            decode_content=req.get("decode_content", True),
            pool=pool,
            retries=retries,
            request_method=req.method,
            request_url=req.url,
            **extra,
        )

    def answered(
        self, original: Callable[..., Any], pool: Any, req: _Request, retries: Any, call: Call
    ) -> Any:
        """The real request, its answer's body wrapped when the plan needs it: sent without
        preloading (so that the body can be wrapped first), then read as the caller asked."""
        __tracebackhide__ = True
        response = original(pool, **req.again(preload_content=False, release_conn=False))
        if response not in self.claimed:  # else a retry's or redirect's: decided there
            self.claim(response)
            try:
                wrappable = self.wrappable(response)
                sse = wrappable and _is_sse(response) and req.method != "HEAD"
                call.plan.read_timeout = self.read_timeout(pool, req)
                if call.answer(sse) and wrappable:
                    self.wrap(response, call)
            except BaseException:
                response.close()
                raise
        if not req.preload:
            return response
        try:  # urlopen reads a preloaded body within the attempt: its failures are retried
            response.read(decode_content=req.get("decode_content", True), cache_content=True)
        except (self.x.ProtocolError, self.x.TimeoutError, self.x.SSLError) as exc:
            response.close()
            return self.retry(pool, req, getattr(response, "retries", None) or retries, exc)
        return response

    # ------------------------------------------------------------------ the body

    def wrappable(self, response: Any) -> bool:
        """Whether the answer is urllib3's over an ``http.client`` response (its socket
        file is where the body is re-cut)."""
        original = getattr(response, "_original_response", None)
        return (
            isinstance(response, self.u3.HTTPResponse)
            and original is not None
            and getattr(response, "_fp", None) is original
            and getattr(original, "fp", None) is not None
        )

    def wrap(self, response: Any, call: Call) -> None:
        original = response._original_response  # checked by wrappable()
        chunked = bool(original.chunked)
        body = Body(original.fp, chunked=chunked, length=original.length)

        def abandon() -> None:  # the rest of the body is still on its way: never reuse
            conn = response.connection
            if conn is not None:
                conn.close()

        pieces = events(call.plan, body.chunks(), self.errors)
        file = Reframed(body, pieces, chunked=chunked, abandon=abandon)
        original.fp = file
        if not chunked:  # the length changes with the faults; read to the end instead
            original.length = None
            response.length_remaining = None
        timed_out = self.x.ReadTimeoutError
        for name in ("read", "read1"):
            setattr(response, name, unmask_read(getattr(response, name), file, timed_out))
        for name in ("stream", "read_chunked"):
            setattr(response, name, unmask_stream(getattr(response, name), file, timed_out))


def _port(pool: Any) -> int | None:
    port = pool.port
    if port is None:
        return {"http": 80, "https": 443}.get(pool.scheme)
    return int(port)


def _is_sse(response: Any) -> bool:
    content_type = str(response.headers.get("content-type", "")).lower()
    return content_type.startswith("text/event-stream")
