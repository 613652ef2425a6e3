"""The daemon.* faults reach the official ``openai`` client (3.x, which sends with httpx2).

``openai.OpenAI`` and ``openai.AsyncOpenAI`` talk to a real ``llama_cpp.server`` child
process (completions, chat, streaming chat, embeddings). Each test asserts what openai
itself raised or returned, after its own retries, and how many requests the injector saw
(``run.calls``: one per attempt) and faulted (``run.injected``).

openai's own retry backoff sleeps (``time.sleep`` / ``anyio.sleep`` in
``openai._base_client``) are moved onto the test's VirtualClock by the autouse
``openai_sleeps`` fixture, so a test can check the backoff openai chose (the Retry-After it
honoured) without waiting for it. The faults' hangs run on the same clock. Real time is the
daemon's own work only, except in the test whose name says ``_real_time``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
import openai
import openai._base_client
import pytest

import faults
from pytest_resilience.backends.daemon import DaemonProcess, ServerOptions
from pytest_resilience.core.cancel import deadline
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import DeadlineExceeded

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from openai.types.chat import ChatCompletionMessageParam

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

PROMPT = "Once upon a time"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
TOKENS = 8
ENDPOINTS = ("completions", "chat", "chat-stream", "embeddings")
# the tiny model names no pooling type: mean pooling gives one flat vector per input
EMBEDDING = ServerOptions(n_ctx=1024, embedding=True, kv_overrides=("llama.pooling_type=int:1",))
# openai's own backoff without Retry-After: 0.5 s * 2**n, minus up to 25 % jitter
BACKOFF_2 = (0.75 * (0.5 + 1.0), 0.5 + 1.0)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shared_daemon(tiny_model_path: Path) -> Iterator[DaemonProcess]:
    """One daemon (embeddings on) for the tests that leave it running."""
    with DaemonProcess(tiny_model_path, EMBEDDING) as d:
        yield d


@pytest.fixture
def spawn(tiny_model_path: Path) -> Iterator[Callable[[], DaemonProcess]]:
    """A daemon of the test's own, to kill or pause; closed after the test."""
    made: list[DaemonProcess] = []

    def start() -> DaemonProcess:
        made.append(DaemonProcess(tiny_model_path, ServerOptions(n_ctx=1024)))
        return made[-1].start()

    yield start
    for d in made:
        d.close()


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock()


class _TimeOnClock:
    """``time`` for openai's sync retries: ``sleep`` waits on the clock."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class _AnyioOnClock:
    """``anyio`` for openai's async retries: ``sleep`` waits on the clock."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock

    async def sleep(self, seconds: float) -> None:
        await self.clock.asleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(anyio, name)


@pytest.fixture(autouse=True)
def openai_sleeps(vclock: VirtualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """openai's retry backoff waits on the test's clock (undone at teardown)."""
    monkeypatch.setattr(openai._base_client, "time", _TimeOnClock(vclock))
    monkeypatch.setattr(openai._base_client, "anyio", _AnyioOnClock(vclock))


@pytest.fixture
def client(shared_daemon: DaemonProcess) -> Iterator[Callable[..., openai.OpenAI]]:
    """``client(max_retries=n, ...)``: an ``openai.OpenAI`` for the daemon, closed after."""
    made: list[openai.OpenAI] = []

    def make(*, max_retries: int, to: DaemonProcess | None = None, **kw: Any) -> openai.OpenAI:
        where = to or shared_daemon
        made.append(
            openai.OpenAI(
                base_url=where.base_url + "/v1", api_key="x", max_retries=max_retries, **kw
            )
        )
        return made[-1]

    yield make
    for c in made:
        c.close()


def ask(c: openai.OpenAI, alias: str, endpoint: str) -> object:
    """One call of ``endpoint``: the text, the streamed deltas, or the vector's length."""
    if endpoint == "completions":
        done = c.completions.create(model=alias, prompt=PROMPT, max_tokens=TOKENS, temperature=0)
        return done.choices[0].text
    if endpoint == "chat":
        chat = c.chat.completions.create(
            model=alias, messages=MESSAGES, max_tokens=TOKENS, temperature=0
        )
        return chat.choices[0].message.content
    if endpoint == "chat-stream":
        return deltas(c, alias)
    return len(c.embeddings.create(model=alias, input=PROMPT).data[0].embedding)


def deltas(c: openai.OpenAI, alias: str, seen: list[str | None] | None = None) -> list[str | None]:
    """A streaming chat's deltas, one per chunk (the first carries only the role: None),
    added to ``seen`` as they come (so a test keeps them when the stream fails)."""
    seen = [] if seen is None else seen
    with c.chat.completions.create(
        model=alias, messages=MESSAGES, max_tokens=TOKENS, temperature=0, stream=True
    ) as stream:
        seen.extend(chunk.choices[0].delta.content for chunk in stream if chunk.choices)
    return seen


async def adeltas(c: openai.AsyncOpenAI, alias: str, seen: list[str | None]) -> None:
    """:func:`deltas` for the async client, into ``seen`` (kept when the stream fails)."""
    stream = await c.chat.completions.create(
        model=alias, messages=MESSAGES, max_tokens=TOKENS, temperature=0, stream=True
    )
    async with stream:
        async for chunk in stream:
            if chunk.choices:  # one by one: the chunks before a failure are kept
                seen.append(chunk.choices[0].delta.content)  # noqa: PERF401


def paused(daemon: DaemonProcess) -> bool:
    return daemon.paused


def async_client(daemon: DaemonProcess, *, max_retries: int, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=daemon.base_url + "/v1", api_key="x", max_retries=max_retries, **kw
    )


@pytest.fixture(scope="module")
def baseline(shared_daemon: DaemonProcess) -> dict[str, object]:
    """What each endpoint answers with no fault (greedy, so the same every time)."""
    with openai.OpenAI(base_url=shared_daemon.base_url + "/v1", api_key="x", max_retries=0) as c:
        return {endpoint: ask(c, shared_daemon.alias, endpoint) for endpoint in ENDPOINTS}


def test_every_endpoint_answers_and_each_attempt_is_counted(
    shared_daemon: DaemonProcess, client: Callable[..., openai.OpenAI], baseline: dict[str, object]
) -> None:
    c = client(max_retries=0)
    chunks = baseline["chat-stream"]
    assert isinstance(chunks, list)
    assert chunks[0] is None  # the role chunk
    assert len(chunks) == TOKENS + 2  # the role, a token each, the finish
    assert baseline["embeddings"] == 64
    with faults.inject("daemon.request=@9refuse", daemon=shared_daemon) as run:
        assert [ask(c, shared_daemon.alias, e) for e in ENDPOINTS] == list(baseline.values())
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (4, 0)


# ---------------------------------------------------------------------- daemon.request


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_refuse_is_a_connection_error_after_openais_own_retries(
    shared_daemon: DaemonProcess,
    client: Callable[..., openai.OpenAI],
    vclock: VirtualClock,
    endpoint: str,
) -> None:
    c = client(max_retries=2)
    with (
        faults.inject("daemon.request=refuse", daemon=shared_daemon, clock=vclock) as run,
        pytest.raises(openai.APIConnectionError) as caught,
    ):
        ask(c, shared_daemon.alias, endpoint)
    assert type(caught.value) is openai.APIConnectionError
    assert isinstance(caught.value.__cause__, httpx2.ConnectError)  # refused by the kernel
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (3, 3)
    assert BACKOFF_2[0] <= vclock.now() <= BACKOFF_2[1]  # openai's backoff, on the clock


def test_refused_twice_then_the_third_attempt_succeeds(
    shared_daemon: DaemonProcess,
    client: Callable[..., openai.OpenAI],
    vclock: VirtualClock,
    baseline: dict[str, object],
) -> None:
    c = client(max_retries=2)
    with faults.inject("daemon.request=2*refuse", daemon=shared_daemon, clock=vclock) as run:
        assert ask(c, shared_daemon.alias, "chat") == baseline["chat"]
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (3, 2)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_lost_is_a_connection_error_and_the_daemon_lives(
    shared_daemon: DaemonProcess, client: Callable[..., openai.OpenAI], endpoint: str
) -> None:
    c = client(max_retries=1)
    with (
        faults.inject("daemon.request=lost", daemon=shared_daemon) as run,
        pytest.raises(openai.APIConnectionError) as caught,
    ):
        ask(c, shared_daemon.alias, endpoint)
    assert type(caught.value) is openai.APIConnectionError
    cause = caught.value.__cause__
    assert isinstance(cause, httpx2.RemoteProtocolError)
    assert str(cause) == "Server disconnected without sending a response."
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (2, 2)
    assert shared_daemon.alive


def test_timeout_honours_openais_own_timeout_on_the_clock(
    shared_daemon: DaemonProcess, client: Callable[..., openai.OpenAI], vclock: VirtualClock
) -> None:
    c = client(max_retries=0, timeout=5.0)
    with (
        faults.inject("daemon.request=timeout", daemon=shared_daemon, clock=vclock) as run,
        pytest.raises(openai.APITimeoutError) as caught,
    ):
        ask(c, shared_daemon.alias, "chat")
    assert isinstance(caught.value.__cause__, httpx2.ReadTimeout)
    assert vclock.now() == 5.0  # the client's read timeout, not the fault's forever
    assert run.injected("daemon.request") == 1


def test_a_timeout_is_retried_by_openai_then_succeeds(
    shared_daemon: DaemonProcess,
    client: Callable[..., openai.OpenAI],
    vclock: VirtualClock,
    baseline: dict[str, object],
) -> None:
    c = client(max_retries=1, timeout=5.0)
    with faults.inject("daemon.request=1*timeout", daemon=shared_daemon, clock=vclock) as run:
        assert ask(c, shared_daemon.alias, "completions") == baseline["completions"]
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (2, 1)
    assert 5.0 + 0.375 <= vclock.now() <= 5.0 + 0.5


def test_a_timeout_under_a_deadline_ends_with_the_deadline(
    shared_daemon: DaemonProcess, client: Callable[..., openai.OpenAI], vclock: VirtualClock
) -> None:
    c = client(max_retries=2)  # openai's default timeout: 600 s
    with (
        faults.inject("daemon.request=timeout", daemon=shared_daemon, clock=vclock) as run,
        pytest.raises(DeadlineExceeded),
        deadline(3.0, clock=vclock),
    ):
        ask(c, shared_daemon.alias, "chat")
    assert vclock.now() == 3.0
    assert run.calls("daemon.request") == 1  # not an openai error: not retried


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_one_ratelimit_is_retried_by_openai_after_the_retry_after(
    shared_daemon: DaemonProcess,
    client: Callable[..., openai.OpenAI],
    vclock: VirtualClock,
    baseline: dict[str, object],
    endpoint: str,
) -> None:
    c = client(max_retries=2)
    spec = "daemon.request=1*ratelimit(retry_after=10ms)"
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        assert ask(c, shared_daemon.alias, endpoint) == baseline[endpoint]
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (2, 1)
    assert vclock.now() == pytest.approx(0.01)  # openai honoured Retry-After: 0.01


@pytest.mark.parametrize(("retries", "waited"), [(0, 0.0), (2, 0.02)])
def test_a_lasting_ratelimit_is_openais_ratelimiterror_with_the_json_body(
    shared_daemon: DaemonProcess,
    client: Callable[..., openai.OpenAI],
    vclock: VirtualClock,
    retries: int,
    waited: float,
) -> None:
    c = client(max_retries=retries)
    spec = "daemon.request=ratelimit(retry_after=10ms)"
    with (
        faults.inject(spec, daemon=shared_daemon, clock=vclock) as run,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        ask(c, shared_daemon.alias, "chat")
    error = caught.value
    assert error.status_code == 429
    assert error.body == {
        "message": "rate limit reached, retry later (fault injected at daemon.request)",
        "type": "rate_limit_error",
        "code": "rate_limit_exceeded",
        "param": None,
    }
    assert error.code == "rate_limit_exceeded"
    assert error.type == "rate_limit_error"
    assert error.message == (
        "Error code: 429 - rate limit reached, retry later (fault injected at daemon.request)"
    )
    assert error.response.headers["retry-after"] == "0.01"
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (retries + 1,) * 2
    assert vclock.now() == pytest.approx(waited)


@pytest.mark.parametrize("code", [500, 503])
def test_status_5xx_is_openais_internalservererror(
    shared_daemon: DaemonProcess, client: Callable[..., openai.OpenAI], code: int
) -> None:
    c = client(max_retries=0)
    with (
        faults.inject(f"daemon.request=status({code})", daemon=shared_daemon) as run,
        pytest.raises(openai.InternalServerError) as caught,
    ):
        ask(c, shared_daemon.alias, "completions")
    assert caught.value.status_code == code
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "server_error"
    assert run.injected("daemon.request") == 1


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_one_503_is_retried_by_openai(
    shared_daemon: DaemonProcess,
    client: Callable[..., openai.OpenAI],
    vclock: VirtualClock,
    baseline: dict[str, object],
    endpoint: str,
) -> None:
    c = client(max_retries=1)
    with faults.inject("daemon.request=1*status(503)", daemon=shared_daemon, clock=vclock) as run:
        assert ask(c, shared_daemon.alias, endpoint) == baseline[endpoint]
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (2, 1)
    assert 0.375 <= vclock.now() <= 0.5  # no Retry-After: openai's first backoff


def test_status_with_retry_after_sets_openais_wait(
    shared_daemon: DaemonProcess,
    client: Callable[..., openai.OpenAI],
    vclock: VirtualClock,
    baseline: dict[str, object],
) -> None:
    c = client(max_retries=1)
    spec = "daemon.request=1*status(503, retry_after=2s)"
    with faults.inject(spec, daemon=shared_daemon, clock=vclock):
        assert ask(c, shared_daemon.alias, "chat") == baseline["chat"]
    assert vclock.now() == 2.0


def test_raise_and_latency(
    shared_daemon: DaemonProcess,
    client: Callable[..., openai.OpenAI],
    vclock: VirtualClock,
    baseline: dict[str, object],
) -> None:
    c = client(max_retries=2)
    spec = 'daemon.request=@1raise(ValueError, "bad")->@2latency(2s)'
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        with pytest.raises(ValueError, match="bad"):  # not a transport error: openai lets it by
            ask(c, shared_daemon.alias, "chat")
        assert ask(c, shared_daemon.alias, "chat") == baseline["chat"]
    assert vclock.now() == 2.0
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (2, 2)


# ----------------------------------------------------------------------- daemon.stream


def test_stream_truncate_ends_the_stream_cleanly_after_two_chunks(
    shared_daemon: DaemonProcess, client: Callable[..., openai.OpenAI], baseline: dict[str, object]
) -> None:
    c = client(max_retries=0)
    chunks = baseline["chat-stream"]
    assert isinstance(chunks, list)
    with faults.inject("daemon.stream=1*truncate(after=2)", daemon=shared_daemon) as run:
        assert (
            deltas(c, shared_daemon.alias) == chunks[:2]
        )  # the role chunk and one token, no error
        assert ask(c, shared_daemon.alias, "chat") == baseline["chat"]  # not a stream: not counted
        assert deltas(c, shared_daemon.alias) == chunks
    assert (run.calls("daemon.stream"), run.injected("daemon.stream")) == (2, 1)


def test_stream_corrupt_is_the_json_error_openai_raises(
    shared_daemon: DaemonProcess, client: Callable[..., openai.OpenAI]
) -> None:
    c = client(max_retries=2)
    spec = "daemon.request=off;daemon.stream=corrupt"  # off: counts the attempts
    with (
        faults.inject(spec, daemon=shared_daemon) as run,
        pytest.raises(json.JSONDecodeError),
    ):
        deltas(c, shared_daemon.alias)
    assert (run.calls("daemon.request"), run.injected("daemon.stream")) == (1, 1)


def test_stream_lost_after_two_chunks_is_what_a_real_sigkill_mid_stream_raises(
    spawn: Callable[[], DaemonProcess], client: Callable[..., openai.OpenAI]
) -> None:
    # a real SIGKILL, sent by the test after two chunks of a long answer
    real = spawn()
    c = client(max_retries=2, to=real)
    seen: list[str | None] = []

    def read_and_kill() -> None:
        with c.chat.completions.create(
            model=real.alias, messages=MESSAGES, max_tokens=900, temperature=0, stream=True
        ) as stream:
            for chunk in stream:
                seen.append(chunk.choices[0].delta.content)
                if len(seen) == 2:
                    real.kill()

    with pytest.raises(openai.APIConnectionError) as killed:
        read_and_kill()
    assert not real.alive

    # the same through the fault
    own = spawn()
    c = client(max_retries=2, to=own)
    spec = "daemon.request=off;daemon.stream=lost(after=2)"
    with (
        faults.inject(spec, daemon=own) as run,
        pytest.raises(openai.APIConnectionError) as lost,
    ):
        deltas(c, own.alias)
    # the fault fired first: else the error came from elsewhere (say it, with its cause)
    cause = repr(lost.value.__cause__)
    assert (run.calls("daemon.stream"), run.injected("daemon.stream")) == (1, 1), cause
    assert not own.alive
    assert type(lost.value) is type(killed.value) is openai.APIConnectionError
    assert type(lost.value.__cause__) is type(killed.value.__cause__)
    assert isinstance(lost.value.__cause__, httpx2.RemoteProtocolError)
    assert (run.calls("daemon.stream"), run.injected("daemon.stream")) == (1, 1)
    assert run.calls("daemon.request") == 1  # a stream that failed midway: not retried


def test_request_lost_after_two_chunks_is_a_reset_and_the_daemon_lives(
    shared_daemon: DaemonProcess, client: Callable[..., openai.OpenAI], baseline: dict[str, object]
) -> None:
    c = client(max_retries=2)
    seen: list[str | None] = []
    with faults.inject("daemon.request=1*lost(after=2)", daemon=shared_daemon) as run:
        with pytest.raises(openai.APIConnectionError) as caught:
            deltas(c, shared_daemon.alias, seen)
        assert deltas(c, shared_daemon.alias) == baseline["chat-stream"]
    chunks = baseline["chat-stream"]
    assert isinstance(chunks, list)
    assert seen == chunks[:2]
    cause = caught.value.__cause__
    assert isinstance(cause, httpx2.ReadError)
    assert "Connection reset by peer" in str(cause)
    assert shared_daemon.alive
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (2, 1)


def test_request_lost_after_n_on_a_json_answer_resets_it_and_openai_retries(
    shared_daemon: DaemonProcess,
    client: Callable[..., openai.OpenAI],
    vclock: VirtualClock,
    baseline: dict[str, object],
) -> None:
    c = client(max_retries=1)
    with faults.inject(
        "daemon.request=@1lost(after=2)->@3lost(after=2)", daemon=shared_daemon
    ) as run:
        assert ask(c, shared_daemon.alias, "chat") == baseline["chat"]  # reset, then retried
        c0 = client(max_retries=0)
        with pytest.raises(openai.APIConnectionError) as caught:
            ask(c0, shared_daemon.alias, "completions")
    # a JSON answer has no SSE chunks to count: the connection is reset as it is read
    assert isinstance(caught.value.__cause__, httpx2.ReadError)
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (3, 2)
    assert 0.375 <= vclock.now() <= 0.5  # openai's first backoff


def test_stream_stall_ends_with_openais_own_read_timeout(
    shared_daemon: DaemonProcess, client: Callable[..., openai.OpenAI], vclock: VirtualClock
) -> None:
    c = client(max_retries=0, timeout=5.0)
    seen: list[str | None] = []
    with (
        faults.inject("daemon.stream=stall(after=2)", daemon=shared_daemon, clock=vclock) as run,
        pytest.raises(openai.APITimeoutError) as caught,
    ):
        deltas(c, shared_daemon.alias, seen)
    assert len(seen) == 2
    assert isinstance(caught.value.__cause__, httpx2.ReadTimeout)
    assert vclock.now() == 5.0
    assert run.injected("daemon.stream") == 1


def test_a_short_stall_is_waited_out_and_a_deadline_ends_a_long_one(
    shared_daemon: DaemonProcess,
    client: Callable[..., openai.OpenAI],
    vclock: VirtualClock,
    baseline: dict[str, object],
) -> None:
    c = client(max_retries=0, timeout=5.0)
    spec = "daemon.stream=@1stall(after=2, for=1s)->@2stall(after=3)"
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        assert deltas(c, shared_daemon.alias) == baseline["chat-stream"]
        assert vclock.now() == 1.0
        with pytest.raises(DeadlineExceeded), deadline(2.0, clock=vclock):
            deltas(c, shared_daemon.alias)
    assert vclock.now() == 3.0
    assert run.injected("daemon.stream") == 2


# ---------------------------------------------------------------------- daemon.process


def test_process_lost_kills_the_daemon_and_openai_cannot_connect(
    spawn: Callable[[], DaemonProcess], client: Callable[..., openai.OpenAI], vclock: VirtualClock
) -> None:
    own = spawn()
    c = client(max_retries=2, to=own)
    with (
        faults.inject("daemon.process=1*lost", daemon=own, clock=vclock) as run,
        pytest.raises(openai.APIConnectionError) as caught,
    ):
        ask(c, own.alias, "chat")
    assert not own.alive
    assert isinstance(caught.value.__cause__, httpx2.ConnectError)
    assert (run.calls("daemon.process"), run.injected("daemon.process")) == (3, 1)


def test_process_pause_makes_openais_read_timeout_fire_real_time(
    spawn: Callable[[], DaemonProcess], client: Callable[..., openai.OpenAI]
) -> None:
    own = spawn()
    c = client(max_retries=0, timeout=0.3, to=own)  # 0.3 s of real waiting: it is frozen
    with faults.inject("daemon.process=1*pause(forever)", daemon=own) as run:
        with pytest.raises(openai.APITimeoutError):
            ask(c, own.alias, "completions")
        assert paused(own)
    assert not paused(own)  # uninstalling resumed it
    assert run.injected("daemon.process") == 1


# ------------------------------------------------------------------------------ async


def test_async_refuse_ratelimit_and_503(
    shared_daemon: DaemonProcess, vclock: VirtualClock, baseline: dict[str, object]
) -> None:
    async def main() -> list[object]:
        seen: list[object] = []
        async with async_client(shared_daemon, max_retries=2) as c:
            for _ in range(3):
                try:
                    chat = await c.chat.completions.create(
                        model=shared_daemon.alias,
                        messages=MESSAGES,
                        max_tokens=TOKENS,
                        temperature=0,
                    )
                    seen.append(chat.choices[0].message.content)
                except openai.APIError as exc:
                    seen.append((type(exc), getattr(exc, "status_code", None)))
        return seen

    spec = (
        "daemon.request=@1refuse->@2refuse->@3refuse->@4ratelimit(retry_after=10ms)"
        "->@6status(503)->@7status(503)->@8status(503)"
    )
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        seen = asyncio.run(main())
    assert seen == [
        (openai.APIConnectionError, None),  # three attempts refused
        baseline["chat"],  # a 429, then openai's retry after 10 ms
        (openai.InternalServerError, 503),  # three attempts answered 503
    ]
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (8, 7)


def test_async_status_503_without_retries(shared_daemon: DaemonProcess) -> None:
    async def main() -> None:
        async with async_client(shared_daemon, max_retries=0) as c:
            await c.completions.create(model=shared_daemon.alias, prompt=PROMPT, max_tokens=TOKENS)

    with (
        faults.inject("daemon.request=status(503)", daemon=shared_daemon) as run,
        pytest.raises(openai.InternalServerError) as caught,
    ):
        asyncio.run(main())
    assert caught.value.status_code == 503
    assert run.calls("daemon.request") == 1


def test_async_ratelimit_without_retries_is_ratelimiterror(shared_daemon: DaemonProcess) -> None:
    async def main() -> None:
        async with async_client(shared_daemon, max_retries=0) as c:
            await c.embeddings.create(model=shared_daemon.alias, input=PROMPT)

    with (
        faults.inject("daemon.request=ratelimit(retry_after=10ms)", daemon=shared_daemon) as run,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        asyncio.run(main())
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert run.injected("daemon.request") == 1


def test_async_stream_truncate_and_corrupt(
    shared_daemon: DaemonProcess, baseline: dict[str, object]
) -> None:
    chunks = baseline["chat-stream"]
    assert isinstance(chunks, list)

    async def main() -> tuple[list[str | None], list[str | None]]:
        cut: list[str | None] = []
        broken: list[str | None] = []
        async with async_client(shared_daemon, max_retries=0) as c:
            await adeltas(c, shared_daemon.alias, cut)
            with pytest.raises(json.JSONDecodeError):
                await adeltas(c, shared_daemon.alias, broken)
        return cut, broken

    with faults.inject("daemon.stream=@1truncate(after=2)->@2corrupt", daemon=shared_daemon) as run:
        assert asyncio.run(main()) == (chunks[:2], [])
    assert run.injected("daemon.stream") == 2


def test_async_stream_lost_after_two_chunks_kills_the_daemon(
    spawn: Callable[[], DaemonProcess],
) -> None:
    own = spawn()
    seen: list[str | None] = []

    async def main() -> None:
        async with async_client(own, max_retries=2) as c:
            await adeltas(c, own.alias, seen)

    spec = "daemon.request=off;daemon.stream=lost(after=2)"
    with (
        faults.inject(spec, daemon=own) as run,
        pytest.raises(openai.APIConnectionError) as caught,
    ):
        asyncio.run(main())
    assert len(seen) == 2
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    assert not own.alive
    assert (run.calls("daemon.request"), run.injected("daemon.stream")) == (1, 1)


def test_async_request_lost_after_two_chunks_is_a_reset(
    shared_daemon: DaemonProcess, baseline: dict[str, object]
) -> None:
    seen: list[str | None] = []

    async def main() -> None:
        async with async_client(shared_daemon, max_retries=2) as c:
            await adeltas(c, shared_daemon.alias, seen)

    with (
        faults.inject("daemon.request=lost(after=2)", daemon=shared_daemon) as run,
        pytest.raises(openai.APIConnectionError) as caught,
    ):
        asyncio.run(main())
    chunks = baseline["chat-stream"]
    assert isinstance(chunks, list)
    assert seen == chunks[:2]
    assert isinstance(caught.value.__cause__, httpx2.ReadError)
    assert shared_daemon.alive
    assert run.injected("daemon.request") == 1


def test_async_timeout_and_stall_honour_openais_timeout(
    shared_daemon: DaemonProcess, vclock: VirtualClock
) -> None:
    seen: list[str | None] = []

    async def main() -> list[object]:
        caught: list[object] = []
        async with async_client(shared_daemon, max_retries=0, timeout=5.0) as c:
            for call in range(2):
                try:
                    if call == 0:
                        await c.completions.create(model=shared_daemon.alias, prompt=PROMPT)
                    else:
                        await adeltas(c, shared_daemon.alias, seen)
                except openai.APITimeoutError as exc:
                    caught.append(type(exc.__cause__))
        return caught

    spec = "daemon.request=1*timeout;daemon.stream=stall(after=2)"
    with faults.inject(spec, daemon=shared_daemon, clock=vclock) as run:
        assert asyncio.run(main()) == [httpx2.ReadTimeout, httpx2.ReadTimeout]
    assert len(seen) == 2
    assert vclock.now() == 10.0
    assert (run.injected("daemon.request"), run.injected("daemon.stream")) == (1, 1)
