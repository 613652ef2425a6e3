"""Cancel scopes at their edges: default names and reasons, a scope cancelled twice, the
clock a scope is given, the clocks a cancel wakes, and what a scope shows of itself."""

from __future__ import annotations

import asyncio

import pytest

from pytest_resilience.core.cancel import CancelScope, cancel_scope, deadline
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import Cancelled, DeadlineExceeded, HangDetected


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock()


class NotifiedClock(VirtualClock):
    """A virtual clock that counts the times it is told to recheck its waiters."""

    def __init__(self) -> None:
        super().__init__()
        self.notified = 0

    def notify(self) -> None:
        self.notified += 1
        super().notify()


# --------------------------------------------------------------------------- the defaults


def test_a_deadline_with_no_name_is_named_deadline(vclock: VirtualClock) -> None:
    with deadline(5, clock=vclock) as scope:
        assert scope.name == "deadline"
        with pytest.raises(DeadlineExceeded, match=r"^deadline of 5s exceeded$"):
            scope.wait()


def test_a_cancel_scope_with_no_name_is_named_scope_and_has_no_deadline(
    vclock: VirtualClock,
) -> None:
    with cancel_scope(clock=vclock) as scope:
        assert (scope.name, scope.deadline, scope.remaining()) == ("scope", None, None)
        with pytest.raises(HangDetected, match="a wait in scope can never end"):
            scope.wait()


def test_a_cancel_without_a_reason_says_cancelled(vclock: VirtualClock) -> None:
    with cancel_scope(clock=vclock) as scope:
        scope.cancel()
        assert scope.cancel_reason == "cancelled"
        with pytest.raises(Cancelled, match=r"^cancelled$"):
            scope.check()


def test_remaining_is_zero_once_the_deadline_has_passed(vclock: VirtualClock) -> None:
    with deadline(5, clock=vclock) as scope:
        vclock.advance(4.5)
        assert scope.remaining() == 0.5
        vclock.advance(10)
        assert scope.remaining() == 0.0
        assert scope.expired


def test_repr_shows_the_name_and_the_deadline_or_why_it_was_cancelled(
    vclock: VirtualClock,
) -> None:
    with deadline(5, clock=vclock, name="fetch") as scope:
        assert repr(scope) == "<CancelScope fetch deadline=5.0>"
        scope.cancel("user pressed stop")
        assert repr(scope) == "<CancelScope fetch cancelled='user pressed stop'>"


# ------------------------------------------------------------------ the clocks a cancel wakes


def test_a_cancel_wakes_each_clock_of_the_scopes_it_cancels_once() -> None:
    outer_clock, inner_clock = NotifiedClock(), NotifiedClock()
    with (
        cancel_scope(clock=outer_clock) as outer,
        deadline(10),  # the outer scope's clock
        deadline(20),  # and again: that clock is woken once all the same
        deadline(30, clock=inner_clock),
    ):
        outer.cancel("shutdown")
    assert (outer_clock.notified, inner_clock.notified) == (1, 1)


# ------------------------------------------------------------------------------ async


@pytest.mark.timeout(10)
def test_an_async_scope_keeps_the_clock_it_was_given(vclock: VirtualClock) -> None:
    other = VirtualClock(start=100.0)

    async def main() -> CancelScope:
        async with deadline(5, clock=other) as scope:
            return scope

    scope = vclock.run(main())
    assert scope.clock is other
    assert scope.deadline == 105.0


@pytest.mark.timeout(10)
def test_an_async_scope_cancelled_twice_raises_cancelled_with_the_first_reason(
    vclock: VirtualClock,
) -> None:
    async def main() -> None:
        async with cancel_scope(name="stream") as scope:
            scope.cancel("client went away")
            scope.cancel("server shutting down")
            await asyncio.sleep(3600)

    with pytest.raises(Cancelled, match=r"^client went away$"):
        vclock.run(main())
    assert vclock.now() == 0
