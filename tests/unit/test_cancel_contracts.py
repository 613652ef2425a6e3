"""Contracts of CancelScope a user can see: its default name, which timeouts it takes and
the messages it gives, how a timeout and a deadline combine, and which scope a deadline
shared with an outer scope is reported for."""

from __future__ import annotations

import pytest

from pytest_resilience.core.cancel import CancelScope
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import DeadlineExceeded


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock()


def test_a_scope_built_without_a_name_is_named_deadline(vclock: VirtualClock) -> None:
    scope = CancelScope(1.0, clock=vclock)
    assert scope.name == "deadline"
    with scope, pytest.raises(DeadlineExceeded, match=r"^deadline of 1s exceeded$"):
        scope.wait()


def test_a_zero_timeout_is_accepted_and_already_exceeded(vclock: VirtualClock) -> None:
    with CancelScope(0, clock=vclock, name="now") as scope:
        assert scope.expired
        with pytest.raises(DeadlineExceeded, match=r"^now of 0s exceeded$"):
            scope.check()


def test_a_negative_timeout_is_refused_with_the_value_in_the_message() -> None:
    with pytest.raises(ValueError, match=r"^a deadline scope needs a timeout >= 0, got -1$"):
        CancelScope(-1)


def test_entering_a_scope_twice_is_refused_with_a_clear_message(vclock: VirtualClock) -> None:
    scope = CancelScope(clock=vclock)
    with scope:
        pass
    with pytest.raises(RuntimeError, match=r"^a CancelScope cannot be entered twice$"), scope:
        pass


def test_an_absolute_deadline_earlier_than_the_timeout_wins(vclock: VirtualClock) -> None:
    with CancelScope(10.0, deadline=vclock.now() + 4.0, clock=vclock) as scope:
        assert scope.deadline == vclock.now() + 4.0


def test_a_timeout_earlier_than_the_absolute_deadline_wins(vclock: VirtualClock) -> None:
    with CancelScope(3.0, deadline=vclock.now() + 8.0, clock=vclock) as scope:
        assert scope.deadline == vclock.now() + 3.0


def test_an_absolute_deadline_without_a_budget_reports_no_budget(vclock: VirtualClock) -> None:
    with CancelScope(deadline=vclock.now(), clock=vclock, name="fixed") as scope:
        assert scope.budget is None
        with pytest.raises(DeadlineExceeded, match=r"^fixed exceeded$") as info:
            scope.check()
    assert info.value.budget is None


def test_an_inner_scope_inherits_the_earlier_outer_budget(vclock: VirtualClock) -> None:
    with (
        CancelScope(2.0, clock=vclock, name="outer") as outer,
        CancelScope(9.0, name="inner") as inner,
    ):
        assert inner.deadline == outer.deadline
        assert inner.budget == 2.0
        with pytest.raises(DeadlineExceeded, match=r"^outer of 2s exceeded$"):
            inner.wait()


def test_on_a_tied_deadline_the_inner_scope_reports_itself(vclock: VirtualClock) -> None:
    with (
        CancelScope(5.0, clock=vclock, name="outer"),
        CancelScope(5.0, name="inner") as inner,
        pytest.raises(DeadlineExceeded, match=r"^inner of 5s exceeded$"),
    ):
        inner.wait()
