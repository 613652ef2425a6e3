"""``Cancelled`` and ``HangDetected`` go through every resilience primitive unhandled.

They are ``BaseException`` subclasses, as ``asyncio.CancelledError`` and ``trio.Cancelled``
are: a hang is the test's missing timeout and a cancellation is the caller's decision, so
neither may be retried, counted by a breaker, answered by a fallback or hidden by the
resilient client. For each primitive, sync and async, with ``on=`` as broad as it gets
(``BaseException``, or a predicate that says yes to everything): the very object raised
comes out, the dependency ran once, no fallback ran, the breaker's state and counts are as
they were (a half-open probe slot given back), and the journal holds no retry or fallback
event for it. The last tests use real hangs, reported by the ``VirtualClock``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, cast

import pytest

from pytest_resilience.backends.resilient import ResilientClient
from pytest_resilience.core.breaker import (
    BreakerStats,
    CircuitBreaker,
    ConsecutiveFailures,
    HalfOpen,
    State,
)
from pytest_resilience.core.cancel import cancel_scope, current_scope
from pytest_resilience.core.classify import classify
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.degrade import DegradePolicy, Degrader, Level, Limits
from pytest_resilience.core.errors import (
    Cancelled,
    DaemonUnavailable,
    HangDetected,
    ResilienceInterrupt,
)
from pytest_resilience.core.events import (
    AttemptFailed,
    AttemptStarted,
    BreakerTransition,
    CallRejected,
    DaemonDown,
    Event,
    FallbackUsed,
    GaveUp,
    HealthChecked,
    Recovered,
    RetryScheduled,
    StallDetected,
)
from pytest_resilience.core.fallback import Fallback, FallbackExhausted
from pytest_resilience.core.health import DaemonCheck, HealthMonitor, ModelFileCheck
from pytest_resilience.core.recovery import RecoveryContext, execute_with_recovery
from pytest_resilience.core.retry import Backoff, Retry
from pytest_resilience.core.stream import StreamGuard

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from pytest_resilience.backends.base import GenerationParams
    from pytest_resilience.backends.daemon import DaemonBackend
    from pytest_resilience.core.journal import Journal

#: The events a retry or a fallback writes when it handles a failure.
HANDLED = (
    AttemptStarted,
    AttemptFailed,
    RetryScheduled,
    GaveUp,
    FallbackUsed,
    FallbackExhausted,
    Recovered,
)


def hang() -> HangDetected:
    """A hang, worded as ``VirtualClock`` reports one."""
    return HangDetected(
        "the injected stall at llama.generate can never end: it waits with no timeout and "
        "nothing that could end it is running. Give this wait a timeout, or put a deadline "
        "scope above it."
    )


def cancelled() -> Cancelled:
    """A cancellation, as ``CancelScope.check()`` raises it."""
    return Cancelled("user left")


@pytest.fixture(params=[hang, cancelled], ids=["hang", "cancelled"])
def signal(request: pytest.FixtureRequest) -> ResilienceInterrupt:
    make = cast("Callable[[], ResilienceInterrupt]", request.param)
    return make()


class Dependency:
    """Fails with a ConnectionError before call ``at``, raises ``signal`` on it, then answers."""

    def __init__(self, signal: BaseException, at: int = 1) -> None:
        self.signal = signal
        self.at = at
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls < self.at:
            raise ConnectionError("refused")
        if self.calls == self.at:
            raise self.signal
        return "answer"

    async def acall(self) -> str:
        return self()


def refused() -> str:
    raise ConnectionError("refused")


def handled(journal: Journal) -> list[Event]:
    return journal.events(*HANDLED)


def test_they_are_no_exceptions() -> None:
    for signal in (hang(), cancelled()):
        assert isinstance(signal, BaseException)
        assert not isinstance(signal, Exception)
        assert isinstance(signal, ResilienceInterrupt)
    assert not classify(hang()).retryable  # if asked anyway
    assert not classify(cancelled()).retryable


# -------------------------------------------------------------------------------- retry

POLICIES: dict[str, Callable[[VirtualClock, Journal], Retry]] = {
    # no journal, zero wait, classes: the inlined fast path
    "fast": lambda clock, journal: Retry(
        on=BaseException, attempts=3, backoff=Backoff.fixed(0), clock=clock
    ),
    "journaled": lambda clock, journal: Retry(
        on=BaseException, attempts=3, backoff=Backoff.fixed(1.0), clock=clock, journal=journal
    ),
    "predicate": lambda clock, journal: Retry(
        on=lambda exc: True, attempts=3, backoff=Backoff.fixed(1.0), clock=clock, journal=journal
    ),
    "budget": lambda clock, journal: Retry(
        on=BaseException,
        attempts=3,
        backoff=Backoff.fixed(1.0),
        budget=60.0,
        clock=clock,
        journal=journal,
    ),
}


def run_sync(form: str, retry: Retry, dep: Dependency) -> str:
    if form == "call":
        return retry.call(dep)
    if form == "decorator":

        @retry
        def ask() -> str:
            return dep()

        return ask()
    for attempt in retry:
        with attempt:
            return dep()
    raise AssertionError("the loop form ended without an answer or an error")


async def run_async(form: str, retry: Retry, dep: Dependency) -> str:
    if form == "call":
        return await retry.acall(dep.acall)
    if form == "decorator":

        @retry
        async def ask() -> str:
            return await dep.acall()

        return await ask()
    async for attempt in retry:
        async with attempt:
            return await dep.acall()
    raise AssertionError("the loop form ended without an answer or an error")


FORMS = pytest.mark.parametrize("form", ["call", "decorator", "loop"])
POLICY = pytest.mark.parametrize("policy", sorted(POLICIES))


def check_retry_journal(journal: Journal, policy: str, at: int) -> None:
    """Only the ConnectionError before the signal was handled: no GaveUp, no retry after it."""
    if at == 1 or policy == "fast":  # the fast policy has no journal
        assert handled(journal) == []
        return
    assert [type(e) for e in handled(journal)] == [AttemptFailed, RetryScheduled, AttemptStarted]
    (failed,) = journal.events(AttemptFailed)
    assert (failed.attempt, failed.error) == (1, "ConnectionError: refused")


@FORMS
@POLICY
@pytest.mark.parametrize("at", [1, 2], ids=["first", "after-a-retry"])
def test_retry_never_retries_them(
    form: str,
    policy: str,
    at: int,
    *,
    signal: ResilienceInterrupt,
    clock: VirtualClock,
    journal: Journal,
) -> None:
    dep = Dependency(signal, at)
    with pytest.raises(type(signal)) as info:
        run_sync(form, POLICIES[policy](clock, journal), dep)
    assert info.value is signal
    assert dep.calls == at
    check_retry_journal(journal, policy, at)


@FORMS
@POLICY
@pytest.mark.parametrize("at", [1, 2], ids=["first", "after-a-retry"])
def test_async_retry_never_retries_them(
    form: str,
    policy: str,
    at: int,
    *,
    signal: ResilienceInterrupt,
    clock: VirtualClock,
    journal: Journal,
) -> None:
    dep = Dependency(signal, at)
    with pytest.raises(type(signal)) as info:
        clock.run(run_async(form, POLICIES[policy](clock, journal), dep))
    assert info.value is signal
    assert dep.calls == at
    check_retry_journal(journal, policy, at)


# ------------------------------------------------------------------------------ breaker


def make_breaker(clock: VirtualClock, journal: Journal) -> CircuitBreaker:
    return CircuitBreaker(
        "dep",
        on=BaseException,  # as broad as it gets: still neither a success nor a failure
        trip=ConsecutiveFailures(3),
        recovery=HalfOpen(after=10.0, probes=1, successes=1),
        clock=clock,
        journal=journal,
    )


def bring_to(breaker: CircuitBreaker, clock: VirtualClock, state: State) -> BreakerStats:
    """One failure (closed), or open and then half-open; the stats then."""
    failures = 1 if state is State.CLOSED else 3
    for _ in range(failures):
        with pytest.raises(ConnectionError):
            breaker.call(refused)
    if state is State.HALF_OPEN:
        clock.advance(10.0)
    stats = breaker.stats()
    assert stats.state is state
    return stats


def run_breaker_sync(form: str, breaker: CircuitBreaker, dep: Dependency) -> str:
    if form == "call":
        return breaker.call(dep)
    if form == "decorator":

        @breaker
        def ask() -> str:
            return dep()

        return ask()
    with breaker.acquire():
        return dep()


async def run_breaker_async(form: str, breaker: CircuitBreaker, dep: Dependency) -> str:
    if form == "call":
        return await breaker.acall(dep.acall)
    if form == "decorator":

        @breaker
        async def ask() -> str:
            return await dep.acall()

        return await ask()
    with breaker.acquire():
        return await dep.acall()


BREAKER_FORMS = pytest.mark.parametrize("form", ["call", "decorator", "permit"])
STATES = pytest.mark.parametrize("state", [State.CLOSED, State.HALF_OPEN], ids=str)


def check_breaker_after(
    breaker: CircuitBreaker, journal: Journal, before: BreakerStats, events: int
) -> None:
    """Counted as nothing: the same state and counts, no event, and a free probe slot."""
    assert breaker.stats() == before
    assert before.probes_in_flight == 0
    assert len(journal.events(BreakerTransition, CallRejected)) == events
    assert breaker.call(lambda: "ok") == "ok"  # admitted: in half-open, the slot was free
    assert breaker.state is State.CLOSED


@BREAKER_FORMS
@STATES
def test_a_breaker_counts_them_as_neither_success_nor_failure(
    form: str, state: State, signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    breaker = make_breaker(clock, journal)
    before = bring_to(breaker, clock, state)
    events = len(journal.events(BreakerTransition, CallRejected))
    dep = Dependency(signal)
    with pytest.raises(type(signal)) as info:
        run_breaker_sync(form, breaker, dep)
    assert info.value is signal
    assert dep.calls == 1
    check_breaker_after(breaker, journal, before, events)


@BREAKER_FORMS
@STATES
def test_an_async_breaker_counts_them_as_neither_success_nor_failure(
    form: str, state: State, signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    breaker = make_breaker(clock, journal)
    before = bring_to(breaker, clock, state)
    events = len(journal.events(BreakerTransition, CallRejected))
    dep = Dependency(signal)
    with pytest.raises(type(signal)) as info:
        clock.run(run_breaker_async(form, breaker, dep))
    assert info.value is signal
    assert dep.calls == 1
    check_breaker_after(breaker, journal, before, events)


def test_settling_a_permit_with_them_frees_the_probe_slot(
    signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    breaker = make_breaker(clock, journal)
    before = bring_to(breaker, clock, State.HALF_OPEN)
    breaker.acquire().settle(signal)
    assert breaker.stats() == before
    assert breaker.call(lambda: "ok") == "ok"


# ----------------------------------------------------------------------------- fallback


class Spare:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return "spare"

    async def acall(self) -> str:
        return self()


@pytest.mark.parametrize("where", ["first", "second"])
def test_a_fallback_chain_never_falls_back_on_them(
    where: str, signal: ResilienceInterrupt, journal: Journal
) -> None:
    dep, spare = Dependency(signal), Spare()
    steps = (dep, refused) if where == "first" else (refused, dep)
    chain = Fallback(
        "answer",
        [("daemon", steps[0]), ("direct", steps[1]), ("static", spare)],
        on=BaseException,
        journal=journal,
    )
    with pytest.raises(type(signal)) as info:
        chain()
    assert info.value is signal
    assert (dep.calls, spare.calls) == (1, 0)
    assert handled(journal) == []


@pytest.mark.parametrize("where", ["first", "second"])
def test_an_async_fallback_chain_never_falls_back_on_them(
    where: str, signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    dep, spare = Dependency(signal), Spare()

    async def arefused() -> str:
        return refused()

    steps = (dep.acall, arefused) if where == "first" else (arefused, dep.acall)
    chain = Fallback(
        "answer",
        [("daemon", steps[0]), ("direct", steps[1]), ("static", spare.acall)],
        on=lambda exc: True,
        journal=journal,
    )
    with pytest.raises(type(signal)) as info:
        clock.run(chain.acall())
    assert info.value is signal
    assert (dep.calls, spare.calls) == (1, 0)
    assert handled(journal) == []


# --------------------------------------------------------------------------- degradation


def test_a_degrader_does_not_count_them(
    signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    degrader = Degrader(
        policy=DegradePolicy(
            degrade_at=Limits(error_rate=0.5, latency=10.0),
            restore_below=Limits(error_rate=0.1, latency=3.0),
            min_calls=1,
        ),
        clock=clock,
        journal=journal,
    )
    for _ in range(3):
        assert degrader.record(False, 20.0, error=signal) is Level.FULL
    assert degrader.stats() == (0, 0, 0.0)
    assert journal.events() == []
    # while a real failure degrades at once under this policy
    assert degrader.record(False, 1.0, error=ConnectionError("refused")) is Level.REDUCED


# ------------------------------------------------------------------------- stream guard


class Source:
    """A closable iterator: the chunks, then ``end`` raised."""

    def __init__(self, end: BaseException, *chunks: str) -> None:
        self._chunks = list(chunks)
        self._end = end
        self.closed = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self._chunks:
            return self._chunks.pop(0)
        raise self._end

    def close(self) -> None:
        self.closed += 1


class AsyncSource:
    """The async :class:`Source`."""

    def __init__(self, end: BaseException, *chunks: str) -> None:
        self._chunks = list(chunks)
        self._end = end
        self.closed = 0

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        if self._chunks:
            return self._chunks.pop(0)
        raise self._end

    async def aclose(self) -> None:
        self.closed += 1


def check_guard_outcome(
    raised: BaseException, signal: BaseException, reason: str | None, journal: Journal
) -> None:
    """The very object, never a stall or a complete end. (Only the stream's own ``cancel()``
    ends it with a StreamInterrupted: see test_stream.py.)"""
    assert raised is signal
    assert reason == ("error" if isinstance(signal, HangDetected) else "cancelled")
    assert journal.events(StallDetected, FallbackUsed) == []


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "threaded"])
def test_the_stream_guard_closes_the_source_and_lets_them_through(
    threaded: bool, signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    source = Source(signal, "a")
    guard = StreamGuard(first_token=5.0, idle=5.0, clock=clock, journal=journal)
    stream = guard.wrap(source, threaded=threaded)
    assert next(stream) == "a"
    with pytest.raises(type(signal)) as info:
        next(stream)
    assert stream.join(5.0)  # threaded: the worker has ended
    assert source.closed == 1
    assert stream.result is not None
    check_guard_outcome(info.value, signal, stream.result.reason, journal)
    assert stream.text == "a"


def test_the_async_stream_guard_closes_the_source_and_lets_them_through(
    signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    source = AsyncSource(signal, "a")
    stream = StreamGuard(first_token=5.0, idle=5.0, clock=clock, journal=journal).awrap(source)

    async def main() -> None:
        assert await anext(stream) == "a"
        await anext(stream)

    with pytest.raises(type(signal)) as info:
        clock.run(main())
    assert source.closed == 1
    assert stream.result is not None
    check_guard_outcome(info.value, signal, stream.result.reason, journal)


def test_a_guarded_stream_in_a_retry_and_a_fallback_is_neither_retried_nor_replaced(
    signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    sources: list[Source] = []

    def read() -> str:
        sources.append(Source(signal, "a", "b"))
        return StreamGuard(idle=5.0, clock=clock, journal=journal).collect(sources[-1]).text

    retry = Retry(on=lambda exc: True, attempts=3, clock=clock, journal=journal)
    spare = Spare()
    chain = Fallback(
        "answer",
        [("stream", lambda: retry.call(read)), ("spare", spare)],
        on=BaseException,
        journal=journal,
    )
    with pytest.raises(type(signal)) as info:
        chain()
    assert info.value is signal
    assert len(sources) == 1
    assert sources[0].closed == 1
    assert spare.calls == 0
    assert handled(journal) == []


# ----------------------------------------------------------------------------- recovery


def test_recovery_neither_resumes_nor_falls_back_on_them(
    signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    calls = 0

    def work(rec: RecoveryContext) -> str:
        nonlocal calls
        calls += 1
        rec.save({"next": 1}, step=1)  # something to resume from
        raise signal

    spare = Spare()
    with pytest.raises(type(signal)) as info:
        execute_with_recovery(
            work, on=Exception, fallback=spare, checkpoint_key="k", clock=clock, journal=journal
        )
    assert info.value is signal
    assert (calls, spare.calls) == (1, 0)
    assert handled(journal) == []


def test_recovery_with_a_retry_runner_runs_once(
    signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    calls = 0

    def work(rec: RecoveryContext) -> str:
        nonlocal calls
        calls += 1
        raise signal

    retry = Retry(on=BaseException, attempts=3, clock=clock, journal=journal)
    spare = Spare()
    with pytest.raises(type(signal)) as info:
        execute_with_recovery(
            work, on=Exception, fallback=spare, retry=retry.call, clock=clock, journal=journal
        )
    assert info.value is signal
    assert (calls, spare.calls) == (1, 0)
    assert handled(journal) == []


# ------------------------------------------------------------------------------- health


def test_health_checks_do_not_turn_them_into_results(
    signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal, tmp_path: Path
) -> None:
    dep = Dependency(signal)
    check = DaemonCheck(dep, clock=clock)
    with pytest.raises(type(signal)) as info:
        check()
    assert info.value is signal

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF\x03\x00\x00\x00")

    def load(path: Path) -> None:
        raise signal

    with pytest.raises(type(signal)) as info:
        ModelFileCheck(model, load=load, clock=clock)()
    assert info.value is signal

    monitor = HealthMonitor(
        [DaemonCheck(Dependency(signal), clock=clock)], clock=clock, journal=journal
    )
    with pytest.raises(type(signal)) as info:
        monitor.run_due()
    assert info.value is signal
    assert journal.events(HealthChecked) == []
    assert monitor.results == {}


# ---------------------------------------------------------------------- resilient client


class SignalStream:
    """The daemon's stream: ``chunks``, then ``end`` raised (None: a stall, as injected)."""

    def __init__(self, end: BaseException | None, chunks: list[str], clock: VirtualClock) -> None:
        self._chunks = chunks
        self._end = end
        self._clock = clock
        self.closed = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self._chunks:
            return self._chunks.pop(0)
        if self._end is None:
            stall(self._clock, "the daemon's next chunk")  # raises: nothing ends it
            raise AssertionError("a stall without a deadline ended")
        raise self._end

    def close(self) -> None:
        self.closed = True

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        if self._chunks:
            return self._chunks.pop(0)
        assert self._end is not None
        raise self._end

    async def aclose(self) -> None:
        self.closed = True


def stall(clock: VirtualClock, what: str) -> None:
    """Wait as an injected stall does: in the current scope, else on the clock."""
    scope = current_scope()
    if scope is not None:
        scope.wait(what=what)
    else:
        clock.wait(threading.Event(), None, what=what)


class FakeDaemon:
    """Every call raises ``signal`` (None: stalls); a stream does after ``chunks``."""

    base_url = "http://daemon.test"

    def __init__(
        self, signal: BaseException | None, clock: VirtualClock, chunks: tuple[str, ...] = ()
    ) -> None:
        self.signal = signal
        self.clock = clock
        self.chunks = chunks
        self.calls = 0
        self.streams: list[SignalStream] = []

    def _call(self) -> str:
        self.calls += 1
        if self.signal is None:
            stall(self.clock, "the daemon's answer")
        raise self.signal if self.signal is not None else AssertionError("a stall ended")

    def generate(self, prompt: str, params: GenerationParams | None = None) -> str:
        return self._call()

    def models(self) -> list[str]:
        return [self._call()]

    async def agenerate(self, prompt: str, params: GenerationParams | None = None) -> str:
        return self._call()

    def stream(self, prompt: str, params: GenerationParams | None = None) -> SignalStream:
        self.calls += 1
        self.streams.append(SignalStream(self.signal, list(self.chunks), self.clock))
        return self.streams[-1]

    def astream(self, prompt: str, params: GenerationParams | None = None) -> SignalStream:
        return self.stream(prompt, params)


class FakeDirect:
    """The in-process backend: answers, or raises ``signal`` when given one."""

    name = "fake-direct"

    def __init__(self, signal: BaseException | None = None) -> None:
        self.signal = signal
        self.calls = 0

    def generate(self, prompt: str, params: GenerationParams | None = None) -> str:
        self.calls += 1
        if self.signal is not None:
            raise self.signal
        return "in process"

    def stream(self, prompt: str, params: GenerationParams | None = None) -> Iterator[str]:
        self.calls += 1
        return iter(["in ", "process"])

    def embed(self, text: str) -> list[float]:
        self.calls += 1
        return [1.0]

    def close(self) -> None:
        pass


def make_client(
    daemon: FakeDaemon,
    direct: FakeDirect,
    clock: VirtualClock,
    journal: Journal,
    *,
    policy: str = "raise",
    timeout: float | None = 5.0,
) -> ResilientClient:
    breaker = CircuitBreaker(
        "daemon",
        on=BaseException,
        trip=ConsecutiveFailures(3),
        recovery=HalfOpen(after=10.0),
        clock=clock,
        journal=journal,
    )
    retry = Retry(
        on=lambda exc: True, attempts=3, backoff=Backoff.fixed(0.5), clock=clock, journal=journal
    )
    return ResilientClient(
        cast("DaemonBackend", daemon),
        direct,  # type: ignore[arg-type]
        breaker=breaker,
        retry=retry,
        timeout=timeout,
        policy=policy,  # type: ignore[arg-type]
        clock=clock,
        journal=journal,
    )


CLIENT_EVENTS = (*HANDLED, DaemonDown)
POLICIES_OF_CLIENT = pytest.mark.parametrize("policy", ["raise", "never_fail"])


def check_client_after(
    client: ResilientClient, journal: Journal, before: BreakerStats, direct: FakeDirect
) -> None:
    assert direct.calls == 0  # never answered in process
    assert client.breaker.stats() == before
    assert journal.events(*CLIENT_EVENTS) == []


@POLICIES_OF_CLIENT
def test_the_client_never_falls_back_in_process_on_them(
    policy: str, signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    daemon, direct = FakeDaemon(signal, clock), FakeDirect()
    client = make_client(daemon, direct, clock, journal, policy=policy)
    before = client.breaker.stats()
    with pytest.raises(type(signal)) as info:
        client.generate("p")
    assert info.value is signal
    assert daemon.calls == 1
    check_client_after(client, journal, before, direct)


@POLICIES_OF_CLIENT
def test_the_async_client_never_falls_back_in_process_on_them(
    policy: str, signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    daemon, direct = FakeDaemon(signal, clock), FakeDirect()
    client = make_client(daemon, direct, clock, journal, policy=policy)
    before = client.breaker.stats()
    with pytest.raises(type(signal)) as info:
        clock.run(client.agenerate("p"))
    assert info.value is signal
    assert daemon.calls == 1
    check_client_after(client, journal, before, direct)


@POLICIES_OF_CLIENT
def test_the_in_process_answer_lets_them_through_too(
    policy: str, signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    daemon = FakeDaemon(DaemonUnavailable("connection refused"), clock)
    direct = FakeDirect(signal)
    client = make_client(daemon, direct, clock, journal, policy=policy)
    with pytest.raises(type(signal)) as info:
        client.generate("p")
    assert info.value is signal  # not a FallbackError, not None under never_fail
    assert direct.calls == 1
    assert journal.events(FallbackExhausted) == []


def half_open(client: ResilientClient, clock: VirtualClock) -> BreakerStats:
    for _ in range(3):
        with pytest.raises(ConnectionError):
            client.breaker.call(refused)
    clock.advance(10.0)
    stats = client.breaker.stats()
    assert (stats.state, stats.probes_in_flight) == (State.HALF_OPEN, 0)
    return stats


@pytest.mark.parametrize("chunks", [(), ("ab",)], ids=["first-chunk", "mid-stream"])
def test_a_client_stream_is_not_finished_in_process_on_them(
    chunks: tuple[str, ...], signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    daemon, direct = FakeDaemon(signal, clock, chunks), FakeDirect()
    client = make_client(daemon, direct, clock, journal)
    before = half_open(client, clock)  # the stream holds the one probe slot
    delivered: list[str] = []
    with pytest.raises(type(signal)) as info:  # noqa: PT012 - opening or reading raises
        stream = client.stream("p")
        assert stream is not None
        delivered.extend(stream)
    assert info.value is signal
    assert delivered == list(chunks)
    assert daemon.calls == 1
    assert daemon.streams[0].closed
    if not chunks:  # the probe slot was given back, counted as nothing
        assert client.breaker.stats() == before
    assert direct.calls == 0
    assert journal.events(FallbackUsed, FallbackExhausted, DaemonDown) == []


@pytest.mark.parametrize("chunks", [(), ("ab",)], ids=["first-chunk", "mid-stream"])
def test_an_async_client_stream_is_not_finished_in_process_on_them(
    chunks: tuple[str, ...], signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    daemon, direct = FakeDaemon(signal, clock, chunks), FakeDirect()
    client = make_client(daemon, direct, clock, journal)
    before = half_open(client, clock)

    delivered: list[str] = []

    async def main() -> None:
        stream = await client.astream("p")
        assert stream is not None
        async for chunk in stream:
            delivered.append(chunk)  # noqa: PERF401 - what arrived before it counts

    with pytest.raises(type(signal)) as info:
        clock.run(main())
    assert info.value is signal
    assert delivered == list(chunks)
    assert daemon.calls == 1
    assert daemon.streams[0].closed
    if not chunks:
        assert client.breaker.stats() == before
    assert direct.calls == 0
    assert journal.events(FallbackUsed, FallbackExhausted, DaemonDown) == []


def test_a_ping_probe_gives_its_slot_back(
    signal: ResilienceInterrupt, clock: VirtualClock, journal: Journal
) -> None:
    daemon, direct = FakeDaemon(signal, clock), FakeDirect()
    client = make_client(daemon, direct, clock, journal)
    before = half_open(client, clock)
    with pytest.raises(type(signal)) as info:
        client.ping()
    assert info.value is signal
    monitor = client.watch(start=False)
    with pytest.raises(type(signal)) as info:
        monitor.run_due()
    assert info.value is signal
    assert daemon.calls == 2
    assert client.breaker.stats() == before
    assert journal.events(DaemonDown, HealthChecked) == []
    client.close()


# ------------------------------------------------------------- real hangs from the clock


def test_a_real_hang_goes_through_retry_breaker_and_fallback(
    clock: VirtualClock, journal: Journal
) -> None:
    calls = 0

    def ask() -> str:
        nonlocal calls
        calls += 1
        clock.wait(threading.Event(), None, what="the reply nobody sends")  # no timeout
        return "never"

    breaker = make_breaker(clock, journal)
    retry = Retry(
        on=BaseException, attempts=5, backoff=Backoff.fixed(1.0), clock=clock, journal=journal
    )
    spare = Spare()
    chain = Fallback(
        "answer",
        [("daemon", lambda: retry.call(breaker.call, ask)), ("static", spare)],
        on=BaseException,
        journal=journal,
    )
    before = breaker.stats()
    with pytest.raises(HangDetected, match="the reply nobody sends can never end"):
        chain()
    assert (calls, spare.calls) == (1, 0)
    assert breaker.stats() == before
    assert journal.events() == []
    assert clock.now() == 0.0  # no backoff was slept


def test_a_real_hang_in_the_retry_loop_form_reaches_the_test(clock: VirtualClock) -> None:
    attempts = 0
    with pytest.raises(HangDetected, match="the lock can never end"):  # noqa: PT012
        for attempt in Retry(on=BaseException, attempts=5, clock=clock):
            with attempt:
                attempts += 1
                clock.wait(threading.Event(), None, what="the lock")
    assert attempts == 1


def test_a_stall_without_a_stream_deadline_reaches_the_test(
    clock: VirtualClock, journal: Journal
) -> None:
    """No deadline anywhere above the stalled source: the hang, not a retry or a fallback."""
    sources: list[SignalStream] = []

    def read() -> str:
        sources.append(SignalStream(None, ["a"], clock))
        guard = StreamGuard(clock=clock, journal=journal, name="answer")  # no deadlines
        return guard.collect(sources[-1]).text

    retry = Retry(on=BaseException, attempts=3, clock=clock, journal=journal)
    chain = Fallback(
        "answer", [("stream", lambda: retry.call(read)), ("static", Spare())], on=BaseException
    )
    with pytest.raises(HangDetected, match="the daemon's next chunk can never end"):
        chain()
    assert len(sources) == 1
    assert sources[0].closed
    assert handled(journal) == []

    with pytest.raises(HangDetected, match="the daemon's next chunk can never end"):
        retry.call(lambda: "".join(SignalStream(None, ["a"], clock)))  # no guard at all


@pytest.mark.parametrize("call", ["generate", "stream"])
def test_a_client_without_a_timeout_reports_the_hang_and_stays_off_the_fallback(
    call: str, clock: VirtualClock, journal: Journal
) -> None:
    daemon, direct = FakeDaemon(None, clock, ("a",)), FakeDirect()
    client = make_client(daemon, direct, clock, journal, timeout=None, policy="never_fail")
    before = client.breaker.stats()
    what = "the daemon's answer" if call == "generate" else "the daemon's next chunk"
    with pytest.raises(HangDetected, match=f"{what} can never end"):  # noqa: PT012
        if call == "generate":
            client.generate("p")
        else:
            stream = client.stream("p")
            assert stream is not None
            "".join(stream)
    assert daemon.calls == 1
    assert all(s.closed for s in daemon.streams)
    check_client_after(client, journal, before, direct)


def test_a_threaded_guard_hands_a_worker_s_hang_to_the_consumer(journal: Journal) -> None:
    clock = VirtualClock(hang_grace=0.05)  # the consumer waits for the worker in real time
    source = SignalStream(None, ["a"], clock)
    stream = StreamGuard(clock=clock, journal=journal).wrap(source, threaded=True)
    with pytest.raises(HangDetected, match="the daemon's next chunk can never end"):
        list(stream)  # before: the worker died and the stream looked complete
    assert stream.join(5.0)
    assert source.closed
    assert stream.result is not None
    assert stream.result.reason == "error"


def test_a_cancelled_scope_around_a_retry_is_not_retried(clock: VirtualClock) -> None:
    calls = 0

    def ask() -> str:
        nonlocal calls
        calls += 1
        scope.cancel("shutting down")
        stall(clock, "the reply")  # the scope's cancellation ends it: Cancelled
        return "never"

    with cancel_scope(clock=clock) as scope, pytest.raises(Cancelled, match="shutting down"):
        Retry(on=BaseException, attempts=5, clock=clock).call(ask)
    assert calls == 1


def test_an_async_task_sees_a_cancelled_from_a_retried_call(clock: VirtualClock) -> None:
    calls = 0

    async def ask() -> str:
        nonlocal calls
        calls += 1
        async with cancel_scope(clock=clock) as scope:
            scope.cancel("user left")
            await asyncio.sleep(1.0)  # cancelled at once: Cancelled when leaving the scope
        return "never"

    async def main() -> str:
        return await Retry(on=BaseException, attempts=5, clock=clock).acall(ask)

    with pytest.raises(Cancelled, match="user left"):
        clock.run(main())
    assert calls == 1
