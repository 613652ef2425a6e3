"""The daemon.request and daemon.process faults reach the ``ollama`` client (it sends with
httpx), and each is what ollama's own client raises for the real failure.

ollama speaks its own API (``/api/generate``, ``/api/chat``), which llama-cpp-python's
server does not serve. So the server here is a small ollama-compatible one the tests start
on 127.0.0.1 (:class:`FakeOllama`: a JSON answer, or an NDJSON stream), named to the
injector with ``Target(url)``; it is stopped after each test, even one that fails.

ollama streams NDJSON (``application/x-ndjson``), not server-sent events. The daemon.stream
site acts on SSE answers only (it counts SSE events), so an ollama stream is reached by the
daemon.request and daemon.process kinds only: a daemon.stream fault never fires on it, and
``run.unreached()`` says so instead of the test passing silently. For the same reason
``daemon.request=lost(after=n)`` cannot count NDJSON lines: on a body that is not SSE the
connection is reset as the body is read.

ollama has no retries of its own, and its client has no timeout unless given one. Hangs run
on a VirtualClock.
"""

from __future__ import annotations

import asyncio
import builtins
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import ollama
import pytest

import faults
from faults.target import Target
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import HangDetected

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

MODEL = "tiny"
WORDS = ["Once", " upon", " a", " time"]
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------- the fake server


class OllamaHandler(http.server.BaseHTTPRequestHandler):
    """``/api/generate`` and ``/api/chat`` as ollama answers them: one JSON object, or an
    NDJSON stream (one object a line, the last with ``done: true``)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or "{}")
        if self.path not in ("/api/generate", "/api/chat"):
            self._send(404, "application/json", b'{"error": "404 page not found"}')
            return
        chat = self.path == "/api/chat"
        parts = [self._part(chat, word, done=False) for word in WORDS]
        if body.get("stream", True):
            lines = [*parts, self._part(chat, "", done=True)]
            data = b"".join(json.dumps(p).encode() + b"\n" for p in lines)
            self._send(200, "application/x-ndjson", data)
        else:
            self._send(200, "application/json", json.dumps(self._part(chat, "".join(WORDS))))

    @staticmethod
    def _part(chat: bool, text: str, *, done: bool = True) -> dict[str, Any]:
        part: dict[str, Any] = {"model": MODEL, "created_at": "2025-01-01T00:00:00Z"}
        if chat:
            part["message"] = {"role": "assistant", "content": text}
        else:
            part["response"] = text
        part["done"] = done
        if done:
            part["done_reason"] = "stop"
        return part

    def _send(self, status: int, kind: str, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Connection", "close")  # one request a connection: one thread serves
        self.end_headers()
        self.wfile.write(raw)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeOllama:
    """The handler on 127.0.0.1 in a thread of this process; ``close()`` stops it."""

    def __init__(self) -> None:
        self.server = http.server.HTTPServer(("127.0.0.1", 0), OllamaHandler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, name="fake-ollama"
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join()
        self.server.server_close()


def serve_in_child() -> None:
    """The child process's main: serve, after printing the URL."""
    server = http.server.HTTPServer(("127.0.0.1", 0), OllamaHandler)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


@pytest.fixture
def server() -> Iterator[FakeOllama]:
    fake = FakeOllama()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def child_server() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The fake server in a child process of its own (to be killed): its URL and process."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from tests.integration.test_reach_ollama import serve_in_child; serve_in_child()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://"), f"the fake server did not start: {url!r}"
        yield url, proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def client(server: FakeOllama) -> Iterator[Callable[..., ollama.Client]]:
    """``client(**kw)``: an ``ollama.Client`` for the server (or ``host=``), closed after."""
    made: list[ollama.Client] = []

    def make(**kw: Any) -> ollama.Client:
        made.append(ollama.Client(**{"host": server.url, **kw}))
        return made[-1]

    yield make
    for c in made:
        c.close()  # type: ignore[no-untyped-call]  # ollama leaves close() unannotated


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock()


def generate(c: ollama.Client, *, stream: bool = False) -> str:
    """A generation's text, whole or streamed."""
    if stream:
        return "".join(part.response or "" for part in c.generate(MODEL, "Hi", stream=True))
    return c.generate(MODEL, "Hi").response or ""


TEXT = "".join(WORDS)


# ---------------------------------------------------------------------------- tests


def test_the_fake_server_answers_like_ollama_and_the_hooks_see_each_request(
    server: FakeOllama, client: Callable[..., ollama.Client]
) -> None:
    c = client()
    with faults.inject("daemon.request=@9refuse", daemon=Target(server.url)) as run:
        assert generate(c) == TEXT
        assert generate(c, stream=True) == TEXT
        assert c.chat(MODEL, messages=[{"role": "user", "content": "Hi"}]).message.content == TEXT
        streamed = c.chat(MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True)
        assert [part.message.content for part in streamed] == [*WORDS, ""]
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (4, 0)


def test_refuse_is_ollamas_connectionerror_and_a_raw_connecterror_when_streaming(
    server: FakeOllama, client: Callable[..., ollama.Client]
) -> None:
    c = client()
    with faults.inject("daemon.request=2*refuse", daemon=Target(server.url)) as run:
        with pytest.raises(ConnectionError, match="Failed to connect to Ollama") as refused:
            generate(c)
        with pytest.raises(httpx.ConnectError, match="Connection refused"):
            generate(c, stream=True)  # ollama maps ConnectError only when not streaming
        assert generate(c) == TEXT  # no retries in ollama: the third call is the next one
    assert type(refused.value) is builtins.ConnectionError
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (3, 2)


@pytest.mark.parametrize("stream", [False, True])
def test_lost_is_httpxs_remoteprotocolerror_unmapped_by_ollama(
    server: FakeOllama, client: Callable[..., ollama.Client], stream: bool
) -> None:
    c = client()
    with (
        faults.inject("daemon.request=lost", daemon=Target(server.url)) as run,
        pytest.raises(httpx.RemoteProtocolError, match="without sending a response"),
    ):
        generate(c, stream=stream)
    assert run.injected("daemon.request") == 1


def test_lost_after_n_on_an_ndjson_stream_resets_at_once(
    server: FakeOllama, client: Callable[..., ollama.Client]
) -> None:
    c = client()
    with faults.inject("daemon.request=1*lost(after=2)", daemon=Target(server.url)) as run:
        with pytest.raises(httpx.ReadError, match="Connection reset by peer"):
            generate(c, stream=True)  # NDJSON lines are not counted: reset at once
        assert generate(c, stream=True) == TEXT
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (2, 1)


def test_timeout_ends_at_the_clients_timeout_on_the_clock(
    server: FakeOllama, client: Callable[..., ollama.Client], vclock: VirtualClock
) -> None:
    c = client(timeout=5.0)
    with (
        faults.inject("daemon.request=timeout", daemon=Target(server.url), clock=vclock) as run,
        pytest.raises(httpx.ReadTimeout),  # unmapped by ollama
    ):
        generate(c)
    assert vclock.now() == 5.0
    assert run.injected("daemon.request") == 1


def test_ollamas_default_client_has_no_timeout_so_the_faults_duration_is_waited(
    server: FakeOllama, client: Callable[..., ollama.Client], vclock: VirtualClock
) -> None:
    c = client()  # ollama's default: timeout=None
    spec = "daemon.request=@1timeout(30s)->@2timeout"
    with faults.inject(spec, daemon=Target(server.url), clock=vclock) as run:
        with pytest.raises(httpx.ReadTimeout):
            generate(c, stream=True)
        assert vclock.now() == 30.0
        with pytest.raises(HangDetected, match=r"daemon\.request"):
            generate(c)  # a hang that nothing ends: the app's missing timeout is found
    assert run.injected("daemon.request") == 2


@pytest.mark.parametrize("stream", [False, True])
def test_ratelimit_is_ollamas_responseerror_429(
    server: FakeOllama, client: Callable[..., ollama.Client], stream: bool
) -> None:
    c = client()
    spec = "daemon.request=ratelimit(retry_after=10ms)"
    with (
        faults.inject(spec, daemon=Target(server.url)) as run,
        pytest.raises(ollama.ResponseError) as caught,
    ):
        generate(c, stream=stream)
    assert caught.value.status_code == 429
    # the body is OpenAI-style: ollama's .error is its "error" object, not ollama's string
    error: object = caught.value.error
    assert isinstance(error, dict)
    assert error["type"] == "rate_limit_error"
    assert str(caught.value).endswith("(status code: 429)")
    assert run.injected("daemon.request") == 1


@pytest.mark.parametrize("code", [500, 503])
def test_status_is_ollamas_responseerror_with_the_code(
    server: FakeOllama, client: Callable[..., ollama.Client], code: int
) -> None:
    c = client()
    with (
        faults.inject(f"daemon.request=status({code})", daemon=Target(server.url)) as run,
        pytest.raises(ollama.ResponseError) as caught,
    ):
        c.chat(MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == code
    assert run.injected("daemon.request") == 1


def test_raise_and_latency(
    server: FakeOllama, client: Callable[..., ollama.Client], vclock: VirtualClock
) -> None:
    c = client()
    spec = 'daemon.request=@1raise(ConnectionResetError, "gone")->@2latency(2s)'
    with faults.inject(spec, daemon=Target(server.url), clock=vclock) as run:
        with pytest.raises(ConnectionResetError, match="gone"):
            generate(c)
        assert generate(c) == TEXT
    assert vclock.now() == 2.0
    assert run.injected("daemon.request") == 2


def test_a_stream_fault_on_an_ndjson_stream_is_reported_unreached(
    server: FakeOllama, client: Callable[..., ollama.Client]
) -> None:
    c = client()
    with faults.inject("daemon.stream=truncate(after=2)", daemon=Target(server.url)) as run:
        assert generate(c, stream=True) == TEXT  # untouched: not an SSE answer
    assert run.injected("daemon.stream") == 0
    [unreached] = run.unreached()
    assert unreached.site == "daemon.stream"
    assert "no streamed (text/event-stream) answer" in unreached.reason


def test_process_lost_kills_the_server_and_ollama_cannot_connect(
    child_server: tuple[str, subprocess.Popen[str]], client: Callable[..., ollama.Client]
) -> None:
    url, proc = child_server
    c = client(host=url)
    assert generate(c) == TEXT
    with faults.inject("daemon.process=@2lost", daemon=Target(url, pid=proc.pid)) as run:
        assert generate(c) == TEXT
        # Target.kill() sends SIGKILL and does not wait for the process to be gone (it is not
        # its child): the connect is refused (ollama's ConnectionError), or accepted by the
        # dying server's listening socket and then reset (httpx.ReadError, unmapped)
        with pytest.raises((ConnectionError, httpx.ReadError)):
            generate(c)
        with pytest.raises(ConnectionError, match="Failed to connect to Ollama"):
            generate(c)  # gone for good: refused
    assert proc.wait(5.0) == -9  # SIGKILLed
    assert (run.calls("daemon.process"), run.injected("daemon.process")) == (3, 1)


def test_async_client_meets_the_same_request_faults(server: FakeOllama) -> None:
    async def main() -> list[object]:
        seen: list[object] = []
        async with ollama.AsyncClient(host=server.url) as c:
            for _ in range(4):
                try:
                    seen.append((await c.generate(MODEL, "Hi")).response)
                except ollama.ResponseError as exc:
                    seen.append((ollama.ResponseError, exc.status_code))
                except ConnectionError as exc:
                    seen.append(type(exc))
        return seen

    spec = "daemon.request=@1refuse->@2ratelimit(retry_after=10ms)->@3status(503)"
    with faults.inject(spec, daemon=Target(server.url)) as run:
        assert asyncio.run(main()) == [
            builtins.ConnectionError,
            (ollama.ResponseError, 429),
            (ollama.ResponseError, 503),
            TEXT,
        ]
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (4, 3)
