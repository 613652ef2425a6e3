"""The daemon.* sites reach aiohttp: each fault, against a real ``llama_cpp.server`` child
process, is what aiohttp itself raises or returns for the real failure.

Every request runs in ``asyncio.run`` on a fresh ``ClientSession`` (closed before the test
ends) unless a test says otherwise; injected waits run on a VirtualClock, so a 30 s timeout
costs nothing. A daemon that is killed, paused or restarted is the test's own. The tests
that need real time say so in their names.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import helpers, http_exceptions, streams, web

import faults
from pytest_resilience.backends.daemon import DaemonProcess, ServerOptions
from pytest_resilience.core.clock import VirtualClock

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

ORIGINAL = vars(aiohttp.ClientSession)["_request"]
COMPLETIONS = "/v1/completions"
BODY: dict[str, Any] = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0.0}
NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None, connect=None, sock_connect=None)

# ---------------------------------------------------------------------------- helpers


def _texts(raw: bytes) -> list[str]:
    """The text of each chunk of an SSE completion stream (up to ``data: [DONE]``)."""
    found = []
    for line in raw.splitlines():
        if not line.startswith(b"data: "):
            continue
        data = line[len(b"data: ") :]
        if data.strip() == b"[DONE]":
            break
        found.append(json.loads(data)["choices"][0]["text"])
    return found


async def _read_lines(resp: aiohttp.ClientResponse, got: list[bytes]) -> None:
    async for line in resp.content:
        got.append(line)  # noqa: PERF401 - one by one: a failure keeps the partial


async def _read_chunked(resp: aiohttp.ClientResponse, got: list[bytes]) -> None:
    async for chunk in resp.content.iter_chunked(7):
        got.append(chunk)  # noqa: PERF401 - one by one: a failure keeps the partial


async def _read_any(resp: aiohttp.ClientResponse, got: list[bytes]) -> None:
    async for chunk in resp.content.iter_any():
        got.append(chunk)  # noqa: PERF401 - one by one: a failure keeps the partial


async def _read_chunks(resp: aiohttp.ClientResponse, got: list[bytes]) -> None:
    async for chunk, _ in resp.content.iter_chunks():
        got.append(chunk)


async def _readline(resp: aiohttp.ClientResponse, got: list[bytes]) -> None:
    while line := await resp.content.readline():
        got.append(line)


async def _content_read(resp: aiohttp.ClientResponse, got: list[bytes]) -> None:
    got.append(await resp.content.read())


async def _text(resp: aiohttp.ClientResponse, got: list[bytes]) -> None:
    got.append((await resp.text()).encode())


async def _resp_read(resp: aiohttp.ClientResponse, got: list[bytes]) -> None:
    got.append(await resp.read())


READERS = {
    "async-for-lines": _read_lines,
    "iter_chunked": _read_chunked,
    "iter_any": _read_any,
    "iter_chunks": _read_chunks,
    "readline": _readline,
    "content.read": _content_read,
    "resp.text": _text,
    "resp.read": _resp_read,
}
# the readers that hand over what they got chunk by chunk, so a failure shows the partial
INCREMENTAL = ["async-for-lines", "iter_chunked", "iter_any", "iter_chunks", "readline"]


async def _post(
    base_url: str,
    *,
    stream: bool = False,
    timeout: aiohttp.ClientTimeout | None = None,
    got: list[bytes] | None = None,
    reader: Callable[[aiohttp.ClientResponse, list[bytes]], Awaitable[None]] = _read_lines,
) -> tuple[int, bytes]:
    """POST a completion on a session of its own: the status and the body as read."""
    got = [] if got is None else got
    own = aiohttp.ClientSession() if timeout is None else aiohttp.ClientSession(timeout=timeout)
    async with (
        own as session,
        session.post(base_url + COMPLETIONS, json={**BODY, "stream": stream}) as resp,
    ):
        await reader(resp, got)
        return resp.status, b"".join(got)


def _alive(daemon: DaemonProcess) -> bool:
    return daemon.alive


def _paused(daemon: DaemonProcess) -> bool:
    return daemon.paused


def _restored() -> bool:
    return vars(aiohttp.ClientSession)["_request"] is ORIGINAL


@pytest.fixture(autouse=True)
def _hook_restored() -> Iterator[None]:
    yield
    assert _restored()


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


@pytest.fixture(scope="module")
def baseline(shared_daemon: DaemonProcess) -> dict[str, Any]:
    """What the daemon answers with no fault: the whole text, and the streamed chunks."""
    _, whole = asyncio.run(_post(shared_daemon.base_url))
    _, streamed = asyncio.run(_post(shared_daemon.base_url, stream=True))
    return {"text": json.loads(whole)["choices"][0]["text"], "chunks": _texts(streamed)}


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock()


# ---------------------------------------------------------------------- the hook itself


def test_the_aiohttp_internals_the_hook_relies_on_are_there() -> None:
    """Fails loudly when aiohttp moves what the hook patches or reads."""
    request = inspect.signature(ORIGINAL).parameters
    assert {"method", "str_or_url", "middlewares", "timeout"} <= set(request)
    assert request["timeout"].default is helpers.sentinel
    assert "_middlewares" in aiohttp.ClientSession.ATTRS
    wait = inspect.signature(aiohttp.StreamReader._wait)
    assert list(wait.parameters) == ["self", "func_name"]
    assert {"_timer", "_eof", "_http_chunk_splits"} <= set(aiohttp.StreamReader.__slots__)
    assert issubclass(streams.EmptyStreamReader, aiohttp.StreamReader)
    assert issubclass(http_exceptions.TransferEncodingError, Exception)
    assert "_request_info" in inspect.getsource(aiohttp.ClientResponse.__init__)
    assert "_conn_key" in inspect.getsource(aiohttp.ClientConnectorError)


def test_the_hook_is_installed_and_removed_with_the_injector(shared_daemon: DaemonProcess) -> None:
    injector = faults.inject("daemon.request=refuse", daemon=shared_daemon)
    with injector:
        assert not _restored()
        assert vars(aiohttp.ClientSession)["_request"].__wrapped__ is ORIGINAL
    assert _restored()
    with (
        pytest.raises(RuntimeError, match="boom"),
        faults.inject('daemon.request=raise(RuntimeError, "boom")', daemon=shared_daemon),
    ):
        asyncio.run(_post(shared_daemon.base_url))
    assert _restored()


# --------------------------------------------------------------------------- requests


def test_refuse_is_a_connection_the_kernel_really_refuses(
    shared_daemon: DaemonProcess, baseline: dict[str, Any]
) -> None:
    with faults.inject("daemon.request=@1refuse", daemon=shared_daemon) as run:
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            asyncio.run(_post(shared_daemon.base_url))
        status, body = asyncio.run(_post(shared_daemon.base_url))
    error = refused.value
    assert type(error) is aiohttp.ClientConnectorError
    assert isinstance(error.os_error, ConnectionRefusedError)
    assert (error.host, error.port) == (shared_daemon.host, shared_daemon.port)
    assert str(error).startswith(
        f"Cannot connect to host {shared_daemon.host}:{shared_daemon.port} "
    )
    assert (status, json.loads(body)["choices"][0]["text"]) == (200, baseline["text"])
    assert (run.injected("daemon.request"), run.calls("daemon.request")) == (1, 2)


def test_lost_is_a_server_disconnect_and_aiohttp_retries_a_get_once(
    shared_daemon: DaemonProcess,
) -> None:
    with (
        faults.inject("daemon.request=@1lost", daemon=shared_daemon) as run,
        pytest.raises(aiohttp.ServerDisconnectedError) as lost,
    ):
        asyncio.run(_post(shared_daemon.base_url))  # a POST is not retried
    assert type(lost.value) is aiohttp.ServerDisconnectedError
    assert str(lost.value) == "Server disconnected"
    assert (run.injected("daemon.request"), run.calls("daemon.request")) == (1, 1)

    async def models() -> int:
        async with aiohttp.ClientSession() as s, s.get(shared_daemon.base_url + "/v1/models") as r:
            await r.read()
            return r.status

    with faults.inject("daemon.request=@1lost", daemon=shared_daemon) as run:
        assert asyncio.run(models()) == 200  # aiohttp's own retry of an idempotent request
    assert (run.injected("daemon.request"), run.calls("daemon.request")) == (1, 2)


def test_lost_after_n_events_is_a_reset_connection_mid_stream(
    shared_daemon: DaemonProcess, baseline: dict[str, Any]
) -> None:
    got: list[bytes] = []
    with faults.inject("daemon.request=@1lost(after=3)", daemon=shared_daemon) as run:
        with pytest.raises(aiohttp.ClientPayloadError) as lost:
            asyncio.run(_post(shared_daemon.base_url, stream=True, got=got))
        status, again = asyncio.run(_post(shared_daemon.base_url, stream=True))
    assert type(lost.value) is aiohttp.ClientPayloadError
    assert str(lost.value) == (
        "Response payload is not completed: <TransferEncodingError: 400, message='Not enough "
        "data to satisfy transfer length header.'>. ConnectionResetError(104, 'Connection "
        "reset by peer')"
    )
    assert isinstance(lost.value.__cause__, http_exceptions.TransferEncodingError)
    assert _texts(b"".join(got)) == baseline["chunks"][:3]
    assert (status, _texts(again)) == (200, baseline["chunks"])
    assert _alive(shared_daemon)
    assert run.injected("daemon.request") == 1


def test_lost_after_n_on_an_answer_that_is_not_a_stream_resets_as_it_is_read(
    shared_daemon: DaemonProcess,
) -> None:
    async def main() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(shared_daemon.base_url + COMPLETIONS, json=BODY) as resp,
        ):
            assert resp.status == 200
            await resp.json()

    with (
        faults.inject("daemon.request=lost(after=2)", daemon=shared_daemon) as run,
        pytest.raises(aiohttp.ClientPayloadError, match="Connection reset by peer") as lost,
    ):
        asyncio.run(main())
    assert isinstance(lost.value.__cause__, http_exceptions.ContentLengthError)
    assert "received 0 of" in str(lost.value)
    assert run.injected("daemon.request") == 1


@pytest.mark.parametrize(
    ("timeout", "error", "waited"),
    [
        (aiohttp.ClientTimeout(sock_read=5), aiohttp.SocketTimeoutError, 5.0),
        (aiohttp.ClientTimeout(total=8), TimeoutError, 8.0),
        (aiohttp.ClientTimeout(total=8, sock_read=5), aiohttp.SocketTimeoutError, 5.0),
        (aiohttp.ClientTimeout(total=300), TimeoutError, 30.0),  # the fault's 30 s first
        (NO_TIMEOUT, aiohttp.SocketTimeoutError, 30.0),
    ],
    ids=["sock_read", "total", "sock_read-first", "fault-first", "no-client-timeout"],
)
def test_timeout_lasts_until_the_clients_own_timeout_then_raises_its_error(
    shared_daemon: DaemonProcess,
    vclock: VirtualClock,
    timeout: aiohttp.ClientTimeout,
    error: type[BaseException],
    waited: float,
) -> None:
    with (
        faults.inject("daemon.request=timeout(30s)", daemon=shared_daemon, clock=vclock) as run,
        pytest.raises(error) as caught,
    ):
        asyncio.run(_post(shared_daemon.base_url, timeout=timeout))
    assert type(caught.value) is error
    if error is aiohttp.SocketTimeoutError:
        assert str(caught.value) == "Timeout on reading data from socket"
    assert vclock.now() == pytest.approx(waited)
    assert run.injected("daemon.request") == 1


def test_a_timeout_given_to_the_request_itself_is_the_one_that_counts(
    shared_daemon: DaemonProcess, vclock: VirtualClock
) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
            timeout = aiohttp.ClientTimeout(sock_read=2)
            async with s.post(shared_daemon.base_url + COMPLETIONS, json=BODY, timeout=timeout):
                pass

    with (
        faults.inject("daemon.request=timeout", daemon=shared_daemon, clock=vclock) as run,
        pytest.raises(aiohttp.SocketTimeoutError),
    ):
        asyncio.run(main())
    assert vclock.now() == pytest.approx(2.0)
    assert run.injected("daemon.request") == 1


def test_latency_then_the_real_answer_unless_the_read_timeout_comes_first(
    shared_daemon: DaemonProcess, baseline: dict[str, Any], vclock: VirtualClock
) -> None:
    impatient = aiohttp.ClientTimeout(sock_read=5)
    spec = "daemon.request=@1latency(2s)->@2latency(10s)"
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        status, body = asyncio.run(_post(shared_daemon.base_url, timeout=impatient))
        assert (status, json.loads(body)["choices"][0]["text"]) == (200, baseline["text"])
        assert vclock.now() == pytest.approx(2.0)
        with pytest.raises(aiohttp.SocketTimeoutError):
            asyncio.run(_post(shared_daemon.base_url, timeout=impatient))
        assert vclock.now() == pytest.approx(7.0)
    assert run.injected("daemon.request") == 2


def test_ratelimit_and_status_are_real_responses_with_an_openai_error_body(
    shared_daemon: DaemonProcess, baseline: dict[str, Any]
) -> None:
    url = shared_daemon.base_url + COMPLETIONS

    async def main() -> list[Any]:
        seen: list[Any] = []
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.post(url, json=BODY) as resp:
                    body = await resp.json()
                    with pytest.raises(aiohttp.ClientResponseError) as failed:
                        resp.raise_for_status()
                    seen.append((resp.status, resp.headers.get("Retry-After"), body))
                    assert failed.value.status == resp.status
                    assert str(failed.value.request_info.url) == url
                    assert str(resp.url) == url
            async with session.post(url, json=BODY) as resp:
                seen.append((resp.status, (await resp.json())["choices"][0]["text"]))
        return seen

    spec = "daemon.request=@1ratelimit(retry_after=7s)->@2status(500)->@3status(503)"
    with faults.inject(spec, daemon=shared_daemon) as run:
        seen = asyncio.run(main())
    limited, failed, unavailable, normal = seen
    assert limited[:2] == (429, "7")
    assert limited[2]["error"]["type"] == "rate_limit_error"
    assert limited[2]["error"]["code"] == "rate_limit_exceeded"
    assert failed[:2] == (500, None)
    assert failed[2]["error"]["type"] == "server_error"
    assert unavailable[:2] == (503, None)
    assert "overloaded" in unavailable[2]["error"]["message"]
    assert normal == (200, baseline["text"])
    assert (run.injected("daemon.request"), run.calls("daemon.request")) == (3, 4)


def test_a_session_that_raises_for_status_raises_for_an_injected_429(
    shared_daemon: DaemonProcess,
) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession(raise_for_status=True) as session:
            await session.post(shared_daemon.base_url + COMPLETIONS, json=BODY)

    with (
        faults.inject("daemon.request=ratelimit(retry_after=2.5s)", daemon=shared_daemon) as run,
        pytest.raises(aiohttp.ClientResponseError) as limited,
    ):
        asyncio.run(main())
    assert limited.value.status == 429
    assert limited.value.headers is not None
    assert limited.value.headers["Retry-After"] == "2.5"
    assert run.injected("daemon.request") == 1


def test_raise_is_raised_where_aiohttp_raises_its_connection_errors(
    shared_daemon: DaemonProcess,
) -> None:
    spec = 'daemon.request=@1raise(RuntimeError, "boom")->@2raise(OSError, "no route")'
    with faults.inject(spec, daemon=shared_daemon) as run:
        with pytest.raises(RuntimeError, match="boom"):
            asyncio.run(_post(shared_daemon.base_url))
        with pytest.raises(aiohttp.ClientOSError, match="no route") as wrapped:
            asyncio.run(_post(shared_daemon.base_url))  # aiohttp wraps an OSError as its own
    assert type(wrapped.value.__cause__) is OSError
    assert run.injected("daemon.request") == 2


def test_a_fault_on_the_second_request_only(
    shared_daemon: DaemonProcess, baseline: dict[str, Any]
) -> None:
    async def main() -> list[int]:
        statuses = []
        async with aiohttp.ClientSession() as session:  # one session, kept-alive connection
            for _ in range(3):
                async with session.post(shared_daemon.base_url + COMPLETIONS, json=BODY) as resp:
                    await resp.read()
                    statuses.append(resp.status)
        return statuses

    with faults.inject("daemon.request=@2status(503)", daemon=shared_daemon) as run:
        assert asyncio.run(main()) == [200, 503, 200]
    assert (run.injected("daemon.request"), run.calls("daemon.request")) == (1, 3)
    assert [d.call for _, d in run.decisions] == [2]


def test_traffic_to_another_server_passes_untouched_and_uncounted(
    shared_daemon: DaemonProcess,
) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="other")

    async def main() -> list[object]:
        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            other = f"http://{host}:{port}/"
            seen: list[object] = []
            async with aiohttp.ClientSession() as session, session.get(other) as resp:
                seen.append(await resp.text())
            async with aiohttp.request("GET", other) as resp:
                seen.append(await resp.text())
            try:
                await _post(shared_daemon.base_url)
            except aiohttp.ClientConnectorError as exc:
                seen.append(type(exc))
            return seen
        finally:
            await runner.cleanup()

    with faults.inject("daemon.request=refuse", daemon=shared_daemon) as run:
        assert asyncio.run(main()) == ["other", "other", aiohttp.ClientConnectorError]
    assert (run.injected("daemon.request"), run.calls("daemon.request")) == (1, 1)


# ---------------------------------------------------------------------------- streams


@pytest.mark.parametrize("way", list(READERS))
def test_every_way_of_reading_meets_a_truncated_stream(
    shared_daemon: DaemonProcess, baseline: dict[str, Any], way: str
) -> None:
    with faults.inject("daemon.stream=truncate(after=2)", daemon=shared_daemon) as run:
        status, body = asyncio.run(_post(shared_daemon.base_url, stream=True, reader=READERS[way]))
    assert status == 200
    assert _texts(body) == baseline["chunks"][:2]
    assert body.endswith(b"data: [DONE]\n\n")
    assert run.injected("daemon.stream") == 1


@pytest.mark.parametrize("way", list(READERS))
def test_every_way_of_reading_meets_a_connection_lost_mid_stream(
    shared_daemon: DaemonProcess, baseline: dict[str, Any], way: str
) -> None:
    got: list[bytes] = []
    with faults.inject("daemon.request=lost(after=2)", daemon=shared_daemon) as run:
        with pytest.raises(aiohttp.ClientPayloadError, match="Connection reset by peer"):
            asyncio.run(_post(shared_daemon.base_url, stream=True, got=got, reader=READERS[way]))
        if way in INCREMENTAL:
            assert _texts(b"".join(got)) == baseline["chunks"][:2]
    assert run.injected("daemon.request") == 1


def test_truncate_counts_only_streamed_answers_and_corrupt_breaks_every_event(
    shared_daemon: DaemonProcess, baseline: dict[str, Any]
) -> None:
    with faults.inject("daemon.stream=@1truncate(after=1)->@2corrupt", daemon=shared_daemon) as run:
        _, whole = asyncio.run(_post(shared_daemon.base_url))  # not a stream: not counted
        _, cut = asyncio.run(_post(shared_daemon.base_url, stream=True))
        _, corrupt = asyncio.run(_post(shared_daemon.base_url, stream=True))
    assert json.loads(whole)["choices"][0]["text"] == baseline["text"]
    assert _texts(cut) == baseline["chunks"][:1]
    events = [line for line in corrupt.splitlines() if line.startswith(b"data: {")]
    assert len(events) == len(baseline["chunks"])
    for event in events:
        with pytest.raises(json.JSONDecodeError):
            json.loads(event[len(b"data: ") :])
    assert corrupt.endswith(b"data: [DONE]\n\n")
    assert (run.injected("daemon.stream"), run.calls("daemon.stream")) == (2, 2)


def test_a_stall_ends_at_the_clients_read_timeout_with_the_partial_stream(
    shared_daemon: DaemonProcess, baseline: dict[str, Any], vclock: VirtualClock
) -> None:
    got: list[bytes] = []
    guarded = aiohttp.ClientTimeout(total=300, sock_read=5)
    spec = "daemon.stream=@1stall(after=3, for=30s)->@2stall(after=3, for=2s)"
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        with pytest.raises(aiohttp.SocketTimeoutError, match="Timeout on reading data"):
            asyncio.run(_post(shared_daemon.base_url, stream=True, timeout=guarded, got=got))
        assert _texts(b"".join(got)) == baseline["chunks"][:3]
        assert vclock.now() == pytest.approx(5.0)
        _, whole = asyncio.run(_post(shared_daemon.base_url, stream=True, timeout=guarded))
        assert _texts(whole) == baseline["chunks"]  # a shorter stall is only late
        assert vclock.now() == pytest.approx(7.0)
    assert run.injected("daemon.stream") == 2


def test_a_stall_that_outlasts_the_total_timeout_is_a_timeout_error(
    shared_daemon: DaemonProcess, baseline: dict[str, Any], vclock: VirtualClock
) -> None:
    got: list[bytes] = []

    async def main() -> None:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(
                shared_daemon.base_url + COMPLETIONS, json={**BODY, "stream": True}
            ) as resp,
        ):
            await _read_lines(resp, got)
            pytest.fail("the stall should have ended the stream")

    with (
        faults.inject("daemon.stream=stall(after=2)", daemon=shared_daemon, clock=vclock) as run,
        pytest.raises(TimeoutError) as timed_out,
    ):
        asyncio.run(main())
    assert not isinstance(timed_out.value, aiohttp.ClientError)
    assert _texts(b"".join(got)) == baseline["chunks"][:2]
    assert vclock.now() == pytest.approx(10.0)
    assert run.injected("daemon.stream") == 1


def test_a_simulated_loss_mid_stream_is_what_a_real_sigkill_gives(
    spawn: Callable[[], DaemonProcess], baseline: dict[str, Any]
) -> None:
    """A daemon SIGKILLed by hand after three chunks, the same by ``daemon.stream=lost``, and
    a reset by ``daemon.request=lost``: the same aiohttp error, after the same partial."""
    real, injected = spawn(), spawn()

    async def kill_after_three(got: list[bytes]) -> None:
        async with (
            aiohttp.ClientSession() as session,
            # a long answer: the daemon is still sending when it dies, however busy the machine
            session.post(
                real.base_url + COMPLETIONS, json={**BODY, "stream": True, "max_tokens": 512}
            ) as resp,
        ):
            async for line in resp.content:
                got.append(line)
                if len(_texts(b"".join(got))) == 3:
                    real.kill()

    by_hand: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError) as sigkill:
        asyncio.run(kill_after_three(by_hand))
    assert not _alive(real)

    by_reset: list[bytes] = []
    by_fault: list[bytes] = []
    spec = "daemon.request=@1lost(after=3);daemon.stream=@2lost(after=3)"
    with faults.inject(spec, daemon=injected) as run:
        with pytest.raises(aiohttp.ClientPayloadError) as reset:
            asyncio.run(_post(injected.base_url, stream=True, got=by_reset))
        assert _alive(injected)
        with pytest.raises(aiohttp.ClientPayloadError) as lost:
            asyncio.run(_post(injected.base_url, stream=True, got=by_fault))
    assert not _alive(injected)
    assert (run.injected("daemon.request"), run.injected("daemon.stream")) == (1, 1)

    assert type(lost.value) is type(sigkill.value) is type(reset.value)
    assert str(lost.value) == str(sigkill.value)
    assert str(reset.value).startswith(str(sigkill.value))
    assert type(lost.value.__cause__) is type(sigkill.value.__cause__)
    assert type(reset.value.__cause__) is type(sigkill.value.__cause__)
    expected = baseline["chunks"][:3]
    assert _texts(b"".join(by_fault)) == expected
    assert _texts(b"".join(by_reset)) == expected
    # a real kill may let through what the daemon had already written to the socket
    assert _texts(b"".join(by_hand))[:3] == expected


# ---------------------------------------------------------------------------- process


def test_process_lost_kills_the_daemon_before_the_request_or_after_n_events(
    spawn: Callable[[], DaemonProcess], baseline: dict[str, Any]
) -> None:
    first, second = spawn(), spawn()
    with (
        faults.inject("daemon.process=lost", daemon=first) as run,
        pytest.raises(aiohttp.ClientConnectorError) as refused,
    ):
        asyncio.run(_post(first.base_url))
    assert isinstance(refused.value.os_error, ConnectionRefusedError)
    assert not _alive(first)
    assert run.injected("daemon.process") == 1

    got: list[bytes] = []
    with faults.inject("daemon.process=@2lost(after=2)", daemon=second) as run:
        status, whole = asyncio.run(_post(second.base_url, stream=True))
        with pytest.raises(aiohttp.ClientPayloadError, match="not completed"):
            asyncio.run(_post(second.base_url, stream=True, got=got))
    assert (status, _texts(whole)) == (200, baseline["chunks"])
    assert _texts(b"".join(got)) == baseline["chunks"][:2]
    assert not _alive(second)
    assert (run.injected("daemon.process"), run.calls("daemon.process")) == (1, 2)


def test_process_restart_answers_from_a_new_process(
    spawn: Callable[[], DaemonProcess], baseline: dict[str, Any]
) -> None:
    own = spawn()
    first = own.pid
    with faults.inject("daemon.process=@1restart", daemon=own) as run:
        status, body = asyncio.run(_post(own.base_url))
    assert (status, json.loads(body)["choices"][0]["text"]) == (200, baseline["text"])
    assert own.pid not in (None, first)
    assert run.injected("daemon.process") == 1


def test_a_paused_daemon_makes_the_clients_read_timeout_fire_real_time(
    spawn: Callable[[], DaemonProcess], baseline: dict[str, Any]
) -> None:
    own = spawn()
    impatient = aiohttp.ClientTimeout(total=30, sock_read=0.3)
    patient = aiohttp.ClientTimeout(total=30, sock_read=10)
    # The pause lasts well past the read timeout (2 s against 0.3 s), so the daemon is still
    # paused when the timeout fires, however late a busy machine runs this thread
    with faults.inject("daemon.process=@1pause(2s)", daemon=own) as run:
        with pytest.raises(aiohttp.SocketTimeoutError, match="Timeout on reading data"):
            asyncio.run(_post(own.base_url, timeout=impatient))  # the real sock_read
        assert _paused(own)
        status, body = asyncio.run(_post(own.base_url, timeout=patient))  # resumed on time
        assert not _paused(own)
    assert (status, json.loads(body)["choices"][0]["text"]) == (200, baseline["text"])
    assert run.injected("daemon.process") == 1


def test_an_aiohttp_without_middlewares_is_named_not_skipped_silently() -> None:
    async def _request(self: Any, method: str, url: str, **kwargs: Any) -> Any:
        raise AssertionError("never sent")

    aiohttp.ClientSession._request = _request  # type: ignore[method-assign,assignment]
    try:
        target = faults.Target("http://127.0.0.1:9")
        with faults.inject("daemon.request=1*refuse", daemon=target) as run:
            assert vars(aiohttp.ClientSession)["_request"] is _request  # left alone
    finally:
        aiohttp.ClientSession._request = ORIGINAL  # type: ignore[method-assign]
    [missed] = run.unreached()
    assert "aiohttp is not hooked: aiohttp" in missed.reason
    assert "has no client middlewares" in missed.reason
