"""The virtual clock: jumps, wakeups across threads, the virtual event loop, hang reports."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time

import pytest

from pytest_resilience.core.clock import Clock, SystemClock, VirtualClock, loop_clock
from pytest_resilience.core.errors import HangDetected


def run_in_thread(target: object) -> tuple[threading.Thread, list[object]]:
    """Start ``target`` in a thread; the list receives its result or its exception."""
    out: list[object] = []

    def body() -> None:
        try:
            out.append(target())  # type: ignore[operator]
        except (Exception, HangDetected) as exc:  # HangDetected is a BaseException
            out.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    return thread, out


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(VirtualClock(), Clock)
    assert isinstance(SystemClock(), Clock)


def test_a_ten_minute_backoff_takes_milliseconds() -> None:
    clock = VirtualClock()
    started = time.perf_counter()
    delay, slept = 0.5, 0.0
    while slept < 600:
        step = min(delay, 600 - slept)
        clock.sleep(step)
        slept += step
        delay = min(delay * 2, 30)
    assert clock.now() == pytest.approx(600)
    # generous, for a loaded machine: the ten minutes slept in real time would exceed it
    assert time.perf_counter() - started < 30.0


def test_a_lone_wait_jumps_to_its_timeout() -> None:
    clock = VirtualClock(start=100)
    assert clock.wait(threading.Event(), 5, what="chunk") is False
    assert clock.now() == 105
    ready = threading.Event()
    ready.set()
    assert clock.wait(ready, 5) is True
    assert clock.now() == 105  # a set event costs no time


def test_advance_moves_time_by_hand_and_wakes_due_waiters() -> None:
    clock = VirtualClock(autojump_threshold=math.inf)  # no autojump: only advance() moves it
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)

    def nap() -> float:
        clock.sleep(5)
        return clock.now()

    thread, out = run_in_thread(nap)
    clock.wait_blocked(1)
    clock.advance(4)
    clock.wait_blocked(1, timeout=0)  # not due yet: still blocked
    clock.advance(1.5)
    thread.join(5)
    assert out == [5.5]


@pytest.mark.timeout(10)
def test_waiters_wake_in_deadline_order_fifo_on_ties() -> None:
    clock = VirtualClock(hang_grace=5.0)
    order: list[tuple[str, float]] = []
    threads = []
    with clock.hold():  # time stands still until all of them are waiting
        for name, seconds in [("c", 3.0), ("a1", 1.0), ("b", 2.0), ("a2", 1.0)]:

            def nap(name: str = name, seconds: float = seconds) -> None:
                clock.sleep(seconds)
                order.append((name, clock.now()))

            threads.append(threading.Thread(target=nap))
            threads[-1].start()
            clock.wait_blocked(len(threads))  # registration order decides ties
    for thread in threads:
        thread.join(5)
    assert order == [("a1", 1.0), ("a2", 1.0), ("b", 2.0), ("c", 3.0)]


@pytest.mark.timeout(10)
def test_a_thread_does_not_miss_its_turn_while_another_runs() -> None:
    # A sleeps 1+1+1 and B sleeps 2.5: B must wake between A's second and third naps.
    clock = VirtualClock(hang_grace=5.0)
    log: list[tuple[str, float]] = []

    def sleeper(name: str, naps: list[float]) -> None:
        for seconds in naps:
            clock.sleep(seconds)
            log.append((name, clock.now()))

    threads = [
        threading.Thread(target=sleeper, args=("a", [1.0, 1.0, 1.0])),
        threading.Thread(target=sleeper, args=("b", [2.5])),
    ]
    with clock.hold():
        for thread in threads:
            thread.start()
        clock.wait_blocked(2)
    for thread in threads:
        thread.join(5)
    assert log == [("a", 1.0), ("a", 2.0), ("b", 2.5), ("a", 3.0)]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("notify", [True, False])
def test_wait_returns_true_when_another_thread_sets_the_event(notify: bool) -> None:
    clock = VirtualClock()
    event = threading.Event()
    with clock.hold():
        thread, out = run_in_thread(lambda: clock.wait(event, 60, what="reply"))
        clock.wait_blocked(1)
        event.set()
        if notify:
            clock.notify()
        thread.join(5)  # ample: a waiter that the event does not wake never ends (time is held)
    assert out == [True]  # the event woke it...
    assert clock.now() == 0  # ...not the timeout, which never came


@pytest.mark.timeout(10)
def test_an_unguarded_wait_is_reported_as_a_hang() -> None:
    clock = VirtualClock()
    # reported once every thread is stuck on the clock, or after the clock's hang grace of
    # silence (with other threads about: xdist's); the timeout mark ends a wait that hangs
    with pytest.raises(HangDetected, match="the injected stall can never end") as info:
        clock.wait(threading.Event(), None, what="the injected stall")
    assert "timeout" in str(info.value)


@pytest.mark.timeout(10)
def test_a_hang_in_a_worker_thread_is_reported_after_the_grace_real_time() -> None:
    clock = VirtualClock(hang_grace=0.05)
    thread, out = run_in_thread(lambda: clock.wait(threading.Event(), None, what="stream"))
    thread.join(5)  # the main thread is not on the clock: the grace decides
    assert len(out) == 1
    assert isinstance(out[0], HangDetected)
    assert "stream can never end" in str(out[0])


@pytest.mark.timeout(10)
def test_a_wait_without_timeout_is_no_hang_while_a_deadline_is_pending() -> None:
    clock = VirtualClock(hang_grace=5.0)
    event = threading.Event()
    with clock.hold():
        thread, out = run_in_thread(lambda: clock.wait(event, None, what="guarded"))
        clock.wait_blocked(1)
    clock.sleep(30)  # time can move: the other waiter is not hung, only waiting
    assert clock.now() == 30
    event.set()
    clock.notify()
    thread.join(5)
    assert out == [True]


@pytest.mark.timeout(10)
def test_autojump_threshold_waits_for_real_silence_real_time() -> None:
    clock = VirtualClock(autojump_threshold=0.05)
    started = time.perf_counter()
    clock.sleep(10)
    assert clock.now() == 10
    assert time.perf_counter() - started >= 0.05


# ---------------------------------------------------------------------- asyncio


@pytest.mark.timeout(10)
def test_asyncio_sleep_call_later_and_timeouts_follow_virtual_time() -> None:
    clock = VirtualClock()
    seen: dict[str, float] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert loop_clock(loop) is clock
        await asyncio.sleep(100)
        seen["sleep"] = loop.time()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(50), timeout=10)
        seen["wait_for"] = clock.now()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.sleep(3600)
        seen["timeout"] = clock.now()
        done: asyncio.Future[float] = loop.create_future()
        loop.call_later(30, lambda: done.set_result(loop.time()))
        seen["call_later"] = await done
        await clock.asleep(2)
        seen["asleep"] = clock.now()

    started = time.perf_counter()
    clock.run(main())
    assert seen == {
        "sleep": 100,
        "wait_for": 110,
        "timeout": 115,
        "call_later": 145,
        "asleep": 147,
    }
    # generous, for a loaded machine: the 147 s slept in real time would exceed it
    assert time.perf_counter() - started < 30.0


def test_asleep_on_an_ordinary_loop_advances_the_clock() -> None:
    clock = VirtualClock()

    async def main() -> float:
        assert isinstance(loop_clock(asyncio.get_running_loop()), SystemClock)
        await clock.asleep(7)
        return clock.now()

    assert asyncio.run(main()) == 7


@pytest.mark.timeout(10)
def test_real_io_and_call_soon_threadsafe_work_on_the_virtual_loop() -> None:
    clock = VirtualClock()

    async def main() -> tuple[bytes, str]:
        loop = asyncio.get_running_loop()
        left, right = socket.socketpair()
        with left, right:
            reader, writer = await asyncio.open_connection(sock=left)
            right.sendall(b"ping\n")
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            writer.close()
        # No timer is pending: the loop must wait for the thread, not report a hang.
        answer: asyncio.Future[str] = loop.create_future()
        threading.Thread(
            target=lambda: loop.call_soon_threadsafe(answer.set_result, "from a thread")
        ).start()
        return line, await answer

    assert clock.run(main()) == (b"ping\n", "from a thread")
    assert clock.now() == 0


@pytest.mark.timeout(10)
def test_time_stands_still_while_a_thread_works_for_the_loop() -> None:
    clock = VirtualClock()
    release = threading.Event()

    def nap() -> float:
        clock.sleep(3)
        return clock.now()

    def work() -> str:
        # Real work the clock cannot see: without counting it, the timeout would fire.
        release.wait(5)
        return "done"

    async def main() -> tuple[str, float, float]:
        async with asyncio.timeout(1):
            job = asyncio.ensure_future(asyncio.to_thread(work))
            await asyncio.sleep(0)
            threading.Timer(0.02, release.set).start()
            result = await job
        at = clock.now()
        napped = await asyncio.to_thread(nap)
        return result, at, napped

    assert clock.run(main()) == ("done", 0, 3)


@pytest.mark.timeout(10)
def test_an_unguarded_await_is_reported_as_a_hang() -> None:
    clock = VirtualClock()

    async def never_answers() -> None:
        await asyncio.get_running_loop().create_future()

    async def main() -> None:
        await asyncio.create_task(never_answers(), name="stalled-reader")

    with pytest.raises(HangDetected) as info:  # raised, not hung: the timeout mark says so
        clock.run(main())
    message = str(info.value)
    assert "stalled-reader at never_answers()" in message
    assert "asyncio.timeout" in message


def test_a_slow_executor_shutdown_is_waited_for_not_called_a_hang_real_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # asyncio.run's last act joins the executor's threads from a thread of its own; make
    # that thread slower than the clock's hang grace (0.25 real seconds), as a loaded
    # machine sometimes does
    shutdown = asyncio.BaseEventLoop._do_shutdown  # type: ignore[attr-defined]

    def slow_shutdown(loop: asyncio.BaseEventLoop, future: asyncio.Future[None]) -> None:
        threading.Event().wait(0.4)
        shutdown(loop, future)

    monkeypatch.setattr(asyncio.BaseEventLoop, "_do_shutdown", slow_shutdown)

    async def main() -> str:
        return await asyncio.to_thread(str, "done")

    assert VirtualClock().run(main()) == "done"
