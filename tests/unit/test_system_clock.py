"""SystemClock: real time, checked with tiny real waits and lower bounds only.

A wait's lower bound is timed from before the wait starts, which precedes whatever ends it.
``asleep`` is checked on a virtual event loop: it is ``asyncio.sleep``, which keeps the
running loop's time, so what it asked for shows on the virtual clock exactly.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from pytest_resilience.core import clock as clock_module
from pytest_resilience.core.clock import SystemClock, VirtualClock

#: The real waits below: tiny, so that they cost nothing, and checked only from below.
TINY = 0.05


def test_now_is_the_monotonic_clock() -> None:
    clock = SystemClock()
    before = time.monotonic()
    now = clock.now()
    after = time.monotonic()
    assert before <= now <= after


def test_sleep_blocks_for_at_least_the_time_asked() -> None:
    clock = SystemClock()
    started = time.monotonic()
    clock.sleep(TINY)
    assert time.monotonic() - started >= TINY


@pytest.mark.parametrize("seconds", [0, 0.0, -1.0, -0.5])
def test_sleep_of_no_time_or_negative_time_returns(seconds: float) -> None:
    # time.sleep(-1) raises ValueError: a negative sleep must not reach it
    SystemClock().sleep(seconds)


def test_sleep_hands_only_a_positive_time_to_time_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    # The clock's module reads ``time.sleep`` at each call: a stand-in records what reaches it.
    slept: list[float] = []
    monkeypatch.setattr(
        clock_module, "time", SimpleNamespace(monotonic=time.monotonic, sleep=slept.append)
    )
    clock = SystemClock()
    for seconds in [0.0, -3.0, 0.5, 2.0]:
        clock.sleep(seconds)
    assert slept == [0.5, 2.0]  # no system call for no time at all


@pytest.mark.timeout(10)  # ends a wait that ignores its timeout
def test_wait_returns_false_after_its_timeout_when_nobody_sets_the_event() -> None:
    clock = SystemClock()
    started = time.monotonic()
    assert clock.wait(threading.Event(), TINY, what="reply") is False
    assert time.monotonic() - started >= TINY


@pytest.mark.parametrize("timeout", [None, 60.0])
def test_wait_returns_true_when_another_thread_sets_the_event(timeout: float | None) -> None:
    clock = SystemClock()
    event = threading.Event()
    waiting = threading.Event()
    out: list[bool] = []

    def waiter() -> None:
        waiting.set()
        out.append(clock.wait(event, timeout, what="reply"))

    thread = threading.Thread(target=waiter)
    started = time.monotonic()
    thread.start()
    waiting.wait(5)  # generous: it only protects against a waiter that never starts
    time.sleep(TINY)  # the waiter is (almost surely) blocked by now; either way it must see it
    event.set()
    thread.join(10)  # generous: a waiter the event does not wake would never end
    assert out == [True]
    # it returned only after the set, which came TINY after it started
    assert time.monotonic() - started >= TINY


class NeverBlock(threading.Event):
    """An event whose ``wait`` fails the test: the clock must only read it."""

    def wait(self, timeout: float | None = None) -> bool:
        raise AssertionError(f"blocked on the event (timeout {timeout})")


@pytest.mark.parametrize("timeout", [0, 0.0, -1.0])
def test_wait_with_no_time_left_only_reads_the_event(timeout: float) -> None:
    clock = SystemClock()
    assert clock.wait(NeverBlock(), timeout) is False
    ready = NeverBlock()
    ready.set()
    assert clock.wait(ready, timeout) is True


@pytest.mark.parametrize("timeout", [None, 0.0, TINY])
def test_wait_on_a_set_event_is_true_at_once(timeout: float | None) -> None:
    ready = threading.Event()
    ready.set()
    assert SystemClock().wait(ready, timeout) is True


@pytest.mark.parametrize(
    ("seconds", "elapsed"), [(3.0, 3.0), (0.25, 0.25), (0.0, 0.0), (-2.0, 0.0)]
)
def test_asleep_is_asyncio_sleep_and_never_negative(seconds: float, elapsed: float) -> None:
    virtual = VirtualClock(start=10.0)

    async def main() -> None:
        await SystemClock().asleep(seconds)

    virtual.run(main())
    assert virtual.now() == 10.0 + elapsed


def test_repr() -> None:
    assert repr(SystemClock()) == "SystemClock()"
