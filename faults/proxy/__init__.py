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

The package, one module per part: :mod:`~faults.proxy.toxics` (the toxics),
:mod:`~faults.proxy.http1` (reading and writing HTTP/1.1 and event streams),
:mod:`~faults.proxy.exchange` (the interceptor's API), :mod:`~faults.proxy.state` (what the
loop keeps, and the counters), and the proxy itself in layers, each a class the next one
extends: :mod:`~faults.proxy.base` (its state, workers, closing), :mod:`~faults.proxy.pump`
(bytes through the toxics), :mod:`~faults.proxy.http_requests` and
:mod:`~faults.proxy.http_answers` (the two sides of HTTP), :mod:`~faults.proxy.loop` (the
selector loop) and :mod:`~faults.proxy.server` (:class:`FaultProxy`, what callers use).
"""

from __future__ import annotations

from faults.proxy.exchange import (
    AnswerPlan,
    Cut,
    CutKind,
    HttpAnswer,
    HttpRequest,
    Interceptor,
    Reply,
    Verdict,
    VerdictEnd,
)
from faults.proxy.http1 import Headers
from faults.proxy.server import FaultProxy
from faults.proxy.state import ProxyStats
from faults.proxy.toxics import (
    Bandwidth,
    Direction,
    Latency,
    Refuse,
    ResetAfter,
    ResetAfterEvents,
    SlowClose,
    Stall,
    Toxic,
    TruncateAfter,
)

__all__ = [
    "AnswerPlan",
    "Bandwidth",
    "Cut",
    "CutKind",
    "Direction",
    "FaultProxy",
    "Headers",
    "HttpAnswer",
    "HttpRequest",
    "Interceptor",
    "Latency",
    "ProxyStats",
    "Refuse",
    "Reply",
    "ResetAfter",
    "ResetAfterEvents",
    "SlowClose",
    "Stall",
    "Toxic",
    "TruncateAfter",
    "Verdict",
    "VerdictEnd",
]
