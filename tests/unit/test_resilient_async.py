"""``ResilientClient.astream``: the async stream, with fake backends on a virtual clock.

The fakes answer deterministically (like a model at temperature 0): the answer to a prompt is
a fixed function of it, chunked by 3 characters by the daemon and by 4 in process, so the
mid-stream replay must skip a prefix that ends inside a chunk. The daemon is async (like
``DaemonBackend.astream``); the in-process backend is sync and blocking, as llama.cpp is, and
records the threads it was iterated in and whether its generator ran to its ``finally``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, TypeVar, cast

import pytest

from pytest_resilience.backends.resilient import AsyncResilientStream, ResilientClient
from pytest_resilience.core.breaker import State
from pytest_resilience.core.cancel import cancel_scope, check_cancelled, current_scope
from pytest_resilience.core.errors import (
    Cancelled,
    DaemonLost,
    DaemonUnavailable,
    FallbackError,
    ModelNotFound,
    StreamInterrupted,
    StreamStalled,
)
from pytest_resilience.core.events import DaemonDown, DaemonUp, FallbackUsed
from pytest_resilience.core.fallback import FallbackExhausted
from pytest_resilience.core.journal import Journal

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Generator, Iterator

    from pytest_resilience.backends.base import Backend, GenerationParams
    from pytest_resilience.backends.daemon import DaemonBackend
    from pytest_resilience.backends.llama import LlamaBackend
    from pytest_resilience.core.clock import VirtualClock


def answer(prompt: str) -> str:
    return "".join(f"{c}{i % 7}" for i, c in enumerate(prompt * 3))


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


T = TypeVar("T")

PROMPT = "deterministic"
ANSWER = answer(PROMPT)
DAEMON_CHUNKS = len(chunks(ANSWER, 3))


class AsyncFakeDaemon:
    """``mode``: ok, down, frozen (before the first chunk); ``fail_after``: the stream dies
    after that many chunks (``failure``: ``lost`` raises DaemonLost, ``frozen`` hangs)."""

    base_url = "http://daemon.test"

    def __init__(self) -> None:
        self.mode = "ok"
        self.fail_after: int | None = None
        self.failure = "lost"
        self.opened = 0
        self.closed = 0

    def astream(self, prompt: str, params: GenerationParams | None = None) -> AsyncIterator[str]:
        return self._chunks(prompt)

    async def _chunks(self, prompt: str) -> AsyncIterator[str]:
        self.opened += 1
        try:
            if self.mode == "down":
                raise DaemonUnavailable("connection refused")
            if self.mode == "frozen":
                await asyncio.Event().wait()  # until the guard's first-token deadline
            for n, part in enumerate(chunks(answer(prompt), 3)):
                if n == self.fail_after:
                    if self.failure == "frozen":
                        await asyncio.Event().wait()  # until the guard's idle deadline
                    raise DaemonLost("connection reset", partial="")
                await asyncio.sleep(0)  # reading the socket
                check_cancelled()  # as the real stream checks its budget between lines
                yield part
        finally:
            self.closed += 1


class BlockingStream:
    """The in-process stream: blocking, checks the current scope between chunks."""

    def __init__(
        self, parts: list[str], stall_at: int | None, before: Callable[[], None] | None = None
    ) -> None:
        self._parts = parts
        self._stall_at = stall_at
        self._before = before
        self._gen = self._run()
        self.threads: set[str] = set()
        self.closed = False
        self.finished = False  # the generator ran to its end or was closed

    def _run(self) -> Generator[str, None, None]:
        try:
            for n, part in enumerate(self._parts):
                if self._before is not None:
                    self._before()
                if n == self._stall_at:
                    scope = current_scope()
                    assert scope is not None, "a blocking source must run inside a scope"
                    scope.wait()  # a cooperative stall: ends when the scope does
                yield part
        finally:
            self.finished = True

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        self.threads.add(threading.current_thread().name)
        check_cancelled()
        return next(self._gen)

    def close(self) -> None:
        self.closed = True
        self._gen.close()


class FakeDirect:
    """The in-process backend: the same answers, different ones (``diverge``), none
    (``fail``), or a stream that stalls at chunk ``stall_at``."""

    name = "fake-direct"

    def __init__(
        self, *, diverge: bool = False, fail: bool = False, stall_at: int | None = None
    ) -> None:
        self.diverge = diverge
        self.fail = fail
        self.stall_at = stall_at
        self.streams: list[BlockingStream] = []
        self.closed = False

    def _answer(self, prompt: str) -> str:
        if self.fail:
            raise ModelNotFound("missing.gguf")
        text = answer(prompt)
        return text.upper() if self.diverge else text

    def generate(self, prompt: str, params: GenerationParams | None = None) -> str:
        return self._answer(prompt)

    def stream(self, prompt: str, params: GenerationParams | None = None) -> BlockingStream:
        stream = BlockingStream(chunks(self._answer(prompt), 4), self.stall_at)
        self.streams.append(stream)
        return stream

    def embed(self, text: str) -> list[float]:
        return [float(len(self._answer(text)))]

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_daemon() -> AsyncFakeDaemon:
    return AsyncFakeDaemon()


@pytest.fixture
def direct() -> FakeDirect:
    return FakeDirect()


@pytest.fixture
def make(
    clock: VirtualClock, journal: Journal, fake_daemon: AsyncFakeDaemon, direct: FakeDirect
) -> Iterator[Callable[..., ResilientClient]]:
    made: list[ResilientClient] = []

    def build(**kwargs: object) -> ResilientClient:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("journal", journal)
        kwargs.setdefault("timeout", 5.0)
        backend = kwargs.pop("direct", direct)
        client = ResilientClient(cast("DaemonBackend", fake_daemon), backend, **kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


async def opened(client: ResilientClient) -> AsyncResilientStream:
    stream = await client.astream(PROMPT)
    assert stream is not None
    return stream


async def drain(stream: AsyncResilientStream, within: float | None = None) -> None:
    async with asyncio.timeout(within):
        async for _ in stream:
            pass


async def read_all(client: ResilientClient) -> tuple[AsyncResilientStream, list[str]]:
    async with await opened(client) as stream:
        return stream, [chunk async for chunk in stream]


# ----------------------------------------------------------------------------- healthy


def test_a_healthy_daemon_streams_and_the_direct_backend_is_never_built(
    make: Callable[..., ResilientClient],
    journal: Journal,
    fake_daemon: AsyncFakeDaemon,
    clock: VirtualClock,
) -> None:
    built: list[Backend] = []

    def factory() -> Backend:
        built.append(FakeDirect())
        return built[-1]

    client = make(direct=factory)
    stream, received = clock.run(read_all(client))
    assert received == chunks(ANSWER, 3)
    assert stream.text == ANSWER
    assert (stream.source, stream.fell_back, stream.complete) == ("daemon", False, True)
    assert stream.error is None
    assert (fake_daemon.opened, fake_daemon.closed) == (1, 1)
    assert built == []
    assert journal.events(FallbackUsed, DaemonDown) == []
    assert client.daemon_up is True
    assert client.breaker.stats().failures == 0


def test_astream_returns_once_the_first_chunk_has_arrived(
    make: Callable[..., ResilientClient], fake_daemon: AsyncFakeDaemon, clock: VirtualClock
) -> None:
    client = make()

    async def main() -> tuple[int, str, str]:
        stream = await opened(client)
        seen, text = fake_daemon.opened, stream.text
        first = await anext(stream)
        await stream.aclose()
        return seen, text, first

    seen, text, first = clock.run(main())
    assert (seen, text, first) == (1, "", ANSWER[:3])


# ------------------------------------------------------------------------- falling back


def test_a_down_daemon_is_answered_in_process_in_worker_threads(
    make: Callable[..., ResilientClient],
    journal: Journal,
    fake_daemon: AsyncFakeDaemon,
    clock: VirtualClock,
) -> None:
    built_in: list[str] = []
    backend = FakeDirect()

    def factory() -> Backend:
        built_in.append(threading.current_thread().name)
        return backend

    client = make(direct=factory)
    fake_daemon.mode = "down"
    for _ in range(4):
        stream, received = clock.run(read_all(client))
        assert "".join(received) == ANSWER
        assert received == chunks(ANSWER, 4)
        assert (stream.source, stream.fell_back, stream.complete) == ("direct", True, True)
    assert fake_daemon.opened == 3  # the default breaker opens after 3 consecutive failures
    assert client.breaker.state is State.OPEN
    main = threading.main_thread().name
    assert built_in != [main]
    assert len(built_in) == 1  # built once, in a worker thread
    for s in backend.streams:
        assert s.closed
        assert s.finished
        assert s.threads
        assert main not in s.threads  # the blocking backend never ran on the loop's thread
    (down,) = journal.events(DaemonDown)
    assert down.reason == "DaemonUnavailable: connection refused"
    used = journal.events(FallbackUsed)
    assert len(used) == 4
    assert used[0].after == ("daemon: DaemonUnavailable: connection refused",)
    assert used[-1].after[0].startswith("daemon: CircuitOpenError")


def test_a_daemon_frozen_before_its_first_chunk_is_given_up_at_the_first_token_deadline(
    make: Callable[..., ResilientClient],
    journal: Journal,
    fake_daemon: AsyncFakeDaemon,
    clock: VirtualClock,
) -> None:
    client = make(timeout=5.0)
    fake_daemon.mode = "frozen"
    stream, received = clock.run(read_all(client))
    assert "".join(received) == ANSWER
    assert stream.source == "direct"
    assert clock.now() == 5.0
    assert fake_daemon.closed == 1
    (used,) = journal.events(FallbackUsed)
    assert used.after[0].startswith("daemon: StreamStalled")


@pytest.mark.parametrize("failure", ["lost", "frozen"])
@pytest.mark.parametrize("after", [0, 1, 4, DAEMON_CHUNKS - 1])
def test_a_stream_that_fails_midway_is_finished_in_process_without_loss_or_duplication(
    make: Callable[..., ResilientClient],
    fake_daemon: AsyncFakeDaemon,
    direct: FakeDirect,
    failure: str,
    after: int,
) -> None:
    client = make(timeout=5.0)
    clock, journal = cast("VirtualClock", client.clock), client.journal
    assert journal is not None
    fake_daemon.fail_after, fake_daemon.failure = after, failure
    stream, received = clock.run(read_all(client))
    assert "".join(received) == ANSWER
    assert received[:after] == chunks(ANSWER, 3)[:after]  # the daemon's part came first
    assert all(received)  # no empty chunk is delivered
    assert (stream.source, stream.fell_back, stream.complete) == ("direct", True, True)
    assert fake_daemon.closed == 1
    (replay,) = direct.streams
    assert replay.closed
    assert replay.finished
    (used,) = journal.events(FallbackUsed)
    expected = "StreamStalled" if failure == "frozen" else "DaemonLost"
    assert used.after[0].startswith(f"daemon: {expected}")
    assert clock.now() == (5.0 if failure == "frozen" else 0.0)
    assert client.breaker.stats().failures == 1  # a failure after the first chunk counts too
    assert client.daemon_up is False


def test_the_daemon_answering_again_is_journaled_as_up(
    make: Callable[..., ResilientClient],
    journal: Journal,
    fake_daemon: AsyncFakeDaemon,
    clock: VirtualClock,
) -> None:
    client = make()
    fake_daemon.mode = "down"
    clock.run(read_all(client))
    fake_daemon.mode = "ok"
    stream, _ = clock.run(read_all(client))
    assert stream.source == "daemon"
    assert [type(e) for e in journal.events(DaemonDown, DaemonUp)] == [DaemonDown, DaemonUp]


# --------------------------------------------------------------------------- divergence


def test_a_diverging_replay_raises_with_the_delivered_text(
    make: Callable[..., ResilientClient], fake_daemon: AsyncFakeDaemon, clock: VirtualClock
) -> None:
    direct = FakeDirect(diverge=True)
    client = make(direct=direct)
    fake_daemon.fail_after = 2

    async def main() -> tuple[str, StreamInterrupted, list[str]]:
        stream = await opened(client)
        first = await anext(stream) + await anext(stream)
        with pytest.raises(StreamInterrupted) as interrupted:
            await anext(stream)
        return first, interrupted.value, [c async for c in stream]

    first, error, after = clock.run(main())
    assert error.reason == "fallback diverged"
    assert error.partial == first == ANSWER[:6]
    assert after == []
    assert direct.streams[0].closed


def test_never_fail_ends_a_diverging_stream_quietly_with_the_error(
    make: Callable[..., ResilientClient], fake_daemon: AsyncFakeDaemon, clock: VirtualClock
) -> None:
    client = make(direct=FakeDirect(diverge=True), policy="never_fail")
    fake_daemon.fail_after = 2
    stream, received = clock.run(read_all(client))
    assert "".join(received) == ANSWER[:6]
    assert not stream.complete
    assert isinstance(stream.error, StreamInterrupted)
    assert stream.error.reason == "fallback diverged"


# ----------------------------------------------------------------------------- policies


def test_raise_policy_raises_fallback_error_when_both_fail_before_the_first_chunk(
    make: Callable[..., ResilientClient],
    journal: Journal,
    fake_daemon: AsyncFakeDaemon,
    clock: VirtualClock,
) -> None:
    client = make(direct=FakeDirect(fail=True))
    fake_daemon.mode = "down"
    with pytest.raises(FallbackError) as failed:
        clock.run(client.astream(PROMPT))
    assert [name for name, _ in failed.value.failures] == ["daemon", "direct"]
    assert isinstance(failed.value.__cause__, ModelNotFound)
    (exhausted,) = journal.events(FallbackExhausted)
    assert exhausted.failures[1].startswith("direct: ModelNotFound")


def test_never_fail_returns_none_when_both_fail_before_the_first_chunk(
    make: Callable[..., ResilientClient], fake_daemon: AsyncFakeDaemon, clock: VirtualClock
) -> None:
    def missing() -> Backend:
        raise ModelNotFound("missing.gguf", "does not exist")

    client = make(direct=missing, policy="never_fail")
    fake_daemon.mode = "down"
    assert clock.run(client.astream(PROMPT)) is None
    fake_daemon.mode = "ok"
    client.breaker.reset()
    _, received = clock.run(read_all(client))
    assert "".join(received) == ANSWER  # the policy only changes how failure looks


@pytest.mark.parametrize("policy", ["raise", "never_fail"])
def test_a_direct_backend_failing_after_the_daemon_was_lost(
    make: Callable[..., ResilientClient],
    fake_daemon: AsyncFakeDaemon,
    clock: VirtualClock,
    policy: str,
) -> None:
    client = make(direct=FakeDirect(fail=True), policy=policy)
    fake_daemon.fail_after = 2

    async def main() -> tuple[AsyncResilientStream, BaseException | None]:
        stream = await opened(client)
        try:
            await drain(stream)
        except FallbackError as exc:
            return stream, exc
        return stream, None

    stream, raised = clock.run(main())
    assert stream.text == ANSWER[:6]
    assert not stream.complete
    assert isinstance(stream.error, FallbackError)
    assert isinstance(stream.error.failures[0][1], DaemonLost)
    assert isinstance(stream.error.failures[1][1], ModelNotFound)
    assert raised is (stream.error if policy == "raise" else None)


def test_an_in_process_stall_is_ended_by_the_guard_and_its_thread_stops(
    make: Callable[..., ResilientClient],
    fake_daemon: AsyncFakeDaemon,
    clock: VirtualClock,
) -> None:
    direct = FakeDirect(stall_at=3)
    client = make(direct=direct, timeout=5.0)
    fake_daemon.fail_after = 2

    async def main() -> FallbackError:
        with pytest.raises(FallbackError) as failed:
            await read_all(client)
        (replay,) = direct.streams
        assert replay.finished  # the blocked step ended at the deadline, the stream closed
        assert replay.closed
        return failed.value

    error = clock.run(main())
    assert isinstance(error.failures[1][1], StreamStalled)
    assert error.failures[1][1].which == "idle"
    assert clock.now() == 5.0  # the idle deadline after the replay's last delivered chunk


# ------------------------------------------------------------------- stopping early


def test_aclose_during_the_daemon_part_closes_it_and_counts_nothing(
    make: Callable[..., ResilientClient],
    fake_daemon: AsyncFakeDaemon,
    direct: FakeDirect,
    clock: VirtualClock,
) -> None:
    client = make()

    async def main() -> AsyncResilientStream:
        async with await opened(client) as stream:
            async for _ in stream:
                if len(stream.text) >= 6:
                    break
        return stream

    stream = clock.run(main())
    assert stream.text == ANSWER[:6]
    assert not stream.complete
    assert fake_daemon.closed == 1
    assert direct.streams == []
    stats = client.breaker.stats()
    assert (stats.state, stats.failures) == (State.CLOSED, 0)


def test_aclose_during_the_in_process_part_closes_the_replay(
    make: Callable[..., ResilientClient],
    fake_daemon: AsyncFakeDaemon,
    direct: FakeDirect,
    clock: VirtualClock,
) -> None:
    client = make()
    fake_daemon.fail_after = 1

    async def main() -> AsyncResilientStream:
        async with await opened(client) as stream:
            async for _ in stream:
                if len(stream.text) >= 10:
                    break
        await stream.aclose()  # idempotent
        return stream

    stream = clock.run(main())
    assert stream.text == ANSWER[: len(stream.text)]
    assert stream.source == "direct"
    assert not stream.complete
    (replay,) = direct.streams
    assert replay.closed
    assert replay.finished


def test_a_consumer_cancelled_while_a_worker_is_blocked_waits_for_the_worker(
    make: Callable[..., ResilientClient],
    fake_daemon: AsyncFakeDaemon,
    direct: FakeDirect,
    clock: VirtualClock,
) -> None:
    direct.stall_at = 2
    client = make(timeout=None)  # no guard deadlines: only the consumer's timeout ends it
    fake_daemon.mode = "down"

    async def main() -> AsyncResilientStream:
        stream = await opened(client)
        with pytest.raises(TimeoutError):
            await drain(stream, within=3.0)
        # at once, not later: the worker's wait was cancelled and awaited, not left behind
        (replay,) = direct.streams
        assert replay.finished
        assert replay.closed
        return stream

    stream = clock.run(main())
    assert clock.now() == 3.0
    assert stream.text == ANSWER[:8]


def test_concurrent_aclose_ends_a_pending_read_quietly(
    make: Callable[..., ResilientClient],
    fake_daemon: AsyncFakeDaemon,
    direct: FakeDirect,
    clock: VirtualClock,
) -> None:
    direct.stall_at = 1
    client = make(timeout=None)
    fake_daemon.mode = "down"

    async def main() -> tuple[AsyncResilientStream, list[str]]:
        stream = await opened(client)

        async def consume() -> list[str]:
            return [chunk async for chunk in stream]

        reader = asyncio.create_task(consume())
        await asyncio.sleep(1.0)  # the reader is blocked on the stalled worker
        await stream.aclose()
        (replay,) = direct.streams
        assert replay.finished  # aclose() returned after the worker's step had ended
        assert replay.closed
        return stream, await reader

    stream, received = clock.run(main())
    assert received == [ANSWER[:4]]
    assert stream.error is None
    assert not stream.complete


def test_cancellation_is_never_a_reason_to_fall_back(
    make: Callable[..., ResilientClient],
    fake_daemon: AsyncFakeDaemon,
    direct: FakeDirect,
    clock: VirtualClock,
) -> None:
    client = make(policy="never_fail")

    async def read_two_cancelling_between() -> None:
        async with cancel_scope(clock=clock) as scope:
            stream = await opened(client)
            await anext(stream)
            scope.cancel("user left")
            await anext(stream)

    async def main() -> None:
        with pytest.raises(Cancelled, match="user left"):
            await read_two_cancelling_between()

    clock.run(main())
    assert fake_daemon.closed == 1
    assert direct.streams == []
    stats = client.breaker.stats()
    assert (stats.state, stats.failures) == (State.CLOSED, 0)


class CapturingDirect(FakeDirect):
    """An in-process backend that, like the llama backend, captures the scope current when a
    stream starts and checks it (and the current one) between chunks, which take 3 s each."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock
        self.captured: list[str] = []

    def stream(self, prompt: str, params: GenerationParams | None = None) -> BlockingStream:
        scope = current_scope()
        assert scope is not None
        self.captured.append(scope.name)
        clock = self.clock

        def pace() -> None:
            clock.sleep(3.0)
            scope.check()  # the captured scope: it must not carry the first chunk's deadline

        stream = BlockingStream(chunks(answer(prompt), 4), None, pace)
        self.streams.append(stream)
        return stream


def test_a_backend_that_captures_the_scope_at_the_start_runs_past_the_first_token_deadline(
    make: Callable[..., ResilientClient], fake_daemon: AsyncFakeDaemon, clock: VirtualClock
) -> None:
    direct = CapturingDirect(clock)
    client = make(direct=direct, timeout=5.0)  # first-token and idle deadlines: 5 s
    fake_daemon.mode = "down"
    stream, received = clock.run(read_all(client))
    assert "".join(received) == ANSWER
    assert stream.complete
    assert clock.now() == 3.0 * len(received)  # far past the first chunk's deadline
    assert direct.captured == ["resilient direct"]  # the stream's own scope, not the guard's


# ---------------------------------------------------------------------- a real daemon


@pytest.fixture(scope="module")
def tiny_llama() -> Iterator[LlamaBackend]:
    """The tiny model in process. Module-scoped: the first load in a process opens two
    descriptors that llama.cpp keeps, which the per-test leak check must not count."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")
    from pytest_resilience.backends.llama import LlamaBackend  # noqa: PLC0415
    from pytest_resilience.backends.tiny import tiny_model_path  # noqa: PLC0415

    with LlamaBackend(tiny_model_path(), n_ctx=1024, seed=0, n_threads=1, name="tiny") as llama:
        yield llama


def test_a_real_daemon_killed_mid_stream_is_finished_in_process_real_time(
    tiny_llama: LlamaBackend,
) -> None:
    """The real thing, kept short (about 1 s): the tiny model as a daemon and in process."""
    from pytest_resilience.backends.base import GenerationParams as Params  # noqa: PLC0415
    from pytest_resilience.backends.daemon import (  # noqa: PLC0415
        DaemonBackend,
        DaemonProcess,
        ServerOptions,
    )

    params, journal = Params(max_tokens=400), Journal()
    expected = tiny_llama.generate("Hello", params)
    with (
        DaemonProcess(tiny_llama.model_path, ServerOptions(n_ctx=2048)) as process,
        DaemonBackend(process.base_url) as daemon_backend,
        ResilientClient(daemon_backend, tiny_llama, timeout=5.0, journal=journal) as client,
    ):

        async def main() -> AsyncResilientStream:
            stream = await client.astream("Hello", params)
            assert stream is not None
            async with stream:
                async for _ in stream:
                    if stream.source == "daemon" and len(stream.text) >= 20:
                        process.kill()
            return stream

        stream = asyncio.run(main())
    assert stream.fell_back
    assert stream.complete
    assert stream.text == expected
    (used,) = journal.events(FallbackUsed)
    assert used.after[0].startswith("daemon: ")
