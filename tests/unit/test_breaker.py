"""Unit tests for the circuit breaker, on a virtual clock."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest

from pytest_resilience.core.breaker import (
    BreakerStats,
    CircuitBreaker,
    ConsecutiveFailures,
    CountWindow,
    HalfOpen,
    State,
    TimeWindow,
)
from pytest_resilience.core.clock import SystemClock, VirtualClock
from pytest_resilience.core.errors import CircuitOpenError
from pytest_resilience.core.events import BreakerTransition, CallRejected, Event
from pytest_resilience.core.journal import Journal

if TYPE_CHECKING:
    from collections.abc import Callable


class Boom(ConnectionError):
    """A failure the breakers below count."""


class Skip(Exception):
    """An exception the breakers below exclude."""


def ok() -> str:
    return "ok"


def boom() -> None:
    raise Boom("down")


def make(clock: VirtualClock, journal: Journal | None = None, **kwargs: Any) -> CircuitBreaker:
    kwargs.setdefault("on", Boom)
    kwargs.setdefault("exclude", Skip)
    kwargs.setdefault("trip", ConsecutiveFailures(3))
    kwargs.setdefault("recovery", HalfOpen(after=10.0))
    return CircuitBreaker("svc", clock=clock, journal=journal, **kwargs)


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(Boom):
            breaker.call(boom)


def state_of(breaker: CircuitBreaker) -> State:
    """``breaker.state``; a call, so that mypy does not narrow the property across asserts."""
    return breaker.state


def transitions(journal: Journal) -> list[str]:
    return [f"{e.from_state}->{e.to_state}" for e in journal.events(BreakerTransition)]


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def journal() -> Journal:
    return Journal()


# ------------------------------------------------------------------------ configuration


def test_on_is_required(clock: VirtualClock) -> None:
    with pytest.raises(TypeError, match="on"):
        CircuitBreaker("svc", clock=clock)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("make_bad", "error"),
    [
        (lambda: ConsecutiveFailures(0), ValueError),
        (lambda: CountWindow(size=0), ValueError),
        (lambda: CountWindow(size=5, rate=0.0), ValueError),
        (lambda: CountWindow(size=5, rate=1.5), ValueError),
        (lambda: CountWindow(size=5, min_calls=6), ValueError),
        (lambda: TimeWindow(seconds=0), ValueError),
        (lambda: TimeWindow(min_calls=0), ValueError),
        (lambda: HalfOpen(after=-1), ValueError),
        (lambda: HalfOpen(probes=0), ValueError),
        (lambda: HalfOpen(successes=0), ValueError),
        (lambda: CircuitBreaker("x", on=Boom, slow_after=-1), ValueError),
        (lambda: CircuitBreaker("x", on=(Boom, "nope")), TypeError),  # type: ignore[arg-type]
        (lambda: CircuitBreaker("x", on=42), TypeError),  # type: ignore[arg-type]
    ],
)
def test_bad_settings_are_rejected(make_bad: Callable[[], object], error: type[Exception]) -> None:
    with pytest.raises(error):
        make_bad()


def test_recovery_accepts_plain_seconds(clock: VirtualClock) -> None:
    breaker = CircuitBreaker("svc", on=Boom, recovery=7.5, clock=clock)
    assert breaker.recovery == HalfOpen(after=7.5, probes=1, successes=1)
    assert breaker.trip == ConsecutiveFailures(5)


# ---------------------------------------------------------------- consecutive failures


def test_consecutive_failures_open_the_breaker(clock: VirtualClock, journal: Journal) -> None:
    breaker = make(clock, journal)
    fail(breaker, 2)
    assert state_of(breaker) is State.CLOSED
    assert breaker.stats().failures == 2
    fail(breaker)
    assert state_of(breaker) is State.OPEN
    [event] = journal.events(BreakerTransition)
    assert (event.from_state, event.to_state, event.source) == ("closed", "open", "svc")
    assert event.reason == "3 consecutive failures (last: Boom)"


def test_a_success_restarts_the_count(clock: VirtualClock) -> None:
    breaker = make(clock)
    fail(breaker, 2)
    assert breaker.call(ok) == "ok"
    fail(breaker, 2)
    assert state_of(breaker) is State.CLOSED
    assert breaker.stats().failures == 2


def test_closed_success_appends_nothing(clock: VirtualClock, journal: Journal) -> None:
    breaker = make(clock, journal)
    for _ in range(10):
        breaker.call(ok)
    fail(breaker)
    breaker.call(ok)  # this one takes the lock to clear the streak, and still appends nothing
    assert len(journal) == 0


def test_open_breaker_rejects_with_retry_after(clock: VirtualClock, journal: Journal) -> None:
    breaker = make(clock, journal)
    fail(breaker, 3)
    clock.advance(4.0)
    calls: list[int] = []
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(calls.append, 1)
    assert calls == []
    assert (info.value.breaker, info.value.state) == ("svc", "open")
    assert info.value.retry_after == pytest.approx(6.0)
    [rejected] = journal.events(CallRejected)
    assert (rejected.state, rejected.time, rejected.source) == ("open", 4.0, "svc")
    assert breaker.stats().retry_after == pytest.approx(6.0)


def test_every_call_form_rejects_alike_and_records_it(
    clock: VirtualClock, journal: Journal
) -> None:
    breaker = make(clock, journal)
    fail(breaker, 3)
    clock.advance(4.0)

    async def acall() -> None:
        await breaker.acall(asyncio.sleep, 0)

    @breaker
    async def decorated_async() -> None:
        await asyncio.sleep(0)

    forms: dict[str, Callable[[], object]] = {
        "call": lambda: breaker.call(ok),
        "decorator": breaker(ok),
        "acquire": breaker.acquire,
        "acall": lambda: asyncio.run(acall()),
        "async decorator": lambda: asyncio.run(decorated_async()),
    }
    for form, attempt in forms.items():
        with pytest.raises(CircuitOpenError) as info:
            attempt()
        error = info.value
        assert (error.breaker, error.state, error.retry_after) == ("svc", "open", 6.0), form
        assert str(error) == "circuit 'svc' is open; retry in 6s", form
        assert error.args == ("svc", "open", 6.0), form
    assert [(e.time, e.source, e.state) for e in journal.events(CallRejected)] == [
        (4.0, "svc", "open")
    ] * len(forms)
    breaker.force_open()
    with pytest.raises(CircuitOpenError) as forced:
        breaker.call(ok)
    assert (forced.value.state, forced.value.retry_after) == ("forced_open", None)
    assert str(forced.value) == "circuit 'svc' is forced_open"


def test_on_the_system_clock_a_rejection_reads_what_the_clock_reads(
    monkeypatch: pytest.MonkeyPatch, journal: Journal
) -> None:
    # Every call form that rejects reads the breaker's clock: on a SystemClock, what
    # ``time.monotonic()`` says at that call.
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    assert SystemClock().now() == 1000.0
    breaker = CircuitBreaker("svc", on=Boom, trip=ConsecutiveFailures(3), recovery=10.0)
    breaker.journal = journal
    fail(breaker, 3)
    now[0] = 1004.0

    async def acall() -> None:
        await breaker.acall(asyncio.sleep, 0)

    forms: dict[str, Callable[[], object]] = {
        "call": lambda: breaker.call(ok),
        "decorator": breaker(ok),
        "acquire": breaker.acquire,
        "acall": lambda: asyncio.run(acall()),
    }
    for form, attempt in forms.items():
        with pytest.raises(CircuitOpenError) as info:
            attempt()
        assert info.value.args == ("svc", "open", 6.0), form
    assert [e.time for e in journal.events(CallRejected)] == [1004.0] * len(forms)
    now[0] = 1010.0
    assert breaker.call(ok) == "ok"  # the probe
    assert state_of(breaker) is State.CLOSED


def test_a_replaced_clock_is_the_one_a_rejection_reads(clock: VirtualClock) -> None:
    breaker = make(clock)
    fail(breaker, 3)  # opened at 0, until 10
    other = VirtualClock(start=7.0)
    breaker.clock = other
    assert breaker.clock is other
    with pytest.raises(CircuitOpenError) as info:
        breaker(ok)()
    assert info.value.retry_after == pytest.approx(3.0)
    breaker.clock = SystemClock()  # its time is far past 10: the next call is a probe
    assert breaker(ok)() == "ok"


# ---------------------------------------------------------------------- recovery


def test_half_opens_lazily_when_recovery_elapses(clock: VirtualClock, journal: Journal) -> None:
    breaker = make(clock, journal)
    fail(breaker, 3)
    clock.advance(9.999)
    assert state_of(breaker) is State.OPEN
    clock.advance(0.001)
    assert transitions(journal) == ["closed->open"]  # nothing happens until somebody looks
    assert state_of(breaker) is State.HALF_OPEN
    assert transitions(journal) == ["closed->open", "open->half_open"]
    assert journal.events(BreakerTransition)[-1].time == 10.0


def test_a_call_after_recovery_is_a_probe_that_closes(
    clock: VirtualClock, journal: Journal
) -> None:
    breaker = make(clock, journal)
    fail(breaker, 3)
    clock.advance(10.0)
    assert breaker.call(ok) == "ok"
    assert state_of(breaker) is State.CLOSED
    assert transitions(journal) == ["closed->open", "open->half_open", "half_open->closed"]
    assert journal.events(BreakerTransition)[-1].reason == "1 probe succeeded"
    assert breaker.stats().failures == 0


def test_a_failed_probe_reopens(clock: VirtualClock, journal: Journal) -> None:
    breaker = make(clock, journal, recovery=HalfOpen(after=10.0, successes=3))
    fail(breaker, 3)
    clock.advance(10.0)
    breaker.call(ok)
    breaker.call(ok)
    assert state_of(breaker) is State.HALF_OPEN
    assert breaker.stats().probe_successes == 2
    fail(breaker)
    assert state_of(breaker) is State.OPEN
    assert journal.events(BreakerTransition)[-1].reason == "probe failed (last: Boom)"
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ok)
    assert info.value.retry_after == pytest.approx(10.0)  # the recovery time starts again


def test_successes_needed_to_close(clock: VirtualClock) -> None:
    breaker = make(clock, recovery=HalfOpen(after=1.0, successes=3))
    fail(breaker, 3)
    clock.advance(1.0)
    for _ in range(2):
        breaker.call(ok)
        assert state_of(breaker) is State.HALF_OPEN
    breaker.call(ok)
    assert state_of(breaker) is State.CLOSED


def test_probes_are_capped_in_flight_not_in_total(clock: VirtualClock) -> None:
    breaker = make(clock, recovery=HalfOpen(after=1.0, probes=2, successes=3))
    fail(breaker, 3)
    clock.advance(1.0)
    first, second = breaker.acquire(), breaker.acquire()
    assert breaker.stats().probes_in_flight == 2
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert (info.value.state, info.value.retry_after) == ("half_open", 0.0)
    first.success()
    third = breaker.acquire()  # a slot is free again: three probes started, two in flight
    assert breaker.stats().probes_in_flight == 2
    second.success()
    third.success()
    assert state_of(breaker) is State.CLOSED


def test_an_excluded_probe_frees_its_slot_and_counts_nothing(clock: VirtualClock) -> None:
    breaker = make(clock, recovery=HalfOpen(after=1.0))
    fail(breaker, 3)
    clock.advance(1.0)

    def skip() -> None:
        raise Skip

    with pytest.raises(Skip):
        breaker.call(skip)
    stats = breaker.stats()
    assert (stats.state, stats.probes_in_flight, stats.probe_successes) == (State.HALF_OPEN, 0, 0)
    breaker.call(ok)
    assert state_of(breaker) is State.CLOSED


def test_an_interrupt_frees_the_probe_slot_and_propagates(clock: VirtualClock) -> None:
    breaker = make(clock, recovery=HalfOpen(after=1.0))
    fail(breaker, 3)
    clock.advance(1.0)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call(interrupted)
    assert breaker.stats().probes_in_flight == 0
    assert state_of(breaker) is State.HALF_OPEN


# ------------------------------------------------------------------- what counts


def test_excluded_exceptions_count_as_neither(clock: VirtualClock) -> None:
    breaker = make(clock, trip=CountWindow(size=4, rate=0.5, min_calls=2))

    def skip() -> None:
        raise Skip

    for _ in range(5):
        with pytest.raises(Skip):
            breaker.call(skip)
    assert breaker.stats().calls == 0
    fail(breaker)
    assert breaker.stats().calls == 1


def test_exceptions_outside_on_count_as_successes(clock: VirtualClock) -> None:
    breaker = make(clock, trip=CountWindow(size=4, rate=0.5, min_calls=4))

    def bad_request() -> None:
        raise ValueError("caller's bug")

    fail(breaker)
    for _ in range(3):
        with pytest.raises(ValueError, match="caller's bug"):
            breaker.call(bad_request)
    stats = breaker.stats()
    assert (stats.state, stats.calls, stats.failures) == (State.CLOSED, 4, 1)


def test_on_and_exclude_take_predicates(clock: VirtualClock) -> None:
    breaker = make(
        clock,
        on=lambda exc: "down" in str(exc),
        exclude=lambda exc: "ignore" in str(exc),
        trip=ConsecutiveFailures(2),
    )

    def raising(message: str) -> Callable[[], None]:
        def run() -> None:
            raise RuntimeError(message)

        return run

    with pytest.raises(RuntimeError):
        breaker.call(raising("down, but ignore"))
    with pytest.raises(RuntimeError):
        breaker.call(raising("down"))
    assert breaker.stats().failures == 1
    with pytest.raises(RuntimeError):
        breaker.call(raising("up"))
    assert breaker.stats().failures == 0


def test_on_takes_a_tuple(clock: VirtualClock) -> None:
    breaker = make(clock, on=(KeyError, Boom), trip=ConsecutiveFailures(2))

    def missing() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        breaker.call(missing)
    fail(breaker)
    assert state_of(breaker) is State.OPEN


def test_slow_calls_count_as_failures(clock: VirtualClock, journal: Journal) -> None:
    breaker = make(clock, journal, slow_after=2.0, trip=ConsecutiveFailures(2))

    def slow() -> str:
        clock.advance(2.5)
        return "late"

    def just_in_time() -> str:
        clock.advance(2.0)
        return "ok"

    assert breaker.call(just_in_time) == "ok"
    assert breaker.stats().failures == 0
    assert breaker.call(slow) == "late"  # the caller still gets its answer
    assert breaker.stats().failures == 1
    assert breaker.call(slow) == "late"
    assert state_of(breaker) is State.OPEN
    assert journal.events(BreakerTransition)[0].reason.endswith("(last: slow call 2.5s)")


def test_a_slow_probe_reopens(clock: VirtualClock) -> None:
    breaker = make(clock, slow_after=1.0, recovery=HalfOpen(after=5.0))
    fail(breaker, 3)
    clock.advance(5.0)
    with breaker.acquire() as permit:
        clock.advance(3.0)
    assert permit.settled
    assert state_of(breaker) is State.OPEN


def test_an_excluded_slow_call_counts_as_neither(clock: VirtualClock) -> None:
    breaker = make(clock, slow_after=1.0)

    def slow_skip() -> None:
        clock.advance(5.0)
        raise Skip

    with pytest.raises(Skip):
        breaker.call(slow_skip)
    assert breaker.stats().calls == 0


# ------------------------------------------------------------------------ windows


def test_count_window_waits_for_min_calls(clock: VirtualClock) -> None:
    breaker = make(clock, trip=CountWindow(size=10, rate=0.5, min_calls=4))
    fail(breaker, 3)
    assert state_of(breaker) is State.CLOSED  # 100% failures, but only 3 calls
    breaker.call(ok)  # 3 of 4 failed: the rate now counts, and a success can trip it
    assert state_of(breaker) is State.OPEN


def test_count_window_slides(clock: VirtualClock) -> None:
    breaker = make(clock, trip=CountWindow(size=4, rate=0.75, min_calls=4))
    fail(breaker, 2)
    for _ in range(4):
        breaker.call(ok)  # pushes both failures out
    assert breaker.stats() == BreakerStats(State.CLOSED, 0, 4, 0, 0, 0, None)
    fail(breaker, 2)
    assert state_of(breaker) is State.CLOSED  # 2 of 4
    fail(breaker)
    assert state_of(breaker) is State.OPEN  # 3 of 4


def test_count_window_default_min_calls_is_the_size(clock: VirtualClock) -> None:
    breaker = make(clock, trip=CountWindow(size=3, rate=0.1))
    fail(breaker, 2)
    assert state_of(breaker) is State.CLOSED
    breaker.call(ok)
    assert state_of(breaker) is State.OPEN


def test_time_window_forgets_old_calls(clock: VirtualClock, journal: Journal) -> None:
    breaker = make(clock, journal, trip=TimeWindow(seconds=60, rate=0.5, min_calls=4))
    fail(breaker, 3)
    clock.advance(59.0)
    breaker.call(ok)
    assert state_of(breaker) is State.OPEN  # 3 of 4 within 60 s
    assert "over the last 60s" in journal.events(BreakerTransition)[0].reason

    breaker.reset()
    fail(breaker, 3)
    clock.advance(60.0)  # the three failures are exactly 60 s old: out of the window
    assert breaker.stats().calls == 0
    breaker.call(ok)
    fail(breaker, 2)
    assert breaker.stats().calls == 3
    assert state_of(breaker) is State.CLOSED  # only 3 calls in the window


def test_time_window_uses_the_end_time_of_each_call(clock: VirtualClock) -> None:
    breaker = make(clock, trip=TimeWindow(seconds=10, rate=1.0, min_calls=2))

    def long_failure() -> None:
        clock.advance(8.0)
        raise Boom

    with pytest.raises(Boom):
        breaker.call(long_failure)  # started at 0, ended at 8
    clock.advance(9.0)  # now 17: that failure ended 9 s ago
    fail(breaker)
    assert state_of(breaker) is State.OPEN


# ------------------------------------------------------------------ late outcomes


def test_late_outcome_from_closed_does_not_touch_half_open(
    clock: VirtualClock, journal: Journal
) -> None:
    breaker = make(clock, journal)
    early = breaker.acquire()
    fail(breaker, 3)
    clock.advance(10.0)
    probe = breaker.acquire()
    assert breaker.stats().probes_in_flight == 1
    early.failure(Boom())  # admitted while closed: ignored
    stats = breaker.stats()
    assert (stats.state, stats.probes_in_flight) == (State.HALF_OPEN, 1)
    probe.success()
    assert state_of(breaker) is State.CLOSED


def test_late_failures_do_not_reopen_after_reset(clock: VirtualClock) -> None:
    breaker = make(clock, trip=ConsecutiveFailures(1))
    permits = [breaker.acquire() for _ in range(3)]
    breaker.reset()  # same state, new generation
    for permit in permits:
        permit.failure()
    assert state_of(breaker) is State.CLOSED
    assert breaker.stats().failures == 0


def test_late_probe_after_reopen_does_not_close(clock: VirtualClock) -> None:
    breaker = make(clock, recovery=HalfOpen(after=1.0, probes=2))
    fail(breaker, 3)
    clock.advance(1.0)
    slow_probe, bad_probe = breaker.acquire(), breaker.acquire()
    bad_probe.failure()
    assert state_of(breaker) is State.OPEN
    slow_probe.success()
    assert state_of(breaker) is State.OPEN


# ------------------------------------------------------------------- manual control


def test_force_open_rejects_until_reset(clock: VirtualClock, journal: Journal) -> None:
    breaker = make(clock, journal)
    breaker.force_open()
    clock.advance(1e6)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ok)
    assert (info.value.state, info.value.retry_after) == ("forced_open", None)
    assert state_of(breaker) is State.FORCED_OPEN
    breaker.reset()
    assert breaker.call(ok) == "ok"
    assert transitions(journal) == ["closed->forced_open", "forced_open->closed"]
    assert [e.reason for e in journal.events(BreakerTransition)] == ["force_open()", "reset()"]


def test_force_closed_counts_but_never_trips(clock: VirtualClock, journal: Journal) -> None:
    breaker = make(clock, journal)
    breaker.force_closed()
    fail(breaker, 10)
    stats = breaker.stats()
    assert (stats.state, stats.failures) == (State.FORCED_CLOSED, 10)
    breaker.reset()
    assert breaker.stats().failures == 0
    assert transitions(journal) == ["closed->forced_closed", "forced_closed->closed"]


def test_disabled_admits_and_counts_nothing(clock: VirtualClock, journal: Journal) -> None:
    breaker = make(clock, journal)
    fail(breaker, 3)
    breaker.disable()
    fail(breaker, 10)
    assert breaker.call(ok) == "ok"
    stats = breaker.stats()
    assert (stats.state, stats.calls, stats.failures) == (State.DISABLED, 0, 0)
    assert transitions(journal) == ["closed->open", "open->disabled"]
    assert journal.events(CallRejected) == []


def test_manual_action_in_the_same_state_clears_counts_silently(
    clock: VirtualClock, journal: Journal
) -> None:
    breaker = make(clock, journal)
    fail(breaker, 2)
    before = breaker.stats().generation
    breaker.reset()
    assert breaker.stats().failures == 0
    assert breaker.stats().generation == before + 1
    assert len(journal) == 0


def test_reset_from_open_closes_at_once(clock: VirtualClock) -> None:
    breaker = make(clock)
    fail(breaker, 3)
    breaker.reset()
    assert breaker.call(ok) == "ok"


# -------------------------------------------------------------------- call forms


def test_permit_context_manager_settles_from_the_block(clock: VirtualClock) -> None:
    breaker = make(clock, trip=ConsecutiveFailures(2))
    with pytest.raises(Boom), breaker.acquire():
        raise Boom
    with breaker.acquire() as permit:
        pass
    assert permit.settled
    assert breaker.stats().failures == 0
    with pytest.raises(Boom), breaker.acquire():
        raise Boom
    with pytest.raises(Boom), breaker.acquire():
        raise Boom
    assert state_of(breaker) is State.OPEN


def test_permit_settles_once(clock: VirtualClock) -> None:
    breaker = make(clock)
    permit = breaker.acquire()
    permit.success()
    with pytest.raises(RuntimeError, match="already settled"):
        permit.failure()
    with breaker.acquire() as inner:
        inner.failure(Boom())  # settled inside the block: the exit leaves it alone
    assert breaker.stats().failures == 1


def test_permit_settle_applies_the_rules(clock: VirtualClock) -> None:
    breaker = make(clock)
    breaker.acquire().settle(Skip())
    breaker.acquire().settle(ValueError())
    assert breaker.stats().failures == 0
    breaker.acquire().settle(Boom())
    assert breaker.stats().failures == 1
    breaker.acquire().settle(None)
    assert breaker.stats().failures == 0
    breaker.acquire().ignore()
    assert breaker.stats().calls == 0


def test_call_passes_arguments_and_returns(clock: VirtualClock) -> None:
    breaker = make(clock)

    def add(a: int, b: int = 0) -> int:
        return a + b

    assert breaker.call(add, 2, b=3) == 5


def test_decorator_sync(clock: VirtualClock) -> None:
    breaker = make(clock, trip=ConsecutiveFailures(2))

    @breaker
    def fetch(x: int) -> int:
        """Fetch x."""
        if x < 0:
            raise Boom
        return x * 2

    assert fetch(21) == 42
    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch x."
    for _ in range(2):
        with pytest.raises(Boom):
            fetch(-1)
    with pytest.raises(CircuitOpenError):
        fetch(1)


def test_acall_and_async_decorator(clock: VirtualClock) -> None:
    breaker = make(clock, trip=ConsecutiveFailures(2), recovery=HalfOpen(after=1.0))

    @breaker
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        if x < 0:
            raise Boom
        return x

    async def scenario() -> None:
        assert await fetch(3) == 3

        async def aok() -> str:
            return "ok"

        assert await breaker.acall(aok) == "ok"
        for _ in range(2):
            with pytest.raises(Boom):
                await fetch(-1)
        with pytest.raises(CircuitOpenError):
            await breaker.acall(aok)
        clock.advance(1.0)
        assert await fetch(5) == 5

    asyncio.run(scenario())
    assert state_of(breaker) is State.CLOSED
    assert asyncio.iscoroutinefunction(fetch)


def test_cancelled_async_probe_counts_as_neither(clock: VirtualClock) -> None:
    breaker = make(clock, recovery=HalfOpen(after=1.0))
    fail(breaker, 3)
    clock.advance(1.0)

    async def scenario() -> None:
        started = asyncio.Event()

        async def hang() -> None:
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(breaker.acall(hang))
        await started.wait()
        assert breaker.stats().probes_in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    stats = breaker.stats()
    assert (stats.state, stats.probes_in_flight) == (State.HALF_OPEN, 0)


# ------------------------------------------------------------------------ journal


def test_a_listener_may_read_the_breaker_during_a_transition(
    clock: VirtualClock, journal: Journal
) -> None:
    breaker = make(clock, journal)
    seen: list[State] = []

    def listener(event: Event) -> None:
        if isinstance(event, BreakerTransition):
            seen.append(breaker.state)

    journal.subscribe(listener)
    fail(breaker, 3)
    assert seen == [State.OPEN]


def test_no_journal_records_nothing_and_still_works(clock: VirtualClock) -> None:
    breaker = make(clock)
    fail(breaker, 3)
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    assert repr(breaker) == "<CircuitBreaker 'svc' open>"


def test_state_values_are_the_event_strings() -> None:
    assert [s.value for s in State] == [
        "closed",
        "open",
        "half_open",
        "forced_open",
        "forced_closed",
        "disabled",
    ]
