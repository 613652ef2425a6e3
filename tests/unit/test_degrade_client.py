"""ResilientClient(degrader=...): what each level does to a call, and how the outcomes of
the calls move the level, with fake backends on a virtual clock (no model)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import pytest

from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.backends.resilient import ResilientClient
from pytest_resilience.core.cache import ResponseCache
from pytest_resilience.core.degrade import DegradePolicy, Degrader, Level, Limits
from pytest_resilience.core.errors import DaemonUnavailable, FallbackError, ModelNotFound
from pytest_resilience.core.events import DegradationChanged, FallbackUsed
from pytest_resilience.plugin.assertions import assert_degraded

if TYPE_CHECKING:
    from pytest_resilience.backends.daemon import DaemonBackend
    from pytest_resilience.core.clock import VirtualClock
    from pytest_resilience.core.journal import Journal

PARAMS = GenerationParams(max_tokens=64)


class Fake:
    """A backend that answers ``<name>:<prompt>`` and remembers each call's max_tokens;
    ``up`` False makes every call fail as the real one does (daemon: unreachable; in
    process: its model is missing)."""

    base_url = "http://daemon.test"
    model = "fake"

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True
        self.tokens: list[int] = []
        self.pings = 0

    def _enter(self, params: GenerationParams | None) -> None:
        if not self.up:
            raise (DaemonUnavailable if self.name == "daemon" else ModelNotFound)("down")
        self.tokens.append((params or GenerationParams()).max_tokens)

    def generate(self, prompt: str, params: GenerationParams | None = None) -> str:
        self._enter(params)
        return f"{self.name}:{prompt}"

    async def agenerate(self, prompt: str, params: GenerationParams | None = None) -> str:
        return self.generate(prompt, params)

    def stream(self, prompt: str, params: GenerationParams | None = None) -> _Chunks:
        return _Chunks(self.generate(prompt, params))

    def embed(self, text: str) -> list[float]:
        return [float(len(text))]

    def models(self) -> list[str]:
        self.pings += 1
        if not self.up:
            raise DaemonUnavailable("down")
        return ["fake"]

    def close(self) -> None:
        pass


class _Chunks:
    def __init__(self, text: str) -> None:
        self._parts = iter([text[:3], text[3:]])

    def __iter__(self) -> _Chunks:
        return self

    def __next__(self) -> str:
        return next(self._parts)

    def close(self) -> None:
        pass


@pytest.fixture
def daemon() -> Fake:
    return Fake("daemon")


@pytest.fixture
def direct() -> Fake:
    return Fake("direct")


@pytest.fixture
def degrader(clock: VirtualClock, journal: Journal) -> Degrader:
    policy = DegradePolicy(
        degrade_at=Limits(error_rate=0.5, latency=10.0),
        restore_below=Limits(error_rate=0.1, latency=3.0),
        window=60.0,
        min_calls=2,
        dwell=10.0,
    )
    return Degrader("llm", policy=policy, clock=clock, journal=journal)


@pytest.fixture
def client(
    clock: VirtualClock, journal: Journal, daemon: Fake, direct: Fake, degrader: Degrader
) -> ResilientClient:
    cache = ResponseCache(clock=clock, journal=journal)
    return ResilientClient(
        cast("DaemonBackend", daemon),
        direct,
        degrader=degrader,
        cache=cache,
        static="Try again soon.",
        timeout=5.0,
        clock=clock,
        journal=journal,
    )


def level_of(degrader: Degrader) -> Level:
    return degrader.level


def steps(journal: Journal) -> list[str]:
    return [e.step for e in journal if isinstance(e, FallbackUsed)]


def test_full_asks_the_daemon_with_the_callers_parameters(
    client: ResilientClient, daemon: Fake, direct: Fake
) -> None:
    assert client.generate("hi", PARAMS) == "daemon:hi"
    assert daemon.tokens == [64]
    assert direct.tokens == []


def test_reduced_asks_the_daemon_for_fewer_tokens(
    client: ResilientClient, daemon: Fake, degrader: Degrader
) -> None:
    degrader.force(Level.REDUCED)
    assert client.generate("hi", PARAMS) == "daemon:hi"
    assert daemon.tokens == [32]  # the reduced profile halves max_tokens


def test_minimal_skips_the_daemon(
    client: ResilientClient, daemon: Fake, direct: Fake, degrader: Degrader
) -> None:
    degrader.force(Level.MINIMAL)
    assert client.generate("hi", PARAMS) == "direct:hi"
    assert daemon.tokens == []
    assert direct.tokens == [16]


def test_cached_only_serves_the_cache_and_calls_no_model(
    client: ResilientClient, daemon: Fake, direct: Fake, degrader: Degrader, journal: Journal
) -> None:
    assert client.generate("hi", PARAMS) == "daemon:hi"  # cached at FULL
    degrader.force(Level.CACHED_ONLY)
    assert client.generate("hi", PARAMS) == "daemon:hi"
    assert client.generate("other", PARAMS) == "Try again soon."  # a miss: the static answer
    assert daemon.tokens == [64]
    assert direct.tokens == []
    assert steps(journal) == ["cache", "static"]


def test_a_cache_miss_without_a_static_answer_is_an_error(
    client: ResilientClient, degrader: Degrader
) -> None:
    client.static = None
    degrader.force(Level.CACHED_ONLY)
    with pytest.raises(FallbackError, match="cached_only: CacheMiss") as raised:
        client.generate("never asked", PARAMS)
    assert "no answer cached for this request" in str(raised.value.__cause__)
    client.policy = "never_fail"
    assert client.generate("never asked", PARAMS) is None


def test_static_serves_the_static_answer_even_when_cached(
    client: ResilientClient, daemon: Fake, degrader: Degrader, journal: Journal
) -> None:
    assert client.generate("hi", PARAMS) == "daemon:hi"
    degrader.force(Level.STATIC)
    assert client.generate("hi", PARAMS) == "Try again soon."
    assert steps(journal) == ["static"]


def test_the_daemon_dies_the_level_drops_to_the_cache_and_climbs_back(  # noqa: PLR0917
    client: ResilientClient,
    daemon: Fake,
    direct: Fake,
    degrader: Degrader,
    clock: VirtualClock,
    journal: Journal,
) -> None:
    assert client.generate("hi", PARAMS) == "daemon:hi"
    daemon.up = False
    for _ in range(2):  # the daemon fails; the in-process model answers; both count
        assert client.generate("hi", PARAMS) == "direct:hi"
    assert level_of(degrader) is Level.REDUCED
    for _ in range(2):
        client.generate("hi", PARAMS)
    assert level_of(degrader) is Level.MINIMAL
    direct.up = False
    for _ in range(2):  # the in-process model fails too: the cached answer
        assert client.generate("hi", PARAMS) == "direct:hi"
    assert level_of(degrader) is Level.CACHED_ONLY
    served = len(direct.tokens)
    assert client.generate("hi", PARAMS) == "direct:hi"
    assert len(direct.tokens) == served  # no model call at CACHED_ONLY
    daemon.up = direct.up = True
    clock.advance(10.0)  # the breaker half-opens; the level has dwelt long enough
    for _ in range(2):
        client.generate("hi", PARAMS)  # each pings the daemon: two healthy outcomes
    assert level_of(degrader) is Level.MINIMAL
    for level in (Level.REDUCED, Level.FULL):
        clock.advance(10.0)
        for _ in range(2):
            client.generate("hi", PARAMS)
        assert level_of(degrader) is level
    assert client.generate("hi", PARAMS) == "daemon:hi"
    path = [f"{e.from_level}->{e.to_level}" for e in journal if isinstance(e, DegradationChanged)]
    assert path == [
        "full->reduced",
        "reduced->minimal",
        "minimal->cached_only",
        "cached_only->minimal",
        "minimal->reduced",
        "reduced->full",
    ]
    assert_degraded(journal, to=Level.CACHED_ONLY, times=1)
    assert_degraded(journal, to="full", times=1)


def test_a_level_does_not_climb_before_its_dwell(
    client: ResilientClient, daemon: Fake, degrader: Degrader, clock: VirtualClock
) -> None:
    degrader.force(Level.REDUCED)
    clock.advance(9.0)
    for _ in range(3):
        client.generate("hi", PARAMS)
    assert level_of(degrader) is Level.REDUCED
    clock.advance(1.0)
    client.generate("hi", PARAMS)
    assert level_of(degrader) is Level.FULL


def test_no_probe_while_the_breaker_is_open(
    client: ResilientClient, daemon: Fake, degrader: Degrader
) -> None:
    daemon.up = False
    for _ in range(3):
        client.generate("hi", PARAMS)  # opens the breaker
    degrader.force(Level.CACHED_ONLY)
    pings = daemon.pings
    client.generate("hi", PARAMS)
    assert daemon.pings == pings


def test_streams_follow_the_level(
    client: ResilientClient, daemon: Fake, direct: Fake, degrader: Degrader
) -> None:
    assert client.generate("hi", PARAMS) == "daemon:hi"
    degrader.force(Level.MINIMAL)
    stream = client.stream("hi", PARAMS)
    assert stream is not None
    with stream:
        assert "".join(stream) == "direct:hi"
    assert daemon.tokens == [64]
    assert direct.tokens == [16]
    degrader.force(Level.CACHED_ONLY)
    served = client.stream("hi", PARAMS)
    assert served is not None
    with served:  # the last good answer: the degraded stream's, stored as generate()'s are
        assert "".join(served) == "direct:hi"
    assert served.complete
    assert (daemon.tokens, direct.tokens) == ([64], [16])


def test_async_calls_follow_the_level(
    client: ResilientClient, daemon: Fake, direct: Fake, degrader: Degrader, clock: VirtualClock
) -> None:
    async def scenario() -> list[str | None]:
        got = [await client.agenerate("hi", PARAMS)]
        degrader.force(Level.REDUCED)
        got.append(await client.agenerate("hi", PARAMS))
        degrader.force(Level.MINIMAL)
        got.append(await client.agenerate("hi", PARAMS))
        stream = await client.astream("hi", PARAMS)
        assert stream is not None
        async with stream:
            got.append("".join([c async for c in stream]))
        degrader.force(Level.CACHED_ONLY)
        got.append(await client.agenerate("hi", PARAMS))
        served = await client.astream("other", PARAMS)
        assert served is not None
        async with served:
            got.append("".join([c async for c in served]))
        return got

    assert clock.run(scenario()) == [
        "daemon:hi",
        "daemon:hi",
        "direct:hi",
        "direct:hi",
        "direct:hi",  # the last answer cached for this request
        "Try again soon.",
    ]
    assert daemon.tokens == [64, 32]
    assert direct.tokens == [16, 16]


def test_daemon_failures_move_the_level_through_streams(
    client: ResilientClient, daemon: Fake, degrader: Degrader
) -> None:
    daemon.up = False
    for _ in range(2):
        stream = client.stream("hi", PARAMS)
        assert stream is not None
        with stream:
            assert "".join(stream) == "direct:hi"
    assert level_of(degrader) is Level.REDUCED


def test_without_a_degrader_nothing_is_recorded(
    clock: VirtualClock, journal: Journal, daemon: Fake, direct: Fake
) -> None:
    client = ResilientClient(
        cast("DaemonBackend", daemon),
        direct,
        clock=clock,
        journal=journal,
    )
    daemon.up = False
    for _ in range(5):
        assert client.generate("hi", PARAMS) == "direct:hi"
    assert_degraded(journal, times=0)


def test_the_status_reads_degraded_below_the_full_level(
    client: ResilientClient, degrader: Degrader
) -> None:
    def status() -> dict[str, object]:
        return client.status(resources=())

    first = status()
    assert first["status"] == "healthy"
    services = cast("dict[str, dict[str, object]]", first["services"])
    assert services["degradation"]["status"] == "healthy"
    degrader.force(Level.CACHED_ONLY)
    now = status()
    assert now["status"] == "degraded"
    assert now["reasons"] == ["degradation: level: cached_only"]
    degrader.force(Level.FULL)
    assert status()["status"] == "healthy"
