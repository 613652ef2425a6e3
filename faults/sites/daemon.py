"""The daemon.* sites: what is decided once per request, whatever client sends it.

Each HTTP client family has a module of its own (:data:`CLIENTS`) that hooks the client's
send path and asks :meth:`DaemonSites.begin` what to do with a request. This module owns
everything the families share:

- which traffic is the daemon's: requests to the target's address (the ``DaemonProcess``,
  a :class:`~faults.target.Target`, or the fault proxy in front of either). Traffic to any
  other host passes untouched; with no target at all, nothing is faulted and the
  injector's :meth:`~faults.Injector.unreached` says why;
- ``daemon.process``: counted on every request to the target, and acted on before it is
  sent (``lost`` SIGKILL, now or after n chunks of that answer; ``pause(d)`` SIGSTOP and
  SIGCONT after d on the injector's clock; ``restart``);
- ``daemon.request``: the decision and its parts that do not depend on the client (the
  hang on the clock, the status and OpenAI-style JSON body of ``ratelimit`` and
  ``status``, the daemon's own answer to a prompt that overflows its context for
  ``overflow`` (:func:`overflow_answer`), a closed port to be refused by);
- ``daemon.stream``: counted on answers of type ``text/event-stream``, and decided into the
  answer's :class:`~faults.sites.sse.Plan`, which :mod:`faults.sites.sse` applies to the
  body as the client reads it.

A client family passes in what only it knows: its own exception types
(:class:`~faults.sites.sse.Errors`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import math
import socket
import threading
from collections import Counter
from typing import TYPE_CHECKING

from faults.effects import overflowing
from faults.sites.base import Cleanup, after_of, seconds_of
from faults.sites.sse import DONE, Action, Plan
from faults.target import Target, same_host
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import DaemonUnavailable

if TYPE_CHECKING:
    from collections.abc import Mapping

    from faults.schedule import Decision
    from faults.sites.base import Env, Restorer, SiteFaults
    from faults.spec import Term
    from faults.target import Server

__all__ = [
    "CLIENTS",
    "Call",
    "DaemonSites",
    "Unhookable",
    "closed_port",
    "error_body",
    "error_headers",
    "error_status",
    "install",
    "n_ctx_of",
    "overflow_answer",
    "stream_error_event",
]

#: The client families whose hooks carry the daemon.* sites: (the package they hook, our
#: module with its ``hook(sites, package)``). A family is hooked when its package is
#: installed; adding one is adding a line here.
CLIENTS: tuple[tuple[str, str], ...] = (
    ("httpx", "faults.sites.httpx_client"),
    ("httpx2", "faults.sites.httpx_client"),
    ("aiohttp", "faults.sites.aiohttp_client"),
    ("urllib3", "faults.sites.urllib3_client"),
)


#: What an OpenAI-compatible server says with each status (the body's ``error`` object).
_ERRORS: Mapping[int, tuple[str, str, str | None]] = {
    429: ("rate limit reached, retry later", "rate_limit_error", "rate_limit_exceeded"),
    500: ("the server had an error while processing your request", "server_error", None),
    502: ("bad gateway", "server_error", None),
    503: ("the server is overloaded or not ready yet", "server_error", None),
    504: ("the server did not answer in time", "server_error", None),
}


def error_body(status: int, site: str) -> bytes:
    """The JSON error body an OpenAI-compatible server sends with ``status``."""
    message, kind, code = _ERRORS.get(status, ("request failed", "invalid_request_error", None))
    error = {"message": f"{message} (fault injected at {site})", "type": kind, "code": code}
    return json.dumps({"error": {**error, "param": None}}).encode()


def error_status(term: Term) -> int:
    """The HTTP status a ``ratelimit`` (429) or ``status(code)`` term answers with."""
    code = 429 if term.kind == "ratelimit" else term.arg("code")
    assert isinstance(code, int)
    return code


def error_headers(term: Term) -> dict[str, str]:
    """The headers of that answer: JSON, and ``Retry-After`` when the term gives one."""
    headers = {"content-type": "application/json"}
    seconds = term.arg("retry_after")
    if isinstance(seconds, int | float):
        headers["retry-after"] = _retry_after(float(seconds))
    return headers


#: The context size llama-cpp-python's server loads a model with unless told otherwise.
_SERVER_N_CTX = 2048

_COMPLETION_OVERFLOW = (
    "This model's maximum context length is {} tokens, however you requested {} tokens "
    "({} in your prompt; {} for the completion). Please reduce your prompt; or completion "
    "length."
)
_CHAT_OVERFLOW = (
    "This model's maximum context length is {} tokens. However, you requested {} tokens "
    "({} in the messages, {} in the completion). Please reduce the length of the messages "
    "or completion."
)
#: The headers of the daemon's streamed answer (sse-starlette's), whose body ends at once.
_EMPTY_STREAM = {
    "cache-control": "no-store",
    "connection": "close",
    "x-accel-buffering": "no",
    "content-type": "text/event-stream; charset=utf-8",
}


def n_ctx_of(server: object) -> int:
    """The daemon's context size: its ``ServerOptions.n_ctx`` when known, else the server's
    default."""
    n_ctx = getattr(getattr(server, "options", None), "n_ctx", None)
    return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else _SERVER_N_CTX


def _request_json(sent: bytes | None) -> dict[str, object]:
    try:
        found = json.loads(sent) if sent else None
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def overflow_answer(
    sent: bytes | None, n_ctx: int, *, path: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """What the daemon (llama-cpp-python's server) answers a request whose prompt overflows
    its context of ``n_ctx`` tokens: (status, headers, body).

    ``sent`` is the request's JSON body, when the client's hook can read it. A streamed
    request (``"stream": true``) gets ``200`` with an event stream that ends at once,
    without a single event (the server has started its answer when llama-cpp-python fails);
    any other gets ``400`` with the server's ``context_length_exceeded`` body, in its words
    for a chat (``messages``, or a ``chat`` path when the body is unknown) or a completion.
    The token counts are plausible: the prompt's estimated from its length, the completion's
    the request's ``max_tokens`` (the server's default when it sends none; 16 when the body
    is unknown).
    """
    body = _request_json(sent)
    if body.get("stream") is True:
        return 200, dict(_EMPTY_STREAM), b""
    chat = "messages" in body or (not body and "chat" in path)
    if chat:
        messages = body.get("messages")
        items = messages if isinstance(messages, list) else []
        text = "".join(str(m.get("content") or "") for m in items if isinstance(m, dict))
    else:
        text = str(body.get("prompt") or "")
    prompt = overflowing(len(text.encode("utf-8")) // 4, n_ctx)
    completion = body.get("max_tokens", None if chat and body else 16)
    completion = completion if isinstance(completion, int) else None
    words = (_CHAT_OVERFLOW if chat else _COMPLETION_OVERFLOW).format(
        n_ctx, (completion or 0) + prompt, prompt, completion
    )
    error = {
        "message": words,
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    data = json.dumps({"error": error}, ensure_ascii=False, separators=(",", ":"))
    return 400, {"content-type": "application/json"}, data.encode("utf-8")


def stream_error_event() -> bytes:
    """The in-band error event an OpenAI-compatible server (llama.cpp's) sends in a streamed
    answer that fails after it began: a ``data:`` event whose JSON holds ``error``."""
    error = {
        "code": 400,
        "message": "the request exceeds the available context size, try increasing it",
        "type": "exceed_context_size_error",
    }
    return b"data: " + json.dumps({"error": error}, separators=(",", ":")).encode() + b"\n\n"


def _retry_after(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def closed_port(host: str) -> int:
    """A port nobody listens on (bound a moment ago, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Unhookable(Exception):
    """Raised by a family's ``hook`` when the installed version cannot carry the sites (the
    message says why); the family is skipped, and the reason shows in ``unreached()``."""


# ============================================================================ one call


class Call:
    """One request to the daemon: the request fault decided for it (``kind`` is ``"off"``
    when none fired) and the plan for its answer."""

    __slots__ = ("decision", "plan", "sites")

    def __init__(self, sites: DaemonSites, plan: Plan, decision: Decision | None) -> None:
        self.sites, self.plan, self.decision = sites, plan, decision

    @property
    def kind(self) -> str:
        return "off" if self.decision is None else self.decision.term.kind

    @property
    def term(self) -> Term:
        assert self.decision is not None, "no request fault fired"
        return self.decision.term

    @property
    def faults(self) -> SiteFaults:
        f = self.sites.request
        assert f is not None, "no daemon.request site"
        return f

    @property
    def site(self) -> str:
        return self.faults.name

    def exception(self) -> BaseException:
        """The exception of ``raise(...)``."""
        return self.faults.exception(self.term)

    def _wait_for(self, client_timeout: float | None) -> tuple[float, bool]:
        """How long the hang lasts, and whether the client's own read timeout ends it."""
        f = self.faults
        wanted = seconds_of(self.term, "duration") if self.kind == "timeout" else f.delay(self.term)
        if client_timeout is not None and client_timeout < wanted:
            return client_timeout, True
        return wanted, self.kind == "timeout"

    def wait(self, client_timeout: float | None = None) -> bool:
        """The hang of ``timeout`` or ``latency``, on the clock or in the cancel scope;
        whether the client must now raise its read timeout. A hang longer than the client's
        own read timeout (``client_timeout``) ends there, as a silent server's would."""
        __tracebackhide__ = True
        seconds, timed_out = self._wait_for(client_timeout)
        self.faults.hang(seconds, self.kind)
        return timed_out

    async def await_(self, client_timeout: float | None = None) -> bool:
        """:meth:`wait` for async clients."""
        __tracebackhide__ = True
        seconds, timed_out = self._wait_for(client_timeout)
        await self.faults.ahang(seconds, self.kind)
        return timed_out

    @property
    def status(self) -> int:
        """The HTTP status of ``ratelimit`` (429) or ``status(code)``."""
        return error_status(self.term)

    @property
    def headers(self) -> dict[str, str]:
        """The headers of the error answer: JSON, and ``Retry-After`` when given."""
        return error_headers(self.term)

    @property
    def body(self) -> bytes:
        return error_body(self.status, self.site)

    def reply(self, sent: bytes | None = None, path: str = "") -> tuple[int, dict[str, str], bytes]:
        """The answer of ``ratelimit``, ``status`` or ``overflow``: (status, headers, body).
        ``sent`` is the request's body and ``path`` its path, where the client knows them
        (``overflow`` answers as the daemon does, a streamed request differently)."""
        if self.kind == "overflow":
            return overflow_answer(sent, n_ctx_of(self.sites.env.daemon), path=path)
        return self.status, self.headers, self.body

    @property
    def lost_at_once(self) -> bool:
        """``lost`` with no chunk count: the connection dies before any answer."""
        return self.kind == "lost" and not self.plan.actions

    def answer(self, sse: bool) -> bool:
        """Let the stream site decide on the answer; whether its body must be wrapped."""
        return self.sites.stream_plan(self.plan, sse=sse)

    @property
    def may_wrap(self) -> bool:
        """Whether the answer may need its body wrapped (else the client can pass through)."""
        return self.sites.stream is not None or bool(self.plan.actions)


# ========================================================================== the sites


class DaemonSites:
    """The daemon.* sites of one injection, shared by every client family's hooks."""

    def __init__(self, faults: Mapping[str, SiteFaults], env: Env) -> None:
        self.request = faults.get("request")
        self.stream = faults.get("stream")
        self.process = faults.get("process")
        self.env = env
        self.resume_at: float | None = None
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.clients: list[str] = []  # the families hooked
        self.unhooked: dict[str, str] = {}  # installed families that cannot be, and why
        self.elsewhere: Counter[str] = Counter()  # host:port of requests to other servers

    # ------------------------------------------------------------------ install

    def install(self) -> list[Restorer]:
        """Hook every installed client family; the restorers (the cleanup first). Raises
        ``RuntimeError`` for daemon.process faults on a target whose process is unknown."""
        daemon = self.env.daemon
        if self.process is not None and isinstance(daemon, Target) and daemon.pid is None:
            raise RuntimeError(
                f"daemon.process needs the server's process: Target(url, pid=...) ({daemon!r})"
            )
        done: list[Restorer] = [Cleanup(self.finish)]
        try:
            for package, ours in CLIENTS:
                if package not in self.clients and importlib.util.find_spec(package) is None:
                    continue
                hook = importlib.import_module(ours).hook
                try:
                    done.extend(hook(self, importlib.import_module(package)))
                except Unhookable as exc:
                    self.unhooked[package] = str(exc)
                    continue
                self.clients.append(package)
        except BaseException:
            for restorer in reversed(done):
                restorer.restore()
            raise
        return done

    def finish(self) -> None:
        """At uninstall: stop the resume timers and resume a daemon we paused."""
        self.stop.set()
        for thread in self.threads:
            thread.join()
        daemon = self.env.daemon
        if self.resume_at is not None and daemon is not None and daemon.paused:
            with contextlib.suppress(DaemonUnavailable):
                daemon.resume()
        self.resume_at = None

    # ------------------------------------------------------------------ whose traffic

    def addresses(self) -> list[tuple[str, int]]:
        """Where the target listens: the daemon, and the proxy in front of it."""
        found: list[tuple[str, int]] = []
        daemon, proxy = self.env.daemon, self.env.proxy
        if daemon is not None and daemon.port is not None:
            found.append((same_host(daemon.host), daemon.port))
        if proxy is not None and proxy.running:
            host, port = proxy.address
            found.append((same_host(host), port))
        return found

    def targets(self, host: str | None, port: int | None) -> bool:
        """Whether a request to ``host:port`` goes to the target (and counts it if not)."""
        where = (same_host(host), port)
        if where in self.addresses():
            return True
        with self.lock:
            self.elsewhere[f"{where[0]}:{where[1]}"] += 1
        return False

    def via_proxy(self, host: str | None, port: int | None) -> bool:
        proxy = self.env.proxy
        return (
            proxy is not None
            and proxy.running
            and (same_host(host), port) == (same_host(proxy.address[0]), proxy.address[1])
        )

    # ------------------------------------------------------------------ decisions

    def begin(self, host: str | None, port: int | None) -> Call | None:
        """A request to ``host:port`` is about to be sent: None if it is not the daemon's;
        else the process fault is applied now and the request fault decided."""
        if not self.targets(host, port):
            return None
        plan = Plan(self)
        self.maybe_resume()
        f = self.process
        d = f.decide() if f is not None else None
        if f is not None and d is not None:
            f.fire(d)
            daemon = self.server()
            kind = d.term.kind
            if kind == "lost":
                after = after_of(d.term)
                if after == 0:
                    daemon.kill()
                else:
                    plan.actions.append(Action(after, "kill", f))
            elif kind == "pause":
                self.pause(daemon, seconds_of(d.term, "duration"))
            elif kind == "restart":
                daemon.restart()
        r = self.request.decide() if self.request is not None else None
        if r is not None and self.request is not None:
            self.request.fire(r)
            if r.term.kind == "lost" and (after := after_of(r.term)):
                plan.actions.append(Action(after, "reset", self.request))
        return Call(self, plan, r)

    def server(self) -> Server:
        daemon = self.env.daemon
        assert daemon is not None, "a daemon.* request was targeted without a daemon"
        return daemon

    def kill_now(self) -> bool:
        """Kill the target (a ``lost`` due now); whether there was a process to kill."""
        daemon = self.env.daemon
        if daemon is None:
            return False
        daemon.kill()
        return True

    def pause(self, daemon: Server, seconds: float) -> None:
        daemon.pause()
        clock = self.env.clock
        with self.lock:
            self.resume_at = clock.now() + seconds
        if isinstance(clock, VirtualClock) or math.isinf(seconds):
            return  # resumed lazily, when a request finds the clock past it, or at uninstall

        def resume_later() -> None:
            if not clock.wait(self.stop, seconds, what="the daemon's pause"):
                self.maybe_resume(force=True)

        thread = threading.Thread(target=resume_later, name="faults-resume:daemon", daemon=True)
        self.threads.append(thread)
        thread.start()

    def maybe_resume(self, *, force: bool = False) -> None:
        with self.lock:
            due = self.resume_at is not None and (force or self.env.clock.now() >= self.resume_at)
            if due:
                self.resume_at = None
        daemon = self.env.daemon
        if due and daemon is not None and daemon.paused:
            with contextlib.suppress(DaemonUnavailable):
                daemon.resume()

    def stream_plan(self, plan: Plan, *, sse: bool) -> bool:
        """Let the stream site decide on an answer; whether its body needs wrapping."""
        f = self.stream
        if sse and f is not None and (d := f.decide()) is not None:
            f.fire(d)
            kind, term = d.term.kind, d.term
            if kind == "corrupt":
                plan.corrupt = True
            elif kind in ("truncate", "error", "overflow"):
                # the body ends after n events, with [DONE], an error event, or nothing
                last = {"truncate": DONE, "error": stream_error_event()}.get(kind, b"")
                after = 0 if kind == "overflow" else after_of(term)
                plan.actions.append(Action(after, "end", f, event=last))
            else:
                after = after_of(term)
                action = {"stall": "stall", "lost": "kill"}[kind]
                seconds = seconds_of(term, "for") if kind == "stall" else 0.0
                plan.actions.append(Action(after, action, f, seconds))
        if not sse:
            for kill in [a for a in plan.actions if a.kind == "kill"]:
                self.kill_now()  # not a stream: the daemon dies after answering
                plan.actions.remove(kill)
            for reset in [a for a in plan.actions if a.kind == "reset"]:
                reset.after = -1  # no SSE chunks to count: the connection resets at once
        return not plan.empty


def install(faults: Mapping[str, SiteFaults], env: Env) -> tuple[DaemonSites, list[Restorer]]:
    """Hook the daemon.* sites into every installed client family."""
    sites = DaemonSites(faults, env)
    return sites, sites.install()
