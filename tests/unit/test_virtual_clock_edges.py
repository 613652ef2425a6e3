"""The virtual clock at its edges: wait_blocked giving up, run()'s options, run()'s end."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from pytest_resilience.core import virtual_clock as virtual_clock_module
from pytest_resilience.core.clock import VirtualClock

#: Bounds a join that only a broken clock would reach: it protects against a hang.
JOIN = 30.0


class FakeRealTime:
    """Stands in for the clock's real time (``_real``): each reading is half a second on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


# ------------------------------------------------------------------- wait_blocked


@pytest.mark.timeout(10)  # ends a wait_blocked that never gives up
def test_wait_blocked_gives_up_after_its_timeout_naming_what_it_waited_for() -> None:
    clock = VirtualClock()
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        clock.wait_blocked(2, timeout=0.05)
    assert time.monotonic() - started >= 0.05
    assert str(info.value) == "fewer than 2 waiters blocked after 0.05s"


def test_wait_blocked_waits_for_one_waiter_ten_real_seconds_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = FakeRealTime()
    monkeypatch.setattr(virtual_clock_module, "_real", real)
    clock = VirtualClock()
    started = real.now
    with pytest.raises(TimeoutError) as info:
        clock.wait_blocked()
    assert str(info.value) == "fewer than 1 waiters blocked after 10.0s"
    assert real.now - started >= 10.0


@pytest.mark.timeout(10)
def test_wait_blocked_returns_at_once_when_enough_waiters_are_blocked() -> None:
    clock = VirtualClock()
    with clock.hold():
        thread = threading.Thread(target=clock.sleep, args=(5,))
        thread.start()
        clock.wait_blocked(1)
        clock.wait_blocked(timeout=0)  # one is blocked: the default count is met at once
        with pytest.raises(TimeoutError, match="fewer than 2 waiters"):
            clock.wait_blocked(2, timeout=0)
    thread.join(JOIN)
    assert clock.now() == 5


# ----------------------------------------------------------------------------- run


@pytest.mark.parametrize("debug", [True, False])
def test_run_passes_debug_to_the_loop(debug: bool) -> None:
    async def main() -> bool:
        return asyncio.get_running_loop().get_debug()

    assert VirtualClock().run(main(), debug=debug) is debug


@pytest.mark.timeout(60)
def test_the_thread_that_ran_a_loop_does_not_hold_time_after_run_returns() -> None:
    # While the loop ran, the clock woke its thread from each idle wait; once run() is
    # over, that thread is not running on the clock's behalf. If it still counted, time
    # could not jump for another thread's sleep until a hang grace of silence passed.
    clock = VirtualClock(hang_grace=3600.0)

    async def main() -> None:
        await asyncio.sleep(1)

    clock.run(main())
    thread = threading.Thread(target=clock.sleep, args=(5,))
    thread.start()
    thread.join(JOIN)  # an hour of grace: only a clock that still counts the loop reaches it
    alive = thread.is_alive()
    if alive:  # release it, so that the test ends without a thread left behind
        clock.sleep(10)  # back on the clock: this thread no longer counts as running
        thread.join(JOIN)
    assert not alive
    assert clock.now() == 6
