"""Cancel scopes: deadlines and cancellation, sync and async, nested and across threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pytest_resilience.core.cancel import (
    CancelScope,
    cancel_scope,
    check_cancelled,
    current_scope,
    deadline,
)
from pytest_resilience.core.clock import SystemClock, VirtualClock
from pytest_resilience.core.errors import Cancelled, DeadlineExceeded, HangDetected


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock()


# ---------------------------------------------------------------------- sync


def test_a_deadline_ends_a_wait_at_the_deadline(vclock: VirtualClock) -> None:
    with deadline(5, clock=vclock, name="fetch") as scope:
        assert current_scope() is scope
        assert scope.remaining() == 5
        with pytest.raises(DeadlineExceeded, match="fetch of 5s exceeded") as info:
            scope.wait()
    assert info.value.budget == 5
    assert vclock.now() == 5
    assert current_scope() is None


def test_wait_with_a_shorter_timeout_returns_and_the_deadline_wins_a_tie(
    vclock: VirtualClock,
) -> None:
    with deadline(5, clock=vclock) as scope:
        scope.wait(2)
        assert vclock.now() == 2
        assert scope.remaining() == 3
        with pytest.raises(DeadlineExceeded):
            scope.wait(3)
    assert vclock.now() == 5


def test_check_cancelled_follows_the_current_scope(vclock: VirtualClock) -> None:
    check_cancelled()  # outside any scope: nothing to do
    with deadline(1, clock=vclock) as scope:
        check_cancelled()
        vclock.advance(1)
        assert scope.expired
        with pytest.raises(DeadlineExceeded):
            check_cancelled()


def test_nested_scopes_take_the_earlier_deadline(vclock: VirtualClock) -> None:
    with deadline(10, clock=vclock, name="request"):
        with deadline(3, clock=vclock, name="attempt") as short:
            assert short.deadline == 3
        with deadline(30, name="attempt") as long:  # the clock comes from the outer scope
            assert long.clock is vclock
            assert long.deadline == 10
            with pytest.raises(DeadlineExceeded, match="request of 10s exceeded"):
                long.wait()
    assert vclock.now() == 10


def test_cancelling_an_outer_scope_cancels_the_inner_ones(vclock: VirtualClock) -> None:
    with cancel_scope(clock=vclock) as outer, deadline(30, name="inner") as inner:
        outer.cancel("user pressed stop")
        assert inner.cancelled
        assert inner.cancel_reason == "user pressed stop"
        with pytest.raises(Cancelled, match="user pressed stop"):
            inner.wait()
    assert vclock.now() == 0


def test_a_scope_is_entered_once(vclock: VirtualClock) -> None:
    scope = deadline(1, clock=vclock)
    with scope:
        pass
    with pytest.raises(RuntimeError, match="twice"), scope:
        pass


def test_a_wait_nothing_can_end_is_a_hang(vclock: VirtualClock) -> None:
    with (
        cancel_scope(clock=vclock, name="shutdown") as scope,
        pytest.raises(HangDetected, match="a wait in shutdown can never end"),
    ):
        scope.wait()


@pytest.mark.timeout(10)
def test_cancelling_an_outer_scope_wakes_an_inner_wait_in_another_thread(
    vclock: VirtualClock,
) -> None:
    outer = cancel_scope(clock=vclock, name="request")
    outcome: list[BaseException] = []

    def worker() -> None:
        try:
            with outer, deadline(100, name="attempt") as inner:
                inner.wait()
        except (Cancelled, DeadlineExceeded) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=worker)
    with vclock.hold():  # no jump to the inner deadline while we get ready to cancel
        thread.start()
        vclock.wait_blocked(1)
        outer.cancel("shutdown")
    thread.join(5)
    assert [type(e) for e in outcome] == [Cancelled]
    assert str(outcome[0]) == "shutdown"
    assert vclock.now() == 0


@pytest.mark.timeout(10)
def test_cancel_from_another_thread_wakes_a_system_clock_wait_real_time() -> None:
    scope = cancel_scope(clock=SystemClock())
    waiting = threading.Event()
    outcome: list[BaseException] = []

    def worker() -> None:
        try:
            with scope:
                waiting.set()
                scope.wait(5)
        except Cancelled as exc:
            outcome.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    assert waiting.wait(5)
    scope.cancel("stop")
    thread.join(5)
    assert [str(e) for e in outcome] == ["stop"]


# ---------------------------------------------------------------------- async


@pytest.mark.timeout(10)
def test_async_deadline_cancels_the_task_on_the_loop_clock(vclock: VirtualClock) -> None:
    async def main() -> CancelScope:
        with pytest.raises(DeadlineExceeded, match="call of 5s exceeded"):
            async with deadline(5, name="call") as scope:  # no clock: the loop's
                await asyncio.sleep(3600)
        return scope

    scope = vclock.run(main())
    assert scope.clock is vclock
    assert vclock.now() == 5


@pytest.mark.timeout(10)
def test_async_nested_deadlines_the_outer_one_wins_when_earlier(vclock: VirtualClock) -> None:
    async def main() -> str:
        async with deadline(10, name="request"):
            try:
                async with deadline(30, name="attempt"):
                    await asyncio.sleep(3600)
            except DeadlineExceeded as exc:
                return f"inner saw {exc}"
        return "not cancelled"

    with pytest.raises(DeadlineExceeded, match="request of 10s exceeded"):
        vclock.run(main())
    assert vclock.now() == 10


@pytest.mark.timeout(10)
def test_async_inner_deadline_is_converted_by_the_inner_scope(vclock: VirtualClock) -> None:
    async def main() -> str:
        async with deadline(30, name="request"):
            try:
                async with deadline(2, name="attempt"):
                    await asyncio.sleep(3600)
            except DeadlineExceeded as exc:
                await asyncio.sleep(1)  # the outer scope is still usable
                return str(exc)
        return "not reached"

    assert vclock.run(main()) == "attempt of 2s exceeded"
    assert vclock.now() == 3


@pytest.mark.timeout(10)
def test_async_scope_cancelled_from_another_thread(vclock: VirtualClock) -> None:
    async def main() -> None:
        async with cancel_scope(name="stream") as scope:
            threading.Thread(target=scope.cancel, args=("client went away",)).start()
            await asyncio.get_running_loop().create_future()

    with pytest.raises(Cancelled, match="client went away"):
        vclock.run(main())


@pytest.mark.timeout(10)
def test_an_outside_cancellation_is_not_swallowed_or_converted(vclock: VirtualClock) -> None:
    async def body() -> None:
        async with deadline(100):
            await asyncio.sleep(3600)

    async def main() -> bool:
        task = asyncio.create_task(body())
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert vclock.run(main()) is True
    assert vclock.now() == 1


@pytest.mark.timeout(10)
def test_an_outside_cancellation_at_the_deadline_still_propagates(vclock: VirtualClock) -> None:
    async def body() -> None:
        async with deadline(5):
            await asyncio.sleep(3600)

    async def main() -> bool:
        task = asyncio.create_task(body())
        # Scheduled before the scope's own timer, for the same instant.
        asyncio.get_running_loop().call_later(5, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert vclock.run(main()) is True


@pytest.mark.timeout(10)
def test_cancelling_a_scope_after_it_exited_leaves_the_task_alone(vclock: VirtualClock) -> None:
    async def main() -> float:
        async with cancel_scope() as scope:
            pass
        scope.cancel("too late")
        await asyncio.sleep(1)  # would raise CancelledError if the cancel reached the task
        return vclock.now()

    assert vclock.run(main()) == 1
