"""The resilient client's decisions, with fake backends on a virtual clock (no model).

The fakes answer deterministically (like a model at temperature 0): the answer to a prompt
is a fixed function of it, chunked differently by the daemon (3 characters) and in process
(4 characters), so the mid-stream replay must skip a prefix that ends inside a chunk.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, cast

import pytest

from pytest_resilience.backends.resilient import ResilientClient
from pytest_resilience.core.breaker import CircuitBreaker, ConsecutiveFailures, State
from pytest_resilience.core.cancel import cancel_scope, check_cancelled, current_scope
from pytest_resilience.core.clock import SystemClock, VirtualClock
from pytest_resilience.core.errors import (
    Cancelled,
    DaemonLost,
    DaemonUnavailable,
    FallbackError,
    ModelNotFound,
    StreamInterrupted,
)
from pytest_resilience.core.events import (
    BreakerTransition,
    DaemonDown,
    DaemonSlow,
    DaemonUp,
    FallbackUsed,
    HealthChecked,
)
from pytest_resilience.core.fallback import FallbackExhausted

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from pytest_resilience.backends.base import Backend, GenerationParams
    from pytest_resilience.backends.daemon import DaemonBackend, DaemonProcess
    from pytest_resilience.core.journal import Journal


def answer(prompt: str) -> str:
    return "".join(f"{c}{i % 7}" for i, c in enumerate(prompt * 3))


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


class FakeStream:
    """A closable iterator over chunks that checks the cancel scope between them."""

    def __init__(self, parts: Iterator[str]) -> None:
        self._parts = parts
        self.closed = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        check_cancelled()
        return next(self._parts)

    def close(self) -> None:
        self.closed = True


class FakeDaemon:
    """``mode``: ok, down, frozen, slow; ``fail_after``: a stream dies after that many chunks
    (``lost``: connection lost; ``frozen``: stops sending)."""

    base_url = "http://daemon.test"

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.mode = "ok"
        self.fail_after: int | None = None
        self.stream_failure = "lost"
        self.calls = 0
        self.streams: list[FakeStream] = []

    def _enter(self) -> None:
        check_cancelled()
        self.calls += 1
        if self.mode == "down":
            raise DaemonUnavailable("connection refused")
        if self.mode == "frozen":
            scope = current_scope()
            assert scope is not None, "the client must bound a daemon call"
            scope.wait()  # until the client's deadline: DeadlineExceeded
        if self.mode == "slow":
            self.clock.sleep(2.0)

    def generate(self, prompt: str, params: GenerationParams | None = None) -> str:
        self._enter()
        return answer(prompt)

    def embed(self, text: str) -> list[float]:
        self._enter()
        return [float(len(text)), 1.0]

    def models(self) -> list[str]:
        self._enter()
        return ["fake"]

    def stream(self, prompt: str, params: GenerationParams | None = None) -> FakeStream:
        self._enter()
        stream = FakeStream(self._chunks(prompt))
        self.streams.append(stream)
        return stream

    def _chunks(self, prompt: str) -> Iterator[str]:
        for n, part in enumerate(chunks(answer(prompt), 3)):
            if n == self.fail_after:
                if self.stream_failure == "frozen":
                    scope = current_scope()
                    assert scope is not None, "the guard must bound a stream"
                    scope.wait()
                raise DaemonLost("connection reset", partial="")
            yield part

    async def agenerate(self, prompt: str, params: GenerationParams | None = None) -> str:
        return self.generate(prompt, params)

    async def aembed(self, text: str) -> list[float]:
        return self.embed(text)


class FakeDirect:
    """The in-process backend: the same answers, or different ones (``diverge``)."""

    name = "fake-direct"

    def __init__(self, *, diverge: bool = False, fail: bool = False) -> None:
        self.diverge = diverge
        self.fail = fail
        self.closed = False
        self.calls = 0

    def _answer(self, prompt: str) -> str:
        self.calls += 1
        if self.fail:
            raise ModelNotFound("missing.gguf")
        text = answer(prompt)
        return text.upper() if self.diverge else text

    def generate(self, prompt: str, params: GenerationParams | None = None) -> str:
        return self._answer(prompt)

    def stream(self, prompt: str, params: GenerationParams | None = None) -> FakeStream:
        return FakeStream(iter(chunks(self._answer(prompt), 4)))

    def embed(self, text: str) -> list[float]:
        self._answer(text)
        return [float(len(text)), 2.0]

    def close(self) -> None:
        self.closed = True


class FakeProcess:
    def __init__(self, daemon: FakeDaemon) -> None:
        self.daemon = daemon
        self.restarts = 0

    def restart(self) -> FakeProcess:
        self.restarts += 1
        self.daemon.mode = "ok"
        return self


@pytest.fixture
def fake_daemon(clock: VirtualClock) -> FakeDaemon:
    return FakeDaemon(clock)


@pytest.fixture
def direct() -> FakeDirect:
    return FakeDirect()


@pytest.fixture
def make(
    clock: VirtualClock, journal: Journal, fake_daemon: FakeDaemon, direct: FakeDirect
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


PROMPT = "deterministic"
ANSWER = answer(PROMPT)


def test_a_healthy_daemon_answers_and_the_direct_backend_is_never_built(
    make: Callable[..., ResilientClient], journal: Journal, fake_daemon: FakeDaemon
) -> None:
    built: list[Backend] = []

    def factory() -> Backend:
        built.append(FakeDirect())
        return built[-1]

    client = make(direct=factory)
    assert client.generate(PROMPT) == ANSWER
    assert client.embed("abc") == [3.0, 1.0]
    stream = client.stream(PROMPT)
    assert stream is not None
    assert "".join(stream) == ANSWER
    assert stream.source == "daemon"
    assert stream.complete
    assert not stream.fell_back
    assert fake_daemon.calls == 3
    assert built == []
    assert journal.events(FallbackUsed, DaemonDown, DaemonUp) == []
    assert client.daemon_up is True


def test_a_down_daemon_is_answered_in_process_and_the_breaker_opens(
    make: Callable[..., ResilientClient],
    journal: Journal,
    fake_daemon: FakeDaemon,
    direct: FakeDirect,
) -> None:
    client = make()
    fake_daemon.mode = "down"
    for _ in range(5):
        assert client.generate(PROMPT) == ANSWER
    assert fake_daemon.calls == 3  # the default breaker opens after 3 consecutive failures
    assert direct.calls == 5
    assert client.breaker.state is State.OPEN
    (down,) = journal.events(DaemonDown)
    assert down.reason == "DaemonUnavailable: connection refused"
    used = journal.events(FallbackUsed)
    assert [u.step for u in used] == ["direct"] * 5
    assert used[0].after == ("daemon: DaemonUnavailable: connection refused",)
    assert used[-1].after[0].startswith("daemon: CircuitOpenError")
    assert client.daemon_up is False


def test_a_frozen_daemon_is_given_up_at_the_client_deadline(
    make: Callable[..., ResilientClient],
    journal: Journal,
    fake_daemon: FakeDaemon,
    clock: VirtualClock,
) -> None:
    client = make(timeout=5.0)
    fake_daemon.mode = "frozen"
    assert client.generate(PROMPT) == ANSWER
    assert clock.now() == 5.0
    (down,) = journal.events(DaemonDown)
    assert down.reason.startswith("DeadlineExceeded")
    (used,) = journal.events(FallbackUsed)
    assert "DeadlineExceeded" in used.after[0]


def test_a_slow_daemon_still_answers_and_is_journaled_as_slow(
    make: Callable[..., ResilientClient], journal: Journal, fake_daemon: FakeDaemon
) -> None:
    client = make(slow_after=1.0)
    fake_daemon.mode = "slow"
    assert client.generate(PROMPT) == ANSWER
    (slow,) = journal.events(DaemonSlow)
    assert (slow.latency, slow.threshold) == (2.0, 1.0)
    assert journal.events(FallbackUsed) == []


def test_the_daemon_coming_back_is_journaled_once_as_up(
    make: Callable[..., ResilientClient], journal: Journal, fake_daemon: FakeDaemon
) -> None:
    client = make()
    fake_daemon.mode = "down"
    client.generate(PROMPT)
    client.generate(PROMPT)
    fake_daemon.mode = "ok"
    client.generate(PROMPT)
    client.generate(PROMPT)
    kinds = [type(e) for e in journal.events(DaemonDown, DaemonUp)]
    assert kinds == [DaemonDown, DaemonUp]


@pytest.mark.parametrize("failure", ["lost", "frozen"])
@pytest.mark.parametrize("after", [0, 1, 4, len(chunks(ANSWER, 3)) - 1])
def test_a_stream_that_fails_midway_is_finished_in_process_without_loss_or_duplication(
    make: Callable[..., ResilientClient],
    journal: Journal,
    fake_daemon: FakeDaemon,
    failure: str,
    after: int,
) -> None:
    client = make(timeout=5.0)
    fake_daemon.fail_after, fake_daemon.stream_failure = after, failure
    stream = client.stream(PROMPT)
    assert stream is not None
    received = list(stream)
    assert "".join(received) == ANSWER
    assert all(received)  # no empty chunk is delivered
    assert stream.text == ANSWER
    assert stream.fell_back
    assert stream.source == "direct"
    assert stream.complete
    assert fake_daemon.streams[0].closed
    (used,) = journal.events(FallbackUsed)
    assert used.step == "direct"
    expected = "StreamStalled" if failure == "frozen" else "DaemonLost"
    assert used.after[0].startswith(f"daemon: {expected}")
    assert client.clock.now() == (5.0 if failure == "frozen" else 0.0)


def test_a_diverging_replay_raises_with_the_delivered_text(
    make: Callable[..., ResilientClient], fake_daemon: FakeDaemon
) -> None:
    client = make(direct=FakeDirect(diverge=True))
    fake_daemon.fail_after = 2
    stream = client.stream(PROMPT)
    assert stream is not None
    first = next(stream) + next(stream)
    with pytest.raises(StreamInterrupted) as interrupted:
        next(stream)
    assert interrupted.value.reason == "fallback diverged"
    assert interrupted.value.partial == first == ANSWER[:6]
    assert stream.text == first
    assert list(stream) == []


def test_never_fail_ends_a_diverging_stream_quietly_with_the_error(
    make: Callable[..., ResilientClient], fake_daemon: FakeDaemon
) -> None:
    client = make(direct=FakeDirect(diverge=True), policy="never_fail")
    fake_daemon.fail_after = 2
    stream = client.stream(PROMPT)
    assert stream is not None
    assert "".join(stream) == ANSWER[:6]
    assert not stream.complete
    assert isinstance(stream.error, StreamInterrupted)


def test_raise_policy_raises_fallback_error_when_both_fail(
    make: Callable[..., ResilientClient], journal: Journal, fake_daemon: FakeDaemon
) -> None:
    client = make(direct=FakeDirect(fail=True))
    fake_daemon.mode = "down"
    with pytest.raises(FallbackError) as failed:
        client.generate(PROMPT)
    assert [name for name, _ in failed.value.failures] == ["daemon", "direct"]
    assert isinstance(failed.value.__cause__, ModelNotFound)
    (exhausted,) = journal.events(FallbackExhausted)
    assert exhausted.failures[1].startswith("direct: ModelNotFound")
    with pytest.raises(FallbackError):
        client.stream(PROMPT)
    with pytest.raises(FallbackError):
        client.embed("x")


def test_never_fail_returns_none_when_both_fail(
    make: Callable[..., ResilientClient], fake_daemon: FakeDaemon, clock: VirtualClock
) -> None:
    def missing() -> Backend:
        raise ModelNotFound("missing.gguf", "does not exist")

    client = make(direct=missing, policy="never_fail")
    fake_daemon.mode = "down"
    assert client.generate(PROMPT) is None
    assert client.embed("x") is None
    assert client.stream(PROMPT) is None
    assert clock.run(client.agenerate(PROMPT)) is None
    fake_daemon.mode = "ok"
    client.breaker.reset()
    assert client.generate(PROMPT) == ANSWER  # the policy only changes how failure looks


def test_a_stream_that_fails_in_process_after_the_daemon_ends_with_fallback_error(
    make: Callable[..., ResilientClient], fake_daemon: FakeDaemon
) -> None:
    client = make(direct=FakeDirect(fail=True))
    fake_daemon.fail_after = 2
    stream = client.stream(PROMPT)
    assert stream is not None
    assert next(stream) + next(stream) == ANSWER[:6]
    with pytest.raises(FallbackError) as failed:
        next(stream)
    assert isinstance(failed.value.failures[0][1], DaemonLost)


def test_cancellation_is_never_a_reason_to_fall_back(
    make: Callable[..., ResilientClient],
    fake_daemon: FakeDaemon,
    direct: FakeDirect,
    clock: VirtualClock,
) -> None:
    client = make(policy="never_fail")
    with cancel_scope(clock=clock) as scope:
        scope.cancel("user left")
        with pytest.raises(Cancelled):
            client.generate(PROMPT)
    with cancel_scope(clock=clock) as scope:
        stream = client.stream(PROMPT)
        assert stream is not None
        next(stream)
        scope.cancel("user left")
        with pytest.raises(Cancelled, match="user left"):  # as it is, as in async code
            next(stream)
    assert fake_daemon.streams[0].closed
    assert direct.calls == 0
    assert client.breaker.state is State.CLOSED


def test_the_monitor_restarts_the_daemon_and_the_probe_closes_the_breaker(
    make: Callable[..., ResilientClient],
    journal: Journal,
    fake_daemon: FakeDaemon,
    clock: VirtualClock,
) -> None:
    process = FakeProcess(fake_daemon)
    breaker = CircuitBreaker(
        "daemon",
        on=DaemonUnavailable,
        trip=ConsecutiveFailures(1),
        recovery=10.0,
        clock=clock,
        journal=journal,
    )
    client = make(process=cast("DaemonProcess", process), breaker=breaker)
    fake_daemon.mode = "down"
    client.generate(PROMPT)
    assert breaker.state is State.OPEN
    monitor = client.watch(interval=5.0, restart=True, start=False)

    (result,) = monitor.run_due()
    assert result.healthy
    assert result.details["restarted"] is True
    assert process.restarts == 1
    assert breaker.state is State.OPEN  # recovery time not up: calls still go in process
    assert isinstance(journal.events()[-2], DaemonUp)

    clock.advance(10.0)
    (result,) = monitor.run_due()
    assert result.healthy
    assert "restarted" not in result.details
    assert breaker.stats().state is State.CLOSED  # the ping was the half-open probe
    assert [t.to_state for t in journal.events(BreakerTransition)] == [
        "open",
        "half_open",
        "closed",
    ]
    calls = fake_daemon.calls
    used = len(journal.events(FallbackUsed))
    assert client.generate(PROMPT) == ANSWER
    assert fake_daemon.calls == calls + 1
    assert len(journal.events(FallbackUsed)) == used
    assert [c.healthy for c in journal.events(HealthChecked)] == [True, True]


def test_a_monitor_without_restart_only_reports(
    make: Callable[..., ResilientClient], journal: Journal, fake_daemon: FakeDaemon
) -> None:
    process = FakeProcess(fake_daemon)
    client = make(process=cast("DaemonProcess", process))
    fake_daemon.mode = "down"
    (result,) = client.watch(start=False).run_due()
    assert not result.healthy
    assert process.restarts == 0
    assert journal.events(DaemonDown)[0].reason == "DaemonUnavailable: connection refused"
    with pytest.raises(ValueError, match="process"):
        make().watch(restart=True)


def test_close_stops_the_monitor_thread_and_closes_only_what_the_client_built(
    fake_daemon: FakeDaemon,
) -> None:
    built = FakeDirect()
    given = FakeDirect()
    lazy = ResilientClient(cast("DaemonBackend", fake_daemon), lambda: built, clock=SystemClock())
    fake_daemon.mode = "down"
    lazy.watch(interval=60.0)
    assert any(t.name == "pytest-resilience-health" for t in threading.enumerate())
    assert lazy.generate(PROMPT) == ANSWER
    lazy.close()
    assert built.closed
    assert not any(t.name == "pytest-resilience-health" for t in threading.enumerate())
    with pytest.raises(FallbackError):  # a closed client builds nothing more
        lazy.generate(PROMPT)

    with ResilientClient(cast("DaemonBackend", fake_daemon), given) as eager:
        assert eager.generate(PROMPT) == ANSWER
    assert not given.closed


def test_agenerate_and_aembed_fall_back_in_a_worker_thread(
    make: Callable[..., ResilientClient],
    journal: Journal,
    fake_daemon: FakeDaemon,
    clock: VirtualClock,
) -> None:
    client = make()
    assert clock.run(client.agenerate(PROMPT)) == ANSWER
    fake_daemon.mode = "down"
    assert clock.run(client.agenerate(PROMPT)) == ANSWER
    assert clock.run(client.aembed("abcd")) == [4.0, 2.0]
    assert len(journal.events(FallbackUsed)) == 2
    fake_daemon.mode = "frozen"
    client.breaker.reset()
    assert clock.run(client.agenerate(PROMPT)) == ANSWER
    assert clock.now() == 5.0


def test_embed_falls_back_to_the_direct_backend(
    make: Callable[..., ResilientClient], fake_daemon: FakeDaemon
) -> None:
    client = make()
    assert client.embed("abc") == [3.0, 1.0]
    fake_daemon.mode = "down"
    assert client.embed("abc") == [3.0, 2.0]


def test_bad_settings_are_refused(fake_daemon: FakeDaemon, direct: FakeDirect) -> None:
    with pytest.raises(ValueError, match="policy"):
        ResilientClient(cast("DaemonBackend", fake_daemon), direct, policy="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        ResilientClient(cast("DaemonBackend", fake_daemon), direct, timeout=-1)
