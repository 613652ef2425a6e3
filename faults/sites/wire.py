"""The daemon.* sites on the wire: the fault proxy applies them to whatever connects to it.

``Injector(spec, daemon=daemon, proxy=proxy, route="wire")`` hooks no client: it gives the
running :class:`~faults.proxy.FaultProxy` in front of the daemon an interceptor
(:meth:`~faults.proxy.FaultProxy.intercept`), so a client in another language, another
process or a library nobody hooks meets the same spec text. The proxy reads HTTP/1.1, so
each request, also the second and later ones of a keep-alive connection, is one call of
``daemon.process`` and one of ``daemon.request`` (decided in that order, as the hooks do);
each ``text/event-stream`` answer is one call of ``daemon.stream``. A fault that fires is
written to the journal as the hooks write it.

What a client sees for each kind (the proxy acts on bytes, so it is what a real failure
looks like on a socket):

=====================  ==================================================================
``refuse``             the connection is reset (RST) before the request is forwarded.
                       The proxy has already accepted the TCP connection when it reads a
                       request, so the kernel cannot refuse it any more, not even a new
                       one: the client's connect() succeeds and its read fails with
                       ECONNRESET. (A refused connect() is the proxy's ``Refuse`` toxic.)
``lost``               the same reset: the daemon never sees the request.
                       ``lost(after=n)``: n whole events of the answer, then the reset.
``timeout(d)``         no answer for d seconds, then the connection is closed (FIN: "empty
                       reply"); forever (the default): until the client gives up.
``latency(d)``         the request reaches the daemon d seconds late (+/- the jitter).
``ratelimit``          an answer written by the proxy: 429, or the status given, with
``status(code)``       ``retry-after`` when given, ``content-type: application/json`` and
                       the body of :func:`faults.sites.daemon.error_body`. The request is
                       not forwarded; the connection stays open (keep-alive) unless the
                       request asked for ``connection: close``.
``stall(after=n)``     n events, then nothing for ``for`` seconds (forever, the default:
                       until the client gives up), then the rest of the answer.
``truncate(after=n)``  n events, then ``data: [DONE]`` and a proper end of the chunked
                       body; the answer says ``connection: close`` and the connection is
                       closed cleanly.
``corrupt``            every data event's data is invalid JSON
                       (:func:`faults.effects.corrupt_json`).
``overflow``           daemon.request: the daemon's answer to a prompt longer than its
                       context, written by the proxy: 400 with its
                       ``context_length_exceeded`` body (a chat's words for a ``chat``
                       path). The proxy reads no request body, so a streamed request gets
                       the same 400 (the daemon itself answers it with an empty 200 event
                       stream, as daemon.stream ``overflow`` does on the wire).
                       daemon.stream: the answer ends before its first event, cleanly.
``error(after=n)``     n events, then an in-band error event (``data: {"error": ...}``)
                       and a clean end of the body.
daemon.stream ``lost`` the daemon is SIGKILLed after n events; the client reads the real
                       loss (the body ends before its end).
daemon.process         ``lost``: SIGKILL before the request is forwarded (``after=n``:
                       after n events of that answer, or after a whole answer that is not
                       a stream); ``pause(d)``: SIGSTOP, then SIGCONT d real seconds later;
                       ``restart``: the daemon is restarted, and the request goes to the
                       new one on a new upstream connection.
=====================  ==================================================================

``raise`` has no meaning on a socket: installing a wire route with it is a ``SpecError``.

Waits are real time and bounded: ``latency``, ``timeout``, ``stall`` and ``pause`` last
their duration at most; a held request or stalled answer also ends when the client closes
its connection; uninstalling ends them all at once (a held request is forwarded, a held
timeout closed, a stalled answer goes on, a paused daemon is resumed). The daemon's kill,
pause and restart run in worker threads of the proxy (a restart lasts what the daemon's
start does, within its ``ready_timeout``); uninstalling joins them, and the thread that
resumes a paused daemon, before it returns.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import TYPE_CHECKING

from faults.effects import corrupt_json
from faults.proxy import AnswerPlan, Cut, Reply, Verdict
from faults.sites.base import Cleanup, after_of, seconds_of
from faults.sites.daemon import (
    error_body,
    error_headers,
    error_status,
    n_ctx_of,
    overflow_answer,
    stream_error_event,
)
from faults.spec import SpecError
from faults.target import same_host
from pytest_resilience.core.errors import DaemonUnavailable

if TYPE_CHECKING:
    from collections.abc import Mapping

    from faults.proxy import FaultProxy, HttpAnswer, HttpRequest, VerdictEnd
    from faults.sites.base import Env, Restorer, SiteFaults
    from faults.spec import Term
    from faults.target import Server

__all__ = ["install_wire"]


def install_wire(faults: Mapping[str, SiteFaults], env: Env) -> list[Restorer]:
    """Put the daemon.* sites of ``faults`` on the fault proxy ``env.proxy``.

    Raises :class:`~faults.spec.SpecError` for a ``raise`` term (it needs the hooks
    route), ValueError without a running proxy, for daemon.process faults without the
    daemon, or for a proxy that does not lead to the daemon; nothing is installed then.
    """
    proxy = env.proxy
    if proxy is None or not proxy.running:
        raise ValueError(
            "the wire route needs a running FaultProxy in front of the daemon: "
            "Injector(..., proxy=proxy, route='wire')"
        )
    _check(faults, env, proxy)
    wire = _Wire(faults, env, proxy)
    proxy.intercept(wire.request)
    return [Cleanup(wire.finish)]


def _check(faults: Mapping[str, SiteFaults], env: Env, proxy: FaultProxy) -> None:
    for f in faults.values():
        chain = f.schedule.chain
        for term in chain:
            if term.kind == "raise":
                text = f"{f.name}={'->'.join(map(str, chain))}"
                raise SpecError(
                    f"{term} cannot be injected on the wire: a socket cannot raise an "
                    "exception in the client; raise needs the hooks route (route='hooks')",
                    text,
                    text.find(str(term), len(f.name)),
                )
    process = faults.get("process")
    if (
        process is not None
        and env.daemon is None
        and any(t.kind != "off" for t in process.schedule.chain)
    ):
        raise ValueError(f"{process.name} faults on the wire need the daemon's process: daemon=...")
    daemon = env.daemon
    if daemon is not None and daemon.port is not None:
        ours = (same_host(daemon.host), daemon.port)
        if (same_host(proxy.upstream[0]), proxy.upstream[1]) != ours:
            raise ValueError(
                f"{proxy!r} does not lead to the daemon at {ours[0]}:{ours[1]}: "
                "FaultProxy(upstream=(daemon.host, daemon.port))"
            )


def _corrupt(data: bytes) -> bytes:
    return corrupt_json(data.decode("utf-8", "replace")).encode()


class _Wire:
    """The interceptor of one installation, and what it set going (pauses to undo)."""

    def __init__(self, faults: Mapping[str, SiteFaults], env: Env, proxy: FaultProxy) -> None:
        self.request_site = faults.get("request")
        self.stream = faults.get("stream")
        self.process = faults.get("process")
        self.env, self.proxy = env, proxy
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.pauses = 0  # the pause a resume timer belongs to: a later one supersedes it
        self.paused = False  # the daemon is paused by us

    # ------------------------------------------------------------------ the interceptor

    def request(self, request: HttpRequest) -> Verdict:
        """Decide daemon.process, then daemon.request, for one request (proxy thread)."""
        # every request to the daemon counts, whatever it asks for
        before, reconnect, cuts = None, False, []
        p = self.process
        d = p.decide() if p is not None else None
        if p is not None and d is not None:
            p.fire(d)
            kind = d.term.kind
            if kind == "lost":
                after = after_of(d.term)
                if after:
                    cuts.append(Cut(after, "drop", call=self.kill))
                else:
                    before = self.kill
            elif kind == "pause":
                before = functools.partial(self.pause, seconds_of(d.term, "duration"))
            elif kind == "restart":
                before, reconnect = self.restart, True
        delay, reply = 0.0, None
        then: VerdictEnd = "forward"
        f = self.request_site
        r = f.decide() if f is not None else None
        if f is not None and r is not None:
            f.fire(r)
            if r.term.kind == "overflow":
                path = request.target.split("?", 1)[0]
                code, headers, body = overflow_answer(None, n_ctx_of(self.env.daemon), path=path)
                then, reply = "reply", Reply(code, tuple(headers.items()), body)
            else:
                delay, then, reply = self._request_fault(f, r.term, cuts)
        return Verdict(
            before=before,
            reconnect=reconnect,
            delay=delay,
            then=then,
            reply=reply,
            answer=functools.partial(self.answer, tuple(cuts)),
        )

    @staticmethod
    def _request_fault(
        f: SiteFaults, term: Term, cuts: list[Cut]
    ) -> tuple[float, VerdictEnd, Reply | None]:
        kind = term.kind
        if kind == "refuse" or (kind == "lost" and not after_of(term)):
            return 0.0, "reset", None
        if kind == "lost":
            cuts.append(Cut(after_of(term), "reset"))
        elif kind == "timeout":
            return seconds_of(term, "duration"), "close", None
        elif kind == "latency":
            return f.delay(term), "forward", None
        elif kind in ("ratelimit", "status"):
            code, headers = error_status(term), tuple(error_headers(term).items())
            return 0.0, "reply", Reply(code, headers, error_body(code, f.name))
        return 0.0, "forward", None

    def answer(self, cuts: tuple[Cut, ...], answer: HttpAnswer) -> AnswerPlan | None:
        """Decide daemon.stream for an event-stream answer; the plan of the answer."""
        if not answer.sse:  # not a stream: a daemon due to die after n events dies now
            if any(c.then == "drop" for c in cuts):
                return AnswerPlan(at_end=self.kill)
            return None
        rewrite = None
        s = self.stream
        d = s.decide() if s is not None else None
        if s is not None and d is not None:
            s.fire(d)
            term = d.term
            after = after_of(term) if term.kind not in ("corrupt", "overflow") else 0
            if term.kind == "corrupt":
                rewrite = _corrupt
            elif term.kind == "stall":
                cuts = (*cuts, Cut(after, "stall", seconds_of(term, "for")))
            elif term.kind == "truncate":
                cuts = (*cuts, Cut(after, "done"))
            elif term.kind == "error":
                cuts = (*cuts, Cut(after, "done", event=stream_error_event()))
            elif term.kind == "overflow":
                cuts = (*cuts, Cut(0, "done", event=b""))
            elif term.kind == "lost":  # the daemon dies; without one, the connection does
                dies = self.env.daemon is not None
                cuts = (*cuts, Cut(after, "drop", call=self.kill) if dies else Cut(after, "reset"))
        if not cuts and rewrite is None:
            return None
        return AnswerPlan(rewrite=rewrite, cuts=cuts)

    # ------------------------------------------------------------------ the daemon (workers)

    def daemon(self) -> Server:
        daemon = self.env.daemon
        assert daemon is not None, "checked at install"
        return daemon

    def kill(self) -> None:
        self.daemon().kill()
        with self.lock:
            self.paused = False

    def restart(self) -> None:
        self.daemon().restart()
        with self.lock:
            self.paused = False

    def pause(self, seconds: float) -> None:
        """SIGSTOP now; SIGCONT after ``seconds`` of real time, by a thread of ours."""
        daemon = self.daemon()
        try:
            daemon.pause()
        except DaemonUnavailable:
            return  # not running: the request meets a daemon that is down
        with self.lock:
            self.pauses += 1
            self.paused, token = True, self.pauses
            if math.isinf(seconds) or self.stop.is_set():
                return  # resumed at uninstall
            thread = threading.Thread(
                target=self._resume_later,
                args=(seconds, token),
                name="faults-wire:resume",
                daemon=True,
            )
            self.threads.append(thread)
        thread.start()

    def _resume_later(self, seconds: float, token: int) -> None:
        if self.stop.wait(seconds):
            return  # uninstalled: finish() resumes
        with self.lock:
            due = self.paused and self.pauses == token
        if due:
            self.resume()

    def resume(self) -> None:
        daemon = self.daemon()
        with self.lock:
            self.paused = False
        if daemon.paused:
            with contextlib.suppress(DaemonUnavailable):
                daemon.resume()

    # ------------------------------------------------------------------ uninstall

    def finish(self) -> None:
        """Remove the interceptor (holds and stalls end, workers joined), stop the resume
        timers and resume a daemon we paused. Re-raises, once all that is done, the
        failure of a worker (a restart that failed, ...) as RuntimeError."""
        failure: RuntimeError | None = None
        try:
            if self.proxy.interceptor == self.request:
                self.proxy.intercept(None)
        except RuntimeError as exc:
            failure = exc
        self.stop.set()
        with self.lock:
            threads, self.threads = self.threads, []
        for thread in threads:
            thread.join()
        with self.lock:
            paused = self.paused
        if paused:
            self.resume()
        if failure is not None:
            raise failure
