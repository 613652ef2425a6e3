"""Unit tests for the retry policy, on a virtual clock."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import random
from typing import TYPE_CHECKING, Any

import pytest

from pytest_resilience.core.cancel import cancel_scope, current_scope, deadline
from pytest_resilience.core.classify import Action, Category, Classification, Classifier, Severity
from pytest_resilience.core.clock import SystemClock, VirtualClock
from pytest_resilience.core.errors import Cancelled, DeadlineExceeded, RateLimited, RetryError
from pytest_resilience.core.events import AttemptFailed, AttemptStarted, GaveUp, RetryScheduled
from pytest_resilience.core.journal import Journal
from pytest_resilience.core.retry import (
    Backoff,
    Jitter,
    Retry,
    RetryDetails,
    is_retryable,
    result_is_empty,
    result_is_none,
)

if TYPE_CHECKING:
    from collections.abc import Callable


class CountingClock(VirtualClock):
    """A virtual clock that records every sleep call, even a zero one."""

    def __init__(self, start: float = 0.0) -> None:
        super().__init__(start)
        self.sleeps: list[float] = []
        self._in_asleep = False

    def sleep(self, seconds: float) -> None:
        if not self._in_asleep:  # asleep() may sleep through sleep(): count each call once
            self.sleeps.append(seconds)
        super().sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._in_asleep = True
        try:
            await super().asleep(seconds)
        finally:
            self._in_asleep = False


class Boom(ConnectionError):
    """A transient failure the policies below retry."""


class Flaky:
    """Raises the given exceptions one per call, then returns ``value``; counts the calls."""

    def __init__(self, *failures: BaseException, value: object = "ok") -> None:
        self.failures = list(failures)
        self.value = value
        self.calls = 0
        self.raised: list[BaseException] = []

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        if self.failures:
            exc = self.failures.pop(0)
            self.raised.append(exc)
            raise exc
        return self.value


class Returns:
    """Returns the given values one per call (the last one forever); counts the calls."""

    def __init__(self, *values: object) -> None:
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


def always(exc_type: type[BaseException] = Boom) -> Callable[[], object]:
    """A function that fails every time with a fresh exception."""
    count = 0

    def fail() -> object:
        nonlocal count
        count += 1
        raise exc_type(f"failure {count}")

    return fail


class EdgeRandom(random.Random):
    """``uniform(a, b)`` returns ``a`` or ``b`` exactly, to pin the jitter formulas."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return b if self.high else a


def policy(clock: VirtualClock, **kwargs: Any) -> Retry:
    kwargs.setdefault("on", Boom)
    kwargs.setdefault("backoff", Backoff(base=1.0, factor=2.0, cap=60.0, jitter="none"))
    return Retry(clock=clock, **kwargs)


# ------------------------------------------------------------------------------ Backoff


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": -1.0},
        {"cap": -0.5},
        {"cap": float("inf")},
        {"base": float("nan")},
        {"factor": 0.0},
        {"factor": float("inf")},
        {"jitter": "gaussian"},
    ],
)
def test_backoff_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Backoff(**kwargs)


def test_backoff_grows_by_factor_up_to_the_cap() -> None:
    backoff = Backoff(base=0.5, factor=3.0, cap=20.0, jitter="none")
    delays = [backoff.delay(n, random.Random(0)) for n in range(1, 7)]
    assert delays == [0.5, 1.5, 4.5, 13.5, 20.0, 20.0]


def test_backoff_jitter_names_are_parsed() -> None:
    assert Backoff(jitter="decorrelated").jitter is Jitter.DECORRELATED
    assert Backoff.fixed(2.5) == Backoff(base=2.5, factor=1.0, cap=2.5, jitter=Jitter.NONE)


@pytest.mark.parametrize("jitter", list(Jitter))
def test_huge_attempt_numbers_do_not_overflow(jitter: Jitter) -> None:
    backoff = Backoff(base=1.0, factor=2.0, cap=30.0, jitter=jitter)
    assert backoff.exponential(10_000) == 30.0
    delay = backoff.delay(10_000, EdgeRandom(high=True), prev=30.0)
    assert delay == 30.0  # every strategy at its upper edge reaches exactly the cap


@pytest.mark.parametrize(
    ("jitter", "low", "high"),
    [
        ("none", 8.0, 8.0),  # d
        ("full", 0.0, 8.0),  # U(0, d)
        ("equal", 4.0, 8.0),  # d/2 + U(0, d/2)
        ("proportional", 8.0 * 0.8, 8.0 * 1.2),  # d * U(0.8, 1.2)
    ],
)
def test_jitter_formulas_at_their_edges(jitter: str, low: float, high: float) -> None:
    backoff = Backoff(base=1.0, factor=2.0, cap=100.0, jitter=jitter)  # d = 8 at retry 4
    assert backoff.delay(4, EdgeRandom(high=False)) == pytest.approx(low)
    assert backoff.delay(4, EdgeRandom(high=True)) == pytest.approx(high)


def test_decorrelated_jitter_draws_between_base_and_three_times_the_previous_delay() -> None:
    backoff = Backoff(base=2.0, factor=5.0, cap=50.0, jitter="decorrelated")
    rng = EdgeRandom(high=True)
    assert backoff.delay(1, rng) == 6.0  # U(base, 3 * base): no previous delay yet
    assert backoff.delay(2, rng, prev=6.0) == 18.0
    assert backoff.delay(3, rng, prev=18.0) == 50.0  # min(cap, 54)
    assert rng.calls == [(2.0, 6.0), (2.0, 18.0), (2.0, 54.0)]
    assert backoff.delay(9, EdgeRandom(high=False), prev=50.0) == 2.0


def test_cap_is_applied_after_jitter() -> None:
    backoff = Backoff(base=10.0, factor=1.0, cap=10.0, jitter="proportional")
    assert backoff.delay(1, EdgeRandom(high=True)) == 10.0  # 12 before the cap
    assert backoff.delay(1, EdgeRandom(high=False)) == 8.0


def test_zero_base_never_draws_from_the_rng() -> None:
    rng = EdgeRandom(high=True)
    for jitter in Jitter:
        assert Backoff(base=0.0, jitter=jitter).delay(3, rng, prev=5.0) == 0.0
    assert rng.calls == []


# ----------------------------------------------------------------------- construction


def test_on_is_required() -> None:
    with pytest.raises(TypeError, match="on"):
        Retry()  # type: ignore[call-arg]


@pytest.mark.parametrize("on", [42, (ValueError, "KeyError"), (int,)])
def test_on_rejects_what_is_not_an_exception_filter(on: Any) -> None:
    with pytest.raises(TypeError, match="on="):
        Retry(on=on)


_BUDGET = "budget must be positive and finite (or None), got "


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"attempts": 0}, ValueError, "attempts counts the first call and must be >= 1, got 0"),
        ({"attempts": True}, TypeError, "attempts must be an int, got True"),
        ({"attempts": 2.0}, TypeError, "attempts must be an int, got 2.0"),
        ({"budget": 0.0}, ValueError, _BUDGET + "0.0"),
        ({"budget": -1.0}, ValueError, _BUDGET + "-1.0"),
        ({"budget": float("inf")}, ValueError, _BUDGET + "inf"),
        ({"backoff": 1.0}, TypeError, "backoff must be a Backoff, got 1.0"),
    ],
)
def test_bad_settings_are_refused(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as caught:
        Retry(on=Boom, **kwargs)
    assert str(caught.value) == message


def test_policy_is_immutable_and_evolves_into_a_copy() -> None:
    retry = Retry(on=Boom, attempts=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        retry.attempts = 5  # type: ignore[misc]
    more = retry.with_(attempts=5)
    assert (retry.attempts, more.attempts) == (3, 5)
    assert more.on is Boom


# ------------------------------------------------------------------------- retrying


def test_retries_until_success_and_waits_the_backoff() -> None:
    clock = CountingClock()
    fn = Flaky(Boom("1"), Boom("2"))
    assert policy(clock, attempts=3).call(fn) == "ok"
    assert fn.calls == 3
    assert clock.sleeps == [1.0, 2.0]
    assert clock.now() == 3.0


def test_arguments_are_passed_on_every_attempt() -> None:
    seen: list[tuple[tuple[object, ...], dict[str, object]]] = []
    fn = Flaky(Boom())

    def record(*args: object, **kwargs: object) -> object:
        seen.append((args, kwargs))
        return fn()

    assert policy(VirtualClock()).call(record, 1, 2, key="v") == "ok"
    assert seen == [((1, 2), {"key": "v"})] * 2


def test_gives_up_with_the_last_exception_as_cause() -> None:
    clock = CountingClock()
    fn = Flaky(Boom("1"), Boom("2"), Boom("3"), Boom("4"))
    with pytest.raises(RetryError) as info:
        policy(clock, attempts=3).call(fn)
    err = info.value
    assert fn.calls == 3
    assert err.attempts == 3
    assert err.reason == "attempts"
    assert err.last is fn.raised[-1]
    assert err.__cause__ is fn.raised[-1]
    assert err.result is None
    assert "gave up after 3 attempts" in str(err)
    assert clock.sleeps == [1.0, 2.0]  # no sleep after the last attempt


def test_reraise_raises_the_last_exception_itself() -> None:
    fn = Flaky(Boom("1"), Boom("2"))
    with pytest.raises(Boom) as info:
        policy(VirtualClock(), attempts=2, reraise=True).call(fn)
    assert info.value is fn.raised[-1]


def test_attempts_one_means_no_retry() -> None:
    clock = CountingClock()
    fn = Flaky(Boom())
    with pytest.raises(RetryError):
        policy(clock, attempts=1).call(fn)
    assert fn.calls == 1
    assert clock.sleeps == []


def test_an_exception_outside_on_propagates_unchanged_at_once() -> None:
    clock = CountingClock()
    bug = KeyError("bug")
    fn = Flaky(bug)
    with pytest.raises(KeyError) as info:
        policy(clock, attempts=5).call(fn)
    assert info.value is bug
    assert fn.calls == 1
    assert clock.sleeps == []


def test_on_takes_a_tuple_and_a_predicate() -> None:
    fn = Flaky(KeyError("a"), Boom("b"))
    assert policy(VirtualClock(), on=(KeyError, Boom)).call(fn) == "ok"
    fn = Flaky(ValueError("retry me"), ValueError("not me"))
    with pytest.raises(ValueError, match="not me"):
        policy(VirtualClock(), on=lambda exc: "retry" in str(exc)).call(fn)
    assert fn.calls == 2


def test_is_retryable_follows_the_classification() -> None:
    assert is_retryable(ConnectionError("refused"))
    assert is_retryable(RateLimited(retry_after=1))
    assert not is_retryable(ValueError("bad prompt"))
    fn = Flaky(ConnectionError("refused"), TimeoutError("slow"))
    assert policy(VirtualClock(), on=is_retryable).call(fn) == "ok"
    fn = Flaky(ValueError("bad prompt"))
    with pytest.raises(ValueError, match="bad prompt"):
        policy(VirtualClock(), on=is_retryable).call(fn)


def test_cancellation_is_never_retried() -> None:
    for exc in (Cancelled("stop"), KeyboardInterrupt()):
        fn = Flaky(exc)
        with pytest.raises(type(exc)):
            policy(VirtualClock(), on=BaseException, attempts=5).call(fn)
        assert fn.calls == 1


def test_async_cancellation_is_never_retried() -> None:
    calls = 0

    async def cancelled() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    clock = VirtualClock()
    with pytest.raises(asyncio.CancelledError):
        clock.run(policy(clock, on=BaseException, attempts=5).acall(cancelled))
    assert calls == 1


def test_a_cancelled_enclosing_scope_stops_the_retries() -> None:
    clock = VirtualClock()
    journal = Journal()
    fn = Flaky(Boom("1"), Boom("2"))
    with cancel_scope(clock=clock) as scope:
        scope.cancel("shutting down")
        with pytest.raises(Boom, match="1"):
            policy(clock, attempts=5, journal=journal).call(fn)
    assert fn.calls == 1
    assert [e.reason for e in journal.events(GaveUp)] == ["cancelled"]


def test_an_expired_enclosing_deadline_stops_the_retries() -> None:
    clock = VirtualClock()
    fn = Flaky(Boom("1"), Boom("2"))

    def slow_failure() -> object:
        clock.advance(5.0)  # the caller's 3 s deadline passes during the attempt
        return fn()

    with deadline(3.0, clock=clock), pytest.raises(Boom, match="1"):
        policy(clock, attempts=5).call(slow_failure)
    assert fn.calls == 1


def test_the_policy_can_be_reused() -> None:
    retry = policy(VirtualClock(), attempts=2)
    for _ in range(3):
        fn = Flaky(Boom())
        assert retry.call(fn) == "ok"
        assert fn.calls == 2


def test_huge_attempt_numbers_run_to_the_end_at_the_cap() -> None:
    clock = CountingClock()
    backoff = Backoff(base=1.0, factor=2.0, cap=7.0, jitter="none")
    with pytest.raises(RetryError) as info:
        Retry(on=Boom, attempts=10_001, backoff=backoff, clock=clock).call(always())
    assert info.value.attempts == 10_001
    assert len(clock.sleeps) == 10_000
    assert clock.sleeps[-1] == 7.0
    assert max(clock.sleeps) == 7.0


# ------------------------------------------------------------------------- results


def test_result_predicates() -> None:
    empties: tuple[object, ...] = (None, "", "  \n", [], {}, (), b"", set())
    for empty in empties:
        assert result_is_empty(empty), empty
    fulls: tuple[object, ...] = ("a", [0], {"k": 1}, 0, 0.0, False, object())
    for full in fulls:
        assert not result_is_empty(full), full
    assert result_is_none(None)
    assert not result_is_none("")


def test_retries_a_rejected_result() -> None:
    clock = CountingClock()
    fn = Returns(None, "", "answer")
    assert policy(clock, attempts=3, on_result=result_is_empty).call(fn) == "answer"
    assert fn.calls == 3
    assert clock.sleeps == [1.0, 2.0]


def test_gives_up_on_results_keeping_the_last_one() -> None:
    fn = Returns(None)
    for reraise in (False, True):  # no exception to re-raise: RetryError either way
        with pytest.raises(RetryError) as info:
            policy(VirtualClock(), attempts=2, on_result=result_is_none, reraise=reraise).call(fn)
        err = info.value
        assert err.last is None
        assert err.__cause__ is None
        assert err.result is None
        assert "result rejected" in str(err)
    fn = Returns("   ")
    with pytest.raises(RetryError) as info:
        policy(VirtualClock(), attempts=2, on_result=result_is_empty).call(fn)
    assert info.value.result == "   "


# --------------------------------------------------------------------- zero delay


def test_zero_delay_makes_no_sleep_call() -> None:
    clock = CountingClock()
    for backoff in (Backoff.fixed(0), Backoff(base=0.0, jitter="full"), Backoff(cap=0.0)):
        fn = Flaky(Boom(), Boom())
        assert policy(clock, backoff=backoff).call(fn) == "ok"
        assert fn.calls == 3
    results = Returns(None, None, "x")
    assert policy(clock, backoff=Backoff.fixed(0), on_result=result_is_none).call(results) == "x"
    assert clock.sleeps == []


def test_zero_delay_makes_no_sleep_call_async() -> None:
    clock = CountingClock()
    fn = Flaky(Boom(), Boom())

    async def flaky() -> object:
        return fn()

    retry = policy(clock, backoff=Backoff.fixed(0))
    assert clock.run(retry.acall(flaky)) == "ok"
    assert fn.calls == 3
    assert clock.sleeps == []


# ---------------------------------------------------------------------- decorators


def test_decorator_on_a_function() -> None:
    clock = CountingClock()
    fn = Flaky(Boom())

    @policy(clock)
    def ask(prompt: str, *, temperature: float = 0.0) -> str:
        """Ask the model."""
        return f"{fn()}:{prompt}:{temperature}"

    assert ask("hi", temperature=0.5) == "ok:hi:0.5"
    assert ask.__name__ == "ask"
    assert ask.__doc__ == "Ask the model."
    assert fn.calls == 2
    assert clock.sleeps == [1.0]


def test_decorator_on_a_coroutine_function() -> None:
    clock = CountingClock()
    fn = Flaky(Boom(), Boom())

    @policy(clock)
    async def ask(prompt: str) -> str:
        await asyncio.sleep(0)
        return f"{fn()}:{prompt}"

    assert inspect.iscoroutinefunction(ask)
    assert clock.run(ask("hi")) == "ok:hi"
    assert fn.calls == 3
    assert clock.sleeps == [1.0, 2.0]


def test_decorators_with_a_budget() -> None:
    clock = VirtualClock()
    retry = policy(clock, budget=30.0)
    sync_fn = Flaky(Boom())
    async_fn = Flaky(Boom())

    @retry
    def ask() -> object:
        assert current_scope() is not None  # every attempt runs in the budget's scope
        return sync_fn()

    @retry
    async def aask() -> object:
        assert current_scope() is not None
        return async_fn()

    assert ask() == "ok"
    assert clock.run(aask()) == "ok"
    assert (sync_fn.calls, async_fn.calls) == (2, 2)


def test_decorator_retries_rejected_results() -> None:
    fn = Returns(None, "x")
    decorated = policy(VirtualClock(), on_result=result_is_none)(fn)
    assert decorated() == "x"
    assert fn.calls == 2


def test_async_call_gives_up_and_retries_results() -> None:
    clock = CountingClock()
    values = Returns(None, "fine")

    async def answer() -> object:
        return values()

    retry = policy(clock, on_result=result_is_none)
    assert clock.run(retry.acall(answer)) == "fine"

    fails = always()

    async def failing() -> object:
        return fails()

    with pytest.raises(RetryError) as info:
        clock.run(policy(clock, attempts=2).acall(failing))
    assert isinstance(info.value.__cause__, Boom)
    assert str(info.value.__cause__) == "failure 2"


# ------------------------------------------------------------------------- events


def test_events_of_a_run_that_recovers() -> None:
    clock = VirtualClock(start=100.0)
    journal = Journal()
    fn = Flaky(Boom("a"), Boom("b"))
    assert policy(clock, journal=journal, name="ask").call(fn) == "ok"
    assert journal.events() == [
        AttemptFailed(time=100.0, source="ask", attempt=1, error="Boom: a", category="connection"),
        RetryScheduled(time=100.0, source="ask", attempt=2, delay=1.0),
        AttemptStarted(time=101.0, source="ask", attempt=2),
        AttemptFailed(time=101.0, source="ask", attempt=2, error="Boom: b", category="connection"),
        RetryScheduled(time=101.0, source="ask", attempt=3, delay=2.0),
        AttemptStarted(time=103.0, source="ask", attempt=3),
    ]


def test_success_on_the_first_attempt_records_nothing() -> None:
    journal = Journal()
    clock = VirtualClock()
    retry = policy(clock, journal=journal)
    assert retry.call(Flaky()) == "ok"
    assert retry(Flaky())() == "ok"
    assert clock.run(retry.acall(asyncio.sleep, 0, "ok")) == "ok"
    assert len(journal) == 0


def test_events_when_giving_up() -> None:
    clock = VirtualClock()
    journal = Journal()

    @policy(clock, journal=journal, attempts=2)
    def ask() -> None:
        raise Boom("down")

    with pytest.raises(RetryError):
        ask()
    last = journal.events()[-2:]
    source = ask.__qualname__
    assert last == [
        AttemptFailed(
            time=1.0, source=source, attempt=2, error="Boom: down", category="connection"
        ),
        GaveUp(time=1.0, source=source, attempts=2, error="Boom: down", reason="attempts"),
    ]


def test_events_for_what_is_not_retried() -> None:
    journal = Journal()
    with pytest.raises(KeyError):
        policy(VirtualClock(), journal=journal).call(Flaky(KeyError("k")))
    assert [e.kind for e in journal.events()] == [AttemptFailed.kind, GaveUp.kind]
    assert {e.source for e in journal.events()} == {"Flaky"}  # unnamed: the callable's name
    assert journal.events(GaveUp)[0].reason == "not retryable"
    journal.clear()
    with pytest.raises(RetryError):
        policy(VirtualClock(), journal=journal, attempts=1, on_result=result_is_none).call(
            Returns(None)
        )
    failed = journal.events(AttemptFailed)[0]
    assert (failed.error, failed.category) == ("result: None", "result")


def test_on_retry_receives_frozen_details() -> None:
    seen: list[RetryDetails] = []
    first = Boom("first")
    fn = Flaky(first)
    assert policy(VirtualClock(), on_retry=seen.append, name="n").call(fn) == "ok"
    assert seen == [RetryDetails("n", 1, 1.0, first, None)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].delay = 0.0  # type: ignore[misc]


# -------------------------------------------------------------------- Retry-After


def test_retry_after_hint_is_waited_at_least() -> None:
    clock = CountingClock()
    fn = Flaky(RateLimited(retry_after=5.0), RateLimited(retry_after=0.5), Boom())
    retry = policy(clock, on=(RateLimited, Boom), attempts=4)
    assert retry.call(fn) == "ok"
    # 5 > backoff 1; backoff 2 > hint 0.5; no hint: backoff 4
    assert clock.sleeps == [5.0, 2.0, 4.0]


def test_retry_after_hint_goes_above_the_cap() -> None:
    clock = CountingClock()
    backoff = Backoff(base=1.0, cap=2.0, jitter="none")
    fn = Flaky(RateLimited(retry_after=90.0))
    assert policy(clock, on=RateLimited, backoff=backoff).call(fn) == "ok"
    assert clock.sleeps == [90.0]


def test_retry_after_beyond_the_budget_gives_up_at_once() -> None:
    clock = CountingClock()
    limited = RateLimited(retry_after=30.0)
    fn = Flaky(limited)
    with pytest.raises(RetryError) as info:
        policy(clock, on=RateLimited, budget=10.0).call(fn)
    assert info.value.reason == "budget"
    assert info.value.last is limited
    assert clock.sleeps == []
    assert fn.calls == 1


def test_a_custom_classifier_supplies_the_hint() -> None:
    class Busy(Exception):
        pass

    def busy(exc: BaseException) -> Classification | None:
        if isinstance(exc, Busy):
            return Classification(
                Category.RATE_LIMITED, Severity.LOW, True, Action.RETRY_LATER, retry_after=7.0
            )
        return None

    clock = CountingClock()
    retry = policy(clock, on=Busy, classifier=Classifier([busy]))
    assert retry.call(Flaky(Busy())) == "ok"
    assert clock.sleeps == [7.0]


# ------------------------------------------------------------------------- budget


def test_budget_gives_up_instead_of_sleeping_in_vain() -> None:
    clock = CountingClock()
    with pytest.raises(RetryError) as info:
        policy(clock, attempts=10, backoff=Backoff.fixed(4.0), budget=10.0).call(always())
    # fail at 0, sleep 4, fail at 4, sleep 4, fail at 8: a 4 s wait would pass the budget
    assert info.value.attempts == 3
    assert info.value.reason == "budget"
    assert clock.sleeps == [4.0, 4.0]
    assert clock.now() == 8.0


def test_each_attempt_runs_in_a_scope_of_the_remaining_budget() -> None:
    clock = VirtualClock()
    remaining: list[float | None] = []

    def attempt() -> str:
        scope = current_scope()
        assert scope is not None
        remaining.append(scope.remaining())
        if len(remaining) < 3:
            raise Boom
        return "ok"

    assert policy(clock, attempts=3, budget=10.0).call(attempt) == "ok"
    assert remaining == [10.0, 9.0, 7.0]
    assert current_scope() is None


def test_budget_cancels_cooperative_work_in_flight() -> None:
    clock = VirtualClock()

    def hang() -> None:
        scope = current_scope()
        assert scope is not None
        scope.wait(3600.0, what="a stuck generation")  # returns early when the scope ends

    with pytest.raises(RetryError) as info:
        policy(clock, attempts=5, budget=12.0).call(hang)
    assert info.value.reason == "budget"
    assert isinstance(info.value.last, DeadlineExceeded)
    assert info.value.attempts == 1
    assert clock.now() == 12.0


def test_an_inner_deadline_is_an_ordinary_failure() -> None:
    clock = VirtualClock()
    calls = 0

    def slow_once() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            with deadline(2.0, clock=clock) as inner:
                inner.wait(60.0)
        return "ok"

    assert policy(clock, on=TimeoutError, budget=30.0).call(slow_once) == "ok"
    assert calls == 2
    assert clock.now() == 3.0  # 2 s timed out + 1 s backoff


def test_budget_applies_to_rejected_results() -> None:
    clock = CountingClock()
    with pytest.raises(RetryError) as info:
        policy(
            clock, attempts=10, backoff=Backoff.fixed(3.0), budget=5.0, on_result=result_is_none
        ).call(Returns(None))
    assert info.value.reason == "budget"
    assert clock.sleeps == [3.0]


def test_async_budget_cancels_the_attempt() -> None:
    clock = VirtualClock()
    calls = 0

    async def hang() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3600.0)  # virtual: the loop keeps time with the clock

    with pytest.raises(RetryError) as info:
        clock.run(Retry(on=Boom, attempts=3, budget=12.0, clock=clock).acall(hang))
    assert info.value.reason == "budget"
    assert isinstance(info.value.last, DeadlineExceeded)
    assert calls == 1
    assert clock.now() == pytest.approx(12.0)


def test_async_budget_cancels_the_attempt_real_time() -> None:
    calls = 0

    async def hang() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(30.0)

    async def main() -> None:
        retry = Retry(on=Boom, attempts=3, budget=0.05, clock=SystemClock())
        await retry.acall(hang)

    with pytest.raises(RetryError) as info:
        asyncio.run(asyncio.wait_for(main(), timeout=5.0))
    assert info.value.reason == "budget"
    assert isinstance(info.value.last, DeadlineExceeded)
    assert calls == 1


# ---------------------------------------------------------------------- loop form


def test_loop_form_retries_a_block() -> None:
    clock = CountingClock()
    fn = Flaky(Boom(), Boom())
    numbers = []
    for attempt in policy(clock):
        with attempt:
            numbers.append(attempt.number)
            result = fn()
    assert result == "ok"
    assert numbers == [1, 2, 3]
    assert clock.sleeps == [1.0, 2.0]


def test_loop_form_stops_after_the_first_success() -> None:
    runs = 0
    for attempt in policy(VirtualClock()):
        with attempt:
            runs += 1
    assert runs == 1


def run_block(retry: Retry, body: Callable[[], object]) -> None:
    for attempt in retry:
        with attempt:
            body()


def test_loop_form_gives_up_and_propagates() -> None:
    with pytest.raises(RetryError) as info:
        run_block(policy(VirtualClock(), attempts=2), always())
    assert str(info.value.__cause__) == "failure 2"
    fn = Flaky(KeyError("not retried"))
    with pytest.raises(KeyError):
        run_block(policy(VirtualClock(), attempts=2), fn)
    assert fn.calls == 1


def test_loop_form_attempt_cannot_be_entered_twice() -> None:
    for attempt in policy(VirtualClock()):
        with attempt:
            pass
        with pytest.raises(RuntimeError), attempt:
            pass


def test_loop_form_runs_inside_the_budget_scope() -> None:
    clock = VirtualClock()

    def hang() -> None:
        scope = current_scope()
        assert scope is not None
        scope.wait(100.0)

    with pytest.raises(RetryError) as info:
        run_block(policy(clock, budget=5.0, attempts=3), hang)
    assert info.value.reason == "budget"
    assert clock.now() == 5.0


def test_async_loop_form() -> None:
    clock = CountingClock()
    fn = Flaky(Boom(), Boom())

    async def main() -> list[int]:
        numbers = []
        async for attempt in policy(clock):
            async with attempt:
                numbers.append(attempt.number)
                fn()
        async for attempt in policy(clock):
            with attempt:  # a plain `with` works in `async for` too
                numbers.append(attempt.number)
        return numbers

    assert clock.run(main()) == [1, 2, 3, 1]
    assert clock.sleeps == [1.0, 2.0]


def test_async_loop_form_budget_cancels_the_task() -> None:
    clock = VirtualClock()
    fn = Flaky(Boom())
    started: list[float] = []

    async def main() -> None:
        async for attempt in Retry(on=Boom, budget=20.0, clock=clock):
            async with attempt:
                started.append(clock.now())
                fn()
                await asyncio.sleep(3600.0)

    with pytest.raises(RetryError) as info:
        clock.run(main())
    assert info.value.reason == "budget"
    assert isinstance(info.value.last, DeadlineExceeded)
    assert info.value.attempts == 2
    assert len(started) == 2
    assert clock.now() == pytest.approx(20.0)
