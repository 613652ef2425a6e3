"""The model daemon: a real ``llama_cpp.server`` child process on 127.0.0.1 and the httpx
client, plus a stub HTTP server and httpx mock transports for the status and SSE edge cases.

Every daemon is started by a fixture and closed by its finaliser, even when a test fails,
and an autouse check fails any test that leaves a child process (or a zombie) behind.
"""

from __future__ import annotations

import asyncio
import gc
import http.server
import json
import math
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx
import psutil  # type: ignore[import-untyped]
import pytest

from pytest_resilience.backends.base import AsyncBackend, Backend, GenerationParams, TextStream
from pytest_resilience.backends.daemon import (
    DaemonBackend,
    DaemonProcess,
    DaemonStartFailed,
    RequestRejected,
    ServerOptions,
    Timeouts,
)
from pytest_resilience.backends.llama import EmbeddingCheck
from pytest_resilience.core.cancel import cancel_scope, deadline
from pytest_resilience.core.classify import Category, classify
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import (
    Cancelled,
    DaemonLost,
    DaemonUnavailable,
    DeadlineExceeded,
    InvalidOutput,
    RateLimited,
    ServerError,
    StreamInterrupted,
    StreamStalled,
)
from pytest_resilience.core.events import DaemonDown, DaemonRestarted, DaemonUp
from pytest_resilience.core.journal import Journal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from pytest_resilience.backends.llama import LlamaBackend

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

SHORT = GenerationParams(max_tokens=24)
LONG = GenerationParams(max_tokens=900)  # about half a second of streaming; fits n_ctx 1024
POOLING_MEAN = ("llama.pooling_type=int:1",)  # the tiny model names no pooling type
# The read timeout of a stream that must deliver a chunk while its daemon runs and stall once
# it is frozen: a chunk must come within it on a machine busy with other work (0.3 s did not
# always), and the stall waits it out in real time.
IDLE_READ = 3.0


# ------------------------------------------------------------------------------ fixtures


def _children() -> dict[int, str]:
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            found[child.pid] = child.status()
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture(autouse=True)
def no_stray_children() -> Iterator[None]:
    """Fail a test that leaves a child process or a zombie behind (and clean it up)."""
    before = set(_children())
    yield
    stray = {pid: status for pid, status in _children().items() if pid not in before}
    for pid in stray:
        try:
            proc = psutil.Process(pid)
            proc.kill()
            proc.wait(5)
        except psutil.NoSuchProcess:
            continue
    assert not stray, f"child processes left behind (pid: status): {stray}"


@pytest.fixture(scope="module")
def shared_journal() -> Journal:
    return Journal()


@pytest.fixture(scope="module")
def shared_daemon(tiny_model_path: Path, shared_journal: Journal) -> Iterator[DaemonProcess]:
    """One daemon for the tests that only talk to it."""
    with DaemonProcess(
        tiny_model_path, ServerOptions(n_ctx=2048), journal=shared_journal
    ) as daemon:
        yield daemon


@pytest.fixture
def spawn(tiny_model_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start a daemon of one's own (to kill, freeze, restart); closed after the test."""
    daemons: list[DaemonProcess] = []

    def start(options: ServerOptions | None = None, **kwargs: Any) -> DaemonProcess:
        daemon = DaemonProcess(tiny_model_path, options or ServerOptions(n_ctx=2048), **kwargs)
        daemons.append(daemon)
        return daemon.start()

    yield start
    for daemon in daemons:
        daemon.close()


@pytest.fixture
def client() -> Iterator[Callable[..., DaemonBackend]]:
    """DaemonBackend factory; every backend made is closed after the test."""
    made: list[DaemonBackend] = []

    def make(base_url: str, **kwargs: Any) -> DaemonBackend:
        backend = DaemonBackend(base_url, **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


class _Reply(http.server.BaseHTTPRequestHandler):
    """Answers every request with the server's canned (status, headers, body)."""

    server: _StubServer

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.server.requests.append(json.loads(self.rfile.read(length) or b"null"))
        status, headers, body = self.server.reply
        self.send_response_only(status)  # no automatic Date: a test sets its own
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        return


class _StubServer(http.server.HTTPServer):
    reply: tuple[int, dict[str, str], bytes] = (200, {}, b"{}")
    requests: list[Any]


@pytest.fixture
def stub() -> Iterator[_StubServer]:
    """A tiny HTTP server on 127.0.0.1 in a thread; stopped and joined after the test."""
    server = _StubServer(("127.0.0.1", 0), _Reply)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _url(server: http.server.HTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


def _sse(*events: str) -> bytes:
    return "".join(f"data: {e}\n\n" for e in events).encode()


def _chunk(text: str, reason: str | None = None) -> str:
    return json.dumps({"choices": [{"text": text, "index": 0, "finish_reason": reason}]})


class _Body(httpx.SyncByteStream):
    """A response body that records whether the client closed it."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self.parts

    def close(self) -> None:
        self.closed = True


def _drain(stream: Iterator[str]) -> None:
    for _ in stream:
        pass


def _is_closed(body: _Body) -> bool:
    return body.closed


def _mock(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> DaemonBackend:
    return DaemonBackend("http://daemon.test", transport=httpx.MockTransport(handler), **kwargs)


# ------------------------------------------------------------------- the real daemon


def test_daemon_starts_and_answers(
    shared_daemon: DaemonProcess, client: Callable[..., DaemonBackend], shared_journal: Journal
) -> None:
    backend = client(shared_daemon.base_url)
    assert shared_daemon.alive
    assert psutil.Process(shared_daemon.pid).ppid() == psutil.Process().pid
    assert shared_daemon.base_url.startswith("http://127.0.0.1:")
    assert backend.models() == [shared_daemon.alias]
    assert isinstance(backend, Backend)
    assert isinstance(backend, AsyncBackend)
    text = backend.generate("Once upon a time", SHORT)
    assert text.strip()
    assert shared_daemon.startup_time is not None
    assert shared_daemon.startup_time < shared_daemon.ready_timeout
    print(f"\ndaemon cold start to ready: {shared_daemon.startup_time * 1000:.0f} ms")
    (up,) = shared_journal.events(DaemonUp)
    assert up.latency == shared_daemon.startup_time


@pytest.mark.parametrize(
    "params",
    [
        GenerationParams(max_tokens=40),
        GenerationParams(max_tokens=40, repeat_penalty=1.3),
        GenerationParams(max_tokens=40, temperature=0.9, top_p=0.9, seed=7),
    ],
    ids=["greedy", "repeat-penalty", "seeded-sampling"],
)
def test_daemon_answer_equals_in_process_answer(
    shared_daemon: DaemonProcess,
    client: Callable[..., DaemonBackend],
    llama_backend: LlamaBackend,
    params: GenerationParams,
) -> None:
    backend = client(shared_daemon.base_url)
    expected = llama_backend.generate("The quick brown fox", params)
    assert backend.generate("The quick brown fox", params) == expected
    assert "".join(backend.stream("The quick brown fox", params)) == expected
    assert asyncio.run(backend.agenerate("The quick brown fox", params)) == expected


def test_stream_yields_chunks_and_closes_the_response(
    shared_daemon: DaemonProcess, client: Callable[..., DaemonBackend]
) -> None:
    backend = client(shared_daemon.base_url)
    whole = backend.generate("Hello", SHORT)
    stream = backend.stream("Hello", SHORT)
    as_protocol: object = stream
    assert isinstance(as_protocol, TextStream)
    chunks = list(stream)
    assert len(chunks) > 1
    assert "".join(chunks) == stream.text == whole
    assert stream.finish_reason == "length"
    assert stream.closed

    early = backend.stream("Hello", LONG)
    first = next(early)
    early.close()
    assert early.closed
    assert early.text == first
    assert list(early) == []
    assert backend.generate("Hello", SHORT) == whole  # the daemon took the next request


def test_async_stream_equals_sync_stream(
    shared_daemon: DaemonProcess, client: Callable[..., DaemonBackend]
) -> None:
    backend = client(shared_daemon.base_url)
    expected = backend.generate("Async", SHORT)

    async def collect() -> tuple[list[str], str]:
        async with backend.astream("Async", SHORT) as stream:
            chunks = [chunk async for chunk in stream]
        return chunks, stream.text

    chunks, text = asyncio.run(collect())
    assert len(chunks) > 1
    assert "".join(chunks) == text == expected


def test_embeddings_match_in_process_embeddings(
    spawn: Callable[..., DaemonProcess],
    client: Callable[..., DaemonBackend],
    llama_backend: LlamaBackend,
) -> None:
    daemon = spawn(ServerOptions(embedding=True, kv_overrides=POOLING_MEAN))
    backend = client(daemon.base_url)
    vector = backend.embed("a sentence to embed")
    assert len(vector) == 64
    assert all(math.isfinite(v) for v in vector)
    expected = llama_backend.embed("a sentence to embed")
    assert vector == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert asyncio.run(backend.aembed("a sentence to embed")) == vector
    assert backend.generate("Hi", SHORT).strip()  # an embedding daemon still generates


def test_sigkill_mid_stream_is_daemon_lost_then_unavailable_real_time(
    spawn: Callable[..., DaemonProcess],
    client: Callable[..., DaemonBackend],
    llama_backend: LlamaBackend,
) -> None:
    daemon = spawn()
    backend = client(daemon.base_url)
    stream = backend.stream("Tell me a story", LONG)
    received = "".join(next(stream) for _ in range(3))
    killed_at = time.perf_counter()
    assert daemon.kill() == -9
    reaped_at = time.perf_counter()
    with pytest.raises(DaemonLost) as lost:
        _drain(stream)
    seen_at = time.perf_counter()
    print(
        f"\nSIGKILL + reap {(reaped_at - killed_at) * 1000:.2f} ms, "
        f"then DaemonLost after {(seen_at - reaped_at) * 1000:.2f} ms"
    )
    # seen from the closed connection, not after the read timeout (60 s): no time bound needed
    assert isinstance(lost.value.__cause__, httpx.RemoteProtocolError | httpx.ReadError)
    assert lost.value.partial == stream.text
    assert lost.value.partial.startswith(received)
    full = llama_backend.generate("Tell me a story", LONG)
    assert len(lost.value.partial) < len(full)
    assert full.startswith(lost.value.partial)
    assert stream.closed
    assert classify(lost.value).category is Category.CONNECTION

    with pytest.raises(DaemonUnavailable) as refused:
        backend.generate("Anyone there?", SHORT)
    assert type(refused.value) is DaemonUnavailable
    assert isinstance(refused.value.__cause__, httpx.ConnectError)
    with pytest.raises(DaemonUnavailable):
        asyncio.run(backend.agenerate("Anyone there?", SHORT))


def test_sigstop_fires_the_read_timeout_then_resume_answers_real_time(
    spawn: Callable[..., DaemonProcess], client: Callable[..., DaemonBackend]
) -> None:
    daemon = spawn()
    backend = client(daemon.base_url)  # the default read timeout (60 s): for the live daemon
    frozen = client(daemon.base_url, timeouts=Timeouts(connect=1.0, read=0.3))
    expected = backend.generate("Frozen", SHORT)

    daemon.pause()  # from here to resume(), a call times out whatever the machine's load
    started = time.perf_counter()
    with pytest.raises(DeadlineExceeded) as timed_out:
        frozen.generate("Frozen", SHORT)
    assert time.perf_counter() - started >= 0.3
    assert not isinstance(timed_out.value, StreamStalled)
    assert isinstance(timed_out.value.__cause__, httpx.ReadTimeout)
    assert timed_out.value.budget == 0.3  # the 0.3 s read timeout ended the wait
    assert classify(timed_out.value).category is Category.TIMEOUT

    with pytest.raises(StreamStalled) as stalled:
        frozen.stream("Frozen", SHORT).__next__()
    assert stalled.value.which == "first_token"
    assert stalled.value.partial == ""
    assert stalled.value.waited == 0.3

    daemon.resume()
    assert backend.generate("Frozen", SHORT) == expected

    stream = client(daemon.base_url, timeouts=Timeouts(read=IDLE_READ)).stream("Frozen", LONG)
    first = next(stream)
    daemon.pause()
    with pytest.raises(StreamStalled) as idle:
        _drain(stream)
    assert idle.value.which == "idle"
    assert idle.value.waited == IDLE_READ
    assert idle.value.partial == stream.text
    assert idle.value.partial.startswith(first)
    assert stream.closed
    daemon.resume()
    assert backend.generate("Frozen", SHORT) == expected


def test_cancel_scope_bounds_a_request_to_a_frozen_daemon_real_time(
    spawn: Callable[..., DaemonProcess], client: Callable[..., DaemonBackend]
) -> None:
    daemon = spawn()
    backend = client(daemon.base_url, timeouts=Timeouts(read=30.0))
    daemon.pause()
    # Each call would wait out the 30 s read timeout without its bound: the error's budget
    # says which bound ended it, with no upper bound on the time it took
    started = time.perf_counter()
    with pytest.raises(DeadlineExceeded) as scoped, deadline(0.25):
        backend.generate("Frozen", SHORT)
    assert time.perf_counter() - started >= 0.25
    assert scoped.value.budget == 0.25

    total = client(daemon.base_url, timeouts=Timeouts(read=30.0, total=0.2))
    started = time.perf_counter()
    with pytest.raises(DeadlineExceeded) as exceeded:
        total.generate("Frozen", SHORT)
    assert time.perf_counter() - started >= 0.2
    assert exceeded.value.budget == 0.2

    async def frozen() -> str:
        async with deadline(0.25):
            return await backend.agenerate("Frozen", SHORT)

    started = time.perf_counter()
    with pytest.raises(DeadlineExceeded) as ascoped:
        asyncio.run(frozen())
    assert time.perf_counter() - started >= 0.25
    assert ascoped.value.budget == 0.25


def test_killing_a_paused_daemon_reaps_it(spawn: Callable[..., DaemonProcess]) -> None:
    daemon = spawn()
    pid = daemon.pid
    assert pid is not None
    daemon.pause()
    assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    assert daemon.kill() == -9
    assert not daemon.alive
    assert daemon.pid is None
    assert not psutil.pid_exists(pid)  # reaped: not even a zombie
    with pytest.raises(DaemonUnavailable):
        daemon.pause()


def test_stopping_a_paused_daemon_resumes_it_to_shut_down(
    spawn: Callable[..., DaemonProcess],
) -> None:
    journal = Journal()
    daemon = spawn(journal=journal)
    pid = daemon.pid
    daemon.pause()
    code = daemon.stop()
    assert code in (-15, 0)  # uvicorn shuts down cleanly, then re-raises SIGTERM
    assert not psutil.pid_exists(pid or 0)
    assert daemon.stop() == code  # idempotent
    reasons = [e.reason for e in journal.events(DaemonDown)]
    assert reasons == ["paused", "stopped"]


def test_restart_answers_again_on_a_new_pid_and_the_same_port(
    spawn: Callable[..., DaemonProcess], client: Callable[..., DaemonBackend]
) -> None:
    journal = Journal()
    daemon = spawn(journal=journal)
    backend = client(daemon.base_url)
    before = backend.generate("Again", SHORT)
    old_pid, port = daemon.pid, daemon.port
    daemon.restart()
    assert daemon.pid not in (None, old_pid)
    assert daemon.port == port
    assert not psutil.pid_exists(old_pid or 0)
    assert backend.generate("Again", SHORT) == before
    (restarted,) = journal.events(DaemonRestarted)
    assert restarted.pid == daemon.pid


def test_a_taken_port_is_retried_on_another(
    spawn: Callable[..., DaemonProcess], client: Callable[..., DaemonBackend]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        daemon = spawn(port=busy)
        assert daemon.port != busy
        assert client(daemon.base_url).generate("Port", SHORT).strip()
        assert "address already in use" in daemon.log_tail(200).lower()


def test_a_bad_model_fails_start_with_exit_code_and_log_tail(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_text("this is not a model\n")
    daemon = DaemonProcess(bogus, ready_timeout=60.0)
    try:
        with pytest.raises(DaemonStartFailed) as failed:
            daemon.start()
    finally:
        daemon.close()
    assert failed.value.exit_code == 1
    assert "Failed to load model" in failed.value.log_tail
    assert "Failed to load model" in str(failed.value)
    assert isinstance(failed.value, DaemonUnavailable)
    assert not daemon.alive


def test_a_daemon_not_ready_in_time_is_killed_real_time(tiny_model_path: Path) -> None:
    daemon = DaemonProcess(tiny_model_path, ready_timeout=0.05)
    try:
        # the message and the SIGKILL say that the ready timeout ended the start, not the
        # daemon becoming ready (which takes far longer than 0.05 s): no time bound needed
        with pytest.raises(DaemonStartFailed, match=r"not ready within 0\.05s") as failed:
            daemon.start()
    finally:
        daemon.close()
    assert failed.value.exit_code == -9
    assert not daemon.alive


def test_a_dropped_daemon_process_is_reaped_by_its_finaliser(tiny_model_path: Path) -> None:
    daemon = DaemonProcess(tiny_model_path).start()
    pid = daemon.pid
    assert pid is not None
    del daemon
    gc.collect()
    assert not psutil.pid_exists(pid)


def test_importing_the_module_does_not_import_httpx() -> None:
    code = (
        "import sys, pytest_resilience.backends.daemon as d; "
        "print(sorted(m for m in ('httpx', 'llama_cpp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------- status mapping


STATUS_CASES = {
    "429": (429, {"Retry-After": "7"}, b'{"error": {"message": "slow down"}}', "slow down"),
    "503": (503, {}, b'{"error": {"message": "model busy"}}', "model busy"),
    "500-text": (500, {}, b"internal kaboom", "internal kaboom"),
    "400": (400, {}, b'{"error": {"message": "context too long"}}', "context too long"),
    "422": (422, {}, b'{"detail": [{"msg": "field required"}]}', "field required"),
}
EXPECTED = {429: RateLimited, 503: ServerError, 500: ServerError, 400: RequestRejected}


@pytest.mark.parametrize("case", STATUS_CASES.values(), ids=STATUS_CASES.keys())
def test_http_status_is_mapped(
    stub: _StubServer,
    client: Callable[..., DaemonBackend],
    case: tuple[int, dict[str, str], bytes, str],
) -> None:
    status, headers, body, words = case
    stub.reply = (status, {"Content-Type": "application/json", **headers}, body)
    backend = client(_url(stub))
    calls: list[Callable[[], object]] = [
        lambda: backend.generate("x", SHORT),
        lambda: backend.stream("x", SHORT),
        lambda: asyncio.run(backend.agenerate("x", SHORT)),
    ]
    category = {429: Category.RATE_LIMITED, 500: Category.TRANSIENT, 503: Category.TRANSIENT}
    for call in calls:
        with pytest.raises(EXPECTED.get(status, RequestRejected)) as raised:
            call()
        assert words in str(raised.value)
        assert classify(raised.value).category is category.get(status, Category.PERMANENT)
        if isinstance(raised.value, RateLimited):
            assert raised.value.retry_after == 7.0
        else:
            assert getattr(raised.value, "status", None) == status
    assert len(stub.requests) == 3
    assert stub.requests[0]["repeat_penalty"] == SHORT.repeat_penalty


def test_retry_after_as_an_http_date_is_measured_against_the_server_date(
    stub: _StubServer, client: Callable[..., DaemonBackend]
) -> None:
    stub.reply = (
        429,
        {"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT", "Date": "Wed, 21 Oct 2015 07:28:00 GMT"},
        b"{}",
    )
    with pytest.raises(RateLimited) as raised:
        client(_url(stub)).generate("x")
    assert raised.value.retry_after == 30.0


def test_every_sampling_parameter_is_sent_explicitly(
    stub: _StubServer, client: Callable[..., DaemonBackend]
) -> None:
    stub.reply = (200, {}, json.dumps({"choices": [{"text": "ok"}]}).encode())
    params = GenerationParams(max_tokens=9, temperature=0.5, top_p=0.8, seed=3, stop=("\n",))
    assert client(_url(stub), model="tiny").generate("p", params) == "ok"
    assert stub.requests == [
        {
            "prompt": "p",
            "max_tokens": 9,
            "temperature": 0.5,
            "top_p": 0.8,
            "repeat_penalty": 1.0,
            "seed": 3,
            "stop": ["\n"],
            "stream": False,
            "model": "tiny",
        }
    ]


# ------------------------------------------------------------- SSE and validation


def test_sse_comments_multiline_events_and_done_are_parsed() -> None:
    body = (
        b": ping - keep-alive\n\n"
        + _sse(_chunk("Hel"))
        + b"event: message\nid: 2\ndata: "
        + _chunk("lo").encode()
        + b"\n\n"
        + _sse(_chunk(""), _chunk(" world", "stop"), "[DONE]", _chunk("after done"))
    )
    backend = _mock(lambda request: httpx.Response(200, stream=_Body([body[:7], body[7:]])))
    stream = backend.stream("p")
    assert list(stream) == ["Hel", "lo", " world"]
    assert stream.finish_reason == "stop"


def test_a_stream_without_done_is_interrupted_with_the_partial_text() -> None:
    body = _Body([_sse(_chunk("a"), _chunk("b"))])
    stream = _mock(lambda request: httpx.Response(200, stream=body)).stream("p")
    with pytest.raises(StreamInterrupted) as cut:
        list(stream)
    assert cut.value.partial == "ab"
    assert body.closed


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ("{not json", InvalidOutput),
        ('{"choices": []}', InvalidOutput),
        ('{"choices": [{"text": 3}]}', InvalidOutput),
        ('{"error": {"message": "decode failed"}}', ServerError),
    ],
)
def test_a_bad_chunk_raises_and_closes_the_response(event: str, error: type[Exception]) -> None:
    body = _Body([_sse(_chunk("ok"), event, "[DONE]")])
    stream = _mock(lambda request: httpx.Response(200, stream=body)).stream("p")
    assert next(stream) == "ok"
    with pytest.raises(error):
        next(stream)
    assert body.closed


def test_closing_or_dropping_a_stream_closes_the_response() -> None:
    bodies: list[_Body] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(_Body([_sse(_chunk("x"), _chunk("y"), "[DONE]")]))
        return httpx.Response(200, stream=bodies[-1])

    backend = _mock(handler)
    with backend.stream("p") as stream:
        assert next(stream) == "x"
    assert bodies[0].closed
    dropped = backend.stream("p")
    next(dropped)
    assert not _is_closed(bodies[1])
    del dropped
    gc.collect()
    assert _is_closed(bodies[1])
    backend.close()


def test_a_cancelled_scope_stops_the_stream_between_chunks() -> None:
    body = _Body([_sse(_chunk("a"), _chunk("b"), "[DONE]")])
    backend = _mock(lambda request: httpx.Response(200, stream=body))
    with cancel_scope() as scope:
        stream = backend.stream("p")
        assert next(stream) == "a"
        scope.cancel("user left")
        with pytest.raises(Cancelled, match="user left"):
            next(stream)
    assert body.closed
    assert stream.text == "a"


def test_the_scope_caps_every_httpx_timeout() -> None:
    seen: list[dict[str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json={"choices": [{"text": "ok"}]})

    clock = VirtualClock()
    backend = _mock(handler, timeouts=Timeouts(connect=2.0, read=30.0, write=5.0), clock=clock)
    backend.generate("p")
    with deadline(3.0, clock=clock):
        clock.advance(0.5)
        backend.generate("p")
    with deadline(60.0, clock=clock):
        backend.generate("p")
    assert seen[0] == {"connect": 2.0, "read": 30.0, "write": 5.0, "pool": 2.0}
    assert seen[1] == {"connect": 2.0, "read": 2.5, "write": 2.5, "pool": 2.0}
    assert seen[2] == seen[0]
    with deadline(1.0, clock=clock):
        clock.advance(1.0)
        with pytest.raises(DeadlineExceeded):
            backend.generate("p")
    assert len(seen) == 3  # an expired budget sends nothing


def test_embeddings_are_validated() -> None:
    answers = iter([[0.5, 0.25, 1.0], [0.5, math.nan, 1.0], [0.5, 1.0], [[0.1, 0.2]]])

    def handler(request: httpx.Request) -> httpx.Response:
        vector = next(answers)
        return httpx.Response(200, content=json.dumps({"data": [{"embedding": vector}]}))

    backend = _mock(handler)
    assert backend.embed("a") == [0.5, 0.25, 1.0]
    with pytest.raises(InvalidOutput, match="nan at index 1"):
        backend.embed("b")
    with pytest.raises(InvalidOutput, match="2 dimensions, expected 3"):
        backend.embed("c")
    with pytest.raises(InvalidOutput, match="not a flat vector"):
        backend.embed("d")
    fixed = _mock(
        lambda request: httpx.Response(200, json={"data": [{"embedding": [3.0, 4.0]}]}),
        embedding_check=EmbeddingCheck(dim=2, normalize=True),
    )
    assert fixed.embed("e") == pytest.approx([0.6, 0.8])


def test_async_errors_are_mapped_like_sync_ones() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    backend = DaemonBackend("http://daemon.test", async_transport=httpx.MockTransport(handler))

    async def run() -> None:
        with pytest.raises(DaemonUnavailable):
            await backend.agenerate("p")
        with pytest.raises(DaemonUnavailable):
            await anext(aiter(backend.astream("p")))
        await backend.aclose()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ConnectError("refused"), DaemonUnavailable),
        (httpx.ConnectTimeout("slow accept"), DaemonUnavailable),
        (httpx.ReadTimeout("silent"), DeadlineExceeded),
        (httpx.RemoteProtocolError("peer closed"), DaemonLost),
        (httpx.ReadError("reset"), DaemonLost),
        (httpx.UnsupportedProtocol("gopher"), httpx.UnsupportedProtocol),  # not ours: unchanged
    ],
)
def test_transport_errors_are_mapped_from_the_original(
    raised: Exception, expected: type[Exception]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    with pytest.raises(expected) as caught:
        _mock(handler).generate("p")
    if expected is not type(raised):
        assert caught.value.__cause__ is raised
        assert not isinstance(caught.value, DaemonLost) or caught.value.partial == ""
    else:
        assert caught.value is raised
