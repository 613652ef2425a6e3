"""What the proxy's loop keeps, as plain data: :class:`ProxyStats`, the counters; ``_Active``,
a toxic as added; per connection, a ``_Conn`` with a ``_Flow`` for each direction (bytes read
and queued, the toxics' states, a gate) and its ``_Http`` (requests cut from the client's
bytes and answers matched to them: ``_Hold``, ``_Pending``, ``_Answering``); and ``_Job``, a
callable run in a worker thread. The loop's thread owns them all, except what a ``_Job``'s
worker writes."""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from faults.proxy.exchange import AnswerPlan, HttpAnswer, HttpRequest, Verdict
    from faults.proxy.toxics import Direction, Toxic

_HIGH_WATER = 262_144  # bytes queued per direction before we stop reading (back-pressure)


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
