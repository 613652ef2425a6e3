"""The breaker's lock-free views under forced interleavings (see tests/unit/interleave.py).

A thread is parked inside a critical section of the breaker through a stand-in for an
object the breaker already calls there (its trip policy, its clock); another thread calls
the breaker meanwhile. What the second thread sees is decided by the views the first left
published, so these tests pin what each view says while a transition is under way.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import pytest

from pytest_resilience.core.breaker import (
    CircuitBreaker,
    ConsecutiveFailures,
    HalfOpen,
    State,
    TripTracker,
)
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import CircuitOpenError
from tests.unit.interleave import WAIT, Gate, Worker, arrived, parked


class Boom(ConnectionError):
    """A failure the breakers below count."""


class GatedTrip:
    """A trip policy whose ``tracker()`` parks the gate's holder once: the breaker makes a
    fresh tracker in the middle of every transition, with its lock held."""

    timed: ClassVar[bool] = False

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.inner = ConsecutiveFailures(2)

    def tracker(self) -> TripTracker:
        self.gate()
        return self.inner.tracker()


class GatedClock:
    """A virtual clock whose ``now()`` parks the gate's holder once, before reading."""

    def __init__(self, inner: VirtualClock, gate: Gate) -> None:
        self.inner, self.gate = inner, gate

    def now(self) -> float:
        self.gate()
        return self.inner.now()

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await self.inner.asleep(seconds)

    def wait(self, event: threading.Event, timeout: float | None = None, *, what: str = "") -> bool:
        return self.inner.wait(event, timeout, what=what)


class WatchedLock:
    """The breaker's lock, setting ``came`` when ``who`` comes for it (before it waits)."""

    def __init__(self, inner: Any, who: threading.Thread, came: threading.Event) -> None:
        self.inner, self.who, self.came = inner, who, came

    def _coming(self) -> None:
        if threading.current_thread() is self.who:
            self.came.set()

    def acquire(self) -> bool:
        self._coming()
        return bool(self.inner.acquire())

    def release(self) -> None:
        self.inner.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def in_another_thread(fn: Any, name: str, came: threading.Event) -> Worker[Any]:
    """A thread for ``fn`` that also sets ``came`` when it ends, so that a breaker that
    (wrongly) lets it through without the lock does not leave the test waiting for it."""

    def run() -> Any:
        try:
            return fn()
        finally:
            came.set()

    return Worker(run, name)


def test_a_call_during_a_transition_to_forced_open_waits_for_it_and_is_rejected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # force_open() hides the views (admit-all and quiet) before it changes the state: a call
    # that reads them meanwhile must not be admitted on a generation being replaced, nor
    # trip over a half-written view. It goes to the lock, waits, and is rejected.
    gate = Gate("in force_open()'s transition, making the fresh tracker")
    breaker = CircuitBreaker("svc", on=Boom, trip=GatedTrip(gate), clock=VirtualClock())
    ran: list[str] = []
    came = threading.Event()
    caller = in_another_thread(lambda: breaker.call(lambda: ran.append("ran")), "the caller", came)
    monkeypatch.setattr(breaker, "_lock", WatchedLock(breaker._lock, caller, came))
    try:
        with parked(gate, breaker.force_open, "force_open()") as forcing:
            caller.start()
            arrived(came, "the caller", "at the breaker's lock")
        forcing.result()
        with pytest.raises(CircuitOpenError) as info:
            caller.result()
    finally:
        caller.join(WAIT)
    assert (info.value.state, info.value.retry_after) == ("forced_open", None)
    assert ran == []
    assert breaker.state is State.FORCED_OPEN


def test_a_call_that_found_the_breaker_half_open_is_rejected_if_a_probe_reopened_it() -> None:
    # The caller reads the views while half-open (nothing to reject lock-free) and parks
    # before the lock; the probe fails meanwhile and the breaker opens again. Under the lock
    # the caller finds it open, with the whole recovery time to wait.
    clock = VirtualClock()
    gate = Gate("in the admission, after reading the views, before the lock")
    breaker = CircuitBreaker(
        "svc",
        on=Boom,
        trip=ConsecutiveFailures(1),
        recovery=HalfOpen(after=10.0),
        clock=GatedClock(clock, gate),
    )
    breaker.acquire().failure()
    clock.advance(10.0)
    probe = breaker.acquire()  # half-open now: the one probe
    ran: list[str] = []
    with parked(gate, lambda: breaker.call(lambda: ran.append("ran")), "the caller") as caller:
        probe.failure()
        assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpenError) as info:
        caller.result()
    assert (info.value.state, info.value.retry_after) == ("open", 10.0)
    assert ran == []
