"""Edge cases of the retry policy: the zero-wait fast path, async and loop forms, names.

The zero-wait fast path (no budget, journal, hook or classifier; ``on`` given as classes)
must keep every rule the full path keeps; the tests below drive it on purpose.
"""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from pytest_resilience.core.cancel import cancel_scope, current_scope
from pytest_resilience.core.clock import SystemClock, VirtualClock
from pytest_resilience.core.errors import DeadlineExceeded, RetryError
from pytest_resilience.core.events import GaveUp, RetryScheduled
from pytest_resilience.core.journal import Journal
from pytest_resilience.core.retry import Backoff, Retry, RetryDetails, result_is_empty
from pytest_resilience.core.seeding import derive_rng, seeded

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


class Boom(ConnectionError):
    """A transient failure the policies below retry."""


class CountingClock(VirtualClock):
    """A virtual clock that records every sync sleep call."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        super().sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().asleep(seconds)


class Script:
    """Plays its outcomes one per call: an exception is raised, anything else returned;
    the last outcome repeats. Records the arguments of every call."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.seen: list[tuple[tuple[object, ...], dict[str, object]]] = []

    @property
    def calls(self) -> int:
        return len(self.seen)

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.seen.append((args, kwargs))
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class Throttled(ConnectionError):
    """An HTTP-client style failure: the hint is in ``exc.response``'s headers."""

    def __init__(self, seconds: str) -> None:
        super().__init__("429 Too Many Requests")
        self.response = SimpleNamespace(status_code=429, headers={"Retry-After": seconds})


def zero_wait(clock: VirtualClock, **kwargs: Any) -> Retry:
    """A policy that never waits: without a journal, hook or budget, it takes the fast path."""
    kwargs.setdefault("on", Boom)
    return Retry(backoff=Backoff.fixed(0), clock=clock, **kwargs)


def fast(clock: VirtualClock, **kwargs: Any) -> Retry:
    """A policy that takes the zero-wait fast path."""
    policy = zero_wait(clock, **kwargs)
    assert policy._fast
    return policy


def sources(journal: Journal) -> set[str]:
    return {e.source for e in journal.events()}


# ------------------------------------------------------------------- the fast path


def test_fast_path_passes_the_arguments_to_every_attempt() -> None:
    fn = Script(Boom("1"), Boom("2"), "ok")
    assert fast(VirtualClock()).call(fn, 1, key="v") == "ok"
    assert fn.seen == [((1,), {"key": "v"})] * 3


def test_fast_path_decorator_passes_the_arguments_to_every_attempt() -> None:
    fn = Script(Boom("1"), Boom("2"), "ok")
    assert fast(VirtualClock())(fn)("a", b=2) == "ok"
    assert fn.seen == [(("a",), {"b": 2})] * 3


def test_fast_path_stops_when_the_enclosing_scope_is_cancelled() -> None:
    clock = VirtualClock()
    fn = Script(Boom("1"), Boom("2"), "ok")
    with cancel_scope(clock=clock) as scope:
        scope.cancel("shutting down")
        with pytest.raises(Boom, match="1"):
            fast(clock, attempts=5).call(fn)
    assert fn.calls == 1


def test_fast_path_still_retries_inside_a_live_scope() -> None:
    clock = VirtualClock()
    fn = Script(Boom("1"), Boom("2"), "ok")
    with cancel_scope(clock=clock):
        assert fast(clock, attempts=3).call(fn) == "ok"
    assert fn.calls == 3


def test_fast_path_waits_for_a_retry_after_header_in_the_response() -> None:
    clock = CountingClock()
    fn = Script(Throttled("3"), Boom("plain"), "ok")
    assert fast(clock, on=ConnectionError, attempts=3).call(fn) == "ok"
    assert clock.sleeps == [3.0]  # the hint; the plain failure is retried at once
    assert fn.calls == 3


def test_fast_path_waits_for_a_retry_after_hint_on_a_later_attempt() -> None:
    clock = CountingClock()
    fn = Script(Boom("plain"), Throttled("2.5"), "ok")
    assert fast(clock, on=ConnectionError, attempts=3).call(fn) == "ok"
    assert clock.sleeps == [2.5]


def test_fast_path_accepts_a_good_result_after_a_failure() -> None:
    fn = Script(Boom("1"), "answer", "")
    retry = fast(VirtualClock(), on_result=result_is_empty, attempts=4)
    assert retry.call(fn, "p") == "answer"
    assert fn.calls == 2


def test_fast_path_retries_a_rejected_result_after_a_failure() -> None:
    fn = Script(Boom("1"), "", "answer")
    retry = fast(VirtualClock(), on_result=result_is_empty, attempts=4)
    assert retry.call(fn, "p", n=1) == "answer"
    assert fn.seen == [(("p",), {"n": 1})] * 3


def test_fast_path_gives_up_on_a_rejected_result_at_the_attempt_limit() -> None:
    fn = Script(Boom("1"), "   ", "late")
    retry = fast(VirtualClock(), on_result=result_is_empty, attempts=2)
    with pytest.raises(RetryError) as info:
        retry.call(fn)
    assert fn.calls == 2
    error = info.value
    assert (error.attempts, error.reason, error.result, error.last) == (2, "attempts", "   ", None)
    assert str(error) == "gave up after 2 attempts (attempts): result rejected: '   '"


# ------------------------------------------------------------------------- async


def test_acall_passes_the_arguments_to_every_attempt() -> None:
    clock = VirtualClock()
    for budget in (None, 30.0):
        fn = Script(Boom("1"), Boom("2"), "ok")

        async def step(*args: object, fn: Script = fn, **kwargs: object) -> object:
            return fn(*args, **kwargs)

        assert clock.run(zero_wait(clock, budget=budget).acall(step, 1, key="v")) == "ok"
        assert fn.seen == [((1,), {"key": "v"})] * 3, budget


def test_acall_events_carry_the_policy_name() -> None:
    clock = VirtualClock()
    journal = Journal()

    async def failing() -> object:
        raise Boom("down")

    async def empty() -> object:
        return ""

    for budget in (None, 30.0):
        retry = Retry(on=Boom, attempts=2, budget=budget, clock=clock, journal=journal, name="ask")
        with pytest.raises(RetryError):
            clock.run(retry.acall(failing))
        with pytest.raises(RetryError):
            clock.run(retry.with_(on_result=result_is_empty).acall(empty))
    assert len(journal.events(GaveUp)) == 4
    assert sources(journal) == {"ask"}


def test_unnamed_acall_events_carry_the_function_name() -> None:
    clock = VirtualClock()
    journal = Journal()

    async def generate() -> object:
        raise Boom("down")

    with pytest.raises(RetryError):
        clock.run(Retry(on=Boom, attempts=2, clock=clock, journal=journal).acall(generate))
    assert len(journal.events(GaveUp)) == 1
    assert sources(journal) == {generate.__qualname__}


def test_acall_accepts_a_good_first_result() -> None:
    clock = VirtualClock()
    fn = Script("answer", None)

    async def answer() -> object:
        return fn()

    assert clock.run(zero_wait(clock, on_result=result_is_empty).acall(answer)) == "answer"
    assert fn.calls == 1


def test_acall_retries_rejected_results_with_the_backoff() -> None:
    clock = CountingClock()
    fn = Script(None, "", "answer")

    async def answer() -> object:
        return fn()

    backoff = Backoff(base=1.0, factor=2.0, cap=60.0, jitter="none")
    retry = Retry(on=Boom, on_result=result_is_empty, backoff=backoff, clock=clock)
    assert clock.run(retry.acall(answer)) == "answer"
    assert fn.calls == 3
    assert clock.sleeps == [1.0, 2.0]


@pytest.mark.parametrize(
    ("attempts", "values"), [(1, ("",)), (2, ("", "  ")), (2, ("", "", "late"))]
)
def test_acall_gives_up_on_results_keeping_the_last_one(
    attempts: int, values: tuple[str, ...]
) -> None:
    clock = VirtualClock()
    seen: list[RetryDetails] = []
    fn = Script(*values)

    async def answer() -> object:
        return fn()

    retry = zero_wait(clock, on_result=result_is_empty, attempts=attempts, on_retry=seen.append)
    with pytest.raises(RetryError) as info:
        clock.run(retry.acall(answer))
    assert (info.value.attempts, info.value.result) == (attempts, values[attempts - 1])
    assert fn.calls == attempts
    assert [d.result for d in seen] == list(values[: attempts - 1])  # what on_retry saw


def test_async_budget_scope_keeps_time_on_the_policy_clock() -> None:
    # The loop here is a plain asyncio loop; the budget is still the policy's clock's.
    clock = VirtualClock()
    left: list[float | None] = []

    async def attempt() -> str:
        clock.advance(4.0)
        scope = current_scope()
        assert scope is not None
        left.append(scope.remaining())
        return "ok"

    assert asyncio.run(Retry(on=Boom, budget=10.0, clock=clock).acall(attempt)) == "ok"
    assert left == [6.0]


def test_async_budget_names_itself_when_it_runs_out() -> None:
    clock = VirtualClock()

    async def hang() -> None:
        await asyncio.sleep(3600.0)

    with pytest.raises(RetryError) as info:
        clock.run(Retry(on=Boom, attempts=3, budget=12.0, clock=clock).acall(hang))
    assert str(info.value.last) == "retry budget of 12s exceeded"


# --------------------------------------------------------------------- decorator


def test_decorated_functions_report_under_the_policy_name() -> None:
    clock = VirtualClock()
    journal = Journal()
    retry = Retry(on=Boom, attempts=2, clock=clock, journal=journal, name="ask")

    @retry
    def ask() -> None:
        raise Boom("down")

    @retry
    async def aask() -> None:
        raise Boom("down")

    with pytest.raises(RetryError):
        ask()
    with pytest.raises(RetryError):
        clock.run(aask())
    assert len(journal.events(GaveUp)) == 2
    assert sources(journal) == {"ask"}


# --------------------------------------------------------------------- loop form


def run_block(retry: Retry, body: Callable[[], object]) -> None:
    for attempt in retry:
        with attempt:
            body()


async def arun_block(retry: Retry, body: Callable[[], Awaitable[object]]) -> None:
    async for attempt in retry:
        async with attempt:
            await body()


def test_loop_form_events_carry_the_name_or_block() -> None:
    clock = VirtualClock()

    def down() -> None:
        raise Boom("down")

    async def adown() -> None:
        raise Boom("down")

    for name, expected in (("", "<block>"), ("ask", "ask")):
        journal = Journal()
        retry = Retry(on=Boom, attempts=2, clock=clock, journal=journal, name=name)
        with pytest.raises(RetryError):
            run_block(retry, down)
        with pytest.raises(RetryError):
            clock.run(arun_block(retry, adown))
        assert len(journal.events(GaveUp)) == 2
        assert len(journal.events(RetryScheduled)) == 2
        assert sources(journal) == {expected}


def test_an_attempt_entered_twice_says_so() -> None:
    for attempt in Retry(on=Boom, clock=VirtualClock()):
        with attempt:
            pass
        with pytest.raises(RuntimeError) as info, attempt:
            pass
        assert str(info.value) == "an Attempt can be entered only once"


def test_loop_form_budget_names_itself_when_it_runs_out() -> None:
    clock = VirtualClock()

    def hang() -> None:
        scope = current_scope()
        assert scope is not None
        scope.wait(100.0)

    with pytest.raises(RetryError) as info:
        run_block(Retry(on=Boom, budget=5.0, attempts=3, clock=clock), hang)
    assert str(info.value.last) == "retry budget of 5s exceeded"


def test_async_loop_form_budget_keeps_the_cut_short_await_as_the_cause() -> None:
    clock = VirtualClock()

    async def main() -> None:
        async for attempt in Retry(on=Boom, budget=20.0, clock=clock):
            async with attempt:
                await asyncio.sleep(3600.0)

    with pytest.raises(RetryError) as info:
        clock.run(main())
    last = info.value.last
    assert str(last) == "retry budget of 20s exceeded"
    # the traceback shows where the attempt was waiting when the budget ran out
    assert isinstance(last, DeadlineExceeded)
    assert isinstance(last.__cause__, asyncio.CancelledError)


def test_async_loop_form_retries_a_scope_deadline_with_budget_left() -> None:
    # A policy on the system clock inside a virtual-time loop: the attempt's scope ends on
    # the loop's time, long before the policy's budget does. The DeadlineExceeded is then an
    # ordinary TimeoutError for ``on`` and the loop goes on to the next attempt.
    clock = VirtualClock()
    numbers: list[int] = []

    async def main() -> None:
        retry = Retry(
            on=TimeoutError,
            attempts=2,
            budget=3600.0,
            backoff=Backoff.fixed(0),
            clock=SystemClock(),
        )
        async for attempt in retry:
            async with attempt:
                numbers.append(attempt.number)
                await asyncio.sleep(7200.0)

    with pytest.raises(RetryError) as info:
        clock.run(main())
    assert numbers == [1, 2]
    assert (info.value.reason, info.value.attempts) == ("attempts", 2)
    assert isinstance(info.value.last, DeadlineExceeded)


# ------------------------------------------------------------- generators and clocks


class CountingRandom(random.Random):
    """A generator that counts its draws through ``uniform``."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.draws = 0

    def uniform(self, a: float, b: float) -> float:
        self.draws += 1
        return super().uniform(a, b)


class ReadCountingClock(VirtualClock):
    """A virtual clock that counts the reads of its time."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def now(self) -> float:
        self.reads += 1
        return super().now()


def test_jitter_draws_from_the_injected_generator() -> None:
    backoff = Backoff(base=1.0, factor=2.0, cap=60.0, jitter="full")
    clock = CountingClock()
    rng = CountingRandom(5)
    fn = Script(Boom("1"), Boom("2"), "ok")
    assert Retry(on=Boom, backoff=backoff, clock=clock, rng=rng).call(fn) == "ok"
    assert rng.draws == 2
    same = random.Random(5)
    assert clock.sleeps == [same.uniform(0.0, 1.0), same.uniform(0.0, 2.0)]


def test_without_a_generator_a_seeded_run_draws_from_the_policy_names_own() -> None:
    backoff = Backoff(base=1.0, factor=2.0, cap=60.0, jitter="full")
    slept: dict[str, list[float]] = {}
    for name in ("ask", "other"):
        clock = CountingClock()
        with seeded(11, "test"):
            Retry(on=Boom, backoff=backoff, clock=clock, name=name).call(Script(Boom("1"), "ok"))
        slept[name] = clock.sleeps
    assert slept["ask"] == [derive_rng(11, "test", "retry:ask").uniform(0.0, 1.0)]
    assert slept["other"] == [derive_rng(11, "test", "retry:other").uniform(0.0, 1.0)]


def test_outcomes_without_a_journal_cost_no_clock_read() -> None:
    clock = ReadCountingClock()
    fn = Script("ok")
    retry = Retry(on=Boom, outcomes=True, clock=clock)

    async def answer() -> object:
        return fn()

    assert retry.call(fn) == "ok"
    assert retry(fn)() == "ok"
    assert asyncio.run(retry.acall(answer)) == "ok"
    assert clock.reads == 0


# ------------------------------------------------------------- the sync budget


def test_sync_budget_passes_the_arguments_to_every_attempt() -> None:
    fn = Script(Boom("1"), Boom("2"), "ok")
    retry = Retry(on=Boom, budget=30.0, backoff=Backoff.fixed(0), clock=VirtualClock())
    assert retry.call(fn, 1, key="v") == "ok"
    assert fn.seen == [((1,), {"key": "v"})] * 3


def test_sync_budget_names_itself_when_it_runs_out() -> None:
    clock = VirtualClock()

    def hang() -> None:
        scope = current_scope()
        assert scope is not None
        scope.wait(3600.0)

    with pytest.raises(RetryError) as info:
        Retry(on=Boom, attempts=3, budget=12.0, clock=clock).call(hang)
    assert str(info.value.last) == "retry budget of 12s exceeded"


# ------------------------------------------- the policy's name, without a journal


def test_the_hook_hears_the_policy_name_on_every_path_without_a_journal() -> None:
    """``on_retry`` gets the policy's name whichever path the call takes: a failure or a
    rejected result on the first attempt, a budget (a run from the start), sync or async."""
    clock = VirtualClock()
    seen: list[RetryDetails] = []
    base: dict[str, Any] = {"on": Boom, "backoff": Backoff.fixed(0), "clock": clock}
    plain = Retry(**base, on_retry=seen.append, on_result=result_is_empty, name="ask")
    budgeted = plain.with_(budget=30.0)

    def calls(retry: Retry, first: object) -> None:
        assert retry.call(Script(first, "ok")) == "ok"
        fn = Script(first, "ok")

        async def answer() -> object:
            return fn()

        assert clock.run(retry.acall(answer)) == "ok"

    calls(plain, Boom("down"))
    calls(plain, "")
    calls(budgeted, Boom("down"))
    assert [(d.source, d.result) for d in seen] == [
        ("ask", None),
        ("ask", None),
        ("ask", ""),
        ("ask", ""),
        ("ask", None),
        ("ask", None),
    ]
