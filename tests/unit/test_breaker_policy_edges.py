"""Trip and recovery policies at their edges: defaults, boundaries, reasons, messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pytest_resilience.core.breaker import (
    CircuitBreaker,
    ConsecutiveFailures,
    CountWindow,
    HalfOpen,
    State,
    TimeWindow,
)
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import CircuitOpenError
from pytest_resilience.core.events import BreakerTransition
from pytest_resilience.core.journal import Journal

if TYPE_CHECKING:
    from collections.abc import Callable

    from pytest_resilience.core.breaker_policy import TripPolicy


class Boom(ConnectionError):
    """A failure the breakers below count."""


def boom() -> None:
    raise Boom("down")


def ok() -> str:
    return "ok"


def make(clock: VirtualClock, journal: Journal | None = None, **kwargs: Any) -> CircuitBreaker:
    kwargs.setdefault("on", Boom)
    return CircuitBreaker("svc", clock=clock, journal=journal, **kwargs)


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(Boom):
            breaker.call(boom)


def succeed(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        assert breaker.call(ok) == "ok"


def state_of(breaker: CircuitBreaker) -> State:
    return breaker.state


# ------------------------------------------------------------------------ defaults


def test_the_default_trip_opens_on_the_fifth_failure_in_a_row() -> None:
    breaker = make(VirtualClock())
    fail(breaker, 4)
    assert state_of(breaker) is State.CLOSED
    fail(breaker)
    assert state_of(breaker) is State.OPEN


def test_consecutive_failures_default_threshold_is_five() -> None:
    breaker = make(VirtualClock(), trip=ConsecutiveFailures())
    fail(breaker, 4)
    assert state_of(breaker) is State.CLOSED
    fail(breaker)
    assert state_of(breaker) is State.OPEN


def test_count_window_defaults_half_of_twenty_calls() -> None:
    breaker = make(VirtualClock(), trip=CountWindow())
    succeed(breaker, 11)
    fail(breaker, 9)
    assert state_of(breaker) is State.CLOSED  # 9 of 20: under half
    fail(breaker)  # a success leaves the window: 10 of 20, half
    assert state_of(breaker) is State.OPEN


def test_count_window_by_default_waits_for_a_full_window() -> None:
    breaker = make(VirtualClock(), trip=CountWindow())
    fail(breaker, 19)
    assert state_of(breaker) is State.CLOSED  # 19 failures, but only 19 calls
    fail(breaker)
    assert state_of(breaker) is State.OPEN


def test_time_window_defaults() -> None:
    clock = VirtualClock()
    journal = Journal()
    breaker = make(clock, journal, trip=TimeWindow())
    fail(breaker, 9)
    assert state_of(breaker) is State.CLOSED  # min_calls 10
    clock.advance(60.0)  # all nine are 60 s old: out of the window
    assert breaker.stats().calls == 0
    fail(breaker, 5)
    succeed(breaker, 4)
    assert state_of(breaker) is State.CLOSED  # 9 calls
    succeed(breaker)  # 5 of 10: half
    assert state_of(breaker) is State.OPEN
    assert journal.events(BreakerTransition)[0].reason == (
        "failure rate 5/10 >= 0.5 over the last 60s"
    )


def test_half_open_defaults_wait_thirty_seconds_and_close_on_one_probe() -> None:
    clock = VirtualClock()
    breaker = make(clock, trip=ConsecutiveFailures(1), recovery=HalfOpen())
    fail(breaker)
    clock.advance(29.0)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ok)
    assert info.value.retry_after == 1.0
    clock.advance(1.0)
    probe = breaker.acquire()
    with pytest.raises(CircuitOpenError):
        breaker.acquire()  # one probe in flight at most
    probe.success()
    assert state_of(breaker) is State.CLOSED


# ---------------------------------------------------------------------- boundaries


@pytest.mark.parametrize(
    ("policy", "after_one_failure"),
    [
        (ConsecutiveFailures(1), State.OPEN),
        (CountWindow(size=1, rate=1.0), State.OPEN),
        (CountWindow(size=3, min_calls=1), State.OPEN),
        (CountWindow(size=3, min_calls=3), State.CLOSED),
        (TimeWindow(seconds=0.001, min_calls=1), State.OPEN),
        (TimeWindow(rate=1.0, min_calls=1), State.OPEN),
    ],
)
def test_the_smallest_and_largest_allowed_settings_work(
    policy: TripPolicy, after_one_failure: State
) -> None:
    breaker = make(VirtualClock(), trip=policy)
    fail(breaker)
    assert state_of(breaker) is after_one_failure


def test_recovery_edges_are_accepted() -> None:
    clock = VirtualClock()
    breaker = make(clock, trip=ConsecutiveFailures(1), recovery=HalfOpen(after=0.0))
    fail(breaker)
    assert state_of(breaker) is State.HALF_OPEN  # zero seconds open


@pytest.mark.parametrize(
    ("make_bad", "message"),
    [
        (lambda: ConsecutiveFailures(0), "ConsecutiveFailures needs threshold >= 1, got 0"),
        (lambda: CountWindow(size=0), "CountWindow needs size >= 1, got 0"),
        (lambda: CountWindow(rate=0.0), "CountWindow needs 0 < rate <= 1, got 0.0"),
        (lambda: CountWindow(rate=1.01), "CountWindow needs 0 < rate <= 1, got 1.01"),
        (
            lambda: CountWindow(size=5, min_calls=0),
            "CountWindow needs 1 <= min_calls <= size, got 0",
        ),
        (
            lambda: CountWindow(size=5, min_calls=6),
            "CountWindow needs 1 <= min_calls <= size, got 6",
        ),
        (lambda: TimeWindow(seconds=0.0), "TimeWindow needs seconds > 0, got 0.0"),
        (lambda: TimeWindow(rate=2.0), "TimeWindow needs 0 < rate <= 1, got 2.0"),
        (lambda: TimeWindow(min_calls=0), "TimeWindow needs min_calls >= 1, got 0"),
        (lambda: HalfOpen(after=-0.5), "HalfOpen needs after >= 0, got -0.5"),
        (lambda: HalfOpen(probes=0), "HalfOpen needs probes >= 1 and successes >= 1, got 0, 1"),
        (lambda: HalfOpen(successes=0), "HalfOpen needs probes >= 1 and successes >= 1, got 1, 0"),
    ],
)
def test_bad_settings_say_what_is_allowed(make_bad: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match="needs") as info:
        make_bad()
    assert str(info.value) == message


# ------------------------------------------------------------------------- reasons


def test_count_window_reason() -> None:
    journal = Journal()
    breaker = make(VirtualClock(), journal, trip=CountWindow(size=4, rate=0.75))
    succeed(breaker)
    fail(breaker, 3)
    assert [e.reason for e in journal.events(BreakerTransition)] == [
        "failure rate 3/4 >= 0.75 over the last calls (last: Boom)"
    ]


def test_count_window_counts_a_failure_leaving_the_window() -> None:
    breaker = make(VirtualClock(), trip=CountWindow(size=3, rate=1.0))
    fail(breaker, 2)
    succeed(breaker)  # [F, F, S]
    succeed(breaker)  # [F, S, S]: one failure left
    stats = breaker.stats()
    assert (stats.calls, stats.failures) == (3, 1)
    succeed(breaker)  # [S, S, S]
    assert breaker.stats().failures == 0
    fail(breaker, 3)
    assert state_of(breaker) is State.OPEN


def test_time_window_merges_calls_that_end_at_the_same_time() -> None:
    clock = VirtualClock()
    breaker = make(clock, trip=TimeWindow(seconds=10.0, rate=1.0, min_calls=3))
    fail(breaker, 2)  # both at t=0
    clock.advance(5.0)
    succeed(breaker)  # t=5
    assert (breaker.stats().calls, breaker.stats().failures) == (3, 2)
    clock.advance(5.0)  # t=10: the two at t=0 leave together
    assert (breaker.stats().calls, breaker.stats().failures) == (1, 0)
    fail(breaker, 2)  # t=10: one call of t=5 and two of t=10
    assert (breaker.stats().calls, breaker.stats().failures) == (3, 2)
    clock.advance(5.0)  # t=15: the success of t=5 leaves, the failures stay
    assert (breaker.stats().calls, breaker.stats().failures) == (2, 2)
    fail(breaker)  # 3 of 3
    assert state_of(breaker) is State.OPEN


def test_time_window_expires_old_calls_when_recording() -> None:
    clock = VirtualClock()
    breaker = make(clock, trip=TimeWindow(seconds=10.0, rate=0.5, min_calls=2))
    fail(breaker)  # t=0
    clock.advance(10.0)
    succeed(breaker)  # t=10: the failure has left; 0 of 1
    succeed(breaker)  # 0 of 2
    assert state_of(breaker) is State.CLOSED
    fail(breaker)  # 1 of 3
    assert state_of(breaker) is State.CLOSED
    fail(breaker)  # 2 of 4
    assert state_of(breaker) is State.OPEN


# ------------------------------------------------------------------------ trackers


def test_trackers_start_empty_and_count() -> None:
    streak = ConsecutiveFailures(3).tracker()
    assert (streak.counts(0.0), streak.quiet()) == ((0, 0), True)
    assert streak.record(True, 0.0) is None
    assert (streak.counts(0.0), streak.quiet()) == ((1, 1), False)
    assert streak.record(True, 0.0) is None
    assert streak.record(True, 0.0) == "3 consecutive failures"
    assert streak.record(False, 0.0) is None
    assert (streak.counts(0.0), streak.quiet()) == ((0, 0), True)

    window = CountWindow(size=2, rate=0.5).tracker()
    assert (window.counts(0.0), window.quiet()) == ((0, 0), False)
    assert window.record(False, 0.0) is None
    assert window.quiet() is False  # not full yet: a success still adds a call
    assert window.record(False, 0.0) is None
    assert (window.counts(0.0), window.quiet()) == ((2, 0), True)
    assert window.record(True, 0.0) == "failure rate 1/2 >= 0.5 over the last calls"
    assert window.quiet() is False

    timed = TimeWindow(seconds=5.0, rate=0.5, min_calls=1).tracker()
    assert (timed.counts(0.0), timed.quiet()) == ((0, 0), False)
    assert timed.record(False, 1.0) is None
    assert timed.record(True, 2.0) == "failure rate 1/2 >= 0.5 over the last 5s"
    assert timed.counts(6.0) == (1, 1)
    assert timed.counts(7.0) == (0, 0)
