"""The breaker's documented lock-free paths: admission while every call is admitted, a
success that changes nothing, and rejection while open until the recovery time is up.

The breaker's lock is replaced by a stand-in that counts who takes it, so each test says
exactly which calls went through the lock.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from pytest_resilience.core.breaker import (
    CircuitBreaker,
    ConsecutiveFailures,
    CountWindow,
    HalfOpen,
    State,
)
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import CircuitOpenError
from pytest_resilience.core.events import CallRejected
from pytest_resilience.core.journal import Journal

if TYPE_CHECKING:
    from collections.abc import Callable


class Boom(ConnectionError):
    """A failure the breakers below count."""


class CountingLock:
    """The breaker's lock, counting how often it is taken."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.taken = 0

    def acquire(self) -> bool:
        self.taken += 1
        return bool(self.inner.acquire())

    def release(self) -> None:
        self.inner.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def counted(breaker: CircuitBreaker, monkeypatch: pytest.MonkeyPatch) -> CountingLock:
    lock = CountingLock(breaker._lock)
    monkeypatch.setattr(breaker, "_lock", lock)
    return lock


def ok() -> str:
    return "ok"


def boom() -> None:
    raise Boom("down")


async def aok() -> str:
    return "ok"


def every_form(breaker: CircuitBreaker) -> list[Callable[[], object]]:
    """One call through each call form: call, acall, acquire + success, the decorator."""

    def through_permit() -> str:
        with breaker.acquire():
            return "ok"

    return [
        lambda: breaker.call(ok),
        lambda: asyncio.run(breaker.acall(aok)),
        through_permit,
        breaker(ok),
    ]


@pytest.mark.parametrize("form", range(4), ids=["call", "acall", "acquire", "decorator"])
def test_successes_through_a_closed_breaker_take_no_lock(
    monkeypatch: pytest.MonkeyPatch, form: int
) -> None:
    breaker = CircuitBreaker("svc", on=Boom, clock=VirtualClock())
    lock = counted(breaker, monkeypatch)
    run = every_form(breaker)[form]
    for _ in range(3):
        assert run() == "ok"
    assert lock.taken == 0


def test_a_success_that_ends_a_streak_takes_the_lock_once_then_none_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    breaker = CircuitBreaker("svc", on=Boom, trip=ConsecutiveFailures(3), clock=VirtualClock())
    lock = counted(breaker, monkeypatch)
    with pytest.raises(Boom):
        breaker.call(boom)
    assert lock.taken == 1  # the failure is counted under the lock
    breaker.call(ok)
    assert lock.taken == 2  # this success ends the streak: it changes something
    for _ in range(3):
        breaker.call(ok)
    assert lock.taken == 2  # and then there is nothing to change again
    assert breaker.stats().failures == 0


def test_a_count_window_takes_no_lock_once_full_of_successes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    breaker = CircuitBreaker("svc", on=Boom, trip=CountWindow(size=3), clock=VirtualClock())
    lock = counted(breaker, monkeypatch)
    for _ in range(3):
        breaker.call(ok)  # each one fills the window: counted under the lock
    assert lock.taken == 3
    for _ in range(3):
        breaker.call(ok)  # a success only replaces a success now
    assert lock.taken == 3
    assert breaker.stats().calls == 3


@pytest.mark.parametrize("manual", ["disable", "force_closed", "reset"])
def test_successes_after_a_manual_action_take_no_lock(
    monkeypatch: pytest.MonkeyPatch, manual: str
) -> None:
    breaker = CircuitBreaker("svc", on=Boom, clock=VirtualClock())
    getattr(breaker, manual)()
    lock = counted(breaker, monkeypatch)
    for run in every_form(breaker):
        assert run() == "ok"
    assert lock.taken == 0


@pytest.mark.parametrize("form", range(4), ids=["call", "acall", "acquire", "decorator"])
def test_rejections_while_open_take_no_lock_until_the_recovery_time_is_up(
    monkeypatch: pytest.MonkeyPatch, form: int
) -> None:
    clock = VirtualClock()
    journal = Journal()
    breaker = CircuitBreaker(
        "svc",
        on=Boom,
        trip=ConsecutiveFailures(1),
        recovery=HalfOpen(after=10.0),
        clock=clock,
        journal=journal,
    )
    with pytest.raises(Boom):
        breaker.call(boom)
    lock = counted(breaker, monkeypatch)
    run = every_form(breaker)[form]
    for _ in range(2):
        clock.advance(4.0)
        with pytest.raises(CircuitOpenError) as info:
            run()
    assert lock.taken == 0
    assert (info.value.state, info.value.retry_after) == ("open", 2.0)
    assert [(e.time, e.state) for e in journal.events(CallRejected)] == [
        (4.0, "open"),
        (8.0, "open"),
    ]
    clock.advance(2.0)  # the recovery time is up: the lock decides (half-open, a probe)
    assert run() == "ok"
    assert lock.taken > 0
    assert breaker.state is State.CLOSED  # the one probe succeeded


@pytest.mark.parametrize("form", range(4), ids=["call", "acall", "acquire", "decorator"])
def test_rejections_while_forced_open_take_no_lock(
    monkeypatch: pytest.MonkeyPatch, form: int
) -> None:
    breaker = CircuitBreaker("svc", on=Boom, clock=VirtualClock(start=5.0))
    breaker.force_open()
    lock = counted(breaker, monkeypatch)
    with pytest.raises(CircuitOpenError) as info:
        every_form(breaker)[form]()
    assert (info.value.state, info.value.retry_after) == ("forced_open", None)
    assert lock.taken == 0
