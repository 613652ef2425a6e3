"""Edge cases of the circuit breaker: reasons, slow async calls, permits, call forms."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pytest_resilience.core.breaker import (
    BreakerStats,
    CircuitBreaker,
    ConsecutiveFailures,
    HalfOpen,
    State,
)
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import CircuitOpenError
from pytest_resilience.core.events import BreakerTransition, CallRejected
from pytest_resilience.core.journal import Journal


class Boom(ConnectionError):
    """A failure the breakers below count."""


def make(clock: VirtualClock, journal: Journal | None = None, **kwargs: Any) -> CircuitBreaker:
    kwargs.setdefault("on", Boom)
    kwargs.setdefault("trip", ConsecutiveFailures(2))
    kwargs.setdefault("recovery", HalfOpen(after=10.0))
    return CircuitBreaker("svc", clock=clock, journal=journal, **kwargs)


def reasons(journal: Journal) -> list[str]:
    return [e.reason for e in journal.events(BreakerTransition)]


def state_of(breaker: CircuitBreaker) -> State:
    return breaker.state


def test_every_manual_action_names_itself_in_the_journal() -> None:
    journal = Journal()
    breaker = make(VirtualClock(), journal)
    breaker.force_closed()
    breaker.disable()
    breaker.force_open()
    breaker.reset()
    assert reasons(journal) == ["force_closed()", "disable()", "force_open()", "reset()"]


# ------------------------------------------------------------------------- permits


def test_a_permit_failure_names_its_exception_in_the_reason() -> None:
    journal = Journal()
    breaker = make(VirtualClock(), journal)
    breaker.acquire().failure(Boom())
    breaker.acquire().failure(TimeoutError())
    assert reasons(journal) == ["2 consecutive failures (last: TimeoutError)"]


def test_a_permit_failure_without_an_exception_names_nothing() -> None:
    journal = Journal()
    breaker = make(VirtualClock(), journal)
    breaker.acquire().failure()
    breaker.acquire().failure()
    assert reasons(journal) == ["2 consecutive failures"]


def test_a_permit_block_that_raises_names_the_exception_in_the_reason() -> None:
    journal = Journal()
    breaker = make(VirtualClock(), journal)
    for _ in range(2):
        with pytest.raises(Boom), breaker.acquire():
            raise Boom
    assert reasons(journal) == ["2 consecutive failures (last: Boom)"]


# ---------------------------------------------------------------------- async calls


def test_acall_passes_the_arguments() -> None:
    breaker = make(VirtualClock())

    async def add(a: int, *, b: int) -> int:
        return a + b

    assert asyncio.run(breaker.acall(add, 2, b=3)) == 5


def test_a_slow_async_success_is_a_failure() -> None:
    clock = VirtualClock()
    journal = Journal()
    breaker = make(clock, journal, slow_after=2.0)

    async def slow() -> str:
        await clock.asleep(2.5)
        return "late"

    async def scenario() -> None:
        for _ in range(2):
            assert await breaker.acall(slow) == "late"  # the caller still gets its answer

    clock.run(scenario())
    assert state_of(breaker) is State.OPEN
    assert reasons(journal) == ["2 consecutive failures (last: slow call 2.5s)"]


def test_an_async_success_just_in_time_is_a_success() -> None:
    clock = VirtualClock()
    breaker = make(clock, slow_after=2.0)

    async def in_time() -> str:
        await clock.asleep(2.0)
        return "ok"

    async def failing() -> None:
        raise Boom

    async def scenario() -> None:
        with pytest.raises(Boom):
            await breaker.acall(failing)
        assert await breaker.acall(in_time) == "ok"  # clears the streak

    clock.run(scenario())
    assert breaker.stats().failures == 0


def test_a_slow_async_error_outside_on_is_a_failure() -> None:
    clock = VirtualClock()
    journal = Journal()
    breaker = make(clock, journal, slow_after=1.0)

    async def slow_bad_request() -> None:
        await clock.asleep(3.0)
        raise ValueError("caller's bug")

    async def scenario() -> None:
        for _ in range(2):
            with pytest.raises(ValueError, match="caller's bug"):
                await breaker.acall(slow_bad_request)

    clock.run(scenario())
    assert state_of(breaker) is State.OPEN
    assert reasons(journal) == ["2 consecutive failures (last: slow call 3s)"]


def test_a_quick_failure_names_its_exception_even_with_slow_after_set() -> None:
    clock = VirtualClock()
    journal = Journal()
    breaker = make(clock, journal, slow_after=5.0)

    def quick_failure() -> None:
        clock.advance(1.0)
        raise Boom("down")

    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(quick_failure)
    assert reasons(journal) == ["2 consecutive failures (last: Boom)"]


def test_a_slow_probe_reopens_the_breaker_naming_its_slowness() -> None:
    clock = VirtualClock()
    journal = Journal()
    breaker = make(clock, journal, slow_after=2.0)
    breaker.acquire().failure()
    breaker.acquire().failure()
    clock.advance(10.0)

    def slow_answer() -> str:
        clock.advance(3.0)
        return "late"

    assert breaker.call(slow_answer) == "late"
    assert state_of(breaker) is State.OPEN
    assert reasons(journal)[-1] == "probe failed (last: slow call 3s)"


def test_an_async_failure_names_its_exception_in_the_reason() -> None:
    clock = VirtualClock()
    journal = Journal()
    breaker = make(clock, journal)

    async def down() -> None:
        raise Boom("down")

    async def scenario() -> None:
        for _ in range(2):
            with pytest.raises(Boom):
                await breaker.acall(down)

    clock.run(scenario())
    assert reasons(journal) == ["2 consecutive failures (last: Boom)"]


# ------------------------------------------------------------------------ settings


def test_by_default_an_open_breaker_waits_thirty_seconds() -> None:
    clock = VirtualClock()
    breaker = CircuitBreaker("svc", on=Boom, trip=ConsecutiveFailures(1), clock=clock)
    breaker.acquire().failure()
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: None)
    assert info.value.retry_after == 30.0


def test_slow_after_zero_makes_any_call_that_takes_time_slow() -> None:
    clock = VirtualClock()
    breaker = make(clock, slow_after=0.0)

    def instant() -> str:
        return "ok"

    def takes_time() -> str:
        clock.advance(0.001)
        return "ok"

    breaker.call(instant)
    assert breaker.stats().failures == 0
    breaker.call(takes_time)
    assert breaker.stats().failures == 1


def test_a_negative_slow_after_is_refused_with_its_value() -> None:
    with pytest.raises(ValueError, match="slow_after") as info:
        CircuitBreaker("svc", on=Boom, slow_after=-0.5)
    assert str(info.value) == "slow_after must be >= 0, got -0.5"


# --------------------------------------------------------------- recovery reasons


def test_recovery_reasons_name_the_wait_and_the_probes() -> None:
    clock = VirtualClock()
    journal = Journal()
    breaker = make(clock, journal, recovery=HalfOpen(after=2.5, probes=2, successes=2))
    breaker.acquire().failure()
    breaker.acquire().failure()
    clock.advance(2.5)
    first, second = breaker.acquire(), breaker.acquire()
    first.success()
    second.success()
    assert reasons(journal) == [
        "2 consecutive failures",
        "recovery after 2.5s",
        "2 probes succeeded",
    ]


def test_a_fresh_breaker_is_closed_with_nothing_counted_and_no_probes() -> None:
    assert make(VirtualClock()).stats() == BreakerStats(
        state=State.CLOSED,
        generation=0,
        calls=0,
        failures=0,
        probes_in_flight=0,
        probe_successes=0,
        retry_after=None,
    )


def test_a_permit_says_whether_it_is_settled() -> None:
    permit = make(VirtualClock()).acquire()
    assert permit.settled is False
    permit.success()
    assert permit.settled is True


def test_settling_a_permit_twice_names_the_breaker() -> None:
    breaker = make(VirtualClock())
    permit = breaker.acquire()
    permit.success()
    with pytest.raises(RuntimeError, match="already settled") as info:
        permit.ignore()
    assert str(info.value) == "permit of breaker 'svc' is already settled"


def test_a_bad_filter_error_names_the_argument() -> None:
    with pytest.raises(TypeError) as on:
        CircuitBreaker("svc", on=42)  # type: ignore[arg-type]
    assert str(on.value) == "on= takes an exception class, a tuple of them or a predicate: 42"
    with pytest.raises(TypeError) as exclude:
        CircuitBreaker("svc", on=Boom, exclude=(ValueError, "nope"))  # type: ignore[arg-type]
    assert str(exclude.value) == "exclude= takes exception classes, got ['nope']"


def test_each_transition_starts_a_new_generation() -> None:
    breaker = make(VirtualClock(), trip=ConsecutiveFailures(1))
    assert breaker.stats().generation == 0
    breaker.reset()
    late = breaker.acquire()  # admitted in generation 1
    breaker.reset()
    breaker.reset()
    assert breaker.stats().generation == 3
    late.failure()  # its generation is gone: ignored
    stats = breaker.stats()
    assert (stats.state, stats.failures) == (State.CLOSED, 0)


def test_rejections_outside_the_open_state_are_journaled_too() -> None:
    clock = VirtualClock(start=3.0)
    journal = Journal()
    breaker = make(clock, journal, trip=ConsecutiveFailures(1), recovery=HalfOpen(after=1.0))
    breaker.force_open()
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: None)
    breaker.reset()
    breaker.acquire().failure()
    clock.advance(1.0)
    probe = breaker.acquire()  # the one probe slot
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert (info.value.state, info.value.retry_after) == ("half_open", 0.0)
    probe.success()
    assert [(e.time, e.source, e.state) for e in journal.events(CallRejected)] == [
        (3.0, "svc", "forced_open"),
        (4.0, "svc", "half_open"),
    ]


def test_slowness_is_the_call_duration_whatever_the_clock_reads() -> None:
    clock = VirtualClock(start=100.0)
    breaker = make(clock, slow_after=2.0)

    def quick() -> str:
        clock.advance(0.5)
        return "ok"

    breaker.acquire().failure()
    assert breaker.call(quick) == "ok"  # 0.5 s: a success, which ends the streak
    stats = breaker.stats()
    assert (stats.state, stats.failures) == (State.CLOSED, 0)


def test_a_success_ends_the_streak_in_a_later_generation_too() -> None:
    breaker = make(VirtualClock())
    breaker.reset()  # generation 1
    breaker.acquire().failure()
    assert breaker.call(lambda: "ok") == "ok"
    breaker.acquire().failure()
    stats = breaker.stats()
    assert (stats.state, stats.generation, stats.failures) == (State.CLOSED, 1, 1)


def test_a_settled_failure_names_its_exception_in_the_reason() -> None:
    journal = Journal()
    breaker = make(VirtualClock(), journal)
    breaker.acquire().settle(Boom())
    breaker.acquire().settle(TimeoutError())
    assert reasons(journal) == []  # TimeoutError is outside on=: a success
    breaker.acquire().settle(Boom())
    assert reasons(journal) == []
    breaker.acquire().settle(Boom())
    assert reasons(journal) == ["2 consecutive failures (last: Boom)"]
