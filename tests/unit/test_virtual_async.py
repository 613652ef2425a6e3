"""The virtual event loop and real I/O: an answer that comes in real time beats a virtual
timeout; a silent socket holds time for ``io_grace`` real seconds at most, and never holds
back a sleep; a hang names the await chain of each stuck task; the loop forgets the sleeps
it no longer needs to know about.

The servers are real TCP servers on 127.0.0.1 (:mod:`tests.unit.tcp_server`), each in a
thread of its own, started and stopped by the test. No test asserts how long it took: the
timeout marks only keep a regression from hanging the run.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import HangDetected
from tests.unit.tcp_server import tcp_server


async def ask(port: int, *, timeout: float) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"ping\n")
        async with asyncio.timeout(timeout):
            return await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.timeout(60)
def test_a_real_answer_arrives_before_a_ten_minute_virtual_timeout() -> None:
    clock = VirtualClock()
    with tcp_server(b"pong\n", delay=0.05) as port:
        assert clock.run(ask(port, timeout=600)) == b"pong\n"
    assert clock.now() == 0.0  # time stood still while the answer came in real time


@pytest.mark.timeout(60)
def test_a_silent_server_lets_the_timeout_fire_after_the_grace() -> None:
    clock = VirtualClock(io_grace=0.05)
    with tcp_server(None) as port, pytest.raises(TimeoutError):
        clock.run(ask(port, timeout=600))
    assert clock.now() == 600.0


@pytest.mark.timeout(60)
def test_a_sleep_is_not_held_back_by_an_open_socket() -> None:
    # an hour of grace: were sleeps held for I/O like timeouts, the timeout mark would fail it
    clock = VirtualClock(io_grace=3600)

    async def main(port: int) -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"ping\n")
            for _ in range(10):
                await asyncio.sleep(30)
            assert not reader.at_eof()
            return clock.now()
        finally:
            writer.close()
            await writer.wait_closed()

    with tcp_server(None) as port:
        assert clock.run(main(port)) == 300.0


@pytest.mark.timeout(60)
def test_the_hold_never_outlasts_the_virtual_time_to_the_next_timer() -> None:
    # an hour of grace, a timeout of 10 ms: the loop holds for 10 ms, not an hour
    clock = VirtualClock(io_grace=3600)
    with tcp_server(None) as port, pytest.raises(TimeoutError):
        clock.run(ask(port, timeout=0.01))
    assert clock.now() == pytest.approx(0.01)


@pytest.mark.timeout(60)
def test_a_cancelled_sleep_does_not_count_as_the_next_timer() -> None:
    # the sleep that would have ended first is cancelled: the timeout is next, and the hold
    # lets the real answer in before it
    clock = VirtualClock()

    async def main(port: int) -> bytes:
        napping = asyncio.create_task(asyncio.sleep(5))
        await asyncio.sleep(0)
        napping.cancel()
        return await ask(port, timeout=600)

    with tcp_server(b"pong\n", delay=0.05) as port:
        assert clock.run(main(port)) == b"pong\n"
    assert clock.now() == 0.0


@pytest.mark.timeout(60)
def test_a_hang_names_each_task_with_its_await_chain() -> None:
    clock = VirtualClock()

    async def wait_for_ever() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        await asyncio.gather(asyncio.create_task(wait_for_ever(), name="listener"))

    with pytest.raises(HangDetected) as info:
        clock.run(main())
    message = str(info.value)
    assert "listener at wait_for_ever() (" in message
    assert " > wait() (" in message  # asyncio.Event.wait, where it is stuck
    assert "main() (" in message  # the task gathering it, stuck too


def test_the_loop_forgets_the_sleeps_that_ran_or_were_cancelled() -> None:
    clock = VirtualClock()

    async def main() -> int:
        for _ in range(1000):  # each cancelled an hour before its end
            task = asyncio.create_task(asyncio.sleep(3600))
            await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _ in range(1000):  # each run to its end
            await asyncio.sleep(1)
        return len(asyncio.get_running_loop()._sleeps)  # type: ignore[attr-defined]

    assert clock.run(main()) <= 257
    assert clock.now() == 1000.0
