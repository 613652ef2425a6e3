"""Property tests: the retry policy keeps its contracts for any backoff, budget and failures."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import Cancelled, RateLimited, RetryError
from pytest_resilience.core.journal import Journal
from pytest_resilience.core.retry import Backoff, Jitter, Retry, result_is_none

REL = 1e-9  # float rounding in rng.uniform(a, b) may land a hair outside [a, b]


class CountingClock(VirtualClock):
    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        super().sleep(seconds)


class Boom(ConnectionError):
    pass


seconds = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)
backoffs = st.builds(
    Backoff,
    base=seconds,
    factor=st.floats(min_value=0.1, max_value=10.0),
    cap=seconds,
    jitter=st.sampled_from(list(Jitter)),
)
attempt_numbers = st.integers(min_value=1, max_value=20_000)


def le(a: float, b: float) -> bool:
    return a <= b + REL * max(1.0, abs(b))


@given(backoff=backoffs, n=attempt_numbers, seed=st.integers(0, 2**32 - 1))
def test_delays_stay_within_the_stated_bounds(backoff: Backoff, n: int, seed: int) -> None:
    rng = random.Random(seed)
    d = backoff.exponential(n)
    assert 0.0 <= d <= backoff.cap
    delay = backoff.delay(n, rng)
    assert math.isfinite(delay)
    assert 0.0 <= delay <= backoff.cap  # never above the cap, at any attempt number
    if backoff.base == 0.0 or backoff.cap == 0.0:
        assert delay == 0.0
        return
    low, high = {
        Jitter.NONE: (d, d),
        Jitter.FULL: (0.0, d),
        Jitter.EQUAL: (d / 2, d),
        Jitter.PROPORTIONAL: (0.8 * d, 1.2 * d),
        Jitter.DECORRELATED: (backoff.base, 3 * backoff.base),
    }[Jitter(backoff.jitter)]
    assert le(min(backoff.cap, low), delay)
    assert le(delay, min(backoff.cap, high))


@given(
    base=st.floats(min_value=0.0, max_value=100.0),
    cap=st.floats(min_value=0.0, max_value=1e3),
    seed=st.integers(0, 2**32 - 1),
    steps=st.integers(min_value=1, max_value=30),
)
def test_decorrelated_delays_follow_the_previous_one(
    base: float, cap: float, seed: int, steps: int
) -> None:
    backoff = Backoff(base=base, cap=cap, jitter="decorrelated")
    rng = random.Random(seed)
    prev: float | None = None
    for n in range(1, steps + 1):
        delay = backoff.delay(n, rng, prev)
        top = 3 * (base if prev is None else prev)
        assert le(min(cap, base), delay)
        assert le(delay, min(cap, max(base, top)))
        prev = delay


@given(
    backoff=backoffs,
    attempts=st.integers(min_value=1, max_value=50),
    budget=st.one_of(st.none(), st.floats(min_value=0.001, max_value=1e5)),
    work=st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=5),
    seed=st.integers(0, 2**32 - 1),
)
def test_never_more_attempts_than_allowed_nor_sleeps_past_the_budget(
    backoff: Backoff, attempts: int, budget: float | None, work: list[float], seed: int
) -> None:
    clock = CountingClock()
    raised: list[Boom] = []

    def fail() -> None:
        clock.advance(work[len(raised) % len(work)])  # each attempt takes some virtual time
        raised.append(Boom(f"failure {len(raised) + 1}"))
        raise raised[-1]

    retry = Retry(
        on=Boom,
        attempts=attempts,
        backoff=backoff,
        budget=budget,
        clock=clock,
        rng=random.Random(seed),
    )
    with pytest.raises(RetryError) as info:
        retry.call(fail)
    err = info.value
    assert 1 <= len(raised) <= attempts
    assert err.attempts == len(raised)
    assert len(clock.sleeps) <= len(raised) - 1  # at most one sleep between attempts
    assert all(0.0 < s <= backoff.cap for s in clock.sleeps)  # a zero delay is no call
    if backoff.base == 0.0 or backoff.cap == 0.0:
        assert clock.sleeps == []
    elif backoff.jitter is Jitter.NONE and budget is None:
        expected = [backoff.exponential(n) for n in range(1, len(raised))]
        assert clock.sleeps == [d for d in expected if d > 0]  # a tiny base may underflow
    if budget is None:
        assert len(raised) == attempts
        assert err.reason == "attempts"
    else:
        assert sum(clock.sleeps) <= budget
    # the last exception is preserved and chained
    assert err.last is raised[-1]
    assert err.__cause__ is raised[-1]


@given(
    attempts=st.integers(min_value=1, max_value=20),
    hints=st.lists(st.floats(min_value=0.0, max_value=50.0), min_size=1, max_size=20),
    budget=st.one_of(st.none(), st.floats(min_value=0.01, max_value=200.0)),
)
def test_retry_after_is_never_cut_short(
    attempts: int, hints: list[float], budget: float | None
) -> None:
    clock = CountingClock()
    raised: list[RateLimited] = []

    def limited() -> None:
        raised.append(RateLimited(retry_after=hints[len(raised) % len(hints)]))
        raise raised[-1]

    retry = Retry(
        on=RateLimited,
        attempts=attempts,
        backoff=Backoff(base=0.5, cap=5.0, jitter="full"),
        budget=budget,
        clock=clock,
        reraise=True,
    )
    with pytest.raises(RateLimited) as info:
        retry.call(limited)
    assert info.value is raised[-1]  # reraise: the last exception itself
    for failure, slept in zip(raised, clock.sleeps, strict=False):
        assert failure.retry_after is not None
        assert slept >= failure.retry_after
    if budget is not None:
        assert sum(clock.sleeps) <= budget


class Stop(Exception):
    """Not retried by the policies below."""


outcomes = st.lists(
    st.one_of(
        st.just("boom"),
        st.just("stop"),
        st.just("cancelled"),
        st.floats(min_value=0.0, max_value=5.0).map(lambda hint: ("limited", hint)),
        st.sampled_from([None, "ok"]),
    ),
    min_size=1,
    max_size=8,
)


@given(
    script=outcomes,
    attempts=st.integers(min_value=1, max_value=6),
    reraise=st.booleans(),
    reject_none=st.booleans(),
)
def test_the_quiet_zero_wait_fast_path_decides_like_the_general_one(
    script: list[object], attempts: int, reraise: bool, reject_none: bool
) -> None:
    """A policy with a journal takes the general path; without one, the inlined fast path."""

    def run(journal: Journal | None) -> tuple[object, int, list[float]]:
        clock = CountingClock()
        calls = 0

        def target() -> object:
            nonlocal calls
            step = script[min(calls, len(script) - 1)]
            calls += 1
            if step == "boom":
                raise Boom(str(calls))
            if step == "stop":
                raise Stop(str(calls))
            if step == "cancelled":
                raise Cancelled(str(calls))
            if isinstance(step, tuple):
                raise RateLimited(str(calls), retry_after=step[1])
            return step

        retry = Retry(
            on=(Boom, RateLimited, Cancelled),
            attempts=attempts,
            backoff=Backoff.fixed(0),
            on_result=result_is_none if reject_none else None,
            reraise=reraise,
            clock=clock,
            journal=journal,
        )
        try:
            outcome: object = retry.call(target)
        except RetryError as err:
            outcome = ("RetryError", err.attempts, err.reason, repr(err.last), err.result)
        except (Exception, Cancelled) as exc:  # Cancelled: a BaseException, never retried
            outcome = (type(exc).__name__, str(exc))
        return outcome, calls, clock.sleeps

    assert run(None) == run(Journal())
