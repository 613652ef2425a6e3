"""The TCP fault proxy over real loopback sockets: an echo server in the test, and the real
daemon (``llama_cpp.server`` over the tiny model) for the HTTP and SSE cases.

Every server and proxy is stopped by a fixture's finaliser; the suite's leak check then
fails a test that leaves a thread or a descriptor behind. Tests that measure or wait in real
time say so in their names and keep their waits at 50 ms or under.
"""

from __future__ import annotations

import random
import socket
import socketserver
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from faults.proxy import (
    Bandwidth,
    FaultProxy,
    Latency,
    ProxyStats,
    Refuse,
    ResetAfter,
    ResetAfterEvents,
    SlowClose,
    Stall,
    TruncateAfter,
)
from faults.proxy.http1 import _SseCounter
from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.backends.daemon import DaemonBackend, DaemonProcess, ServerOptions, Timeouts
from pytest_resilience.core.errors import DaemonLost, DaemonUnavailable, StreamStalled
from pytest_resilience.core.events import FaultInjected

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from pytest_resilience.core.journal import Journal

GUARD = 5.0  # a socket timeout that only a broken proxy would reach


# ------------------------------------------------------------------------------ fixtures


class _Echo(socketserver.BaseRequestHandler):
    """Echo until the client's end of stream, then close (FIN)."""

    server: _EchoServer

    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:  # the proxy reset us: a test made it do so
            pass
        finally:
            self.server.ended.set()


class _EchoServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    block_on_close = True  # server_close() joins the handler threads

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.ended = threading.Event()  # set when a handler ends

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        return str(host), int(port)


@pytest.fixture
def echo_server() -> Iterator[_EchoServer]:
    """A threaded echo server on loopback; stopped, and its threads joined, after the test."""
    server = _EchoServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def echo(echo_server: _EchoServer) -> tuple[str, int]:
    return echo_server.address


@pytest.fixture
def proxy(echo: tuple[str, int], journal: Journal) -> Iterator[FaultProxy]:
    with FaultProxy(echo, journal=journal) as running:
        yield running


@pytest.fixture
def connect(proxy: FaultProxy) -> Iterator[Callable[[], socket.socket]]:
    """Client sockets to the proxy, with a guard timeout; closed after the test."""
    made: list[socket.socket] = []

    def make() -> socket.socket:
        sock = socket.create_connection(proxy.address, timeout=GUARD)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()


def read_all(sock: socket.socket) -> tuple[bytes, type[BaseException] | None]:
    """Everything ``sock`` receives until the end or an error, and that error's type."""
    got = bytearray()
    try:
        while data := sock.recv(65536):
            got += data
    except OSError as exc:
        return bytes(got), type(exc)
    return bytes(got), None


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        data = sock.recv(n - len(got))
        assert data, f"end of stream after {len(got)} of {n} bytes"
        got += data
    return bytes(got)


def faults_of(journal: Journal) -> list[tuple[str, str, int]]:
    return [(e.site, e.fault, e.call) for e in journal.events(FaultInjected)]


# ------------------------------------------------------------------------- pass-through


def test_round_trips_bytes_both_ways(
    proxy: FaultProxy, connect: Callable[[], socket.socket], journal: Journal
) -> None:
    sock = connect()
    sock.sendall(b"hello, proxy")
    assert recv_exactly(sock, 12) == b"hello, proxy"
    sock.shutdown(socket.SHUT_WR)  # our end of stream reaches the server, its FIN comes back
    assert read_all(sock) == (b"", None)
    stats = proxy.stats
    assert (stats.connections, stats.bytes_upstream, stats.bytes_downstream) == (1, 12, 12)
    assert stats.resets == 0
    assert journal.events() == []  # no toxic, no event


def test_large_payloads_on_concurrent_connections_keep_order(
    proxy: FaultProxy, connect: Callable[[], socket.socket]
) -> None:
    # 1 MiB each way on 3 connections at once: more than every socket buffer, so the proxy
    # must stop reading while a side is slow and resume later (back-pressure).
    payloads = [random.Random(i).randbytes(1 << 20) for i in range(3)]
    socks = [connect() for _ in payloads]
    senders = [
        threading.Thread(target=lambda s=s, p=p: (s.sendall(p), s.shutdown(socket.SHUT_WR)))
        for s, p in zip(socks, payloads, strict=True)
    ]
    for t in senders:
        t.start()
    try:
        results = [read_all(s) for s in socks]
    finally:
        for t in senders:
            t.join()
    assert results == [(p, None) for p in payloads]
    assert proxy.stats.bytes_downstream == proxy.stats.bytes_upstream == 3 << 20


def test_stop_resets_open_connections_and_is_idempotent(echo: tuple[str, int]) -> None:
    proxy = FaultProxy(echo).start()
    sock = socket.create_connection(proxy.address, timeout=GUARD)
    try:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        proxy.stop()
        assert not proxy.running
        data, error = read_all(sock)
        assert data == b""
        assert error is ConnectionResetError
        proxy.stop()
    finally:
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=GUARD).close()


def test_helpers_and_validation(echo: tuple[str, int]) -> None:
    proxy = FaultProxy(echo)
    with pytest.raises(RuntimeError, match="not been started"):
        _ = proxy.url
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(echo, listen=("0.0.0.0", 0))
    with proxy:
        host, port = proxy.address
        assert (host, proxy.port) == ("127.0.0.1", port)
        assert proxy.url == f"http://127.0.0.1:{port}"
        stall = proxy.add(Stall(), "upstream")
        with pytest.raises(ValueError, match="already added"):
            proxy.add(stall)
        with pytest.raises(ValueError, match="direction"):
            proxy.add(Stall(), "sideways")  # type: ignore[arg-type]
        assert proxy.toxics == (("upstream", stall),)
        proxy.remove(stall)
        with pytest.raises(ValueError, match="not added"):
            proxy.remove(stall)
        with pytest.raises(RuntimeError, match="already started"):
            proxy.start()
    assert proxy.stats == ProxyStats()


def test_a_failure_in_the_loop_closes_everything_and_is_raised_by_stop(
    proxy: FaultProxy, connect: Callable[[], socket.socket]
) -> None:
    sock = connect()
    sock.sendall(b"x")
    assert recv_exactly(sock, 1) == b"x"

    def broken(active: object) -> float | None:
        raise OSError("broken on purpose")

    proxy._service = broken  # type: ignore[method-assign]
    proxy.add(Stall())  # wakes the loop, which then fails
    assert read_all(sock) == (b"", ConnectionResetError)  # the connection did not linger
    with pytest.raises(RuntimeError, match="broken on purpose"):
        proxy.stop()
    assert not proxy.running
    proxy.stop()  # the failure is reported once


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (lambda: Latency(0.05), "latency(50ms)"),
        (lambda: Latency(0.05, 0.01), "latency(50ms, jitter=10ms)"),
        (lambda: Bandwidth(2048), "bandwidth(2048B/s)"),
        (Stall, "stall"),
        (Refuse, "refuse"),
        (lambda: SlowClose(1.5), "slow_close(1500ms)"),
        (lambda: ResetAfter(bytes=10), "reset_after(bytes=10)"),
        (lambda: TruncateAfter(bytes=0), "truncate_after(bytes=0)"),
        (lambda: ResetAfterEvents(3), "reset_after_events(3)"),
    ],
)
def test_toxics_render_as_text(make: Callable[[], object], text: str) -> None:
    assert str(make()) == text


@pytest.mark.parametrize(
    "make",
    [
        lambda: Latency(-0.1),
        lambda: Latency(0.1, jitter=float("nan")),
        lambda: Bandwidth(0),
        lambda: SlowClose(float("inf")),
        lambda: ResetAfter(bytes=-1),
        lambda: TruncateAfter(bytes=1.5),  # type: ignore[arg-type]
        lambda: ResetAfterEvents(0),
    ],
)
def test_toxics_reject_bad_arguments(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        make()


# -------------------------------------------------------------------------------- toxics


def test_latency_adds_the_delay_real_time(
    proxy: FaultProxy, connect: Callable[[], socket.socket], journal: Journal
) -> None:
    sock = connect()
    sock.sendall(b"warm")
    recv_exactly(sock, 4)
    proxy.add(Latency(0.025), "upstream")
    proxy.add(Latency(0.025), "downstream")
    started = time.perf_counter()
    sock.sendall(b"ping")
    assert recv_exactly(sock, 4) == b"ping"
    assert time.perf_counter() - started >= 0.045  # both legs; a lower bound only
    assert sorted(faults_of(journal)) == [
        ("daemon.request", "latency(25ms)", 1),
        ("daemon.stream", "latency(25ms)", 1),
    ]


def test_latency_jitter_is_drawn_from_the_injected_random() -> None:
    def delays(seed: int) -> list[float]:
        toxic = Latency(0.05, jitter=0.02, rng=random.Random(seed))
        return [toxic.schedule(None, 10.0, b"x")[0][0] - 10.0 for _ in range(20)]

    first = delays(1)
    assert first == delays(1)  # reproducible from the seed
    assert first != delays(2)
    assert all(0.03 <= d <= 0.07 for d in first)
    assert len(set(first)) > 1
    assert Latency(0.01, jitter=0.05, rng=random.Random(3)).schedule(None, 0.0, b"x")[0][0] >= 0


def test_bandwidth_cuts_data_into_timed_slices() -> None:
    toxic = Bandwidth(100)  # 10-byte slices, a tenth of a second each
    state = toxic.new_state()
    first = toxic.schedule(state, 0.0, b"a" * 25)
    assert [(round(at, 6), len(d)) for at, d in first] == [(0.1, 10), (0.2, 10), (0.25, 5)]
    later = toxic.schedule(state, 0.1, b"b" * 5)  # queued behind the first burst
    assert [(round(at, 6), len(d)) for at, d in later] == [(0.3, 5)]
    idle = toxic.schedule(state, 9.0, b"c")  # the link was idle: no debt carried over
    assert [(round(at, 6), len(d)) for at, d in idle] == [(9.01, 1)]


def test_bandwidth_limits_the_rate_real_time(
    proxy: FaultProxy, connect: Callable[[], socket.socket]
) -> None:
    proxy.add(Bandwidth(40_000))
    sock = connect()
    started = time.perf_counter()
    sock.sendall(b"z" * 2000)  # 50 ms worth at 40 kB/s
    assert recv_exactly(sock, 2000) == b"z" * 2000
    assert time.perf_counter() - started >= 0.045


def test_stall_holds_data_until_removed_real_time(
    proxy: FaultProxy, connect: Callable[[], socket.socket], journal: Journal
) -> None:
    stall = proxy.add(Stall())
    sock = connect()
    sock.sendall(b"held")
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(16)
    assert proxy.stats.bytes_downstream == 0
    proxy.remove(stall)
    sock.settimeout(GUARD)
    assert recv_exactly(sock, 4) == b"held"  # held, not dropped
    assert faults_of(journal) == [("daemon.stream", "stall", 1)]


def test_stall_upstream_holds_the_request_and_its_end(
    proxy: FaultProxy, connect: Callable[[], socket.socket], echo: tuple[str, int]
) -> None:
    with proxy.toxic(Stall(), "upstream"):
        sock = connect()
        sock.sendall(b"abc")
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            sock.recv(16)
    sock.settimeout(GUARD)
    assert read_all(sock) == (b"abc", None)  # the data, then the end, both released


def test_reset_after_bytes_resets_at_exactly_n_bytes(
    proxy: FaultProxy, connect: Callable[[], socket.socket], journal: Journal
) -> None:
    proxy.add(ResetAfter(bytes=10))
    sock = connect()
    sock.sendall(b"0123456789abcdefghij")
    assert read_all(sock) == (b"0123456789", ConnectionResetError)
    assert proxy.stats.resets == 1
    assert faults_of(journal) == [("daemon.stream", "reset_after(bytes=10)", 1)]


def test_reset_after_counts_from_when_it_was_added(
    proxy: FaultProxy, connect: Callable[[], socket.socket]
) -> None:
    sock = connect()
    sock.sendall(b"before")
    assert recv_exactly(sock, 6) == b"before"
    proxy.add(ResetAfter(bytes=3))
    sock.sendall(b"after")
    assert read_all(sock) == (b"aft", ConnectionResetError)


def test_truncate_closes_cleanly_after_n_bytes(
    proxy: FaultProxy, connect: Callable[[], socket.socket]
) -> None:
    proxy.add(TruncateAfter(bytes=7))
    sock = connect()
    sock.sendall(b"truncated here")
    assert read_all(sock) == (b"truncat", None)  # a clean end of stream, no reset
    assert proxy.stats.resets == 0


def test_slow_close_delays_the_end_of_stream_real_time(
    proxy: FaultProxy, connect: Callable[[], socket.socket], journal: Journal
) -> None:
    proxy.add(SlowClose(0.05))
    sock = connect()
    sock.sendall(b"bye")
    closed_at = time.perf_counter()  # the close is held from when the proxy sees ours
    sock.shutdown(socket.SHUT_WR)
    assert recv_exactly(sock, 3) == b"bye"
    assert read_all(sock) == (b"", None)
    assert time.perf_counter() - closed_at >= 0.045
    assert faults_of(journal) == [("daemon.stream", "slow_close(50ms)", 1)]


def test_refuse_refuses_new_connections_only(
    proxy: FaultProxy, connect: Callable[[], socket.socket], journal: Journal
) -> None:
    before = connect()
    with proxy.toxic(Refuse()):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=GUARD).close()
        before.sendall(b"still here")  # an open connection goes on
        assert recv_exactly(before, 10) == b"still here"
    after = connect()  # the same port listens again
    after.sendall(b"back")
    assert recv_exactly(after, 4) == b"back"
    assert proxy.stats.connections == 2
    assert faults_of(journal) == [("daemon.request", "refuse", 2)]


def test_refuse_before_start(echo: tuple[str, int]) -> None:
    proxy = FaultProxy(echo)
    proxy.add(Refuse())
    with proxy:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=GUARD).close()
        proxy.clear()
        with socket.create_connection(proxy.address, timeout=GUARD) as sock:
            sock.sendall(b"ok")
            assert recv_exactly(sock, 2) == b"ok"


def test_upstream_down_resets_the_client_promptly() -> None:
    with socket.socket() as placeholder:  # a port nobody listens on
        placeholder.bind(("127.0.0.1", 0))
        dead = placeholder.getsockname()[:2]
        with FaultProxy(dead) as proxy:
            # On loopback the reset can arrive before connect() or sendall() returns: the
            # promise is that the client sees a reset, not where it first notices it.
            try:
                with socket.create_connection(proxy.address, timeout=GUARD) as sock:
                    sock.sendall(b"anyone?")
                    outcome = read_all(sock)
            except (ConnectionResetError, BrokenPipeError):
                outcome = (b"", ConnectionResetError)
            assert outcome == (b"", ConnectionResetError)
            assert proxy.stats.resets == 1


def test_client_leaving_first_closes_both_sides(
    proxy: FaultProxy, echo_server: _EchoServer, connect: Callable[[], socket.socket]
) -> None:
    sock = connect()
    sock.sendall(b"x" * 100_000)
    assert recv_exactly(sock, 10) == b"x" * 10
    sock.close()  # without reading the rest of the echo
    # the server's handler ends because the proxy passed the close on (an event, no sleep)
    assert echo_server.ended.wait(GUARD)
    assert proxy.stats.connections == 1


# ---------------------------------------------------------------------- the real daemon

PROMPT = "Once upon a time"
PARAMS = GenerationParams(max_tokens=16)


@pytest.fixture(scope="module")
def shared_daemon(tiny_model_path: Path) -> Iterator[DaemonProcess]:
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")
    with DaemonProcess(tiny_model_path, ServerOptions(n_threads=1)) as running:
        yield running


@pytest.fixture
def daemon_proxy(shared_daemon: DaemonProcess, journal: Journal) -> Iterator[FaultProxy]:
    assert shared_daemon.port is not None
    with FaultProxy((shared_daemon.host, shared_daemon.port), journal=journal) as running:
        yield running


@pytest.fixture
def client() -> Iterator[Callable[..., DaemonBackend]]:
    """DaemonBackend factory; every backend made is closed after the test."""
    made: list[DaemonBackend] = []

    def make(base_url: str, **kwargs: Any) -> DaemonBackend:
        made.append(DaemonBackend(base_url, **kwargs))
        return made[-1]

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def direct(shared_daemon: DaemonProcess, client: Callable[..., DaemonBackend]) -> list[str]:
    """The chunks of the streamed completion, straight from the daemon."""
    return list(client(shared_daemon.base_url).stream(PROMPT, PARAMS))


def test_daemon_stream_through_the_proxy_equals_the_direct_one(
    daemon_proxy: FaultProxy, direct: list[str], client: Callable[..., DaemonBackend]
) -> None:
    backend = client(daemon_proxy.url)
    assert len(direct) > 3
    assert list(backend.stream(PROMPT, PARAMS)) == direct
    assert backend.generate(PROMPT, PARAMS) == "".join(direct)
    assert daemon_proxy.stats.bytes_downstream > 0
    assert daemon_proxy.stats.resets == 0


def test_daemon_reset_after_three_events_is_lost_with_the_partial_text(
    daemon_proxy: FaultProxy,
    direct: list[str],
    client: Callable[..., DaemonBackend],
    journal: Journal,
) -> None:
    backend = client(daemon_proxy.url)
    assert backend.generate(PROMPT, PARAMS)  # the toxic counts only what follows its addition
    daemon_proxy.add(ResetAfterEvents(3))
    got: list[str] = []
    with pytest.raises(DaemonLost) as lost:
        got.extend(backend.stream(PROMPT, PARAMS))
    assert got == direct[:3]  # three whole events, then the reset
    assert lost.value.partial == "".join(direct[:3])
    assert daemon_proxy.stats.resets == 1
    assert faults_of(journal) == [("daemon.stream", "reset_after_events(3)", 1)]


def test_daemon_stall_fires_the_clients_read_timeout_real_time(
    daemon_proxy: FaultProxy, client: Callable[..., DaemonBackend], journal: Journal
) -> None:
    backend = client(daemon_proxy.url, timeouts=Timeouts(read=0.05))
    daemon_proxy.add(Stall())
    started = time.perf_counter()
    with pytest.raises(StreamStalled) as stalled:
        backend.stream(PROMPT, PARAMS)  # not even the headers arrive
    assert time.perf_counter() - started >= 0.045
    assert (stalled.value.which, stalled.value.partial) == ("first_token", "")
    assert faults_of(journal) == [("daemon.stream", "stall", 1)]


def test_daemon_refused_is_unavailable_not_lost(
    daemon_proxy: FaultProxy, client: Callable[..., DaemonBackend]
) -> None:
    backend = client(daemon_proxy.url)
    with daemon_proxy.toxic(Refuse()), pytest.raises(DaemonUnavailable) as refused:
        backend.generate(PROMPT, PARAMS)
    assert not isinstance(refused.value, DaemonLost)  # as if the daemon were down
    assert backend.generate(PROMPT, PARAMS)  # and back once the toxic is removed


# ------------------------------------------------------------------------ SSE counting


def _chunked(*events: bytes) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
    return head + body + b"0\r\n\r\n"


EVENTS = [b'data: {"n": %d}\r\n\r\n' % i for i in range(5)]


@pytest.mark.parametrize("step", [1, 3, 7, 64, 10_000])
def test_sse_counter_finds_the_nth_event_across_chunk_boundaries(step: int) -> None:
    first = (  # a JSON answer on the same connection first: its blank lines do not count
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: 10\r\n\r\n{\n\n\n\n\n\n\n}\n"
    )
    wire = first + _chunked(*EVENTS)
    expected = wire.index(EVENTS[2]) + len(EVENTS[2])  # just past the third event
    counter = _SseCounter()
    found = None
    for start in range(0, len(wire), step):
        offset = counter.feed(wire[start : start + step], 3)
        if offset is not None:
            found = start + offset
            break
    assert found == expected


def test_sse_counter_reads_a_bare_event_stream() -> None:
    counter = _SseCounter()
    assert counter.feed(b"data: a\n\ndata: b\r\rdata: c\n", 3) is None
    assert counter.feed(b"\nrest", 3) == 1
