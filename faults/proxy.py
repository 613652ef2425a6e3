"""A TCP fault proxy between a client and the model daemon (toxiproxy is the model).

::

    with FaultProxy(upstream=("127.0.0.1", daemon.port), journal=journal) as proxy:
        backend = DaemonBackend(proxy.url)
        with proxy.toxic(ResetAfterEvents(3)):        # downstream by default
            ...                                       # the 3rd SSE event is the last one

:class:`FaultProxy` listens on a loopback port and forwards every accepted connection to the
upstream, both ways. *Toxics* change what passes, per direction (``"upstream"``: client to
server, the request; ``"downstream"``: server to client, the answer). They can be added and
removed while the proxy runs, and :meth:`FaultProxy.add` returns once the proxy has seen the
change:

=======================  ====================================================================
toxic                    what it does
=======================  ====================================================================
``Latency(d, jitter)``   holds each chunk ``d`` +/- ``jitter`` seconds (order is kept)
``Bandwidth(rate)``      passes at most ``rate`` bytes per second, in 100 ms slices
``Stall()``              forwards nothing (data and end of stream are held, not dropped)
                         until it is removed or the proxy stops
``ResetAfter(bytes=n)``  forwards n bytes, then resets the connection (RST, SO_LINGER 0)
``ResetAfterEvents(n)``  forwards n server-sent events, then resets (see below)
``TruncateAfter(bytes)`` forwards n bytes, then closes the connection cleanly (FIN)
``SlowClose(d)``         delays passing on the end of the stream (FIN) by ``d`` seconds
``Refuse()``             new connections are refused: the listener is closed and its port
                         held by a socket that is bound but not listening, so a client's
                         ``connect()`` gets ``ConnectionRefusedError`` from the kernel
                         itself, as from a daemon that is down; connections already open
                         go on. (Accepting and resetting would show up as a lost
                         connection instead: ``DaemonLost``, not ``DaemonUnavailable``.)
=======================  ====================================================================

Counting toxics (``ResetAfter``, ``ResetAfterEvents``, ``TruncateAfter``) count per
connection from the moment they are added, as toxiproxy's ``limit_data`` does.
``ResetAfterEvents`` reads the downstream bytes as HTTP/1.1 responses: it skips the headers,
decodes chunked bodies and counts blank lines (``\\n\\n``, ``\\r\\n\\r\\n``, ``\\r\\r``) only in
``text/event-stream`` bodies; a stream that does not start with ``H`` is read as a bare event
stream.

HTTP: the proxy also reads the HTTP/1.1 it carries, and changes nothing unless asked.
Requests are cut from the client's bytes (by ``content-length`` or chunked framing) and
answers matched to them in order, so every request of a keep-alive connection is seen.
:meth:`FaultProxy.intercept` installs a function asked about each request: its
:class:`Verdict` forwards it, holds it, answers it with a :class:`Reply` of the proxy's own
(keeping the connection when HTTP allows), resets or closes the connection, after running
blocking work (kill, pause, restart the daemon) in a worker thread; for the answer, an
:class:`AnswerPlan` rewrites the data of each server-sent event and cuts the stream after
n events (:class:`Cut`: stall, ``data: [DONE]`` with a proper end of the chunked body,
reset, drop). :mod:`faults.sites.wire` builds the ``daemon.*`` faults on it. A connection whose
first line is not an HTTP request line (decided within 8 KiB) passes raw; the toxics apply
to what the interceptor lets through.

If the upstream cannot be reached, each accepted client is reset at once. :meth:`stop` resets
every open connection, closes the listener and joins the proxy's thread; nothing is left
running.

Design: one thread runs a ``selectors`` loop over non-blocking sockets. Latency and bandwidth
are release times on queued chunks, so waiting is the loop's ``select`` timeout: the proxy
never sleeps a thread per connection, one thread owns every socket (a reset never races a
read in another thread), and ``stop()`` is one wake-up and one join. The proxy forwards real
sockets to a real process, so it waits in real time (``time.monotonic``): that is the one
place in the project where real time is right; the ``clock`` only stamps journal events.
Nothing here makes the caller's thread sleep: ``add``/``remove``/``intercept`` wait only for
the loop's acknowledgement of the change (and removing an interceptor for its workers).
An interceptor's holds and stalls are release times too; its blocking work runs in worker
threads that wake the loop when done, joined by ``intercept(None)`` and ``stop()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import math
import random
import re
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from faults.spec import format_duration
from pytest_resilience.core.clock import Clock, SystemClock
from pytest_resilience.core.events import FaultInjected

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from pytest_resilience.core.events import Journal

__all__ = [
    "Bandwidth",
    "Direction",
    "FaultProxy",
    "Latency",
    "ProxyStats",
    "Refuse",
    "ResetAfter",
    "ResetAfterEvents",
    "SlowClose",
    "Stall",
    "Toxic",
    "TruncateAfter",
]

Direction = Literal["upstream", "downstream"]
_DIRECTIONS: tuple[Direction, ...] = ("upstream", "downstream")
_SITES: dict[Direction, str] = {"upstream": "daemon.request", "downstream": "daemon.stream"}

_CHUNK = 65_536
_HIGH_WATER = 262_144  # bytes queued per direction before we stop reading (back-pressure)
_ACK_TIMEOUT = 10.0  # how long add()/remove() wait for the loop; it answers in microseconds
_Bytes = bytes  # the counting toxics have a field named ``bytes``
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


# ================================================================================= toxics


class Toxic:
    """Base of the toxics. ``str(toxic)`` is how events and reports name it.

    Toxics are compared by identity: the same object can be added once, to one direction.
    Their hooks run in the proxy's thread.
    """

    __slots__ = ()

    def new_state(self) -> Any:
        """Fresh per-connection state (called when the toxic first meets a connection)."""
        return None


class _Timing(Toxic):
    """A toxic that decides when chunks are released."""

    __slots__ = ()

    def schedule(self, state: Any, at: float, data: bytes) -> list[tuple[float, bytes]]:
        raise NotImplementedError


class _Limit(Toxic):
    """A toxic that lets a number of bytes through, then ends the connection."""

    __slots__ = ()
    ending: ClassVar[Literal["reset", "close"]]

    def cut(self, state: Any, data: bytes) -> int | None:
        """How many bytes of ``data`` pass before the end (None: all, and no end yet)."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False, slots=True)
class Latency(_Timing):
    """Hold each chunk ``delay`` seconds, plus or minus up to ``jitter`` (uniform, drawn from
    ``rng``; default a ``random.Random(0)`` of its own). Chunks never overtake each other.
    Raises ValueError for a negative or non-finite delay or jitter.
    """

    delay: float
    jitter: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    def __post_init__(self) -> None:
        _check_seconds("delay", self.delay)
        _check_seconds("jitter", self.jitter)

    def schedule(self, state: Any, at: float, data: bytes) -> list[tuple[float, bytes]]:
        extra = self.rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        return [(at + max(0.0, self.delay + extra), data)]

    def __str__(self) -> str:
        jitter = f", jitter={format_duration(self.jitter)}" if self.jitter else ""
        return f"latency({format_duration(self.delay)}{jitter})"


@dataclass(frozen=True, eq=False, slots=True)
class Bandwidth(_Timing):
    """Pass at most ``bytes_per_second``: data is cut into slices of a tenth of a second's
    worth, each released when the one before has "gone through". ValueError unless > 0.
    """

    bytes_per_second: float

    def __post_init__(self) -> None:
        if not (self.bytes_per_second > 0 and math.isfinite(self.bytes_per_second)):
            raise ValueError(f"bytes_per_second must be > 0, got {self.bytes_per_second!r}")

    def new_state(self) -> list[float]:
        return [-math.inf]  # when the link is free again

    def schedule(self, state: list[float], at: float, data: bytes) -> list[tuple[float, bytes]]:
        rate = self.bytes_per_second
        step = max(1, int(rate / 10))
        out = []
        for i in range(0, len(data), step):
            piece = data[i : i + step]
            state[0] = max(at, state[0]) + len(piece) / rate
            out.append((state[0], piece))
        return out

    def __str__(self) -> str:
        return f"bandwidth({self.bytes_per_second:g}B/s)"


@dataclass(frozen=True, eq=False, slots=True)
class Stall(Toxic):
    """Forward nothing, holding the data and the end of stream, until removed."""

    def __str__(self) -> str:
        return "stall"


@dataclass(frozen=True, eq=False, slots=True)
class SlowClose(Toxic):
    """Pass on the end of stream (or a truncation's close) ``delay`` seconds late."""

    delay: float

    def __post_init__(self) -> None:
        _check_seconds("delay", self.delay)

    def __str__(self) -> str:
        return f"slow_close({format_duration(self.delay)})"


@dataclass(frozen=True, eq=False, slots=True)
class Refuse(Toxic):
    """Refuse new connections (``ConnectionRefusedError``); open ones go on. No direction."""

    def __str__(self) -> str:
        return "refuse"


@dataclass(frozen=True, eq=False, slots=True)
class ResetAfter(_Limit):
    """Forward ``bytes`` bytes, then reset the connection (RST both ways)."""

    ending: ClassVar[Literal["reset", "close"]] = "reset"
    bytes: int

    def __post_init__(self) -> None:
        _check_count("bytes", self.bytes, minimum=0)

    def new_state(self) -> list[int]:
        return [self.bytes]  # bytes still allowed

    def cut(self, state: list[int], data: _Bytes) -> int | None:
        return _count_down(state, data)

    def __str__(self) -> str:
        return f"reset_after(bytes={self.bytes})"


@dataclass(frozen=True, eq=False, slots=True)
class TruncateAfter(_Limit):
    """Forward ``bytes`` bytes, then close the connection cleanly (FIN)."""

    ending: ClassVar[Literal["reset", "close"]] = "close"
    bytes: int

    def __post_init__(self) -> None:
        _check_count("bytes", self.bytes, minimum=0)

    def new_state(self) -> list[int]:
        return [self.bytes]

    def cut(self, state: list[int], data: _Bytes) -> int | None:
        return _count_down(state, data)

    def __str__(self) -> str:
        return f"truncate_after(bytes={self.bytes})"


@dataclass(frozen=True, eq=False, slots=True)
class ResetAfterEvents(_Limit):
    """Forward ``events`` server-sent events (each whole, with its blank line), then reset.
    Meant for the downstream direction of an HTTP SSE answer; see the module docstring.
    """

    ending: ClassVar[Literal["reset", "close"]] = "reset"
    events: int

    def __post_init__(self) -> None:
        _check_count("events", self.events, minimum=1)

    def new_state(self) -> _SseCounter:
        return _SseCounter()

    def cut(self, state: _SseCounter, data: bytes) -> int | None:
        return state.feed(data, self.events)

    def __str__(self) -> str:
        return f"reset_after_events({self.events})"


def _check_seconds(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


def _check_count(name: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _count_down(state: list[int], data: bytes) -> int | None:
    left = state[0]
    if left > len(data):
        state[0] = left - len(data)
        return None
    state[0] = 0
    return left


class _SseCounter:
    """Counts server-sent events in HTTP/1.1 responses read incrementally.

    Modes: ``start`` (first byte decides: ``H`` an HTTP response, else a bare event stream),
    ``head`` (header lines), ``size``/``data``/``crlf``/``trailer`` (a chunked body),
    ``fixed`` (a Content-Length body), ``body`` (to the end; also a bare stream), ``off``
    (unparseable: count nothing).
    """

    __slots__ = (
        "at_line_start",
        "ended_on_cr",
        "events",
        "headers",
        "left",
        "line",
        "mode",
        "prev_cr",
        "sse",
    )

    def __init__(self) -> None:
        self.mode = "start"
        self.line = bytearray()
        self.headers: list[bytes] = []
        self.left = 0
        self.sse = False
        self.events = 0
        self.at_line_start = True
        self.prev_cr = False
        self.ended_on_cr = False  # the last event ended on a CR that may get its LF next

    def feed(self, data: bytes, want: int) -> int | None:
        """Read ``data``; the offset just past the event that makes ``want``, else None."""
        if self.ended_on_cr:  # the event is complete; take its LF too if it is here
            return 1 if data[:1] == b"\n" else 0
        i, n = 0, len(data)
        while i < n and self.mode != "off":
            if self.mode == "start":
                self.mode, self.sse = ("head", False) if data[i] == ord("H") else ("body", True)
            elif self.mode in ("data", "fixed", "body"):
                m = n - i if self.mode == "body" else min(self.left, n - i)
                end = self._scan(data, i, i + m, want) if self.sse else None
                if end is not None:
                    return end
                i += m
                self.left -= m
                if self.left == 0 and self.mode != "body":
                    self.mode = "crlf" if self.mode == "data" else "head"
            else:  # a line-oriented mode
                j = data.find(b"\n", i)
                stop = n if j < 0 else j + 1
                self.line += data[i:stop]
                i = stop
                if len(self.line) > _CHUNK:
                    self.mode = "off"
                elif j >= 0:
                    line, self.line = bytes(self.line).strip(), bytearray()
                    self._line(line)
        return None

    def _line(self, line: bytes) -> None:
        if self.mode == "head":
            if line:
                self.headers.append(line)
            elif self.headers:
                self._body()
        elif self.mode == "size":
            try:
                self.left = int(line.split(b";")[0], 16)
            except ValueError:
                self.mode = "off"
                return
            self.mode = "data" if self.left else "trailer"
        elif self.mode == "crlf":
            self.mode = "size"
        elif self.mode == "trailer" and not line:
            self.mode = "head"

    def _body(self) -> None:
        status, *fields = self.headers
        self.headers = []
        found = dict(f.lower().partition(b":")[::2] for f in fields)
        code = status.split(b" ")[1:2]
        self.sse = b"text/event-stream" in found.get(b"content-type", b"")
        if code and (code[0].startswith(b"1") or code[0] in (b"204", b"304")):
            self.mode = "head"
        elif b"chunked" in found.get(b"transfer-encoding", b""):
            self.mode = "size"
        elif b"content-length" in found:
            self.left = int(found[b"content-length"].strip() or 0)
            self.mode = "fixed" if self.left else "head"
        else:
            self.mode = "body"

    def _scan(self, data: bytes, start: int, end: int, want: int) -> int | None:
        """Count blank lines in ``data[start:end]``; where the ``want``-th event ends."""
        for k in range(start, end):
            b = data[k]
            if b == 10 and self.prev_cr:  # the LF of a CRLF: the line already ended
                self.prev_cr = False
                continue
            self.prev_cr = b == 13
            if b not in (10, 13):
                self.at_line_start = False
                continue
            if self.at_line_start:
                self.events += 1
                if self.events >= want:
                    if b == 13 and k + 1 == len(data):
                        self.ended_on_cr = True
                        return None
                    return k + 2 if b == 13 and data[k + 1] == 10 else k + 1
            self.at_line_start = True
        return None


# ======================================================================== HTTP exchanges

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_METHOD_START = re.compile(rb"[A-Z]{1,20}(?: |\Z)")  # what a request line can begin with
_REQUEST_LINE = re.compile(rb"([A-Z]{1,20}) (\S+) (HTTP/1\.[01])")  # not HTTP/2's preface
_STATUS_LINE = re.compile(rb"(HTTP/1\.[01]) (\d{3})(?: .*)?")
_HEAD_LIMIT = 65_536  # a longer head is not HTTP we understand: the connection goes raw
_LINE_LIMIT = 8_192  # the same for a request line or a chunk-size line
_SSE_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_SSE_LINES = re.compile(rb"\r\n|\n|\r")
_DONE_EVENT = b"data: [DONE]\n\n"
_LAST_CHUNK = b"0\r\n\r\n"

#: Header fields, in order, as ``(name, value)`` text pairs (names as sent).
Headers = tuple[tuple[str, str], ...]


def _field(headers: Headers, name: str) -> str | None:
    """The value of header ``name`` (case-insensitive); repeated fields joined by ``, ``."""
    found = [v for k, v in headers if k.lower() == name]
    return ", ".join(found) if found else None


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",")}


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One HTTP request the proxy read from a client (its head; the body is not kept).

    ``connection`` is the connection's number (from 1, as in the journal), ``index`` the
    request's number on that connection (from 1: keep-alive carries several).
    """

    connection: int
    index: int
    method: str
    target: str
    version: str = "HTTP/1.1"
    headers: Headers = ()

    def header(self, name: str) -> str | None:
        """The value of a header field, or None (case-insensitive)."""
        return _field(self.headers, name.lower())


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """The head of the upstream's answer to ``request``."""

    request: HttpRequest
    status: int
    version: str = "HTTP/1.1"
    headers: Headers = ()

    def header(self, name: str) -> str | None:
        return _field(self.headers, name.lower())

    @property
    def sse(self) -> bool:
        """Whether the body is a stream of server-sent events (``text/event-stream``)."""
        return (self.header("content-type") or "").lower().startswith("text/event-stream")


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer the proxy writes itself; it adds ``content-length`` (and ``connection:
    close`` when it closes the connection after it)."""

    status: int
    headers: Headers = ()
    body: bytes = b""


CutKind = Literal["stall", "done", "reset", "drop"]


@dataclass(frozen=True, slots=True)
class Cut:
    """Something done to an event stream just before its data event number ``after + 1``
    is passed on (``after`` data events have gone through; ``data: [DONE]``, comments and
    events without data are not counted):

    - ``"stall"``: pass nothing more for ``seconds`` (inf: until the client gives up, or
      the interceptor is removed), then go on;
    - ``"done"``: write ``data: [DONE]``, end the body properly (the last chunk of a
      chunked body) and close the connection cleanly (the answer's head says
      ``connection: close``);
    - ``"reset"``: reset the connection (RST);
    - ``"drop"``: pass nothing more of this answer; the connection ends when the upstream
      ends it (e.g. a daemon killed by ``call``).

    ``call``, if given, runs in a worker thread of the proxy when the cut acts.
    """

    after: int
    then: CutKind
    seconds: float = math.inf
    call: Callable[[], object] | None = None

    def __post_init__(self) -> None:
        _check_count("after", self.after, minimum=0)
        if self.then not in ("stall", "done", "reset", "drop"):
            raise ValueError(f"a cut is stall, done, reset or drop, not {self.then!r}")
        if not self.seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {self.seconds!r}")


@dataclass(frozen=True, slots=True)
class AnswerPlan:
    """What the proxy does with one answer. In a ``text/event-stream`` answer, ``rewrite``
    replaces the data of every data event (the bytes after ``data:``, lines joined by
    ``\\n``; the result is written back as ``data:`` lines) and the ``cuts`` act in
    order; other answers pass unchanged. ``at_end`` runs in a worker thread once the whole
    answer has been read from the upstream (not after a cut that ended it).
    """

    rewrite: Callable[[bytes], bytes] | None = None
    cuts: tuple[Cut, ...] = ()
    at_end: Callable[[], object] | None = None


VerdictEnd = Literal["forward", "reply", "reset", "close"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the proxy does with one request, step by step (the default forwards it):

    1. when the request is not the first of its connection, wait until the answers to the
       earlier ones have been read (a pipelining client cannot be overtaken);
    2. ``before``: run it in a worker thread of the proxy and wait for it (kill, pause or
       restart the daemon); ``reconnect``: the connection's upstream socket is closed when
       it starts and a new one is opened when it ends (a restarted daemon);
    3. ``delay``: hold the request that many real seconds (inf: until the client gives up
       or the interceptor is removed);
    4. ``then``: ``"forward"`` it upstream; ``"reply"`` with ``reply`` instead (the
       request's body is read and dropped; the connection stays open unless the request
       said ``connection: close``, was HTTP/1.0 without keep-alive, or expected a ``100
       Continue``); ``"reset"`` the connection (RST); ``"close"`` it cleanly (FIN).

    ``answer`` is asked about the answer to a forwarded request when its head arrives.
    A client that ends its side while its request is held for a ``close``, or while its
    answer is stalled by a cut, has given up: the proxy closes the connection.
    """

    before: Callable[[], object] | None = None
    reconnect: bool = False
    delay: float = 0.0
    then: VerdictEnd = "forward"
    reply: Reply | None = None
    answer: Callable[[HttpAnswer], AnswerPlan | None] | None = None

    def __post_init__(self) -> None:
        if self.then not in ("forward", "reply", "reset", "close"):
            raise ValueError(f"then is forward, reply, reset or close, not {self.then!r}")
        if (self.then == "reply") != (self.reply is not None):
            raise ValueError("a reply is given exactly when then='reply'")
        if not self.delay >= 0:
            raise ValueError(f"delay must be >= 0 seconds, got {self.delay!r}")


#: The function :meth:`FaultProxy.intercept` calls on each request (None: forward it).
Interceptor = Callable[[HttpRequest], Verdict | None]

_NO_PLAN = AnswerPlan()


def _parse_head(head: bytes, first: re.Pattern[bytes]) -> tuple[tuple[bytes, ...], Headers] | None:
    """The groups of the first line and the header fields, or None if it is not HTTP."""
    lines = head.split(b"\n")
    m = first.fullmatch(lines[0].rstrip(b"\r"))
    if m is None:
        return None
    fields: list[tuple[str, str]] = []
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            return None
        fields.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return m.groups(), tuple(fields)


def _head_bytes(first: bytes, headers: Headers) -> bytes:
    lines = [first, *(f"{k}: {v}".encode("latin-1") for k, v in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _reply_bytes(reply: Reply, *, close: bool, head_only: bool) -> bytes:
    import http  # noqa: PLC0415 - only a reply needs the reason phrases

    try:
        reason = http.HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Error"
    skip = {"content-length", "connection", "transfer-encoding"}
    fields = [(k, v) for k, v in reply.headers if k.lower() not in skip]
    fields.append(("content-length", str(len(reply.body))))
    if close:
        fields.append(("connection", "close"))
    head = _head_bytes(f"HTTP/1.1 {reply.status} {reason}".encode("latin-1"), tuple(fields))
    return head if head_only else head + reply.body


def _sse_data(event: bytes) -> bytes | None:
    """The data of an event that carries some (None for comments, ``[DONE]``, ...)."""
    values = [
        line[5:].removeprefix(b" ") for line in _SSE_LINES.split(event) if line.startswith(b"data:")
    ]
    if not values:
        return None
    data = b"\n".join(values)
    return None if data.strip() == b"[DONE]" else data


def _sse_event(data: bytes) -> bytes:
    return b"".join(b"data: " + line + b"\n" for line in _SSE_LINES.split(data)) + b"\n"


def _chunk_size(line: bytes) -> int | None:
    """The size on a chunk-size line (extensions ignored), or None if it is not one."""
    digits = line.split(b";", 1)[0].strip()
    if not digits or len(digits) > 16 or digits.strip(b"0123456789abcdefABCDEF"):
        return None
    return int(digits, 16)


class _Job:
    """A callable run in a worker thread of the proxy (``before``, a cut's call, ...)."""

    __slots__ = ("done", "error", "thread")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None


class _Hold:
    """A request waiting for its verdict's steps (see :class:`Verdict`)."""

    __slots__ = ("head", "job", "released", "request", "stage", "until", "verdict")

    def __init__(self, request: HttpRequest, verdict: Verdict, head: bytes) -> None:
        self.request, self.verdict, self.head = request, verdict, head
        self.stage = 0  # 0 earlier answers, 1 before, 2 reconnect, 3 delay, then act
        self.job: _Job | None = None
        self.until = math.inf
        self.released = False  # the interceptor was removed: no waiting, no new jobs


class _Pending:
    """A forwarded request whose answer has not begun."""

    __slots__ = ("answer", "request")

    def __init__(
        self, request: HttpRequest, answer: Callable[[HttpAnswer], AnswerPlan | None] | None
    ) -> None:
        self.request, self.answer = request, answer


class _Answering:
    """The answer being read: its plan, and its events when they are re-cut."""

    __slots__ = ("acted", "buffer", "chunked", "events", "plan", "recut")

    def __init__(self, plan: AnswerPlan, *, recut: bool, chunked: bool) -> None:
        self.plan = plan
        self.recut = recut  # the body is decoded, cut into events and encoded again
        self.chunked = chunked  # ... as a chunked body (else as it is)
        self.buffer = bytearray()  # decoded body not yet a whole event
        self.events = 0  # data events passed on
        self.acted: set[int] = set()  # the cuts that acted

    def frame(self, piece: bytes) -> bytes:
        if not piece or not self.chunked:
            return piece
        return b"%x\r\n%s\r\n" % (len(piece), piece)


_Mode = Literal["head", "fixed", "size", "data", "crlf", "trailer", "close", "off", "sink"]


class _Http:
    """The HTTP state of one connection: requests cut from the client's bytes, answers from
    the upstream's, matched in order. ``off``: not HTTP we understand, bytes pass raw."""

    __slots__ = (
        "answer",
        "blind",
        "down_left",
        "down_mode",
        "down_rest",
        "hold",
        "index",
        "route",
        "up_left",
        "up_mode",
        "up_next",
        "waiting",
    )

    def __init__(self) -> None:
        self.up_mode: _Mode = "head"
        self.up_next: _Mode = "head"  # after this request's body
        self.up_left = 0
        self.route: Literal["forward", "discard"] = "forward"
        self.index = 0
        self.hold: _Hold | None = None
        self.waiting: deque[_Pending] = deque()
        self.down_mode: _Mode = "head"
        self.down_left = 0
        self.down_rest = b""  # an incomplete head or line
        self.answer: _Answering | None = None
        self.blind = False  # the answers cannot be matched to requests any more

    @property
    def busy(self) -> bool:
        """Whether answers to forwarded requests are still being read."""
        return not self.blind and (bool(self.waiting) or self.answer is not None)


# ================================================================================== proxy


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """Counters of a proxy: connections accepted and open now, bytes forwarded each way
    (``upstream``: client to server), and connections the proxy reset of its own accord (a
    toxic, or an unreachable upstream); a reset passed on from one side, or done by
    ``stop()``, is not counted.
    """

    connections: int = 0
    open: int = 0
    bytes_upstream: int = 0
    bytes_downstream: int = 0
    resets: int = 0


@dataclass(eq=False, slots=True)
class _Active:
    """A toxic as added: its direction, and a fresh identity for its per-connection state."""

    toxic: Toxic
    direction: Direction


class _Flow:
    """One direction of a connection: what was read from ``src`` and waits for ``dst``."""

    __slots__ = (
        "acted",
        "blocked",
        "close_at",
        "direction",
        "dst",
        "ending",
        "eof",
        "gate",
        "gated_ending",
        "held",
        "inbox",
        "queue",
        "queued",
        "shut",
        "src",
        "states",
    )

    def __init__(self, direction: Direction, src: socket.socket, dst: socket.socket) -> None:
        self.direction = direction
        self.src, self.dst = src, dst
        self.queue: deque[tuple[float, bytes]] = deque()  # (release time, data)
        self.queued = 0
        self.eof = False  # src sent its FIN
        self.ending: Literal["reset", "close"] | None = None  # a limit toxic cut the flow
        self.blocked = False  # dst's send buffer is full: wait until it is writable
        self.close_at: float | None = None  # when to pass on the end (SlowClose)
        self.shut = False  # dst's write side is shut: this direction is done
        self.states: dict[_Active, Any] = {}
        self.acted: set[_Active] = set()
        self.inbox = bytearray()  # read, not yet parsed (client side: a request waits)
        self.gate: float | None = None  # an answer stalled by a cut, until then
        self.held = bytearray()  # what the gate holds back (toxics not yet applied)
        self.gated_ending: Literal["reset", "close"] | None = None  # after the gate

    def wants_read(self) -> bool:
        backlog = self.queued + len(self.held) + len(self.inbox)
        return not self.eof and self.ending is None and backlog < _HIGH_WATER


class _Conn:
    __slots__ = ("client", "connecting", "down", "http", "number", "parked", "up", "upstream")

    def __init__(self, number: int, client: socket.socket, upstream: socket.socket) -> None:
        self.number = number
        self.client, self.upstream = client, upstream
        self.connecting = True
        self.parked = False  # upstream closed, a new one waits for a job (reconnect)
        self.up = _Flow("upstream", client, upstream)
        self.down = _Flow("downstream", upstream, client)
        self.http = _Http()


class FaultProxy:
    """A TCP proxy from a loopback port to ``upstream`` that injects toxics.

    ``listen``: the loopback (host, port) to listen on (port 0: a free one). ``clock``
    stamps the ``FaultInjected`` events written to ``journal`` (site ``daemon.request`` for
    upstream toxics and ``Refuse``, ``daemon.stream`` for downstream ones; ``call`` is the
    connection's number, from 1), once per toxic and connection, when the toxic first acts.

    Use it as a context manager, or ``start()`` and ``stop()``. Raises ValueError for a
    listen host that is not a loopback address.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        clock: Clock | None = None,
        journal: Journal | None = None,
        name: str = "proxy",
    ) -> None:
        host = "127.0.0.1" if listen[0] == "localhost" else listen[0]
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the fault proxy listens on loopback only, not {listen[0]!r}")
        self.upstream = upstream
        self.clock: Clock = clock or SystemClock()
        self.journal = journal
        self.name = name
        self._listen = (host, listen[1])
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._active: tuple[_Active, ...] = ()
        self._stats = ProxyStats()
        self._requested = 0  # change generations asked for / seen by the loop
        self._seen = 0
        self._address: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failure: Exception | None = None
        # owned by the loop thread while it runs
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._listener: socket.socket | None = None  # listening, or bound only (Refuse)
        self._listening = False
        self._loop_done = False
        self._conns: dict[socket.socket, _Conn] = {}  # by both of its sockets
        self._masks: dict[socket.socket, int] = {}
        self._upstream_addr: tuple[int, Any] | None = None
        self._round: tuple[_Active, ...] = ()  # the toxics of the loop's current round
        self._interceptor: Interceptor | None = None  # as asked for (under the lock)
        self._hook: Interceptor | None = None  # as the loop applies it
        self._jobs: list[threading.Thread] = []
        self._failures: list[BaseException] = []  # of jobs and interceptor callbacks

    # ---------------------------------------------------------------------- public state

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) clients connect to. RuntimeError before ``start()``."""
        if self._address is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self._address

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def url(self) -> str:
        """``http://host:port`` of the proxy, for an HTTP client."""
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        with self._lock:
            return self._stats

    @property
    def toxics(self) -> tuple[tuple[Direction, Toxic], ...]:
        """The active toxics, in the order they apply."""
        with self._lock:
            return tuple((a.direction, a.toxic) for a in self._active)

    def __repr__(self) -> str:
        where = f"{self._address[0]}:{self._address[1]}" if self._address else "unstarted"
        return f"<FaultProxy {self.name!r} {where} -> {self.upstream[0]}:{self.upstream[1]}>"

    # -------------------------------------------------------------------------- toxics

    def add(self, toxic: Toxic, direction: Direction = "downstream") -> Toxic:
        """Add ``toxic`` to ``direction`` (ignored for ``Refuse``); returns it. Data read from
        now on meets it, and a ``Refuse`` is in force, when this returns. ValueError if the
        toxic is already added or the direction is unknown.
        """
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be 'upstream' or 'downstream', not {direction!r}")
        if not isinstance(toxic, Toxic):
            raise TypeError(f"not a toxic: {toxic!r}")
        with self._lock:
            if any(a.toxic is toxic for a in self._active):
                raise ValueError(f"{toxic} is already added to {self.name}")
            self._active = (*self._active, _Active(toxic, direction))
        self._sync()
        return toxic

    def remove(self, toxic: Toxic) -> None:
        """Remove ``toxic``; held data flows again when this returns. ValueError if absent."""
        with self._lock:
            kept = tuple(a for a in self._active if a.toxic is not toxic)
            if len(kept) == len(self._active):
                raise ValueError(f"{toxic} is not added to {self.name}")
            self._active = kept
        self._sync()

    def clear(self) -> None:
        """Remove every toxic."""
        with self._lock:
            self._active = ()
        self._sync()

    @property
    def interceptor(self) -> Interceptor | None:
        """The function asked about each HTTP request, or None."""
        with self._lock:
            return self._interceptor

    def intercept(self, interceptor: Interceptor | None) -> None:
        """Ask ``interceptor`` what to do with each HTTP request from now on (None: stop).

        The proxy reads HTTP/1.1 in both directions: requests are cut from the client's
        bytes (``content-length`` and chunked bodies), answers matched to them in order,
        so each request of a keep-alive connection is asked about, including on
        connections opened earlier. The interceptor gets an :class:`HttpRequest` and
        returns a :class:`Verdict` (None: forward it as it is); ``Verdict.answer`` is
        then asked about the answer's head and returns an :class:`AnswerPlan`. These
        callbacks run in the proxy's thread and must not block: blocking work goes in
        ``Verdict.before`` or a ``Cut.call``, run in worker threads. A connection whose
        bytes are not HTTP passes raw (the first line decides, up to 8 KiB).

        Removing the interceptor (None) ends at once everything it set going: delays and
        stalls end (a held request is forwarded, or closed if its verdict was ``close``),
        answers pass unchanged from then on, and this returns once the worker threads
        have finished. Raises ValueError when setting one while another is set (remove it
        first); on removal, RuntimeError for an exception raised by a callback or a worker
        meanwhile (each connection it concerned was reset), once all the above is done.
        """
        with self._lock:
            if interceptor is not None and self._interceptor is not None:
                raise ValueError(f"{self.name} already has an interceptor: remove it first")
            self._interceptor = interceptor
        self._sync()
        if interceptor is None:
            self._join_jobs()
            self._raise_failures("an interceptor callback or worker")

    def _join_jobs(self) -> None:
        while True:
            with self._lock:
                jobs, self._jobs = self._jobs, []
            if not jobs:
                return
            for thread in jobs:
                thread.join()

    def _raise_failures(self, what: str) -> None:
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            raise RuntimeError(f"{self.name}: {what} failed: {failures[0]!r}") from failures[0]

    @contextlib.contextmanager
    def toxic(self, toxic: Toxic, direction: Direction = "downstream") -> Iterator[Toxic]:
        """Add ``toxic`` for the ``with`` block, and remove it after."""
        self.add(toxic, direction)
        try:
            yield toxic
        finally:
            self.remove(toxic)

    def _sync(self) -> None:
        """Wake the loop and wait until it has applied the change (never a sleep: a handoff)."""
        thread = self._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            return
        with self._changed:
            self._requested += 1
            wanted = self._requested
        self._wake()
        with self._changed:
            ok = self._changed.wait_for(
                lambda: self._seen >= wanted or self._loop_done, _ACK_TIMEOUT
            )
        if not ok:
            raise RuntimeError(f"{self.name}'s loop did not answer within {_ACK_TIMEOUT:g}s")

    def _wake(self) -> None:
        wake = self._wake_w
        if wake is not None:
            with contextlib.suppress(OSError):  # full: a wake-up is already pending
                wake.send(b"\0")

    # ------------------------------------------------------------------- start and stop

    def start(self) -> Self:
        """Bind, listen and start forwarding. RuntimeError if already started; OSError if
        the port cannot be bound or the upstream's name does not resolve.
        """
        if self._thread is not None:
            raise RuntimeError(f"{self.name} was already started")
        info = socket.getaddrinfo(*self.upstream, type=socket.SOCK_STREAM)[0]
        self._upstream_addr = (info[0], info[4])
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            self._listener = self._bind(self._listen)
            self._address = self._listener.getsockname()[:2]
            self._listening = False
            self._apply_refuse(self._refuse_wanted())  # listen, unless refusing already
        except BaseException:
            self._release()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"fault-proxy:{self._address[1]}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Reset every connection, close the listener, join the thread and the workers.
        Idempotent. Re-raises, as RuntimeError, a failure of the proxy's loop, or of an
        interceptor's callback or worker not yet reported, if there was one.
        """
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._stopping = True
            self._wake()
            thread.join()
        self._join_jobs()
        if thread is not None:
            self._release()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise RuntimeError(f"{self.name}'s loop failed: {failure!r}") from failure
        self._raise_failures("an interceptor callback or worker")

    def __enter__(self) -> Self:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind(self, address: tuple[str, int]) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _release(self) -> None:
        """Close everything the loop owned (after it ended, or if start() failed)."""
        self._abort_all()
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._listener = self._wake_r = self._wake_w = None
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        self._masks.clear()

    # ------------------------------------------------------------------------- the loop

    def _run(self) -> None:
        try:
            while not self._stopping:
                active = self._round = self._apply_changes()
                timeout = self._service(active)
                self._register_all()
                assert self._selector is not None
                for key, mask in self._selector.select(timeout):
                    self._dispatch(key.fileobj, mask)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - isolation boundary: stop() re-raises it
            self._failure = exc
        finally:
            self._abort_all()
            with self._changed:
                self._loop_done = True
                self._changed.notify_all()

    def _apply_changes(self) -> tuple[_Active, ...]:
        with self._changed:
            active, wanted, hook = self._active, self._requested, self._interceptor
        self._apply_refuse(any(isinstance(a.toxic, Refuse) for a in active))
        if hook is not self._hook:
            if self._hook is not None:
                self._let_go()
            self._hook = hook
        with self._changed:
            self._seen = wanted
            self._changed.notify_all()
        return active

    def _refuse_wanted(self) -> bool:
        with self._lock:
            return any(isinstance(a.toxic, Refuse) for a in self._active)

    def _apply_refuse(self, refuse: bool) -> None:
        """Swap the listener for a bound-only socket on the same port, or back."""
        if refuse != self._listening:
            return
        if refuse:
            old, self._listener = self._listener, None
            if old is not None:
                self._unregister(old)
                old.close()  # connections still in the backlog are reset by the kernel
            # A socket bound but not listening holds the port: the kernel answers SYNs with
            # RST, so connect() fails with ECONNREFUSED, and nobody else can take the port.
            self._listener = self._bind(self.address)
            self._listening = False
            self._record("daemon.request", Refuse(), self._stats.connections + 1)
        else:
            if self._listener is None:
                self._listener = self._bind(self.address)
            self._listener.listen(128)
            self._listening = True

    def _service(self, active: tuple[_Active, ...]) -> float | None:
        """Forward what is due, pass on ends, close finished connections; the next timer."""
        now = time.monotonic()
        stalled = {a.direction: a for a in active if isinstance(a.toxic, Stall)}
        slow: dict[Direction, _Active] = {}
        for a in active:
            if isinstance(a.toxic, SlowClose) and a.direction not in slow:
                slow[a.direction] = a  # the first added wins
        timer = math.inf
        for conn in self._open():
            wait = self._service_http(conn, now)
            if wait is None:
                continue
            timer = min(timer, wait)
            for flow in (conn.up, conn.down):
                if flow.direction in stalled and (flow.queue or flow.eof or flow.ending):
                    self._acted(conn, flow, stalled[flow.direction])
                    continue
                due = self._flush(conn, flow, now)
                if due is None:  # the connection was reset
                    break
                timer = min(timer, due)
                if flow.queue or flow.blocked or flow.shut or flow.gate is not None:
                    continue
                if flow is conn.up and (flow.inbox or conn.http.hold is not None):
                    continue  # a request is still to go: its end of stream waits
                if flow.ending == "reset":
                    self._abort(conn, count=True)
                    break
                if flow.eof or flow.ending == "close":
                    if flow.close_at is None:
                        late = slow.get(flow.direction)
                        flow.close_at = now
                        if late is not None and isinstance(late.toxic, SlowClose):
                            flow.close_at += late.toxic.delay
                            self._acted(conn, flow, late)
                    if now < flow.close_at:
                        timer = min(timer, flow.close_at)
                        continue
                    if flow.ending == "close":
                        self._close(conn)
                        break
                    flow.shut = True
                    with contextlib.suppress(OSError):
                        flow.dst.shutdown(socket.SHUT_WR)
            else:
                if conn.up.shut and conn.down.shut:
                    self._close(conn)
        return None if timer == math.inf else max(0.0, timer - time.monotonic())

    def _service_http(self, conn: _Conn, now: float) -> float | None:
        """Move held requests on, end stall gates that are due, close the connection of a
        client that gave up; the next timer (None: closed, or waiting for its upstream)."""
        timer = math.inf
        if conn.up.inbox or conn.http.hold is not None:
            timer = self._advance(conn, now)
            if not self._alive(conn):
                return None
        if conn.connecting:
            return None
        if conn.up.eof and self._abandoned(conn):
            self._close(conn)  # the client gave up on a held request or a stalled answer
            return None
        for flow in (conn.up, conn.down):
            if flow.gate is not None:
                if flow.gate > now:
                    timer = min(timer, flow.gate)
                else:
                    self._ungate(conn, flow, now)
        return timer

    def _flush(self, conn: _Conn, flow: _Flow, now: float) -> float | None:
        """Send the due chunks; the next release time (inf: none), None if reset."""
        while flow.queue and not flow.blocked:
            at, data = flow.queue[0]
            if at > now:
                return at
            try:
                sent = flow.dst.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:  # that side is gone: pass the reset on
                self._abort(conn, count=False)
                return None
            self._count(flow, sent)
            if sent < len(data):
                flow.queue[0] = (at, data[sent:])
                flow.blocked = True
            else:
                flow.queue.popleft()
        return math.inf

    def _count(self, flow: _Flow, sent: int) -> None:
        flow.queued -= sent
        with self._lock:
            s = self._stats
            if flow.direction == "upstream":
                self._stats = dataclasses.replace(s, bytes_upstream=s.bytes_upstream + sent)
            else:
                self._stats = dataclasses.replace(s, bytes_downstream=s.bytes_downstream + sent)

    # ---------------------------------------------------------------------- selector

    def _register_all(self) -> None:
        want: dict[socket.socket, int] = {}
        if self._listener is not None and self._listening:
            want[self._listener] = selectors.EVENT_READ
        for conn in self._open():
            if conn.parked:  # no upstream for now; a client that leaves is still seen
                if conn.up.wants_read():
                    want[conn.client] = selectors.EVENT_READ
                continue
            if conn.connecting:
                want[conn.upstream] = selectors.EVENT_WRITE
                continue
            for flow in (conn.up, conn.down):
                if flow.wants_read():
                    want[flow.src] = want.get(flow.src, 0) | selectors.EVENT_READ
                if flow.blocked:
                    want[flow.dst] = want.get(flow.dst, 0) | selectors.EVENT_WRITE
        assert self._selector is not None
        for sock in [s for s in self._masks if s not in want]:
            self._unregister(sock)
        for sock, mask in want.items():
            old = self._masks.get(sock)
            if old is None:
                self._selector.register(sock, mask)
            elif old != mask:
                self._selector.modify(sock, mask)
            self._masks[sock] = mask

    def _unregister(self, sock: socket.socket) -> None:
        if self._masks.pop(sock, None) is not None and self._selector is not None:
            self._selector.unregister(sock)

    def _dispatch(self, sock: socket.socket, mask: int) -> None:
        if sock is self._wake_r:
            with contextlib.suppress(BlockingIOError):
                while sock.recv(4096):
                    pass
            return
        if sock is self._listener:
            self._accept()
            return
        conn = self._conns.get(sock)
        if conn is None:  # closed earlier in this round
            return
        if conn.parked:
            if sock is conn.client:
                self._read(conn, conn.up)
            return
        if conn.connecting:
            self._connected(conn)
            return
        if mask & selectors.EVENT_WRITE:
            for flow in (conn.up, conn.down):
                if flow.dst is sock:
                    flow.blocked = False
        if mask & selectors.EVENT_READ:
            self._read(conn, conn.up if sock is conn.client else conn.down)

    def _accept(self) -> None:
        assert self._listener is not None
        assert self._upstream_addr is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # the client gave up while in the backlog
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return  # out of descriptors: leave the rest in the backlog
                raise
            family, address = self._upstream_addr
            upstream = socket.socket(family, socket.SOCK_STREAM)
            with self._lock:
                s = self._stats
                self._stats = dataclasses.replace(s, connections=s.connections + 1, open=s.open + 1)
                number = self._stats.connections
            conn = _Conn(number, client, upstream)
            self._conns[client] = self._conns[upstream] = conn
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = upstream.connect_ex(address)
            if code not in (0, errno.EINPROGRESS):
                self._abort(conn, count=True)  # the upstream is down: reset the client now
            elif code == 0:
                conn.connecting = False

    def _connected(self, conn: _Conn) -> None:
        if conn.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._abort(conn, count=True)  # refused or unreachable: reset the client
        else:
            conn.connecting = False

    def _read(self, conn: _Conn, flow: _Flow) -> None:
        try:
            data = flow.src.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by that side: pass the reset on
            self._abort(conn, count=False)
            return
        now = time.monotonic()
        if not data:
            flow.eof = True
            self._ended(conn, flow, now)
            return
        if flow is conn.up:
            flow.inbox += data
            if conn.http.hold is None:
                self._pump_up(conn, now)
        else:
            self._pump_down(conn, data, now)

    def _enqueue(self, conn: _Conn, flow: _Flow, data: bytes, now: float) -> None:
        """Pass ``data`` through the toxics into ``flow``'s queue."""
        if flow.ending is not None or not data:  # cut by a limit: the rest is dropped
            return
        mine = [a for a in self._round if a.direction == flow.direction]
        for a in mine:
            if isinstance(a.toxic, _Limit):
                keep = a.toxic.cut(self._state(flow, a), data)
                if keep is not None:
                    data = data[:keep]
                    flow.ending = flow.ending or a.toxic.ending
                    self._acted(conn, flow, a)
        chunks = [(now, data)] if data else []
        for a in mine:
            if isinstance(a.toxic, _Timing) and chunks:
                state = self._state(flow, a)
                chunks = [c for at, d in chunks for c in a.toxic.schedule(state, at, d)]
                self._acted(conn, flow, a)
        last = flow.queue[-1][0] if flow.queue else -math.inf
        for at, piece in chunks:
            last = max(last, at)  # a shorter delay never overtakes
            flow.queue.append((last, piece))
            flow.queued += len(piece)

    # ------------------------------------------------------------------ HTTP: requests

    def _alive(self, conn: _Conn) -> bool:
        return self._conns.get(conn.client) is conn

    def _abandoned(self, conn: _Conn) -> bool:
        """Whether the client, which ended its side, waits on a stall or a held close."""
        hold = conn.http.hold
        return conn.down.gate is not None or (hold is not None and hold.verdict.then == "close")

    def _emit(self, conn: _Conn, flow: _Flow, data: bytes, now: float) -> None:
        if flow.gate is not None:
            flow.held += data
        else:
            self._enqueue(conn, flow, data, now)

    def _pump_up(self, conn: _Conn, now: float) -> None:
        """Cut the client's bytes into requests: forward, hold or drop each."""
        h, flow = conn.http, conn.up
        out = bytearray()
        try:
            while flow.inbox and h.hold is None and self._alive(conn):
                if h.up_mode == "off":
                    if h.route == "forward":
                        out += flow.inbox
                    flow.inbox.clear()
                elif h.up_mode == "head":
                    if not self._request_head(conn, out, now):
                        break
                else:
                    piece = self._request_body(h, flow.inbox)
                    if piece is None:
                        break
                    if h.route == "forward":
                        out += piece
        finally:
            if out and self._alive(conn):
                self._emit(conn, flow, bytes(out), now)

    def _request_head(self, conn: _Conn, out: bytearray, now: float) -> bool:
        """Read a request's head from the inbox; False if more bytes are needed."""
        h, flow = conn.http, conn.up
        buf = flow.inbox
        blank = len(buf) - len(buf.lstrip(b"\r\n"))  # empty lines between requests
        if blank:
            if h.route == "forward":
                out += buf[:blank]
            del buf[:blank]
            return True
        end = _HEAD_END.search(buf)
        line = buf.find(b"\n")
        first = bytes(buf[: line if line >= 0 else min(len(buf), _LINE_LIMIT + 1)])
        if not _METHOD_START.match(first[:21]) or (
            line >= 0 and not _REQUEST_LINE.fullmatch(first.rstrip(b"\r"))
        ):
            h.up_mode = "off"  # not a request line: not HTTP
            return True
        if end is None:
            if len(buf) > _HEAD_LIMIT or len(first) > _LINE_LIMIT or flow.eof:
                h.up_mode = "off"
                return True
            return False
        head = bytes(buf[: end.end()])
        parsed = _parse_head(head, _REQUEST_LINE)
        if parsed is None:
            h.up_mode = "off"
            return True
        del buf[: end.end()]
        (method, target, version), fields = parsed
        h.index += 1
        request = HttpRequest(
            conn.number, h.index, method.decode(), target.decode("latin-1"), version.decode(),
            fields,
        )  # fmt: skip
        framed = self._frame_request(h, request)
        verdict = self._ask(conn, request) if self._hook is not None and framed else None
        if not self._alive(conn):
            return True
        h.route = "forward"
        if verdict is None:
            out += head
            h.waiting.append(_Pending(request, None))
        else:
            self._emit(conn, flow, bytes(out), now)  # what came before goes first
            out.clear()
            h.hold = _Hold(request, verdict, head)
        return True

    def _frame_request(self, h: _Http, request: HttpRequest) -> bool:
        """Set up the reading of the request's body; False if it cannot be framed."""
        coding = request.header("transfer-encoding")
        length = request.header("content-length")
        h.up_next = "head"
        if request.method == "CONNECT" or request.header("upgrade") is not None:
            h.up_next = "off"  # another protocol may follow
        if coding is not None:
            if "chunked" not in _tokens(coding):
                h.up_mode = "off"
                return False
            h.up_mode = "size"
        elif length is not None:
            try:
                h.up_left = int(length)
            except ValueError:
                h.up_left = -1
            if h.up_left < 0:
                h.up_mode = "off"
                return False
            h.up_mode = "fixed" if h.up_left else h.up_next
        else:
            h.up_mode = h.up_next
        return True

    def _request_body(self, h: _Http, buf: bytearray) -> bytes | None:
        """The next piece of the request's body in ``buf`` (taken), None if incomplete."""
        if h.up_mode in ("fixed", "data"):
            n = min(h.up_left, len(buf))
            piece = bytes(buf[:n])
            del buf[:n]
            h.up_left -= n
            if not h.up_left:
                h.up_mode = h.up_next if h.up_mode == "fixed" else "crlf"
            return piece
        j = buf.find(b"\n")
        if j < 0:
            if len(buf) > _LINE_LIMIT:
                h.up_mode = "off"
                return b""
            return None
        line = bytes(buf[: j + 1])
        del buf[: j + 1]
        text = line.strip()
        if h.up_mode == "size":
            size = _chunk_size(text)
            if size is None:
                h.up_mode = "off"
            elif size:
                h.up_mode, h.up_left = "data", size
            else:
                h.up_mode = "trailer"
        elif h.up_mode == "crlf":
            h.up_mode = "size"
        elif not text:  # the blank line that ends the trailer
            h.up_mode = h.up_next
        return line

    def _ask(self, conn: _Conn, request: HttpRequest) -> Verdict | None:
        assert self._hook is not None
        try:
            return self._hook(request)
        except Exception as exc:  # noqa: BLE001 - isolation: reported by intercept()/stop()
            self._failed(conn, exc)
            return None

    def _failed(self, conn: _Conn, exc: BaseException) -> None:
        with self._lock:
            self._failures.append(exc)
        self._abort(conn, count=True)

    def _advance(self, conn: _Conn, now: float) -> float:
        """Take held requests through their steps and parse what follows; the next timer."""
        h = conn.http
        while self._alive(conn):
            hold = h.hold
            if hold is None:
                self._pump_up(conn, now)
                if h.hold is None:
                    break
                continue
            wait = self._step(conn, hold, now)
            if wait is not None:
                return wait
        return math.inf

    def _step(self, conn: _Conn, hold: _Hold, now: float) -> float | None:
        """One held request's steps; a time to wait for (inf: an event), None once acted."""
        h, v = conn.http, hold.verdict
        if hold.stage == 0:
            if h.busy and not hold.released:
                return math.inf  # an earlier answer is still being read
            hold.stage = 1
        if hold.stage == 1:
            if v.before is not None and hold.job is None and not hold.released:
                if v.reconnect and not self._park(conn):
                    return math.inf
                hold.job = self._job(v.before)
            if hold.job is not None and not hold.job.done.is_set():
                return math.inf  # the worker wakes the loop when it is done
            if hold.job is not None and hold.job.error is not None:
                self._abort(conn, count=True)
                return math.inf
            hold.stage = 2
            if conn.parked:
                self._unpark(conn)
        if hold.stage == 2:
            if not self._alive(conn) or conn.connecting:
                return math.inf
            hold.stage = 3
            hold.until = now + v.delay
        if hold.stage == 3 and not hold.released and now < hold.until:
            return hold.until
        h.hold = None
        self._act(conn, hold, now)
        return None

    def _act(self, conn: _Conn, hold: _Hold, now: float) -> None:
        h, v, request = conn.http, hold.verdict, hold.request
        if v.then == "reset":
            self._abort(conn, count=True)
        elif v.then == "close":
            self._close(conn)
        elif v.then == "reply":
            assert v.reply is not None
            close = self._wants_close(h, request)
            data = _reply_bytes(v.reply, close=close, head_only=request.method == "HEAD")
            h.route = "discard"
            self._emit(conn, conn.down, data, now)
            if close:
                self._end_flow(conn.down, "close")
        else:
            h.route = "forward"
            h.waiting.append(_Pending(request, v.answer))
            self._emit(conn, conn.up, hold.head, now)

    @staticmethod
    def _wants_close(h: _Http, request: HttpRequest) -> bool:
        """Whether the connection must close after a reply of ours to ``request``."""
        tokens = _tokens(request.header("connection"))
        if "close" in tokens or h.up_next == "off":
            return True
        if request.version == "HTTP/1.0" and "keep-alive" not in tokens:
            return True
        # a client that waits for "100 Continue" may or may not send its body now
        body = h.up_mode not in ("head", "off")
        return body and (request.header("expect") or "").lower() == "100-continue"

    def _job(self, fn: Callable[[], object]) -> _Job:
        """Run ``fn`` in a worker thread that wakes the loop when it is done."""
        job = _Job()

        def run() -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - reported by intercept()/stop()
                job.error = exc
                with self._lock:
                    self._failures.append(exc)
            finally:
                job.done.set()
                self._wake()

        port = self._address[1] if self._address else 0
        job.thread = threading.Thread(target=run, name=f"fault-proxy-job:{port}", daemon=True)
        with self._lock:
            self._jobs = [t for t in self._jobs if t.is_alive()]
            self._jobs.append(job.thread)
        job.thread.start()
        return job

    def _park(self, conn: _Conn) -> bool:
        """Close the connection's upstream socket, for a new one later; False if reset."""
        if conn.up.eof or conn.down.shut or conn.connecting:
            self._abort(conn, count=True)
            return False
        assert self._upstream_addr is not None
        old = conn.upstream
        self._unregister(old)
        del self._conns[old]
        old.close()
        new = socket.socket(self._upstream_addr[0], socket.SOCK_STREAM)
        new.setblocking(False)
        new.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conns[new] = conn
        conn.upstream = conn.up.dst = conn.down.src = new
        conn.connecting = conn.parked = True
        up, down = conn.up, conn.down
        up.queue.clear()
        up.queued = 0
        up.blocked = up.shut = False
        down.eof = False
        down.close_at = None
        conn.http.down_mode, conn.http.down_rest, conn.http.answer = "head", b"", None
        conn.http.waiting.clear()
        return True

    def _unpark(self, conn: _Conn) -> None:
        assert self._upstream_addr is not None
        conn.parked = False
        code = conn.upstream.connect_ex(self._upstream_addr[1])
        if code not in (0, errno.EINPROGRESS):
            self._abort(conn, count=True)
        elif code == 0:
            conn.connecting = False

    def _let_go(self) -> None:
        """The interceptor was removed: end its holds and stalls, forget its plans."""
        for conn in self._open():
            h = conn.http
            if h.hold is not None:
                h.hold.released = True
            for pending in h.waiting:
                pending.answer = None
            if h.answer is not None:
                h.answer.plan = _NO_PLAN
            for flow in (conn.up, conn.down):
                if flow.gate is not None:
                    flow.gate = -math.inf

    # ------------------------------------------------------------------- HTTP: answers

    def _pump_down(self, conn: _Conn, data: bytes, now: float) -> None:
        """Read the upstream's answers: pass them on, with their plans applied."""
        h = conn.http
        buf = h.down_rest + data if h.down_rest else data
        h.down_rest = b""
        out = bytearray()
        i, n = 0, len(buf)
        while i < n and self._alive(conn):
            mode = h.down_mode
            if mode == "off":
                out += buf[i:]
                i = n
            elif mode == "sink":
                i = n
            elif mode == "head":
                after = self._answer_head(conn, buf, i, out, now)
                if after is None:  # the head is not complete yet
                    h.down_rest, i = buf[i:], n
                else:
                    i = after
            elif mode in ("fixed", "data", "close"):
                m = n - i if mode == "close" else min(h.down_left, n - i)
                self._payload(conn, buf[i : i + m], out, now)
                i += m
                if mode != "close":
                    h.down_left -= m
                if h.down_mode == "sink" or mode == "close" or h.down_left:
                    continue
                if mode == "data":
                    h.down_mode = "crlf"
                else:
                    self._answer_done(conn, out)
            else:  # the lines of a chunked body
                j = buf.find(b"\n", i)
                if j < 0:
                    if n - i > _LINE_LIMIT:
                        self._blind(h)
                    else:
                        h.down_rest, i = buf[i:], n
                    continue
                self._chunk_line(conn, buf[i : j + 1], out)
                i = j + 1
        if out and self._alive(conn):
            self._emit(conn, conn.down, bytes(out), now)

    def _chunk_line(self, conn: _Conn, line: bytes, out: bytearray) -> None:
        """A chunk-size line, the CRLF after a chunk, or a trailer line of an answer."""
        h = conn.http
        if h.answer is None or not h.answer.recut:
            out += line  # the framing passes as it is, unless the body is re-cut
        text = line.strip()
        if h.down_mode == "size":
            size = _chunk_size(text)
            if size is None:
                self._blind(h)
            elif size:
                h.down_mode, h.down_left = "data", size
            else:
                h.down_mode = "trailer"
        elif h.down_mode == "crlf":
            h.down_mode = "size"
        elif not text:
            self._answer_done(conn, out)

    def _blind(self, h: _Http) -> None:
        """Answers we cannot follow: the rest of the connection passes raw."""
        h.down_mode = "off"
        h.blind = True
        h.answer = None
        h.waiting.clear()

    def _answer_head(
        self, conn: _Conn, buf: bytes, i: int, out: bytearray, now: float
    ) -> int | None:
        """Read an answer's head at ``buf[i:]``: the offset after it (None: need more)."""
        h = conn.http
        if not b"HTTP/".startswith(buf[i : i + 5]) or not h.waiting:
            self._blind(h)  # not HTTP, or an answer nobody asked for
            return i
        end = _HEAD_END.search(buf, i)
        if end is None:
            if len(buf) - i > _HEAD_LIMIT:
                self._blind(h)
                return i
            return None
        head = buf[i : end.end()]
        parsed = _parse_head(head, _STATUS_LINE)
        if parsed is None:
            self._blind(h)
            return i
        (version, code), fields = parsed[0][:2], parsed[1]
        status = int(code)
        if status < 200:  # 1xx: the request's final answer follows (101: another protocol)
            out += head
            if status == 101:
                self._blind(h)
            return end.end()
        pending = h.waiting.popleft()
        answer = HttpAnswer(pending.request, status, version.decode(), fields)
        coding, length = answer.header("transfer-encoding"), answer.header("content-length")
        body: Literal["size", "fixed", "close"] | None
        if pending.request.method == "HEAD" or status in (204, 304):
            body = None
        elif coding is not None:
            body = "size" if "chunked" in _tokens(coding) else "close"
        elif length is not None:
            body = "fixed" if length.isdigit() else "close"
            h.down_left = int(length) if length.isdigit() else 0
            if not h.down_left:
                body = None
        else:
            body = "close"
        plan = None
        if pending.answer is not None and self._hook is not None:
            try:
                plan = pending.answer(answer)
            except Exception as exc:  # noqa: BLE001 - reported by intercept()/stop()
                self._failed(conn, exc)
                return len(buf)
        plan = plan or _NO_PLAN
        recut = answer.sse and body is not None and bool(plan.cuts or plan.rewrite)
        chunked = body == "size"
        if recut:
            head, chunked = self._recut_head(answer, head, plan, fixed=body == "fixed")
        out += head
        h.answer = _Answering(plan, recut=recut, chunked=chunked)
        if body is None:
            self._answer_done(conn, out)
        else:
            h.down_mode = body
        return end.end()

    @staticmethod
    def _recut_head(
        answer: HttpAnswer, head: bytes, plan: AnswerPlan, *, fixed: bool
    ) -> tuple[bytes, bool]:
        """The head of an answer whose events are re-cut, and whether its body is chunked:
        a body whose length changes cannot keep its ``content-length``, and a ``done`` cut
        closes the connection, so the head says ``connection: close``."""
        changes = plan.rewrite is not None or any(c.then == "done" for c in plan.cuts)
        closes = any(c.then == "done" for c in plan.cuts)
        chunked = not fixed and "chunked" in _tokens(answer.header("transfer-encoding"))
        fields = list(answer.headers)
        if fixed and changes:
            fields = [(k, v) for k, v in fields if k.lower() != "content-length"]
            if answer.version == "HTTP/1.1":
                fields.append(("Transfer-Encoding", "chunked"))
                chunked = True
            else:
                closes = True  # HTTP/1.0: the body ends with the connection
        if not closes and fields == list(answer.headers):
            return head, chunked
        if closes:
            fields = [(k, v) for k, v in fields if k.lower() != "connection"]
            fields.append(("connection", "close"))
        first = head.split(b"\n", 1)[0].rstrip(b"\r")
        return _head_bytes(first, tuple(fields)), chunked

    def _payload(self, conn: _Conn, data: bytes, out: bytearray, now: float) -> None:
        """Body bytes of the current answer: passed on, or cut into events."""
        a = conn.http.answer
        if a is None or not a.recut:
            out += data
            return
        a.buffer += data
        while m := _SSE_END.search(a.buffer):
            event = bytes(a.buffer[: m.end()])
            del a.buffer[: m.end()]
            if not self._event(conn, a, event, out, now):
                return

    def _event(self, conn: _Conn, a: _Answering, event: bytes, out: bytearray, now: float) -> bool:
        """Pass one whole event on, with the plan applied; False once a cut ended the answer."""
        data = _sse_data(event)
        if data is None:
            out += a.frame(event)
            return True
        plan = a.plan
        for k, cut in enumerate(plan.cuts):
            if cut.after != a.events or k in a.acted:
                continue
            a.acted.add(k)
            if cut.call is not None:
                self._job(cut.call)
            if cut.then == "stall":
                self._emit(conn, conn.down, bytes(out), now)
                out.clear()
                self._gate(conn.down, now + cut.seconds)
                continue
            if cut.then == "done":
                out += a.frame(_DONE_EVENT) + (_LAST_CHUNK if a.chunked else b"")
            self._emit(conn, conn.down, bytes(out), now)
            out.clear()
            if cut.then in ("done", "reset"):
                self._end_flow(conn.down, "close" if cut.then == "done" else "reset")
            conn.http.down_mode, conn.http.answer = "sink", None
            return False
        a.events += 1
        if plan.rewrite is not None:
            try:
                event = _sse_event(plan.rewrite(data))
            except Exception as exc:  # noqa: BLE001 - reported by intercept()/stop()
                self._failed(conn, exc)
                return False
        out += a.frame(event)
        return True

    def _answer_done(self, conn: _Conn, out: bytearray) -> None:
        """The current answer was read to its end."""
        h = conn.http
        a, h.answer, h.down_mode = h.answer, None, "head"
        if a is None:
            return
        if a.recut:
            out += a.frame(bytes(a.buffer))
            if a.chunked:
                out += _LAST_CHUNK
        if a.plan.at_end is not None:
            self._job(a.plan.at_end)

    def _ended(self, conn: _Conn, flow: _Flow, now: float) -> None:
        """``flow``'s source sent its end: what was kept for a whole head or line goes."""
        h = conn.http
        if flow is conn.up:
            if h.hold is None:
                self._pump_up(conn, now)  # a partial head goes raw: it cannot complete now
            return
        out = bytearray()
        if h.down_mode == "close":
            self._answer_done(conn, out)
        elif h.down_rest and (h.answer is None or not h.answer.recut):
            out += h.down_rest
        h.down_rest = b""
        if out:
            self._emit(conn, flow, bytes(out), now)

    # ----------------------------------------------------------------- gates and ends

    @staticmethod
    def _gate(flow: _Flow, until: float) -> None:
        flow.gate = until if flow.gate is None else max(flow.gate, until)

    def _ungate(self, conn: _Conn, flow: _Flow, now: float) -> None:
        data, ending = bytes(flow.held), flow.gated_ending
        flow.held.clear()
        flow.gate = flow.gated_ending = None
        self._enqueue(conn, flow, data, now)
        if ending is not None:
            flow.ending = flow.ending or ending

    @staticmethod
    def _end_flow(flow: _Flow, how: Literal["reset", "close"]) -> None:
        """End ``flow`` once what it has was sent (after its gate, if it has one)."""
        if flow.gate is not None:
            flow.gated_ending = flow.gated_ending or how
        else:
            flow.ending = flow.ending or how

    def _state(self, flow: _Flow, active: _Active) -> Any:
        if active not in flow.states:
            flow.states[active] = active.toxic.new_state()
        return flow.states[active]

    def _acted(self, conn: _Conn, flow: _Flow, active: _Active) -> None:
        if active not in flow.acted:
            flow.acted.add(active)
            self._record(_SITES[flow.direction], active.toxic, conn.number)

    def _record(self, site: str, toxic: Toxic, call: int) -> None:
        if self.journal is not None:
            self.journal.append(
                FaultInjected(
                    time=self.clock.now(), source=self.name, site=site, fault=str(toxic), call=call
                )
            )

    # -------------------------------------------------------------------- closing

    def _open(self) -> list[_Conn]:
        return list(dict.fromkeys(self._conns.values()))  # each once, in accept order

    def _abort_all(self) -> None:
        for conn in self._open():
            self._abort(conn, count=False)

    def _forget(self, conn: _Conn) -> bool:
        if self._conns.get(conn.client) is not conn:
            return False
        for sock in (conn.client, conn.upstream):
            del self._conns[sock]
            self._unregister(sock)
        with self._lock:
            self._stats = dataclasses.replace(self._stats, open=self._stats.open - 1)
        return True

    def _abort(self, conn: _Conn, *, count: bool) -> None:
        """Reset both sides (RST): SO_LINGER 0, then close."""
        if not self._forget(conn):
            return
        if count:  # before the RST: a client that sees it then sees the count
            with self._lock:
                self._stats = dataclasses.replace(self._stats, resets=self._stats.resets + 1)
        for sock in (conn.client, conn.upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()

    def _close(self, conn: _Conn) -> None:
        """Close both sides cleanly (FIN)."""
        if self._forget(conn):
            conn.client.close()
            conn.upstream.close()
