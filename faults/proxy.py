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

If the upstream cannot be reached, each accepted client is reset at once. :meth:`stop` resets
every open connection, closes the listener and joins the proxy's thread; nothing is left
running.

Design: one thread runs a ``selectors`` loop over non-blocking sockets. Latency and bandwidth
are release times on queued chunks, so waiting is the loop's ``select`` timeout: the proxy
never sleeps a thread per connection, one thread owns every socket (a reset never races a
read in another thread), and ``stop()`` is one wake-up and one join. The proxy forwards real
sockets to a real process, so it waits in real time (``time.monotonic``): that is the one
place in the project where real time is right; the ``clock`` only stamps journal events.
Nothing here makes the caller's thread sleep: ``add``/``remove`` wait only for the loop's
acknowledgement of the change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import math
import random
import selectors
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from faults.spec import format_duration
from pytest_resilience.clock import Clock, SystemClock
from pytest_resilience.events import FaultInjected

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from pytest_resilience.events import Journal

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

    def wants_read(self) -> bool:
        return not self.eof and self.ending is None and self.queued < _HIGH_WATER


class _Conn:
    __slots__ = ("client", "connecting", "down", "number", "up", "upstream")

    def __init__(self, number: int, client: socket.socket, upstream: socket.socket) -> None:
        self.number = number
        self.client, self.upstream = client, upstream
        self.connecting = True
        self.up = _Flow("upstream", client, upstream)
        self.down = _Flow("downstream", upstream, client)


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
        if self._wake_w is not None:
            with contextlib.suppress(OSError):  # full: a wake-up is already pending
                self._wake_w.send(b"\0")

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
        """Reset every connection, close the listener, join the thread. Idempotent. Re-raises,
        as RuntimeError, a failure of the proxy's loop if there was one.
        """
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._stopping = True
            self._wake()
            thread.join()
        if thread is not None:
            self._release()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise RuntimeError(f"{self.name}'s loop failed: {failure!r}") from failure

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
                active = self._apply_changes()
                timeout = self._service(active)
                self._register_all()
                assert self._selector is not None
                for key, mask in self._selector.select(timeout):
                    self._dispatch(key.fileobj, mask, active)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - isolation boundary: stop() re-raises it
            self._failure = exc
        finally:
            self._abort_all()
            with self._changed:
                self._loop_done = True
                self._changed.notify_all()

    def _apply_changes(self) -> tuple[_Active, ...]:
        with self._changed:
            active, wanted = self._active, self._requested
        self._apply_refuse(any(isinstance(a.toxic, Refuse) for a in active))
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
            if conn.connecting:
                continue
            for flow in (conn.up, conn.down):
                if flow.direction in stalled and (flow.queue or flow.eof or flow.ending):
                    self._acted(conn, flow, stalled[flow.direction])
                    continue
                due = self._flush(conn, flow, now)
                if due is None:  # the connection was reset
                    break
                timer = min(timer, due)
                if flow.queue or flow.blocked or flow.shut:
                    continue
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

    def _dispatch(self, sock: socket.socket, mask: int, active: tuple[_Active, ...]) -> None:
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
        if conn.connecting:
            self._connected(conn)
            return
        if mask & selectors.EVENT_WRITE:
            for flow in (conn.up, conn.down):
                if flow.dst is sock:
                    flow.blocked = False
        if mask & selectors.EVENT_READ:
            self._read(conn, conn.up if sock is conn.client else conn.down, active)

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

    def _read(self, conn: _Conn, flow: _Flow, active: tuple[_Active, ...]) -> None:
        try:
            data = flow.src.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by that side: pass the reset on
            self._abort(conn, count=False)
            return
        if not data:
            flow.eof = True
            return
        now = time.monotonic()
        mine = [a for a in active if a.direction == flow.direction]
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
