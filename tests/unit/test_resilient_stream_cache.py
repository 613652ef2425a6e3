"""The resilient client's streams and its response cache, with the fake backends of
``test_resilient_unit`` on a virtual clock: a stream that fails on both sides midway is
finished from the cache when the cached answer continues what was delivered."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import pytest

from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.backends.resilient import ResilientClient
from pytest_resilience.core.cache import ResponseCache, request_key
from pytest_resilience.core.degrade import Degrader, Level
from pytest_resilience.core.errors import FallbackError
from pytest_resilience.core.events import CacheHit, FallbackUsed
from pytest_resilience.core.fallback import FallbackExhausted
from tests.unit.test_resilient_unit import FakeDaemon, FakeDirect, answer, chunks

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from pytest_resilience.backends.daemon import DaemonBackend
    from pytest_resilience.core.clock import VirtualClock
    from pytest_resilience.core.journal import Journal

PROMPT = "abcdefgh"
KEY = request_key(PROMPT, GenerationParams(), model="fake")


class Daemon(FakeDaemon):
    model = "fake"

    async def astream(
        self, prompt: str, params: GenerationParams | None = None
    ) -> AsyncIterator[str]:
        for chunk in self.stream(prompt, params):
            yield chunk


def client(
    clock: VirtualClock, journal: Journal, daemon: Daemon, direct: FakeDirect, **options: object
) -> ResilientClient:
    options.setdefault("cache", ResponseCache(clock=clock, journal=journal))
    return ResilientClient(
        cast("DaemonBackend", daemon),
        direct,
        clock=clock,
        journal=journal,
        timeout=5.0,
        **options,  # type: ignore[arg-type]
    )


def test_a_stream_failing_on_both_sides_midway_is_finished_from_the_cache(
    clock: VirtualClock, journal: Journal
) -> None:
    daemon = Daemon(clock)
    up = client(clock, journal, daemon, FakeDirect())
    whole = up.stream(PROMPT)
    assert whole is not None
    assert "".join(whole) == answer(PROMPT)
    assert up.cache is not None
    assert up.cache.get(KEY) == answer(PROMPT)  # stored once it ran to its end

    daemon.fail_after = 2  # two chunks of 3 characters, then the connection is lost
    down = client(clock, journal, daemon, FakeDirect(fail=True), cache=up.cache)
    stream = down.stream(PROMPT)
    assert stream is not None
    parts = list(stream)
    assert parts == [*chunks(answer(PROMPT), 3)[:2], answer(PROMPT)[6:]]
    assert (stream.text, stream.complete, stream.error) == (answer(PROMPT), True, None)
    used = journal.events(FallbackUsed)[-1]
    assert isinstance(used, FallbackUsed)
    assert (used.step, used.after[0][:8], used.after[1][:8]) == ("cache", "daemon: ", "direct: ")
    assert not journal.events(FallbackExhausted)


def test_a_cached_answer_that_does_not_continue_the_delivered_text_is_not_spliced(
    clock: VirtualClock, journal: Journal
) -> None:
    daemon = Daemon(clock)
    daemon.fail_after = 2
    down = client(clock, journal, daemon, FakeDirect(fail=True), static="resting")
    assert down.cache is not None
    down.cache.put(KEY, "something else entirely")
    stream = down.stream(PROMPT)
    assert stream is not None
    with pytest.raises(FallbackError):
        list(stream)
    assert stream.text == "".join(chunks(answer(PROMPT), 3)[:2])
    assert journal.events(CacheHit)  # it was looked up, and found wanting
    assert not [e for e in journal.events(FallbackUsed) if e.step in ("cache", "static")]
    assert journal.events(FallbackExhausted)


def test_the_static_answer_serves_a_stream_that_never_started(
    clock: VirtualClock, journal: Journal
) -> None:
    daemon = Daemon(clock)
    daemon.mode = "down"
    down = client(clock, journal, daemon, FakeDirect(fail=True), static="resting")
    stream = down.stream(PROMPT)
    assert stream is not None
    assert list(stream) == ["resting"]
    steps = [e.step for e in journal.events(FallbackUsed)]
    assert steps == ["direct", "static"]
    assert down.cache is not None
    assert len(down.cache) == 0  # a last resort's answer is never stored


def test_a_stream_the_cache_answers_at_minimal_is_a_failure_for_the_degrader(
    clock: VirtualClock, journal: Journal
) -> None:
    daemon = Daemon(clock)
    degrader = Degrader(lowest=Level.CACHED_ONLY, clock=clock, journal=journal)
    degrader.force(Level.MINIMAL)
    down = client(clock, journal, daemon, FakeDirect(fail=True), degrader=degrader)
    assert down.cache is not None
    down.cache.put(KEY, answer(PROMPT))
    for _ in range(degrader.policy.min_calls):
        stream = down.stream(PROMPT)
        assert stream is not None
        assert list(stream) == [answer(PROMPT)]
    assert degrader.level is Level.CACHED_ONLY  # the in-process model failed every time
    assert daemon.calls == 0  # at minimal the daemon is skipped


def test_the_async_stream_is_stored_and_finished_from_the_cache_the_same_way(
    clock: VirtualClock, journal: Journal
) -> None:
    daemon = Daemon(clock)

    async def read(resilient: ResilientClient) -> list[str]:
        stream = await resilient.astream(PROMPT)
        assert stream is not None
        parts = [chunk async for chunk in stream]
        assert (stream.complete, stream.error) == (True, None)
        return parts

    up = client(clock, journal, daemon, FakeDirect())
    assert "".join(clock.run(read(up))) == answer(PROMPT)
    daemon.fail_after = 2
    down = client(clock, journal, daemon, FakeDirect(fail=True), cache=up.cache)
    parts = clock.run(read(down))
    assert parts == [*chunks(answer(PROMPT), 3)[:2], answer(PROMPT)[6:]]
    assert [e.step for e in journal.events(FallbackUsed)][-1] == "cache"
