"""The async guarded stream's contracts, on a virtual-time event loop.

Each test runs its coroutine with ``clock.run()``: the loop's time is the virtual clock, so
``asyncio.sleep`` and the guard's scope timers fire at exact virtual instants, and a
deadline of minutes costs no real time.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from pytest_resilience.core.cancel import cancel_scope, current_scope, deadline
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import (
    Cancelled,
    DeadlineExceeded,
    StreamInterrupted,
    StreamStalled,
)
from pytest_resilience.core.events import (
    FallbackUsed,
    StallDetected,
    StreamCancelled,
    StreamCapped,
    StreamFirstToken,
    StreamInvalid,
)
from pytest_resilience.core.journal import Journal
from pytest_resilience.core.stream import StreamGuard, StreamResult

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable


class Script:
    """An async source: strings are chunks; numbers are ``asyncio.sleep`` seconds in between;
    callables run (and are awaited if they return an awaitable)."""

    def __init__(self, *steps: str | float | Callable[[], object]) -> None:
        self.steps = list(steps)
        self.closed = 0
        self.deadlines: list[float | None] = []  # the scope's deadline at each __anext__

    def __aiter__(self) -> Script:
        return self

    async def __anext__(self) -> str:
        scope = current_scope()
        self.deadlines.append(None if scope is None else scope.deadline)
        while self.steps:
            step = self.steps.pop(0)
            if isinstance(step, str):
                return step
            if isinstance(step, float | int):
                await asyncio.sleep(step)
                continue
            result = step()
            if asyncio.iscoroutine(result):
                await result
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed += 1


class NoClose:
    """An async source without ``aclose()``."""

    def __init__(self, *chunks: str) -> None:
        self.chunks = list(chunks)

    def __aiter__(self) -> NoClose:
        return self

    async def __anext__(self) -> str:
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)


FOREVER = 3600.0 * 24  # a sleep that only a deadline or a cancellation ends


def fail(exc: BaseException) -> Callable[[], None]:
    def run() -> None:
        raise exc

    return run


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def journal() -> Journal:
    return Journal()


# --------------------------------------------------------------------------- deadlines


def test_each_wait_runs_in_a_scope_with_the_next_deadline(clock: VirtualClock) -> None:
    source = Script(1.0, "a", 2.0, "b", 1.0, "c")
    guard = StreamGuard(first_token=3.0, idle=4.0, total=6.5, clock=clock)

    result = clock.run(guard.acollect(source))

    assert result == StreamResult("abc", True, "complete", first_token=1.0)
    # first token by 3; then 4 s after each chunk (at 1, then 3), but never after 6.5
    assert source.deadlines == [3.0, 5.0, 6.5, 6.5]
    assert clock.now() == 4.0


def test_without_deadlines_the_scope_has_none(clock: VirtualClock) -> None:
    source = Script("a", 100.0, "b")
    result = clock.run(StreamGuard(clock=clock).acollect(source))
    assert result == StreamResult("ab", True, "complete", first_token=0.0)
    assert source.deadlines == [None, None, None]


def test_first_token_stall_at_exactly_the_deadline_names_the_stream(
    clock: VirtualClock, journal: Journal
) -> None:
    source = Script(FOREVER, "never")
    guard = StreamGuard(first_token=10.0, idle=2.0, clock=clock, journal=journal, name="answer")

    with pytest.raises(StreamStalled) as info:
        clock.run(guard.acollect(source))

    assert (info.value.which, info.value.waited, info.value.partial) == ("first_token", 10.0, "")
    cause = info.value.__cause__
    assert isinstance(cause, DeadlineExceeded)
    assert str(cause) == "stream 'answer' exceeded"
    assert clock.now() == 10.0
    assert source.closed == 1
    (event,) = journal.events()
    assert isinstance(event, StallDetected)
    assert (event.time, event.source, event.which, event.waited, event.partial) == (
        10.0,
        "answer",
        "first_token",
        10.0,
        "",
    )


def test_idle_stall_keeps_the_partial_text_and_the_latency(
    clock: VirtualClock, journal: Journal
) -> None:
    source = Script(1.0, "Hel", 2.0, "lo", FOREVER, "never")
    guard = StreamGuard(first_token=30.0, idle=5.0, clock=clock, journal=journal)
    stream = guard.awrap(source)
    got: list[str] = []

    async def main() -> None:
        async for chunk in stream:
            got.append(chunk)  # noqa: PERF401 - what arrived before the stall counts

    with pytest.raises(StreamStalled) as info:
        clock.run(main())

    assert got == ["Hel", "lo"]
    assert (info.value.which, info.value.waited, info.value.partial) == ("idle", 5.0, "Hello")
    assert clock.now() == 8.0
    assert stream.result == StreamResult("Hello", False, "idle", first_token=1.0)
    assert [e.time for e in journal.events(StallDetected)] == [8.0]


def test_total_deadline_ends_a_steady_stream_and_keeps_the_timer_as_cause(
    clock: VirtualClock,
) -> None:
    source = Script(*[step for _ in range(20) for step in (1.0, "x")])
    guard = StreamGuard(idle=2.0, total=3.5, clock=clock)

    with pytest.raises(StreamStalled) as info:
        clock.run(guard.acollect(source))

    assert (info.value.which, info.value.waited, info.value.partial) == ("total", 3.5, "xxx")
    assert isinstance(info.value.__cause__, DeadlineExceeded)
    assert clock.now() == 3.5


def test_on_stall_return_ends_the_iteration_with_an_incomplete_result(
    clock: VirtualClock, journal: Journal
) -> None:
    source = Script("a", FOREVER, "never")
    guard = StreamGuard(idle=5.0, on_stall="return", clock=clock, journal=journal)

    result = clock.run(guard.acollect(source))

    assert result == StreamResult("a", False, "idle", first_token=0.0)
    assert source.closed == 1
    assert [(e.which, e.waited) for e in journal.events(StallDetected)] == [("idle", 5.0)]


def test_a_late_first_chunk_is_a_first_token_stall(clock: VirtualClock) -> None:
    # a source that moves the clock without ever yielding to the loop: the timer cannot
    # fire, so the guard judges the chunk by the time it arrived
    source = Script(lambda: clock.advance(12.0), "late")
    guard = StreamGuard(first_token=10.0, idle=5.0, clock=clock)

    with pytest.raises(StreamStalled) as info:
        clock.run(guard.acollect(source))

    assert (info.value.which, info.value.waited, info.value.partial) == ("first_token", 12.0, "")
    assert source.closed == 1


def test_a_chunk_at_exactly_the_deadline_is_delivered(clock: VirtualClock) -> None:
    source = Script("a", lambda: clock.advance(5.0), "b")
    result = clock.run(StreamGuard(idle=5.0, clock=clock).acollect(source))
    assert result == StreamResult("ab", True, "complete", first_token=0.0)


def test_a_deadline_around_the_guard_propagates_unchanged(
    clock: VirtualClock, journal: Journal
) -> None:
    source = Script("a", FOREVER, "never")
    stream = StreamGuard(idle=5.0, clock=clock, journal=journal).awrap(source)

    async def main() -> None:
        async with deadline(2.0, clock=clock, name="request"):
            async for _ in stream:
                pass

    with pytest.raises(DeadlineExceeded, match="request of 2s exceeded") as info:
        clock.run(main())

    assert not isinstance(info.value, StreamStalled)
    assert clock.now() == 2.0
    assert stream.result is not None
    assert (stream.result.text, stream.result.complete) == ("a", False)
    assert source.closed == 1
    assert journal.events(StallDetected) == []


def test_a_timeout_the_source_raises_itself_is_its_error_not_a_stall(
    clock: VirtualClock, journal: Journal
) -> None:
    source = Script("a", 1.0, fail(TimeoutError("read timed out")))
    stream = StreamGuard(idle=5.0, clock=clock, journal=journal).awrap(source)

    async def main() -> None:
        async for _ in stream:
            pass

    with pytest.raises(TimeoutError, match="read timed out") as info:
        clock.run(main())

    assert not isinstance(info.value, StreamStalled)
    assert stream.result == StreamResult(
        "a", False, "error", "TimeoutError: read timed out", first_token=0.0
    )
    assert [(e.reason, e.partial) for e in journal.events(StreamCancelled)] == [
        ("error: TimeoutError: read timed out", "a")
    ]
    assert journal.events(StallDetected) == []


def test_the_scope_runs_on_the_guards_clock_not_the_loops_real_time(
    clock: VirtualClock,
) -> None:
    # An ordinary loop (real time) with a guard on a virtual clock: the deadline is 5 s on
    # the guard's clock, so a source that takes a few real milliseconds is well in time.
    async def source() -> AsyncIterator[str]:
        await asyncio.sleep(0.01)
        yield "a"

    result = asyncio.run(StreamGuard(first_token=5.0, clock=clock).acollect(source()))
    assert result == StreamResult("a", True, "complete", first_token=0.0)


# ------------------------------------------------------------------------ cancellation


def test_cancel_before_the_first_chunk_interrupts_without_reading(
    clock: VirtualClock, journal: Journal
) -> None:
    source = Script("a")
    stream = StreamGuard(idle=5.0, clock=clock, journal=journal).awrap(source)
    stream.cancel("user pressed stop")

    with pytest.raises(StreamInterrupted) as info:
        clock.run(anext(stream))

    assert (info.value.reason, info.value.partial) == ("cancelled: user pressed stop", "")
    cause = info.value.__cause__
    assert isinstance(cause, Cancelled)
    assert cause.reason == "user pressed stop"
    assert stream.result == StreamResult("", False, "cancelled", "user pressed stop")
    assert source.deadlines == []  # the source was never asked for a chunk
    assert source.closed == 1
    assert [(e.reason, e.partial) for e in journal.events(StreamCancelled)] == [
        ("cancelled: user pressed stop", "")
    ]


def test_cancel_between_chunks_and_its_default_reason(clock: VirtualClock) -> None:
    source = Script("a", "b")
    stream = StreamGuard(clock=clock).awrap(source)
    assert clock.run(anext(stream)) == "a"
    stream.cancel()

    with pytest.raises(StreamInterrupted) as info:
        clock.run(anext(stream))

    assert (info.value.reason, info.value.partial) == ("cancelled: cancelled", "a")
    assert stream.result is not None
    assert (stream.result.reason, stream.result.detail) == ("cancelled", "cancelled")


def test_cancel_ends_a_wait_in_progress(clock: VirtualClock, journal: Journal) -> None:
    stream = StreamGuard(idle=60.0, clock=clock, journal=journal).awrap(Script("a", FOREVER))

    async def main() -> None:
        assert await anext(stream) == "a"

        async def cancel_soon() -> None:
            await asyncio.sleep(1.0)
            stream.cancel("user pressed stop")

        await asyncio.gather(anext(stream), cancel_soon())

    with pytest.raises(StreamInterrupted) as info:
        clock.run(main())

    assert (info.value.reason, info.value.partial) == ("cancelled: user pressed stop", "a")
    assert isinstance(info.value.__cause__, Cancelled)
    assert clock.now() == 1.0
    assert stream.result == StreamResult(
        "a", False, "cancelled", "user pressed stop", first_token=0.0
    )
    assert [e.reason for e in journal.events(StreamCancelled)] == ["cancelled: user pressed stop"]


def test_a_cancelled_scope_around_the_guard_propagates_as_it_is(
    clock: VirtualClock, journal: Journal
) -> None:
    def check() -> None:
        scope = current_scope()
        assert scope is not None
        scope.check()  # a source that checks the scope in between: Cancelled of the caller's

    stream = StreamGuard(idle=60.0, clock=clock, journal=journal).awrap(Script("a", check))

    async def main() -> None:
        async with cancel_scope(clock=clock) as outer:
            assert await anext(stream) == "a"
            outer.cancel("shutting down")
            await anext(stream)

    with pytest.raises(Cancelled) as info:
        clock.run(main())

    assert info.value.reason == "shutting down"
    assert stream.result == StreamResult("a", False, "cancelled", "shutting down", first_token=0.0)
    assert [(e.reason, e.partial) for e in journal.events(StreamCancelled)] == [
        ("cancelled: shutting down", "a")
    ]


def test_task_cancellation_is_recorded_and_propagates(
    clock: VirtualClock, journal: Journal
) -> None:
    stream = StreamGuard(idle=60.0, clock=clock, journal=journal).awrap(Script("a", FOREVER))

    async def main() -> None:
        assert await anext(stream) == "a"
        task = asyncio.create_task(anext(stream))
        await asyncio.sleep(3.0)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        clock.run(main())

    assert clock.now() == 3.0
    assert stream.result == StreamResult("a", False, "cancelled", "task cancelled", first_token=0.0)
    assert [(e.reason, e.partial) for e in journal.events(StreamCancelled)] == [
        ("cancelled: task cancelled", "a")
    ]


def test_task_cancellation_inside_a_live_scope_around_the_guard_is_the_tasks(
    clock: VirtualClock, journal: Journal
) -> None:
    stream = StreamGuard(idle=60.0, clock=clock, journal=journal).awrap(Script("a", FOREVER))

    async def consume() -> None:
        async with deadline(100.0, clock=clock, name="request"):  # neither expired nor cancelled
            async for _ in stream:
                pass

    async def main() -> None:
        task = asyncio.create_task(consume())
        await asyncio.sleep(3.0)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        clock.run(main())

    assert stream.result == StreamResult("a", False, "cancelled", "task cancelled", first_token=0.0)
    assert [e.reason for e in journal.events(StreamCancelled)] == ["cancelled: task cancelled"]


# ----------------------------------------------------------------------- errors, close


def test_a_source_error_is_recorded_and_propagates_unchanged(
    clock: VirtualClock, journal: Journal
) -> None:
    error = ConnectionError("daemon went away")
    source = Script("par", "tial", fail(error))
    stream = StreamGuard(clock=clock, journal=journal).awrap(source)

    async def main() -> None:
        async for _ in stream:
            pass

    with pytest.raises(ConnectionError) as info:
        clock.run(main())

    assert info.value is error
    assert stream.result == StreamResult(
        "partial", False, "error", "ConnectionError: daemon went away", first_token=0.0
    )
    assert [(e.reason, e.partial) for e in journal.events(StreamCancelled)] == [
        ("error: ConnectionError: daemon went away", "partial")
    ]


def test_out_of_memory_without_buffered_is_an_error(clock: VirtualClock, journal: Journal) -> None:
    source = Script("a", fail(MemoryError("out of memory")))
    with pytest.raises(MemoryError, match="out of memory"):
        clock.run(StreamGuard(clock=clock, journal=journal).acollect(source))
    assert [e.reason for e in journal.events(StreamCancelled)] == [
        "error: MemoryError: out of memory"
    ]
    assert journal.events(FallbackUsed) == []
    assert source.closed == 1


def test_a_validator_that_breaks_ends_the_stream_as_an_error(
    clock: VirtualClock, journal: Journal
) -> None:
    def broken(chunk: str) -> bool:
        raise KeyError(chunk)

    source = Script("a")
    stream = StreamGuard(clock=clock, journal=journal, validators=[broken]).awrap(source)
    with pytest.raises(KeyError):
        clock.run(anext(stream))

    assert stream.result == StreamResult("", False, "error", "KeyError: 'a'")
    assert [e.reason for e in journal.events(StreamCancelled)] == ["error: KeyError: 'a'"]
    assert source.closed == 1


def test_aclose_records_closed_once_and_closes_the_source_once(
    clock: VirtualClock, journal: Journal
) -> None:
    source = Script("a", "b")
    stream = StreamGuard(clock=clock, journal=journal, name="answer").awrap(source)
    assert repr(stream) == "<AsyncGuardedStream 'answer' open chars=0>"

    async def main() -> None:
        async with stream:
            assert await anext(stream) == "a"
        await stream.aclose()

    clock.run(main())

    assert stream.result == StreamResult("a", False, "closed", first_token=0.0)
    assert source.closed == 1
    assert [(e.reason, e.partial) for e in journal.events(StreamCancelled)] == [("closed", "a")]
    assert repr(stream) == "<AsyncGuardedStream 'answer' closed chars=1>"
    with pytest.raises(StopAsyncIteration):  # an ended stream stays ended
        clock.run(anext(stream))


def test_a_source_without_aclose_is_fine(clock: VirtualClock) -> None:
    result = clock.run(StreamGuard(clock=clock).acollect(NoClose("a", "b")))
    assert result == StreamResult("ab", True, "complete", first_token=0.0)


def test_a_source_whose_aclose_fails_is_not_closed_twice(clock: VirtualClock) -> None:
    class BadClose(Script):
        async def aclose(self) -> None:
            self.closed += 1
            raise RuntimeError("close failed")

    source = BadClose("a", fail(MemoryError("oom")))

    async def buffered() -> str:
        return "ab"

    stream = StreamGuard(clock=clock).awrap(source, buffered=buffered)

    async def main() -> None:
        async with stream:
            async for _ in stream:
                pass

    with pytest.raises(RuntimeError, match="close failed"):
        clock.run(main())
    assert source.closed == 1


# ---------------------------------------------------------------------------- buffered


def test_buffered_switch_is_recorded_and_completes(clock: VirtualClock, journal: Journal) -> None:
    scopes: list[str] = []

    async def buffered() -> str:
        scope = current_scope()
        assert scope is not None
        scopes.append(scope.name)
        await asyncio.sleep(2.0)
        return "Hello world"

    source = Script("Hello", fail(MemoryError("out of memory")))
    stream = StreamGuard(clock=clock, journal=journal, name="answer").awrap(
        source, buffered=buffered
    )

    async def main() -> list[str]:
        return [chunk async for chunk in stream]

    assert clock.run(main()) == ["Hello", " world"]
    assert stream.result == StreamResult(
        "Hello world", True, "complete", buffered=True, first_token=0.0
    )
    assert scopes == ["buffered"]
    assert source.closed == 1
    (event,) = journal.events(FallbackUsed)
    assert (event.time, event.source, event.step, event.index, event.after) == (
        0.0,
        "answer",
        "buffered",
        1,
        ("MemoryError: out of memory",),
    )


def test_a_buffered_call_past_the_total_deadline_is_a_total_stall(
    clock: VirtualClock, journal: Journal
) -> None:
    async def buffered() -> str:
        await asyncio.sleep(FOREVER)
        return "never"

    source = Script(1.0, "a", fail(MemoryError()))
    guard = StreamGuard(idle=1.0, total=30.0, clock=clock, journal=journal)
    stream = guard.awrap(source, buffered=buffered)

    async def main() -> None:
        async for _ in stream:
            pass

    with pytest.raises(StreamStalled) as info:
        clock.run(main())

    assert clock.now() == 30.0  # the idle deadline does not apply to one long call
    assert (info.value.which, info.value.waited, info.value.partial) == ("total", 30.0, "a")
    assert (
        str(info.value)
        == "stream stalled: no chunk for 30s (total deadline), 1 characters received"
    )
    cause = info.value.__cause__
    assert isinstance(cause, DeadlineExceeded)
    assert not isinstance(cause, StreamStalled)
    assert stream.result == StreamResult("a", False, "total", buffered=True, first_token=1.0)
    assert [(e.which, e.waited, e.partial) for e in journal.events(StallDetected)] == [
        ("total", 30.0, "a")
    ]
    assert journal.events(StreamCancelled) == []


def test_a_buffered_call_past_the_total_deadline_may_end_the_iteration(
    clock: VirtualClock,
) -> None:
    async def buffered() -> str:
        await asyncio.sleep(FOREVER)
        return "never"

    guard = StreamGuard(total=30.0, on_stall="return", clock=clock)
    result = clock.run(guard.acollect(Script("a", fail(MemoryError())), buffered=buffered))
    assert result == StreamResult("a", False, "total", buffered=True, first_token=0.0)
    assert clock.now() == 30.0


def test_a_deadline_around_the_guard_ends_a_buffered_call_as_its_error(
    clock: VirtualClock, journal: Journal
) -> None:
    async def buffered() -> str:
        await asyncio.sleep(FOREVER)
        return "never"

    stream = StreamGuard(total=30.0, clock=clock, journal=journal).awrap(
        Script("a", fail(MemoryError())), buffered=buffered
    )

    async def main() -> None:
        async with deadline(2.0, clock=clock, name="request"):
            async for _ in stream:
                pass

    with pytest.raises(DeadlineExceeded) as info:
        clock.run(main())

    assert not isinstance(info.value, StreamStalled)  # the caller's deadline, not the total
    assert str(info.value) == "request of 2s exceeded"
    assert clock.now() == 2.0
    assert stream.result == StreamResult(
        "a", False, "error", "DeadlineExceeded: request of 2s exceeded", True, 0.0
    )
    assert [e.reason for e in journal.events(StreamCancelled)] == [
        "error: DeadlineExceeded: request of 2s exceeded"
    ]
    assert journal.events(StallDetected) == []


def test_a_buffered_call_without_a_total_deadline_may_take_its_time(clock: VirtualClock) -> None:
    deadlines: list[float | None] = []

    async def buffered() -> str:
        scope = current_scope()
        assert scope is not None
        deadlines.append(scope.deadline)
        await asyncio.sleep(500.0)
        return "ab"

    source = Script("a", fail(MemoryError()))
    result = clock.run(StreamGuard(idle=1.0, clock=clock).acollect(source, buffered=buffered))
    assert result == StreamResult("ab", True, "complete", buffered=True, first_token=0.0)
    assert deadlines == [None]
    assert clock.now() == 500.0


def test_the_buffered_deadline_is_on_the_guards_clock_not_the_loops_real_time(
    clock: VirtualClock,
) -> None:
    async def source() -> AsyncIterator[str]:
        yield "a"
        raise MemoryError

    async def buffered() -> str:
        await asyncio.sleep(0.01)  # real time on an ordinary loop; the total is 5 s virtual
        return "ab"

    guard = StreamGuard(total=5.0, clock=clock)
    result = asyncio.run(guard.acollect(source(), buffered=buffered))
    assert result == StreamResult("ab", True, "complete", buffered=True, first_token=0.0)


def test_a_buffered_answer_that_diverges_is_an_interruption(
    clock: VirtualClock, journal: Journal
) -> None:
    async def buffered() -> str:
        return "Goodbye"

    source = Script("Hel", fail(MemoryError("oom")))
    stream = StreamGuard(clock=clock, journal=journal).awrap(source, buffered=buffered)

    async def main() -> None:
        async for _ in stream:
            pass

    with pytest.raises(StreamInterrupted) as info:
        clock.run(main())

    assert (info.value.reason, info.value.partial) == ("buffered answer diverged", "Hel")
    assert stream.result == StreamResult(
        "Hel", False, "error", "buffered answer diverged", buffered=True, first_token=0.0
    )
    assert [e.reason for e in journal.events(StreamCancelled)] == ["buffered answer diverged"]


def test_a_buffered_call_that_fails_is_recorded_and_propagates(
    clock: VirtualClock, journal: Journal
) -> None:
    calls: list[int] = []

    async def buffered() -> str:
        calls.append(1)
        raise ValueError("no answer")

    source = Script("a", fail(MemoryError()))
    stream = StreamGuard(clock=clock, journal=journal).awrap(source, buffered=buffered)

    async def main() -> None:
        async for _ in stream:
            pass

    with pytest.raises(ValueError, match="no answer"):
        clock.run(main())

    assert calls == [1]
    assert stream.result == StreamResult(
        "a", False, "error", "ValueError: no answer", buffered=True, first_token=0.0
    )
    assert [e.reason for e in journal.events(StreamCancelled)] == ["error: ValueError: no answer"]


def test_a_timeout_the_buffered_call_raises_itself_is_its_error_not_a_stall(
    clock: VirtualClock, journal: Journal
) -> None:
    async def buffered() -> str:
        await asyncio.sleep(5.0)
        raise TimeoutError("read timed out")

    stream = StreamGuard(total=30.0, clock=clock, journal=journal).awrap(
        Script("a", fail(MemoryError())), buffered=buffered
    )

    async def main() -> None:
        async for _ in stream:
            pass

    with pytest.raises(TimeoutError, match="read timed out") as info:
        clock.run(main())

    assert not isinstance(info.value, StreamStalled)
    assert stream.result == StreamResult(
        "a", False, "error", "TimeoutError: read timed out", True, 0.0
    )
    assert [e.reason for e in journal.events(StreamCancelled)] == [
        "error: TimeoutError: read timed out"
    ]
    assert journal.events(StallDetected) == []


def test_task_cancellation_during_the_buffered_call(clock: VirtualClock, journal: Journal) -> None:
    async def buffered() -> str:
        await asyncio.sleep(FOREVER)
        return "never"

    stream = StreamGuard(clock=clock, journal=journal).awrap(
        Script("a", fail(MemoryError())), buffered=buffered
    )

    async def main() -> None:
        assert await anext(stream) == "a"
        task = asyncio.create_task(anext(stream))
        await asyncio.sleep(4.0)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        clock.run(main())

    assert clock.now() == 4.0
    assert stream.result == StreamResult(
        "a", False, "cancelled", "task cancelled", buffered=True, first_token=0.0
    )
    assert [(e.reason, e.partial) for e in journal.events(StreamCancelled)] == [
        ("cancelled: task cancelled", "a")
    ]


def test_an_empty_rest_is_not_screened(clock: VirtualClock) -> None:
    async def buffered() -> str:
        return "Hello"

    source = Script("Hello", fail(MemoryError()))
    guard = StreamGuard(clock=clock, validators=[bool])  # bool("") would reject
    result = clock.run(guard.acollect(source, buffered=buffered))
    assert result == StreamResult("Hello", True, "complete", buffered=True, first_token=0.0)


def test_a_validator_that_breaks_on_the_buffered_rest_is_an_error(
    clock: VirtualClock, journal: Journal
) -> None:
    def broken(chunk: str) -> bool:
        if chunk == "b":
            raise KeyError(chunk)
        return True

    async def buffered() -> str:
        return "ab"

    source = Script("a", fail(MemoryError()))
    guard = StreamGuard(clock=clock, journal=journal, validators=[broken])
    stream = guard.awrap(source, buffered=buffered)

    async def main() -> None:
        async for _ in stream:
            pass

    with pytest.raises(KeyError):
        clock.run(main())
    assert stream.result == StreamResult("a", False, "error", "KeyError: 'b'", True, 0.0)
    assert [e.reason for e in journal.events(StreamCancelled)] == ["error: KeyError: 'b'"]


def test_a_refused_buffered_rest_ends_the_stream_capped(
    clock: VirtualClock, journal: Journal
) -> None:
    async def buffered() -> str:
        return "abcdef"

    source = Script("ab", fail(MemoryError()))
    guard = StreamGuard(clock=clock, journal=journal, max_chars=4)
    result = clock.run(guard.acollect(source, buffered=buffered))
    assert result == StreamResult("ab", False, "capped", "max_chars=4", True, 0.0)
    assert [(e.limit, e.partial) for e in journal.events(StreamCapped)] == [("max_chars=4", "ab")]
    assert journal.events(StreamInvalid) == []
    assert [e.kind for e in journal] == [
        StreamFirstToken.kind,
        FallbackUsed.kind,
        StreamCapped.kind,
    ]
