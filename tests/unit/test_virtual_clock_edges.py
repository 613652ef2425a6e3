"""The virtual clock at its edges: wait_blocked giving up, run()'s options, run()'s end."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from pytest_resilience.core import virtual_clock as virtual_clock_module
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import HangDetected

#: Bounds a join that only a broken clock would reach: it protects against a hang.
JOIN = 30.0


class FakeRealTime:
    """Stands in for the clock's real time (``_real``): each reading is half a second on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


# -------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "setting", [{"autojump_threshold": -0.1}, {"hang_grace": -1.0}, {"io_grace": -0.5}]
)
def test_a_negative_real_time_setting_is_refused(setting: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="real seconds >= 0") as info:
        VirtualClock(**setting)
    assert str(info.value) == "autojump_threshold, hang_grace and io_grace are real seconds >= 0"


def test_settings_of_zero_real_seconds_are_kept() -> None:
    clock = VirtualClock(start=7.5, autojump_threshold=0.0, hang_grace=0.0, io_grace=0.0)
    assert (clock.autojump_threshold, clock.hang_grace, clock.io_grace) == (0.0, 0.0, 0.0)
    assert clock.now() == 7.5


def test_the_default_settings() -> None:
    clock = VirtualClock()
    assert (clock.autojump_threshold, clock.hang_grace, clock.io_grace) == (0.0, 0.25, 0.5)
    assert clock.now() == 0.0
    assert repr(clock) == "VirtualClock(now=0.000000)"


def test_a_fresh_clock_can_be_held_and_run_before_anything_else() -> None:
    clock = VirtualClock()
    with clock.hold():
        pass

    async def main() -> str:
        return "done"

    assert VirtualClock().run(main()) == "done"
    assert clock.now() == 0.0


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


# -------------------------------------------------------------------------- asleep


@pytest.mark.parametrize(("seconds", "elapsed"), [(3.0, 3.0), (0.0, 0.0), (-2.0, 0.0)])
def test_asleep_on_the_clocks_own_loop_waits_that_long_never_negative(
    seconds: float, elapsed: float
) -> None:
    clock = VirtualClock(start=10.0)

    async def main() -> float:
        await clock.asleep(seconds)
        return asyncio.get_running_loop().time()

    assert clock.run(main()) == 10.0 + elapsed
    assert clock.now() == 10.0 + elapsed


@pytest.mark.parametrize(("seconds", "elapsed"), [(3.0, 3.0), (0.0, 0.0), (-2.0, 0.0)])
def test_asleep_elsewhere_advances_the_clock_never_backwards(
    seconds: float, elapsed: float
) -> None:
    clock = VirtualClock(start=10.0)
    other = VirtualClock(start=100.0)

    async def main() -> None:
        await clock.asleep(seconds)

    asyncio.run(main())  # an ordinary loop
    other.run(main())  # another clock's loop: that clock's time does not move
    assert clock.now() == 10.0 + 2 * elapsed
    assert other.now() == 100.0


def test_asleep_elsewhere_yields_once_to_the_loop() -> None:
    clock = VirtualClock()
    order: list[str] = []

    async def other() -> None:
        for _ in range(3):
            order.append("other")
            await asyncio.sleep(0)

    async def main() -> None:
        task = asyncio.create_task(other())
        await clock.asleep(0)  # lets the other task take one step, and no more
        order.append("asleep")
        await task

    asyncio.run(main())
    assert order == ["other", "asleep", "other", "other"]


# ----------------------------------------------------------------- loop and threads


@pytest.mark.timeout(60)
def test_work_scheduled_on_the_loop_from_a_thread_wakes_no_other_waiter() -> None:
    # call_soon_threadsafe wakes the loop's own wait at once; a thread sleeping on the
    # clock meanwhile sleeps on, until its own deadline.
    clock = VirtualClock()
    woke: list[float] = []
    posted: list[str] = []

    def nap() -> None:
        clock.sleep(5)
        woke.append(clock.now())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sleeper = threading.Thread(target=nap)
        with clock.hold():  # time stands still: only a wrong wakeup can end the nap now
            sleeper.start()
            clock.wait_blocked(1)
            poster = threading.Thread(target=loop.call_soon_threadsafe, args=(posted.append, "ran"))
            poster.start()
            poster.join(JOIN)
            await asyncio.sleep(0)  # the posted callback runs
            assert posted == ["ran"]
            assert woke == []
        await asyncio.to_thread(sleeper.join, JOIN)

    clock.run(main())
    assert woke == [5.0]


@pytest.mark.timeout(60)
def test_the_loop_thread_still_counts_as_running_after_a_jobs_result_arrives() -> None:
    # A job's result wakes the loop from its wait on the clock; the loop's thread then runs
    # on, and a thread sleeping on the clock must not see time jump while it does.
    clock = VirtualClock(hang_grace=30.0)
    seen: list[float] = []
    sleeper = threading.Thread(target=clock.sleep, args=(5,))

    async def main() -> None:
        with clock.hold():
            sleeper.start()
            clock.wait_blocked(1)
            # a job that returns once the loop waits for it (with the sleeper: two waiters),
            # so that its result wakes the loop from a wait on the clock
            job = asyncio.ensure_future(asyncio.to_thread(clock.wait_blocked, 2))
            await asyncio.sleep(0)  # submitted: time stands still until its result is back
        await job
        # real work on the loop's thread, which the clock cannot see
        threading.Event().wait(0.1)
        seen.append(clock.now())
        await asyncio.sleep(10)  # back on the clock: the sleeper's deadline comes first

    clock.run(main())
    sleeper.join(JOIN)  # ample: it was woken at its deadline, before the loop's sleep ended
    assert seen == [0.0]
    assert not sleeper.is_alive()
    assert clock.now() == 10


@pytest.mark.timeout(120)
def test_an_executor_thread_stops_counting_as_running_once_its_job_returned() -> None:
    # The job sleeps on the clock, so the clock wakes its thread; once the job has returned
    # the thread idles in the executor's pool, and the loop's next sleep must jump at once.
    # A clock that still counted the idle thread would hold time for the whole hang grace.
    clock = VirtualClock(hang_grace=45.0)

    async def main() -> float:
        await asyncio.to_thread(clock.sleep, 3)
        await asyncio.sleep(1)
        return clock.now()

    out: list[float] = []
    runner = threading.Thread(target=lambda: out.append(clock.run(main())))
    runner.start()
    runner.join(JOIN)  # ample: both sleeps jump at once; only a held clock reaches it
    held = runner.is_alive()
    runner.join(JOIN + 45.0)  # a held clock lets go after its hang grace
    assert not held
    assert out == [4.0]


@pytest.mark.timeout(60)
def test_a_loop_waiting_on_real_io_is_no_hang_however_long_it_waits() -> None:
    # No timer at all, and the answer comes later than the hang grace: real I/O may still
    # end the wait, so the loop waits for it instead of reporting a hang.
    clock = VirtualClock(hang_grace=0.01)

    async def main() -> bytes:
        left, right = socket.socketpair()
        with left, right:
            reader, writer = await asyncio.open_connection(sock=left)
            answer = threading.Timer(0.2, right.sendall, args=(b"late\n",))
            answer.start()
            try:
                line = await reader.readline()
            finally:
                answer.join(JOIN)
            writer.close()
        return line

    assert clock.run(main()) == b"late\n"
    assert clock.now() == 0.0


@pytest.mark.timeout(60)
def test_a_hang_report_names_every_other_stuck_waiter() -> None:
    clock = VirtualClock(hang_grace=0.05)
    names = ["reader", "writer", "pinger"]
    out: dict[str, str] = {}

    def stuck(name: str) -> None:
        try:
            clock.wait(threading.Event(), None, what=name)
        except HangDetected as exc:
            out[name] = str(exc)

    threads = [threading.Thread(target=stuck, args=(name,)) for name in names]
    with clock.hold():  # no report until all three wait: registration order is theirs
        for count, thread in enumerate(threads, 1):
            thread.start()
            clock.wait_blocked(count)
    for thread in threads:
        thread.join(JOIN)  # ample: the report comes after the grace of silence
    assert out == {
        name: f"{name} can never end: it waits with no timeout and nothing that could end it "
        f"is running (also stuck: {', '.join(n for n in names if n != name)}). Give this wait "
        "a timeout, or put a deadline scope above it."
        for name in names
    }


@pytest.mark.timeout(60)
def test_a_lone_hang_report_names_no_other_waiter() -> None:
    clock = VirtualClock(hang_grace=0.05)
    out: list[str] = []

    def stuck() -> None:
        try:
            clock.wait(threading.Event(), None, what="solo")
        except HangDetected as exc:
            out.append(str(exc))

    thread = threading.Thread(target=stuck)
    thread.start()
    thread.join(JOIN)  # ample: the report comes after the grace of silence
    assert out == [
        "solo can never end: it waits with no timeout and nothing that could end it is "
        "running. Give this wait a timeout, or put a deadline scope above it."
    ]
