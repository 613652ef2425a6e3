"""The wire route: daemon.* faults applied by the fault proxy to clients nobody hooks.

Against a real ``llama_cpp.server`` child over the tiny model, behind a ``FaultProxy``. The
clients are what the hooks do not know: a subprocess (``curl``, and Python's ``http.client``
in a child interpreter) and plain ``http.client`` in this process. Each test checks what the
client saw and what the injector counted.

This route waits in real time (it holds real sockets and a real process): the tests that
wait say so in their names (``_real_time``) and keep their waits at 50 ms; they assert lower
bounds only. ``GUARD`` and ``wait_until`` are bounds that only a broken proxy would reach:
they turn a hang into a failure. Every process, proxy and socket is closed by a fixture or a
``with`` block, also when a test fails.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest

import faults
from faults.proxy import AnswerPlan, FaultProxy, HttpAnswer, HttpRequest, Verdict
from faults.sites.daemon import error_body
from faults.spec import SpecError
from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.backends.daemon import DaemonBackend, DaemonProcess, ServerOptions
from pytest_resilience.core.errors import RateLimited
from pytest_resilience.core.events import FaultInjected
from pytest_resilience.core.journal import Journal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

GUARD = 10.0  # a socket or subprocess timeout that only a broken proxy would reach
RESTART_GUARD = 40.0  # a restart waits for the daemon's start (its ready_timeout is 30 s)
PROMPT = "Once upon a time"
SEND = (vars(httpx.Client)["send"], vars(httpx.AsyncClient)["send"])
WIRE_THREADS = ("fault-proxy-job", "faults-wire")


def completion(*, stream: bool, tokens: int = 12) -> bytes:
    """A deterministic completion request (temperature 0, a fixed seed)."""
    body = {"prompt": PROMPT, "max_tokens": tokens, "stream": stream, "temperature": 0, "seed": 0}
    return json.dumps(body).encode()


def data_of(body: bytes) -> list[bytes]:
    """The data of each server-sent event of a body (``[DONE]`` included)."""
    found = []
    for event in re.split(rb"\r?\n\r?\n", body):
        lines = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
        if lines:
            found.append(b"\n".join(lines))
    return found


def texts(datas: list[bytes]) -> list[str]:
    return [json.loads(d)["choices"][0]["text"] for d in datas if d != b"[DONE]"]


def wire_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(WIRE_THREADS)]


def wait_until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` every 5 ms; fail after GUARD seconds (only a hang gets that far)."""
    until = time.monotonic() + GUARD
    while not check():
        if time.monotonic() > until:
            pytest.fail(f"{what} did not happen within {GUARD:g}s")
        time.sleep(0.005)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def shared_daemon(tiny_model_path: Path) -> Iterator[DaemonProcess]:
    """One daemon for the tests that leave it running."""
    with DaemonProcess(tiny_model_path, ServerOptions(n_ctx=1024)) as d:
        yield d


@pytest.fixture
def proxy(shared_daemon: DaemonProcess) -> Iterator[FaultProxy]:
    assert shared_daemon.port is not None
    with FaultProxy(upstream=(shared_daemon.host, shared_daemon.port)) as running:
        yield running


@pytest.fixture
def own(tiny_model_path: Path) -> Iterator[tuple[DaemonProcess, FaultProxy]]:
    """A daemon of the test's own (to kill, pause or restart) and a proxy in front of it."""
    with DaemonProcess(tiny_model_path, ServerOptions(n_ctx=1024)) as d:
        assert d.port is not None
        with FaultProxy(upstream=(d.host, d.port)) as running:
            yield d, running


@pytest.fixture
def own_journal() -> Journal:
    return Journal()


@pytest.fixture
def connect() -> Iterator[Callable[..., http.client.HTTPConnection]]:
    """``http.client`` connections (stdlib: no hook knows them); closed after the test."""
    made: list[http.client.HTTPConnection] = []

    def make(where: FaultProxy | DaemonProcess, timeout: float = GUARD) -> Any:
        host, port = (where.host, where.port) if isinstance(where, DaemonProcess) else where.address
        assert port is not None
        made.append(http.client.HTTPConnection(host, port, timeout=timeout))
        return made[-1]

    yield make
    for conn in made:
        conn.close()


def post(
    conn: http.client.HTTPConnection, body: bytes | Iterator[bytes], **kwargs: Any
) -> http.client.HTTPResponse:
    conn.request("POST", "/v1/completions", body, {"content-type": "application/json"}, **kwargs)
    return conn.getresponse()


def events(response: http.client.HTTPResponse, got: list[bytes], until: int | None = None) -> None:
    """Read the answer's events one by one into ``got`` (their data), up to its end (or
    until ``got`` holds ``until`` events); a failure of the connection propagates with what
    arrived before it in ``got``."""
    lines: list[bytes] = []
    while (until is None or len(got) < until) and (line := response.readline()):
        if line.strip():
            lines.append(line)
        elif lines:
            got.extend(data_of(b"".join(lines)))
            lines = []


# ----------------------------------------------------------------- clients in a subprocess


@dataclass
class Seen:
    """What a client in another process saw: the status and headers (None: no answer), the
    body it read, and how the connection failed: ``reset`` (RST), ``closed`` (FIN before
    any answer), ``incomplete`` (the body ended early) or None."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None


_CURL_ERRORS = {0: None, 52: "closed", 56: "reset", 18: "incomplete"}

_PYTHON_CLIENT = r"""
import http.client, json, sys

host, port, body = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
seen = {"status": None, "headers": {}, "body": "", "error": None}
conn = http.client.HTTPConnection(host, port, timeout=float(sys.argv[4]))
try:
    conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    response = conn.getresponse()
    seen["status"] = response.status
    seen["headers"] = {k.lower(): v for k, v in response.getheaders()}
    try:
        data = response.read()
    except http.client.IncompleteRead as exc:
        data, seen["error"] = exc.partial, "incomplete"
    seen["body"] = data.decode("latin-1")
except http.client.RemoteDisconnected:
    seen["error"] = "closed"
except ConnectionResetError:
    seen["error"] = "reset"
finally:
    conn.close()
print(json.dumps(seen))
"""


def _curl(proxy: FaultProxy, body: bytes) -> Seen:
    argv = ["curl", "-sS", "-i", "-N", "--http1.1", "--max-time", str(GUARD)]
    argv += ["-H", "content-type: application/json", "--data-binary", "@-"]
    done = subprocess.run(
        [*argv, f"{proxy.url}/v1/completions"],
        input=body,
        capture_output=True,
        timeout=GUARD + 5,
        check=False,
    )
    if done.returncode not in _CURL_ERRORS:
        pytest.fail(f"curl exited with {done.returncode}: {done.stderr.decode()}")
    seen = Seen(error=_CURL_ERRORS[done.returncode])
    if done.stdout:
        head, _, seen.body = done.stdout.partition(b"\r\n\r\n")
        status, *fields = head.decode("latin-1").split("\r\n")
        seen.status = int(status.split()[1])
        seen.headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    return seen


def _python(proxy: FaultProxy, body: bytes) -> Seen:
    host, port = proxy.address
    argv = [sys.executable, "-I", "-c", _PYTHON_CLIENT, host, str(port), body.decode()]
    done = subprocess.run([*argv, str(GUARD)], capture_output=True, timeout=GUARD + 5, check=True)
    seen = json.loads(done.stdout)
    return Seen(seen["status"], seen["headers"], seen["body"].encode("latin-1"), seen["error"])


@pytest.fixture(params=["curl", "python"])
def outsider(request: pytest.FixtureRequest) -> Callable[[FaultProxy, bytes], Seen]:
    """A client in another process: curl, or Python's http.client in a child interpreter."""
    if request.param == "curl" and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return _curl if request.param == "curl" else _python


# ----------------------------------------------------------------------------- untouched


def test_traffic_passes_untouched_when_no_term_fires_and_no_client_is_hooked(
    shared_daemon: DaemonProcess,
    proxy: FaultProxy,
    connect: Callable[..., http.client.HTTPConnection],
    own_journal: Journal,
) -> None:
    direct = connect(shared_daemon)
    plain = json.loads(post(direct, completion(stream=False)).read())["choices"][0]["text"]
    streamed = texts(data_of(post(direct, completion(stream=True)).read()))
    spec = "daemon.request=@9ratelimit;daemon.stream=@9truncate(after=1);daemon.process=@9pause(1s)"
    with faults.inject(
        spec, daemon=shared_daemon, proxy=proxy, route="wire", journal=own_journal
    ) as run:
        assert (vars(httpx.Client)["send"], vars(httpx.AsyncClient)["send"]) == SEND  # no hook
        conn = connect(proxy)
        answer = post(conn, completion(stream=False))
        assert answer.status == 200
        assert json.loads(answer.read())["choices"][0]["text"] == plain
        answer = post(conn, completion(stream=True))
        assert answer.getheader("transfer-encoding") == "chunked"
        assert texts(data_of(answer.read())) == streamed
    assert (run.calls("daemon.request"), run.calls("daemon.process")) == (2, 2)
    assert run.calls("daemon.stream") == 1  # one event-stream answer
    sites = ("daemon.request", "daemon.stream", "daemon.process")
    assert [run.injected(site) for site in sites] == [0, 0, 0]
    assert own_journal.events() == []
    assert proxy.stats.connections == 1  # one keep-alive connection carried both
    assert proxy.stats.resets == 0


def test_an_unhooked_httpx_client_meets_the_fault_on_the_wire(
    shared_daemon: DaemonProcess, proxy: FaultProxy
) -> None:
    backend = DaemonBackend(proxy.url)
    try:
        spec = "daemon.request=@1ratelimit(retry_after=7s)"
        with faults.inject(spec, daemon=shared_daemon, proxy=proxy, route="wire") as run:
            with pytest.raises(RateLimited) as limited:
                backend.generate(PROMPT, GenerationParams(max_tokens=8))
            assert limited.value.retry_after == 7.0
            assert backend.generate(PROMPT, GenerationParams(max_tokens=8))
        assert run.injected("daemon.request") == 1
    finally:
        backend.close()


# ------------------------------------------------------------------------- requests


def test_ratelimit_and_status_are_answered_by_the_proxy_on_a_kept_alive_connection(
    shared_daemon: DaemonProcess,
    proxy: FaultProxy,
    connect: Callable[..., http.client.HTTPConnection],
    own_journal: Journal,
) -> None:
    spec = "daemon.request=@1ratelimit(retry_after=20s)->@2status(503,retry_after=1500ms)"
    with faults.inject(
        spec, daemon=shared_daemon, proxy=proxy, route="wire", journal=own_journal
    ) as run:
        conn = connect(proxy)
        # a chunked request body: the proxy reads it to its end and drops it
        limited = post(conn, iter([completion(stream=False)]), encode_chunked=True)
        assert limited.status == 429
        assert limited.getheader("retry-after") == "20"
        assert limited.getheader("content-type") == "application/json"
        assert limited.read() == error_body(429, "daemon.request")
        assert not limited.will_close
        unavailable = post(conn, completion(stream=False))
        assert (unavailable.status, unavailable.getheader("retry-after")) == (503, "1.5")
        assert json.loads(unavailable.read())["error"]["type"] == "server_error"
        answer = post(conn, completion(stream=False))  # the daemon's own answer
        assert answer.status == 200
        assert json.loads(answer.read())["choices"]
    assert run.injected("daemon.request") == 2
    assert [(e.site, e.fault, e.call) for e in own_journal.events(FaultInjected)] == [
        ("daemon.request", "ratelimit(retry_after=20s)", 1),
        ("daemon.request", "status(503,retry_after=1500ms)", 2),
    ]
    assert proxy.stats.connections == 1


def test_a_fault_on_the_second_request_of_a_keep_alive_connection(
    shared_daemon: DaemonProcess,
    proxy: FaultProxy,
    connect: Callable[..., http.client.HTTPConnection],
) -> None:
    with faults.inject(
        "daemon.request=@2lost", daemon=shared_daemon, proxy=proxy, route="wire"
    ) as run:
        conn = connect(proxy)
        assert post(conn, completion(stream=False)).read()
        assert proxy.stats.connections == 1
        with pytest.raises(ConnectionResetError) as reset:
            post(conn, completion(stream=False))  # the same connection, reset
        assert type(reset.value) is ConnectionResetError  # an RST, not a clean close
        conn.close()
        assert post(conn, completion(stream=False)).status == 200  # a new connection
    assert proxy.stats.connections == 2
    assert proxy.stats.resets == 1
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (3, 1)


def test_pipelined_requests_are_answered_in_order(
    shared_daemon: DaemonProcess, proxy: FaultProxy
) -> None:
    body = completion(stream=False, tokens=4)
    head = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    head += b"content-length: %d\r\n" % len(body)
    both = head + b"\r\n" + body + head + b"connection: close\r\n\r\n" + body
    with (
        faults.inject(
            "daemon.request=@2ratelimit", daemon=shared_daemon, proxy=proxy, route="wire"
        ),
        socket.create_connection(proxy.address, timeout=GUARD) as sock,
    ):
        sock.sendall(both)  # the second request follows the first without waiting
        raw = b""
        while chunk := sock.recv(65536):  # the proxy closes after its reply (connection: close)
            raw += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)  # an answer follows a body at once
    assert statuses == [b"200", b"429"]  # the reply waited for the daemon's first answer
    assert raw.endswith(error_body(429, "daemon.request"))


def test_an_outsider_sees_the_ratelimit(
    shared_daemon: DaemonProcess, proxy: FaultProxy, outsider: Callable[[FaultProxy, bytes], Seen]
) -> None:
    spec = "daemon.request=ratelimit(retry_after=3s)"
    with faults.inject(spec, daemon=shared_daemon, proxy=proxy, route="wire") as run:
        seen = outsider(proxy, completion(stream=True))
    assert (seen.status, seen.error) == (429, None)
    assert seen.headers["retry-after"] == "3"
    assert seen.headers["content-type"] == "application/json"
    assert seen.body == error_body(429, "daemon.request")
    assert run.injected("daemon.request") == 1


@pytest.mark.parametrize("kind", ["refuse", "lost"])
def test_refuse_and_lost_reset_the_connection_before_any_answer(
    shared_daemon: DaemonProcess,
    proxy: FaultProxy,
    outsider: Callable[[FaultProxy, bytes], Seen],
    kind: str,
) -> None:
    with faults.inject(
        f"daemon.request=@1{kind}", daemon=shared_daemon, proxy=proxy, route="wire"
    ) as run:
        seen = outsider(proxy, completion(stream=False))
        again = outsider(proxy, completion(stream=False))
    # the proxy accepted the connection before it read the request: it can only reset it
    assert seen == Seen(error="reset")
    assert (again.status, again.error) == (200, None)
    assert proxy.stats.resets == 1
    assert run.injected("daemon.request") == 1


def test_lost_after_n_events_resets_the_connection_mid_stream(
    shared_daemon: DaemonProcess,
    proxy: FaultProxy,
    connect: Callable[..., http.client.HTTPConnection],
) -> None:
    spec = "daemon.request=lost(after=2)"
    with faults.inject(spec, daemon=shared_daemon, proxy=proxy, route="wire") as run:
        answer = post(connect(proxy), completion(stream=True))
        got: list[bytes] = []
        with pytest.raises(ConnectionResetError):
            events(answer, got)
    assert len(got) == 2
    assert texts(got)  # two whole events, each valid JSON
    assert shared_daemon.alive  # the connection was lost, not the daemon
    assert proxy.stats.resets == 1
    assert run.injected("daemon.request") == 1


def test_latency_delays_the_request_real_time(
    shared_daemon: DaemonProcess,
    proxy: FaultProxy,
    connect: Callable[..., http.client.HTTPConnection],
) -> None:
    spec = "daemon.request=@2latency(50ms)"
    with faults.inject(spec, daemon=shared_daemon, proxy=proxy, route="wire") as run:
        conn = connect(proxy)
        assert post(conn, completion(stream=False)).read()
        started = time.perf_counter()
        answer = post(conn, completion(stream=False))
        assert answer.status == 200
        assert json.loads(answer.read())["choices"]
        assert time.perf_counter() - started >= 0.045
    assert run.injected("daemon.request") == 1


def test_timeout_holds_the_request_then_closes_the_connection_real_time(
    shared_daemon: DaemonProcess,
    proxy: FaultProxy,
    connect: Callable[..., http.client.HTTPConnection],
) -> None:
    spec = "daemon.request=@1timeout(50ms)"
    with faults.inject(spec, daemon=shared_daemon, proxy=proxy, route="wire") as run:
        conn = connect(proxy)
        started = time.perf_counter()
        with pytest.raises(http.client.RemoteDisconnected):  # a clean close, no answer
            post(conn, completion(stream=False))
        assert time.perf_counter() - started >= 0.045
        conn.close()
        assert post(conn, completion(stream=False)).status == 200
    assert proxy.stats.resets == 0
    assert run.injected("daemon.request") == 1


def test_timeout_forever_lasts_until_the_client_gives_up_real_time(
    shared_daemon: DaemonProcess,
    proxy: FaultProxy,
    connect: Callable[..., http.client.HTTPConnection],
) -> None:
    with faults.inject("daemon.request=@1timeout", daemon=shared_daemon, proxy=proxy, route="wire"):
        conn = connect(proxy, timeout=0.05)
        with pytest.raises(TimeoutError):
            post(conn, completion(stream=False))
        conn.close()  # the client gives up: the proxy drops the held request
        wait_until(lambda: proxy.stats.open == 0, "the proxy closing the abandoned connection")
    assert proxy.stats.bytes_upstream == 0  # the request never reached the daemon


def test_raise_needs_the_hooks_route(shared_daemon: DaemonProcess, proxy: FaultProxy) -> None:
    spec = 'daemon.request=@1latency(1s)->@2raise(OSError, "boom")'
    with pytest.raises(SpecError, match=r"raise.* needs the hooks route") as caught:
        faults.inject(spec, daemon=shared_daemon, proxy=proxy, route="wire").install()
    assert isinstance(caught.value, ValueError)
    assert caught.value.text[caught.value.column :].startswith("@2raise(OSError")
    assert proxy.interceptor is None  # nothing stays installed


# -------------------------------------------------------------------------- streams


def test_truncate_ends_the_chunked_body_with_done_after_n_events(
    shared_daemon: DaemonProcess,
    proxy: FaultProxy,
    connect: Callable[..., http.client.HTTPConnection],
    own_journal: Journal,
) -> None:
    spec = "daemon.stream=@2truncate(after=3)"
    with faults.inject(
        spec, daemon=shared_daemon, proxy=proxy, route="wire", journal=own_journal
    ) as run:
        conn = connect(proxy)
        assert data_of(post(conn, completion(stream=True)).read())[-1] == b"[DONE]"  # whole
        answer = post(conn, completion(stream=True))
        assert answer.getheader("connection") == "close"
        body = answer.read()  # http.client checks the chunked framing to its last chunk
        assert answer.will_close
    got = data_of(body)
    assert len(got) == 4
    assert got[-1] == b"[DONE]"
    assert len(texts(got)) == 3
    assert body.endswith(b"\n\ndata: [DONE]\n\n")
    assert [(e.site, e.call) for e in own_journal.events(FaultInjected)] == [("daemon.stream", 2)]
    assert (run.calls("daemon.stream"), run.injected("daemon.stream")) == (2, 1)


def test_truncate_ends_the_body_properly_on_the_wire(
    shared_daemon: DaemonProcess, proxy: FaultProxy
) -> None:
    body = completion(stream=True)
    request = (
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    spec = "daemon.stream=truncate(after=2)"
    with (
        faults.inject(spec, daemon=shared_daemon, proxy=proxy, route="wire"),
        socket.create_connection(proxy.address, timeout=GUARD) as sock,
    ):
        sock.sendall(request)
        raw = b""
        while chunk := sock.recv(65536):  # a clean end of stream (FIN): no reset
            raw += chunk
    assert raw.endswith(b"\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")  # [DONE], then the last chunk
    assert proxy.stats.resets == 0


def test_an_outsider_reads_the_truncated_stream(
    shared_daemon: DaemonProcess, proxy: FaultProxy, outsider: Callable[[FaultProxy, bytes], Seen]
) -> None:
    spec = "daemon.stream=truncate(after=2)"
    with faults.inject(spec, daemon=shared_daemon, proxy=proxy, route="wire") as run:
        seen = outsider(proxy, completion(stream=True))
    assert (seen.status, seen.error) == (200, None)
    assert data_of(seen.body)[-1] == b"[DONE]"
    assert len(texts(data_of(seen.body))) == 2
    assert run.injected("daemon.stream") == 1


def test_corrupt_makes_every_event_invalid_json(
    shared_daemon: DaemonProcess,
    proxy: FaultProxy,
    connect: Callable[..., http.client.HTTPConnection],
) -> None:
    clean = data_of(post(connect(shared_daemon), completion(stream=True)).read())
    with faults.inject(
        "daemon.stream=corrupt", daemon=shared_daemon, proxy=proxy, route="wire"
    ) as run:
        got = data_of(post(connect(proxy), completion(stream=True)).read())
    assert len(got) == len(clean)
    assert got[-1] == b"[DONE]"
    for data in got[:-1]:
        assert data.decode().endswith("\ufffd")
        with pytest.raises(json.JSONDecodeError):
            json.loads(data)
    assert run.injected("daemon.stream") == 1


def test_stall_holds_the_stream_then_lets_it_go_on_real_time(
    shared_daemon: DaemonProcess,
    proxy: FaultProxy,
    connect: Callable[..., http.client.HTTPConnection],
) -> None:
    spec = "daemon.stream=stall(after=2,for=50ms)"
    with faults.inject(spec, daemon=shared_daemon, proxy=proxy, route="wire") as run:
        asked = time.perf_counter()
        answer = post(connect(proxy), completion(stream=True))
        seen = 0
        while seen < 3:
            line = answer.readline()
            assert line, "the stream ended early"
            seen += line.startswith(b"data:")
        third = time.perf_counter()
        rest: list[bytes] = []
        events(answer, rest)  # the rest of the stream, to its end
    # The stall starts when the proxy has passed two events on, which is after the request
    # left; so the third event cannot arrive sooner than 50 ms after it. (The gap the client
    # sees between its second and third event can be shorter: on a busy machine the client
    # may read the second event late.)
    assert third - asked >= 0.05
    assert rest[-1] == b"[DONE]"
    assert run.injected("daemon.stream") == 1


def test_stall_forever_lasts_until_the_client_gives_up_real_time(
    shared_daemon: DaemonProcess,
    proxy: FaultProxy,
    connect: Callable[..., http.client.HTTPConnection],
) -> None:
    with faults.inject(
        "daemon.stream=stall(after=2)", daemon=shared_daemon, proxy=proxy, route="wire"
    ):
        conn = connect(proxy)  # GUARD: the answer and its first two events, from a live daemon
        answer = post(conn, completion(stream=True))
        got: list[bytes] = []
        events(answer, got, until=2)
        assert conn.sock is not None
        conn.sock.settimeout(0.05)  # the client's patience, once the stall has begun
        with pytest.raises(TimeoutError):
            events(answer, got)
        assert len(got) == 2
        conn.close()  # the client gives up: the proxy closes the stalled connection
        wait_until(lambda: proxy.stats.open == 0, "the proxy closing the abandoned connection")


# -------------------------------------------------------------------------- the process


def test_process_lost_kills_the_daemon_before_the_request(
    own: tuple[DaemonProcess, FaultProxy], connect: Callable[..., http.client.HTTPConnection]
) -> None:
    daemon, proxy = own
    spec = "daemon.process=@2lost"
    with faults.inject(spec, daemon=daemon, proxy=proxy, route="wire") as run:
        conn = connect(proxy)
        assert post(conn, completion(stream=False)).read()
        with pytest.raises((ConnectionResetError, BrokenPipeError)):  # no answer, ever
            post(conn, completion(stream=False))
    assert (run.calls("daemon.process"), run.injected("daemon.process")) == (2, 1)
    assert not daemon.alive  # uninstalling waited for the kill to be reaped
    assert daemon.returncode == -9  # SIGKILL
    conn.close()
    with pytest.raises((ConnectionResetError, BrokenPipeError)):  # nobody behind the proxy
        post(conn, completion(stream=False))


def test_an_outsider_sees_the_daemon_die_after_n_events(
    own: tuple[DaemonProcess, FaultProxy], outsider: Callable[[FaultProxy, bytes], Seen]
) -> None:
    daemon, proxy = own
    spec = "daemon.process=lost(after=2)"
    with faults.inject(spec, daemon=daemon, proxy=proxy, route="wire") as run:
        seen = outsider(proxy, completion(stream=True))
    assert (seen.status, seen.error) == (200, "incomplete")  # the body never ended
    assert len(texts(data_of(seen.body))) == 2
    assert daemon.returncode == -9
    assert run.injected("daemon.process") == 1


def test_stream_lost_kills_the_daemon_after_n_events(
    own: tuple[DaemonProcess, FaultProxy], connect: Callable[..., http.client.HTTPConnection]
) -> None:
    daemon, proxy = own
    with faults.inject("daemon.stream=lost(after=3)", daemon=daemon, proxy=proxy, route="wire"):
        answer = post(connect(proxy), completion(stream=True))
        with pytest.raises(http.client.IncompleteRead) as cut:
            answer.read()
    assert len(texts(data_of(cut.value.partial))) == 3
    assert daemon.returncode == -9


def test_process_lost_after_n_on_an_answer_that_is_not_a_stream(
    own: tuple[DaemonProcess, FaultProxy], connect: Callable[..., http.client.HTTPConnection]
) -> None:
    daemon, proxy = own
    spec = "daemon.process=lost(after=2)"
    with faults.inject(spec, daemon=daemon, proxy=proxy, route="wire"):
        answer = post(connect(proxy), completion(stream=False))
        assert json.loads(answer.read())["choices"]  # the whole answer, then the daemon dies
    assert daemon.returncode == -9


def test_pause_freezes_the_daemon_then_resumes_it_real_time(
    own: tuple[DaemonProcess, FaultProxy], connect: Callable[..., http.client.HTTPConnection]
) -> None:
    daemon, proxy = own
    spec = "daemon.process=@1pause(50ms)"
    with faults.inject(spec, daemon=daemon, proxy=proxy, route="wire") as run:
        started = time.perf_counter()
        answer = post(connect(proxy), completion(stream=False))
        assert answer.status == 200
        assert time.perf_counter() - started >= 0.045  # answered once the daemon thawed
        answer.read()
    assert not daemon.paused
    assert wire_threads() == []
    assert run.injected("daemon.process") == 1


def test_pause_forever_is_undone_at_uninstall_real_time(
    own: tuple[DaemonProcess, FaultProxy], connect: Callable[..., http.client.HTTPConnection]
) -> None:
    daemon, proxy = own
    spec = "daemon.process=@1pause(forever)"
    with faults.inject(spec, daemon=daemon, proxy=proxy, route="wire"):
        with pytest.raises(TimeoutError):  # the daemon is frozen: no answer
            post(connect(proxy, timeout=0.05), completion(stream=False))
        wait_until(lambda: daemon.paused, "the daemon being paused")
    assert not daemon.paused
    assert wire_threads() == []
    assert post(connect(proxy), completion(stream=False)).status == 200


def test_restart_answers_from_the_new_daemon_on_the_same_connection(
    own: tuple[DaemonProcess, FaultProxy], connect: Callable[..., http.client.HTTPConnection]
) -> None:
    daemon, proxy = own
    before = daemon.pid
    with faults.inject("daemon.process=@2restart", daemon=daemon, proxy=proxy, route="wire"):
        conn = connect(proxy, timeout=RESTART_GUARD)
        assert post(conn, completion(stream=False)).read()
        answer = post(conn, completion(stream=True))
        assert answer.status == 200
        assert data_of(answer.read())[-1] == b"[DONE]"
    assert daemon.alive
    assert daemon.pid != before
    assert proxy.stats.connections == 1  # the client's connection outlived the restart


# -------------------------------------------------------------------------- uninstall


def test_uninstall_ends_every_hold_and_restores_everything_real_time(
    shared_daemon: DaemonProcess,
    proxy: FaultProxy,
    connect: Callable[..., http.client.HTTPConnection],
) -> None:
    outcome: list[object] = []

    def held_client() -> None:
        try:
            outcome.append(post(connect(proxy), completion(stream=False)).status)
        except Exception as exc:  # the main thread asserts on it
            outcome.append(exc)

    injector = faults.inject(
        "daemon.request=@1timeout", daemon=shared_daemon, proxy=proxy, route="wire"
    )
    client = threading.Thread(target=held_client)
    try:
        with injector:
            client.start()
            wait_until(lambda: injector.calls("daemon.request") == 1, "the request reaching us")
    finally:  # uninstalling closed the held connection: the client has its outcome
        if client.ident is not None:
            client.join()
    assert [type(e) for e in outcome] == [http.client.RemoteDisconnected]
    assert proxy.interceptor is None
    assert proxy.toxics == ()
    assert wire_threads() == []
    assert not shared_daemon.paused
    conn = connect(proxy)
    assert post(conn, completion(stream=False)).status == 200  # untouched again
    assert injector.calls("daemon.request") == 1  # and no longer counted


# ---------------------------------------------------------------- the proxy's HTTP hook


class _Canned(socketserver.BaseRequestHandler):
    """Answer every request (head, and a content-length body) with the server's bytes."""

    server: _CannedServer

    def handle(self) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    if not (data := self.request.recv(65536)):
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
                need = int(length.group(1)) if length else 0
                while len(buffer) < need:
                    if not (data := self.request.recv(65536)):
                        return
                    buffer += data
                buffer = buffer[need:]
                self.request.sendall(self.server.answer)
        except OSError:  # the proxy reset us
            pass


class _CannedServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    block_on_close = True  # server_close() joins the handler threads

    def __init__(self, answer: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _Canned)
        self.answer = answer


def _sse_by_length(*datas: bytes) -> bytes:
    body = b"".join(b"data: %s\n\n" % d for d in (*datas, b"[DONE]"))
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n"
    return head % len(body) + body


@pytest.fixture
def canned() -> Iterator[Callable[[bytes], FaultProxy]]:
    """A proxy in front of a server that gives every request the same answer."""
    stack: list[tuple[_CannedServer, threading.Thread, FaultProxy]] = []

    def make(answer: bytes) -> FaultProxy:
        server = _CannedServer(answer)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        host, port = server.server_address[:2]
        proxy = FaultProxy(upstream=(str(host), int(port)))
        stack.append((server, thread, proxy))
        return proxy.start()

    yield make
    for server, thread, proxy in reversed(stack):
        try:
            proxy.stop()
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


def test_hook_recuts_a_content_length_event_stream_as_chunked(
    canned: Callable[[bytes], FaultProxy], connect: Callable[..., http.client.HTTPConnection]
) -> None:
    proxy = canned(_sse_by_length(b'{"n": 1}', b'{"n": 2}'))
    seen: list[tuple[int, int, bool]] = []

    def plan(answer: HttpAnswer) -> AnswerPlan:
        seen.append((answer.request.index, answer.status, answer.sse))
        return AnswerPlan(rewrite=bytes.upper)

    def intercept(request: HttpRequest) -> Verdict:
        return Verdict(answer=plan)

    proxy.intercept(intercept)
    try:
        conn = connect(proxy)
        for _ in range(2):  # twice on one keep-alive connection
            answer = post(conn, b"{}")
            assert answer.getheader("content-length") is None  # the length changed:
            assert answer.getheader("transfer-encoding") == "chunked"  # chunked instead
            assert data_of(answer.read()) == [b'{"N": 1}', b'{"N": 2}', b"[DONE]"]
    finally:
        proxy.intercept(None)
    assert seen == [(1, 200, True), (2, 200, True)]
    assert proxy.stats.connections == 1


def test_hook_lets_bytes_that_are_not_http_pass_raw(
    canned: Callable[[bytes], FaultProxy],
) -> None:
    proxy = canned(b"HTTP/1.1 204 No Content\r\n\r\n")
    asked: list[HttpRequest] = []

    def intercept(request: HttpRequest) -> Verdict:
        asked.append(request)
        return Verdict(then="reset")

    proxy.intercept(intercept)
    try:
        with socket.create_connection(proxy.address, timeout=GUARD) as sock:
            sock.sendall(b"hello there\r\n\r\n")  # the canned server answers any "head"
            assert sock.recv(100) == b"HTTP/1.1 204 No Content\r\n\r\n"
    finally:
        proxy.intercept(None)
    assert asked == []  # not a request line: never asked about, never reset


def test_hook_failure_resets_the_connection_and_is_reported_on_removal(
    canned: Callable[[bytes], FaultProxy], connect: Callable[..., http.client.HTTPConnection]
) -> None:
    proxy = canned(b"HTTP/1.1 204 No Content\r\n\r\n")

    def intercept(request: HttpRequest) -> Verdict:
        raise LookupError("a bug in the interceptor")

    proxy.intercept(intercept)
    try:
        with pytest.raises(ConnectionResetError):
            post(connect(proxy), b"{}")
    finally:
        with pytest.raises(RuntimeError, match="a bug in the interceptor"):
            proxy.intercept(None)
    assert proxy.interceptor is None
    assert post(connect(proxy), b"{}").status == 204  # the proxy itself goes on


def test_a_wire_fault_no_request_met_says_the_client_must_use_the_proxy(
    shared_daemon: DaemonProcess, proxy: FaultProxy
) -> None:
    with faults.inject(
        "daemon.request=1*refuse", daemon=shared_daemon, proxy=proxy, route="wire"
    ) as run:
        pass  # the client sent to the daemon itself, or nothing at all
    [missed] = run.unreached()
    assert f"no request went through the fault proxy at {proxy.url}" in missed.reason
    assert "daemon.base_url" in missed.reason
