"""The daemon.* sites reach ``requests`` and plain urllib3, against the real daemon.

Each fault must look to the client exactly like the real failure: the exception requests or
urllib3 really raise for it (refusals come from the kernel, a killed daemon is really
SIGKILLed, a paused one SIGSTOPped), the status and JSON body of an error answer, the part
of a stream read before it broke; the app's own urllib3 ``Retry`` reacts as it would. Hangs,
latency and ``Retry`` backoff run on a VirtualClock; the tests that need real time say so
in their names.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from typing import TYPE_CHECKING, Any

import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

import faults
from faults.proxy import FaultProxy
from pytest_resilience.backends.daemon import DaemonProcess, ServerOptions
from pytest_resilience.core.cancel import deadline
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import DeadlineExceeded, HangDetected
from pytest_resilience.core.events import FaultInjected

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from pathlib import Path

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

URLOPEN = vars(urllib3.HTTPConnectionPool)["urlopen"]
PROMPT = "Once upon a time"
COMPLETIONS = "/v1/completions"
X = urllib3.exceptions


def body(*, stream: bool, max_tokens: int = 24) -> dict[str, Any]:
    return {
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "seed": 0,
        "stream": stream,
    }


def texts(lines: Iterable[bytes], into: list[str]) -> None:
    """Append the text of each SSE chunk among ``lines`` to ``into`` (as they are read)."""
    for line in lines:
        data = line.strip()
        if data.startswith(b"data: ") and data != b"data: [DONE]":
            into.append(json.loads(data[6:])["choices"][0]["text"])


def paused(daemon: DaemonProcess) -> bool:
    return daemon.paused  # a call: mypy would keep an asserted attribute narrowed


def data_lines(lines: Iterable[bytes]) -> list[bytes]:
    return [line.strip()[6:] for line in lines if line.strip().startswith(b"data: ")]


@pytest.fixture(autouse=True)
def _restored() -> Iterator[None]:
    yield
    assert vars(urllib3.HTTPConnectionPool)["urlopen"] is URLOPEN
    assert "urlopen" not in vars(urllib3.HTTPSConnectionPool)


@pytest.fixture(scope="module")
def shared_daemon(tiny_model_path: Path) -> Iterator[DaemonProcess]:
    """One daemon for the tests that leave it running."""
    with DaemonProcess(tiny_model_path, ServerOptions(n_ctx=1024)) as d:
        yield d


@pytest.fixture
def spawn(tiny_model_path: Path) -> Iterator[Callable[[], DaemonProcess]]:
    """A daemon of one's own, to kill, pause or restart; closed after the test."""
    made: list[DaemonProcess] = []

    def start() -> DaemonProcess:
        made.append(DaemonProcess(tiny_model_path, ServerOptions(n_ctx=1024)))
        return made[-1].start()

    yield start
    for d in made:
        d.close()


def close_pools(manager: urllib3.PoolManager) -> None:
    """Close the connections of ``manager``'s pools now. urllib3 2 closes a pool's
    connections when the pool is garbage collected (``clear()`` only forgets it), and a caught
    exception's traceback keeps the pool alive: the leak check would see its sockets."""
    for key in manager.pools.keys():  # noqa: SIM118 - the container cannot be iterated
        pool = manager.pools.get(key)
        if pool is not None:
            pool.close()
    manager.clear()


@contextlib.contextmanager
def new_session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        try:
            yield s
        finally:
            for adapter in s.adapters.values():
                if isinstance(adapter, HTTPAdapter):
                    close_pools(adapter.poolmanager)


@contextlib.contextmanager
def new_pool_manager() -> Iterator[urllib3.PoolManager]:
    manager = urllib3.PoolManager()
    try:
        yield manager
    finally:
        close_pools(manager)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with new_session() as s:
        yield s


@pytest.fixture
def pool_manager() -> Iterator[urllib3.PoolManager]:
    with new_pool_manager() as manager:
        yield manager


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture(scope="module")
def baseline(shared_daemon: DaemonProcess) -> dict[str, Any]:
    """What the daemon answers without faults: the text, and the stream's chunks."""
    url = shared_daemon.base_url + COMPLETIONS
    with new_session() as s:
        answer = s.post(url, json=body(stream=False), timeout=30)
        chunks: list[str] = []
        with s.post(url, json=body(stream=True), stream=True, timeout=30) as streamed:
            texts(streamed.iter_lines(), chunks)
    assert len(chunks) > 4
    return {"text": answer.json()["choices"][0]["text"], "chunks": chunks}


class _Other(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        answer = b'{"server": "other"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def other_server() -> Iterator[str]:
    """Another HTTP server on 127.0.0.1 (the daemon's host, another port)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Other)
    thread = threading.Thread(target=server.serve_forever, name="other-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def post(s: requests.Session, daemon: DaemonProcess, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", 30)
    return s.post(daemon.base_url + COMPLETIONS, json=body(stream=False), **kwargs)


def text_of(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


def retrying(s: requests.Session, retry: Retry) -> requests.Session:
    """The app's own urllib3 Retry, mounted as an app mounts it."""
    previous = s.adapters["http://"]
    s.mount("http://", HTTPAdapter(max_retries=retry))
    assert isinstance(previous, HTTPAdapter)
    close_pools(previous.poolmanager)
    return s


# ============================================================== requests: daemon.request


def test_refuse_is_a_real_refusal_by_the_kernel(
    shared_daemon: DaemonProcess,
    session: requests.Session,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    with faults.inject("daemon.request=@1refuse", daemon=shared_daemon, clock=vclock) as run:
        with pytest.raises(requests.exceptions.ConnectionError) as refused:
            post(session, shared_daemon)
        assert text_of(post(session, shared_daemon)) == baseline["text"]
    spent = refused.value.args[0]
    assert isinstance(spent, X.MaxRetryError)  # requests' Retry(0, read=False), spent
    assert type(spent.reason) is X.NewConnectionError
    assert isinstance(spent.reason.__cause__, ConnectionRefusedError)
    assert f"port={shared_daemon.port}): Failed to establish a new connection" in str(spent.reason)
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (2, 1)


def test_lost_is_the_connection_aborted_without_an_answer(
    shared_daemon: DaemonProcess, session: requests.Session, vclock: VirtualClock
) -> None:
    with (
        faults.inject("daemon.request=@1lost", daemon=shared_daemon, clock=vclock) as run,
        pytest.raises(requests.exceptions.ConnectionError) as lost,
    ):
        post(session, shared_daemon)
    aborted = lost.value.args[0]
    assert type(aborted) is X.ProtocolError
    assert aborted.args[0] == "Connection aborted."
    assert repr(aborted.args[1]) == (
        "RemoteDisconnected('Remote end closed connection without response')"
    )
    assert run.injected("daemon.request") == 1


def test_timeout_hangs_until_the_read_timeout_then_reads_timed_out(
    shared_daemon: DaemonProcess, session: requests.Session, vclock: VirtualClock
) -> None:
    with faults.inject(
        "daemon.request=@1timeout(30s)->@2timeout(2s)", daemon=shared_daemon, clock=vclock
    ):
        with pytest.raises(requests.exceptions.ReadTimeout) as first:
            post(session, shared_daemon, timeout=(3.0, 5.0))
        assert vclock.now() == pytest.approx(5.0)
        with pytest.raises(requests.exceptions.ReadTimeout):
            post(session, shared_daemon, timeout=(3.0, 5.0))
        assert vclock.now() == pytest.approx(7.0)
    error = first.value.args[0]
    assert type(error) is X.ReadTimeoutError
    assert str(error).endswith("Read timed out. (read timeout=5.0)")


def test_latency_delays_the_real_answer_and_a_longer_one_times_out(
    shared_daemon: DaemonProcess,
    session: requests.Session,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    spec = "daemon.request=@1latency(2s)->@2latency(1m)"
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        assert text_of(post(session, shared_daemon, timeout=10)) == baseline["text"]
        assert vclock.now() == pytest.approx(2.0)
        with pytest.raises(requests.exceptions.ReadTimeout):
            post(session, shared_daemon, timeout=10)
    assert vclock.now() == pytest.approx(12.0)
    assert run.injected("daemon.request") == 2


def test_ratelimit_and_status_are_error_answers_with_a_json_body(
    shared_daemon: DaemonProcess,
    session: requests.Session,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    spec = "daemon.request=@1ratelimit(retry_after=7s)->@2status(500)->@3status(503)"
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        limited, failed, busy = (post(session, shared_daemon) for _ in range(3))
        assert text_of(post(session, shared_daemon)) == baseline["text"]
    assert (limited.status_code, limited.reason) == (429, "Too Many Requests")
    assert limited.headers["retry-after"] == "7"
    assert limited.headers["content-type"] == "application/json"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert (failed.status_code, failed.json()["error"]["type"]) == (500, "server_error")
    assert "retry-after" not in failed.headers
    assert (busy.status_code, busy.reason) == (503, "Service Unavailable")
    with pytest.raises(requests.exceptions.HTTPError, match="503 Server Error"):
        busy.raise_for_status()
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (4, 3)
    assert vclock.now() == 0.0  # requests' own Retry does not retry a status


def test_raise_raises_where_the_request_is_sent(
    shared_daemon: DaemonProcess, session: requests.Session, vclock: VirtualClock
) -> None:
    spec = 'daemon.request=@1raise(RuntimeError, "boom")->@2raise(OSError, "down")'
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        with pytest.raises(RuntimeError, match="boom"):
            post(session, shared_daemon)
        with pytest.raises(requests.exceptions.ConnectionError) as mapped:
            post(session, shared_daemon)  # requests makes an OSError from urllib3 a ConnectionError
    assert str(mapped.value.args[0]) == "down"
    assert run.injected("daemon.request") == 2


def test_a_fault_on_the_second_request_only(
    shared_daemon: DaemonProcess,
    session: requests.Session,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    with faults.inject("daemon.request=@2status(503)", daemon=shared_daemon, clock=vclock) as run:
        statuses = [post(session, shared_daemon).status_code for _ in range(3)]
    assert statuses == [200, 503, 200]
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (3, 1)
    assert [e.call for e in run.journal.events(FaultInjected)] == [2]


def test_traffic_to_other_servers_is_untouched(
    shared_daemon: DaemonProcess, session: requests.Session, other_server: str
) -> None:
    with faults.inject("daemon.request=refuse;daemon.stream=corrupt", daemon=shared_daemon) as run:
        answers = [session.post(other_server, json={}, timeout=10).json() for _ in range(2)]
        assert run.calls("daemon.request") == 0
        assert "requests went to other servers (127.0.0.1:" in str(run.unreached()[0])
        with pytest.raises(requests.exceptions.ConnectionError):
            post(session, shared_daemon)
    assert answers == [{"server": "other"}] * 2
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (1, 1)
    assert run.calls("daemon.stream") == 0


# ================================================================= the app's own Retry


def test_the_apps_retry_retries_refusals_for_real(
    shared_daemon: DaemonProcess,
    session: requests.Session,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    retrying(session, Retry(total=2, backoff_factor=0))
    with faults.inject("daemon.request=2*refuse", daemon=shared_daemon, clock=vclock) as run:
        assert text_of(post(session, shared_daemon)) == baseline["text"]
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (3, 2)
    with (
        faults.inject("daemon.request=3*refuse", daemon=shared_daemon, clock=vclock) as spent,
        pytest.raises(requests.exceptions.ConnectionError) as refused,
    ):
        post(session, shared_daemon)
    assert isinstance(refused.value.args[0], X.MaxRetryError)
    assert isinstance(refused.value.args[0].reason, X.NewConnectionError)
    assert (spent.calls("daemon.request"), spent.injected("daemon.request")) == (3, 3)


def test_the_apps_retry_retries_a_lost_request_only_if_it_may_retry_the_method(
    shared_daemon: DaemonProcess,
    session: requests.Session,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    retrying(session, Retry(total=2, backoff_factor=0))  # POST is not retried on read errors
    with (
        faults.inject("daemon.request=2*lost", daemon=shared_daemon, clock=vclock) as run,
        pytest.raises(requests.exceptions.ConnectionError) as lost,
    ):
        post(session, shared_daemon)
    assert isinstance(lost.value.args[0], X.ProtocolError)  # re-raised as is, as urllib3 does
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (1, 1)
    retrying(session, Retry(total=2, backoff_factor=0, allowed_methods=None))
    with faults.inject("daemon.request=2*lost", daemon=shared_daemon, clock=vclock) as again:
        assert text_of(post(session, shared_daemon)) == baseline["text"]
    assert (again.calls("daemon.request"), again.injected("daemon.request")) == (3, 2)


def test_the_apps_retry_waits_on_the_injectors_clock(
    shared_daemon: DaemonProcess,
    session: requests.Session,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    retrying(
        session,
        Retry(total=4, backoff_factor=1, status_forcelist=[429, 503], allowed_methods=None),
    )
    spec = "daemon.request=@1status(503)->@2timeout(30s)->@3ratelimit(retry_after=7s)"
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        assert text_of(post(session, shared_daemon, timeout=5)) == baseline["text"]
    # backoff 0 after the 1st failure; the 5 s read timeout, then a backoff of 2 s; the
    # 429's Retry-After of 7 s
    assert vclock.now() == pytest.approx(0 + 5 + 2 + 7)
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (4, 3)


def test_a_retry_spent_on_error_statuses_is_requests_retry_error(
    shared_daemon: DaemonProcess, session: requests.Session, vclock: VirtualClock
) -> None:
    retrying(session, Retry(total=2, backoff_factor=0, status_forcelist=[503]))
    with (
        faults.inject("daemon.request=3*status(503)", daemon=shared_daemon, clock=vclock) as run,
        pytest.raises(requests.exceptions.RetryError, match="too many 503 error responses"),
    ):
        session.get(shared_daemon.base_url + "/v1/models", timeout=10)
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (3, 3)


# =============================================================== requests: daemon.stream


def test_stream_stall_shorter_than_the_read_timeout_only_delays_it(
    shared_daemon: DaemonProcess,
    session: requests.Session,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    spec = "daemon.stream=@1stall(after=3, for=2s)"
    with (
        faults.inject(spec, daemon=shared_daemon, clock=vclock) as run,
        post_stream(session, shared_daemon) as r,
    ):
        chunks: list[str] = []
        texts(r.iter_lines(), chunks)
    assert chunks == baseline["chunks"]
    assert vclock.now() == pytest.approx(2.0)
    assert run.injected("daemon.stream") == 1


def test_stream_stall_past_the_read_timeout_is_a_read_timeout(
    shared_daemon: DaemonProcess,
    session: requests.Session,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    spec = "daemon.stream=@1stall(after=3, for=30s)"
    chunks: list[str] = []
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        with (
            post_stream(session, shared_daemon, timeout=(3, 10)) as r,
            pytest.raises(requests.exceptions.ConnectionError) as stalled,
        ):
            texts(r.iter_lines(), chunks)
        assert (
            text_of(post(session, shared_daemon)) == baseline["text"]
        )  # the connection was dropped
    assert type(stalled.value.args[0]) is X.ReadTimeoutError  # as requests' iter_content says
    assert chunks == baseline["chunks"][:3]
    assert vclock.now() == pytest.approx(10.0)
    assert run.injected("daemon.stream") == 1


def test_stream_stall_under_a_deadline_is_the_deadlines_own_error(
    shared_daemon: DaemonProcess,
    session: requests.Session,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    chunks: list[str] = []
    spec = "daemon.stream=@1stall(after=3)->@2stall(after=1)"
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        with (
            post_stream(session, shared_daemon, timeout=None) as r,
            pytest.raises(DeadlineExceeded),
            deadline(5.0, clock=vclock),
        ):
            texts(r.iter_lines(), chunks)
        assert chunks == baseline["chunks"][:3]
        with post_stream(session, shared_daemon, timeout=None) as r, pytest.raises(HangDetected):
            texts(r.iter_lines(), [])  # nothing guards it: it would hang forever
    assert vclock.now() == pytest.approx(5.0)
    assert run.injected("daemon.stream") == 2


def test_stream_truncate_ends_cleanly_after_done(
    shared_daemon: DaemonProcess,
    session: requests.Session,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    with faults.inject(
        "daemon.stream=@1truncate(after=2)", daemon=shared_daemon, clock=vclock
    ) as run:
        with post_stream(session, shared_daemon) as r:
            lines = list(r.iter_lines())
        chunks: list[str] = []
        texts(lines, chunks)
        assert [line for line in lines if line][-1] == b"data: [DONE]"
        again: list[str] = []
        with post_stream(session, shared_daemon) as r:  # the cut connection is not reused
            texts(r.iter_lines(), again)
    assert chunks == baseline["chunks"][:2]
    assert again == baseline["chunks"]
    assert (run.calls("daemon.stream"), run.injected("daemon.stream")) == (2, 1)


def test_stream_corrupt_makes_every_chunk_invalid_json(
    shared_daemon: DaemonProcess,
    session: requests.Session,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    with faults.inject("daemon.stream=@1corrupt", daemon=shared_daemon, clock=vclock) as run:
        with post_stream(session, shared_daemon) as r:
            data = data_lines(r.iter_lines())
        assert (
            text_of(post(session, shared_daemon)) == baseline["text"]
        )  # not a stream: not counted
    assert data[-1] == b"[DONE]"
    assert len(data) - 1 == len(baseline["chunks"])
    for chunk in data[:-1]:
        with pytest.raises(json.JSONDecodeError):
            json.loads(chunk)
    assert (run.calls("daemon.stream"), run.injected("daemon.stream")) == (1, 1)


def test_request_lost_after_n_chunks_is_a_connection_reset_mid_stream(
    shared_daemon: DaemonProcess,
    session: requests.Session,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    chunks: list[str] = []
    spec = "daemon.request=@1lost(after=3)->@2lost(after=1)"
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        with (
            post_stream(session, shared_daemon) as r,
            pytest.raises(requests.exceptions.ChunkedEncodingError) as reset,
        ):
            texts(r.iter_lines(), chunks)
        with pytest.raises(requests.exceptions.ChunkedEncodingError) as plain:
            post(session, shared_daemon)  # not a stream: the body is reset as it is read
    for error in (reset.value, plain.value):
        assert type(error.args[0]) is X.ProtocolError
        assert str(error.args[0].args[0]) == (
            "Connection broken: ConnectionResetError(104, 'Connection reset by peer')"
        )
    assert chunks == baseline["chunks"][:3]
    assert shared_daemon.alive
    assert run.injected("daemon.request") == 2


def test_stream_lost_is_the_same_as_a_real_sigkill_mid_stream(
    spawn: Callable[[], DaemonProcess], baseline: dict[str, Any]
) -> None:
    own = spawn()
    url = own.base_url + COMPLETIONS
    long = body(stream=True, max_tokens=400)
    simulated: list[str] = []
    with (
        faults.inject("daemon.stream=@1lost(after=3)", daemon=own) as run,
        new_session() as s,
        s.post(url, json=long, stream=True, timeout=30) as r,
        pytest.raises(requests.exceptions.ChunkedEncodingError) as injected,
    ):
        texts(r.iter_lines(), simulated)
    assert not own.alive
    assert simulated == baseline["chunks"][:3]
    assert run.injected("daemon.stream") == 1

    own.start()
    real: list[str] = []

    def read_and_kill(lines: Iterable[bytes]) -> None:
        for line in lines:
            texts([line], real)
            if len(real) == 3 and not line.strip():  # the third event is complete
                own.kill()

    with (
        new_session() as s,
        s.post(url, json=long, stream=True, timeout=30) as r,
        pytest.raises(requests.exceptions.ChunkedEncodingError) as killed,
    ):
        read_and_kill(r.iter_lines())
    assert type(killed.value.args[0]) is type(injected.value.args[0]) is X.ProtocolError
    assert str(injected.value) == str(killed.value) == "Response ended prematurely"
    assert real[:3] == simulated


# ============================================================== requests: daemon.process


def test_process_lost_kills_the_daemon_before_the_request(
    spawn: Callable[[], DaemonProcess], baseline: dict[str, Any]
) -> None:
    own = spawn()
    with new_session() as s, faults.inject("daemon.process=@2lost", daemon=own) as run:
        assert text_of(post(s, own)) == baseline["text"]
        with pytest.raises(requests.exceptions.ConnectionError) as refused:
            post(s, own)
    assert isinstance(refused.value.args[0].reason, X.NewConnectionError)  # a real refusal
    assert not own.alive
    assert (run.calls("daemon.process"), run.injected("daemon.process")) == (2, 1)


def test_process_lost_after_n_chunks_kills_it_mid_stream(
    spawn: Callable[[], DaemonProcess], baseline: dict[str, Any]
) -> None:
    own = spawn()
    chunks: list[str] = []
    with (
        new_session() as s,
        faults.inject("daemon.process=lost(after=3)", daemon=own) as run,
        post_stream(s, own) as r,
        pytest.raises(requests.exceptions.ChunkedEncodingError),
    ):
        texts(r.iter_lines(), chunks)
    assert chunks == baseline["chunks"][:3]
    assert not own.alive
    assert run.injected("daemon.process") == 1


def test_process_pause_makes_the_read_timeout_fire_real_time(
    spawn: Callable[[], DaemonProcess], baseline: dict[str, Any], vclock: VirtualClock
) -> None:
    own = spawn()
    spec = "daemon.process=@1pause(10s)"
    with new_session() as s, faults.inject(spec, daemon=own, clock=vclock) as run:
        with pytest.raises(requests.exceptions.ReadTimeout):
            post(s, own, timeout=(5.0, 0.3))  # SIGSTOPped: nothing answers, in real time
        assert paused(own)
        vclock.advance(10.0)
        assert text_of(post(s, own)) == baseline["text"]  # resumed first: the pause is over
    assert not paused(own)
    assert (run.calls("daemon.process"), run.injected("daemon.process")) == (2, 1)


def test_process_restart_answers_from_a_new_process(
    spawn: Callable[[], DaemonProcess], baseline: dict[str, Any]
) -> None:
    own = spawn()
    first = own.pid
    with new_session() as s, faults.inject("daemon.process=@2restart", daemon=own) as run:
        assert text_of(post(s, own)) == baseline["text"]
        assert text_of(post(s, own)) == baseline["text"]
    assert own.pid not in (None, first)
    assert run.injected("daemon.process") == 1


def test_lost_through_the_fault_proxy_is_a_real_reset(
    shared_daemon: DaemonProcess, session: requests.Session, baseline: dict[str, Any]
) -> None:
    assert shared_daemon.port is not None
    with FaultProxy(upstream=(shared_daemon.host, shared_daemon.port)) as proxy:
        url = proxy.url + COMPLETIONS
        with faults.inject("daemon.request=@2lost", proxy=proxy) as run:
            assert text_of(session.post(url, json=body(stream=False), timeout=30))
            with pytest.raises(requests.exceptions.ConnectionError) as reset:
                session.post(url, json=body(stream=False), timeout=30)
            assert text_of(session.post(url, json=body(stream=False), timeout=30))
        assert proxy.stats.resets >= 1
        assert proxy.toxics == ()
    assert isinstance(reset.value.args[0], X.ProtocolError)
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (3, 1)


# ====================================================================== plain urllib3


def u3_post(manager: urllib3.PoolManager, daemon: DaemonProcess, **kwargs: Any) -> Any:
    stream = kwargs.pop("stream", False)
    return manager.request(
        "POST", daemon.base_url + COMPLETIONS, json=body(stream=stream), **kwargs
    )


def test_urllib3_request_faults(
    shared_daemon: DaemonProcess,
    pool_manager: urllib3.PoolManager,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    spec = "daemon.request=@1lost->@2timeout(30s)->@3status(500)->@4raise(ValueError)"
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        with pytest.raises(X.ProtocolError, match="Connection aborted"):
            u3_post(
                pool_manager, shared_daemon
            )  # POST: urllib3's default Retry(3) does not retry it
        with pytest.raises(X.ReadTimeoutError, match=r"read timeout=4\.0"):
            u3_post(pool_manager, shared_daemon, timeout=urllib3.Timeout(connect=1.0, read=4.0))
        failed = u3_post(pool_manager, shared_daemon)
        with pytest.raises(ValueError, match=r"daemon\.request"):
            u3_post(pool_manager, shared_daemon)
        answer = u3_post(pool_manager, shared_daemon)
    assert (failed.status, failed.json()["error"]["type"]) == (500, "server_error")
    assert answer.json()["choices"][0]["text"] == baseline["text"]
    assert vclock.now() == pytest.approx(4.0)
    assert run.injected("daemon.request") == 4


def test_urllib3s_default_retry_retries_refusals(
    shared_daemon: DaemonProcess,
    pool_manager: urllib3.PoolManager,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    with faults.inject("daemon.request=3*refuse", daemon=shared_daemon, clock=vclock) as run:
        answer = u3_post(pool_manager, shared_daemon)  # Retry(3): the 4th attempt gets through
    assert answer.json()["choices"][0]["text"] == baseline["text"]
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (4, 3)
    with (
        faults.inject("daemon.request=4*refuse", daemon=shared_daemon, clock=vclock) as spent,
        pytest.raises(X.MaxRetryError) as refused,
    ):
        u3_post(pool_manager, shared_daemon)
    assert isinstance(refused.value.reason, X.NewConnectionError)
    assert spent.injected("daemon.request") == 4


def test_a_pool_without_retries_raises_the_refusal_itself(
    shared_daemon: DaemonProcess, baseline: dict[str, Any], vclock: VirtualClock
) -> None:
    assert shared_daemon.port is not None
    with (
        urllib3.HTTPConnectionPool(shared_daemon.host, shared_daemon.port, retries=False) as pool,
        faults.inject("daemon.request=@1refuse", daemon=shared_daemon, clock=vclock) as run,
    ):
        with pytest.raises(X.NewConnectionError):
            pool.urlopen("GET", "/v1/models")
        assert pool.urlopen("GET", "/v1/models").json()["data"]
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (2, 1)


def test_urllib3_streams_meet_the_stream_faults(
    shared_daemon: DaemonProcess,
    pool_manager: urllib3.PoolManager,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    spec = "daemon.stream=@1truncate(after=2)->@2corrupt->@3stall(after=2, for=1m)"
    chunks: list[str] = []
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        with u3_post(pool_manager, shared_daemon, stream=True, preload_content=False) as r:
            texts(r, chunks)  # iterating an HTTPResponse: its lines
        assert chunks == baseline["chunks"][:2]
        with u3_post(pool_manager, shared_daemon, stream=True, preload_content=False) as r:
            corrupt = data_lines(b"".join(r.stream(64)).splitlines())
        assert len(corrupt) - 1 == len(baseline["chunks"])
        with pytest.raises(json.JSONDecodeError):
            json.loads(corrupt[0])
        with (
            u3_post(
                pool_manager, shared_daemon, stream=True, preload_content=False, timeout=5.0
            ) as r,
            pytest.raises(X.ReadTimeoutError),
        ):
            r.read()
    assert vclock.now() == pytest.approx(5.0)
    assert run.injected("daemon.stream") == 3


def test_a_preloaded_stream_is_read_with_the_faults_applied(
    shared_daemon: DaemonProcess,
    pool_manager: urllib3.PoolManager,
    baseline: dict[str, Any],
    vclock: VirtualClock,
) -> None:
    spec = "daemon.stream=@1truncate(after=3);daemon.request=@2lost(after=2)"
    chunks: list[str] = []
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        texts(u3_post(pool_manager, shared_daemon, stream=True).data.splitlines(), chunks)
        with pytest.raises(X.ProtocolError, match="Connection reset by peer"):
            u3_post(pool_manager, shared_daemon, stream=True)  # read within urlopen, as preloaded
    assert chunks == baseline["chunks"][:3]
    assert run.injected("daemon.stream") == run.injected("daemon.request") == 1


def test_urllib3_process_lost_after_n_chunks_reads_the_real_end(
    spawn: Callable[[], DaemonProcess], baseline: dict[str, Any]
) -> None:
    own = spawn()
    chunks: list[str] = []
    with (
        new_pool_manager() as manager,
        faults.inject("daemon.process=lost(after=2)", daemon=own) as run,
        u3_post(manager, own, stream=True, preload_content=False) as r,
        pytest.raises(X.ProtocolError, match="Response ended prematurely"),
    ):
        texts(r, chunks)
    assert chunks == baseline["chunks"][:2]
    assert not own.alive
    assert run.injected("daemon.process") == 1


def test_the_module_level_urllib3_request_is_reached(
    shared_daemon: DaemonProcess, vclock: VirtualClock
) -> None:
    url = shared_daemon.base_url + "/v1/models"
    close = {"Connection": "close"}  # leaves no connection in urllib3's module-level pool
    with faults.inject(
        "daemon.request=@1ratelimit(retry_after=1s)", daemon=shared_daemon, clock=vclock
    ):
        limited = urllib3.request("GET", url, headers=close, retries=False)
        assert urllib3.request("GET", url, headers=close).status == 200
    assert (limited.status, limited.headers["retry-after"]) == (429, "1")


def post_stream(
    s: requests.Session, daemon: DaemonProcess, *, timeout: Any = 30
) -> requests.Response:
    url = daemon.base_url + COMPLETIONS
    return s.post(url, json=body(stream=True), stream=True, timeout=timeout)
