"""The interceptor's API, what :meth:`FaultProxy.intercept <faults.proxy.FaultProxy.intercept>`
exchanges with its caller: the :class:`HttpRequest` and :class:`HttpAnswer` heads the proxy
reads, and what the caller gives back, a :class:`Verdict` per request (forward, hold,
:class:`Reply`, reset, close) and an :class:`AnswerPlan` per answer (event rewrites and
cuts, each a :class:`Cut`), with the bytes of a reply of the proxy's own. Plain frozen
values: the proxy's loop carries them out."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from faults.proxy.http1 import Headers, _field, _head_bytes
from faults.proxy.toxics import _check_count


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
    - ``"done"``: write ``data: [DONE]`` (or ``event``, when given: an error event, or
      ``b""`` for none), end the body properly (the last chunk of a chunked body) and
      close the connection cleanly (the answer's head says ``connection: close``);
    - ``"reset"``: reset the connection (RST);
    - ``"drop"``: pass nothing more of this answer; the connection ends when the upstream
      ends it (e.g. a daemon killed by ``call``).

    ``call``, if given, runs in a worker thread of the proxy when the cut acts.
    """

    after: int
    then: CutKind
    seconds: float = math.inf
    call: Callable[[], object] | None = None
    event: bytes | None = None  # "done": the last event written, instead of data: [DONE]

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
