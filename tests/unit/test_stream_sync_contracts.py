"""The sync guarded stream's and the guard's contracts: settings, ends, events, the worker.

Deadlines run on a virtual clock. The threaded mode's worker really is a thread: the few
real waits here have generous bounds that only a broken worker ever reaches.
"""

from __future__ import annotations

import gc
import itertools
import threading
import time
from typing import TYPE_CHECKING

import pytest

from pytest_resilience.core.cancel import cancel_scope, current_scope
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import (
    Cancelled,
    DeadlineExceeded,
    ResourceExhausted,
    StreamInterrupted,
    StreamStalled,
)
from pytest_resilience.core.events import (
    FallbackUsed,
    StallDetected,
    StreamCancelled,
    StreamFirstToken,
)
from pytest_resilience.core.journal import Journal
from pytest_resilience.core.stream import GuardedStream, StreamGuard, StreamResult

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

#: Real seconds a worker thread is given to do what takes it microseconds: only a broken
#: worker reaches this bound, and then the test fails instead of hanging.
WAIT = 10.0


class Script:
    """A source that follows a script: strings are chunks, callables run in between."""

    def __init__(self, *steps: str | Callable[[], object]) -> None:
        self.steps = list(steps)
        self.closed = 0
        self.threads: list[str] = []  # the thread that asked for each chunk

    def __iter__(self) -> Script:
        return self

    def __next__(self) -> str:
        self.threads.append(threading.current_thread().name)
        while self.steps:
            step = self.steps.pop(0)
            if isinstance(step, str):
                return step
            step()
        raise StopIteration

    def close(self) -> None:
        self.closed += 1


def stall() -> None:
    scope = current_scope()
    assert scope is not None, "the guard runs its source inside a cancel scope"
    scope.wait()


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


# ------------------------------------------------------------------------------ the guard


@pytest.mark.parametrize("which", ["first_token", "idle", "total"])
def test_a_negative_deadline_is_refused_by_name(which: str) -> None:
    with pytest.raises(ValueError, match=rf"^StreamGuard {which} must be >= 0 seconds, got -1.5$"):
        StreamGuard(**{which: -1.5})  # type: ignore[arg-type]


def test_an_unknown_on_stall_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^on_stall must be 'raise' or 'return', got 'ignore'$"):
        StreamGuard(on_stall="ignore")  # type: ignore[arg-type]


def test_zero_deadlines_and_caps_of_one_are_allowed(clock: VirtualClock) -> None:
    guard = StreamGuard(first_token=0.0, idle=0.0, total=0.0, max_chunks=1, max_chars=1)
    assert (guard.first_token, guard.idle, guard.total) == (0.0, 0.0, 0.0)
    result = StreamGuard(clock=clock, max_chunks=1, max_chars=1).collect(Script("a", "b"))
    assert (result.text, result.reason, result.detail) == ("a", "capped", "max_chunks=1")


def test_the_guards_name_is_the_events_source(clock: VirtualClock, journal: Journal) -> None:
    StreamGuard(clock=clock, journal=journal).collect(Script("a"))
    StreamGuard(clock=clock, journal=journal, name="answer").collect(Script("a"))
    assert [(type(e), e.source) for e in journal] == [
        (StreamFirstToken, "stream"),
        (StreamFirstToken, "answer"),
    ]
    assert repr(StreamGuard(first_token=1.0, idle=2.0)) == (
        "StreamGuard(first_token=1.0, idle=2.0, total=None, on_stall='raise')"
    )


def test_collect_threaded_pulls_in_a_named_daemon_worker(clock: VirtualClock) -> None:
    daemon: list[bool] = []
    source = Script(lambda: daemon.append(threading.current_thread().daemon), "a")
    results: list[StreamResult] = []

    def consume() -> None:
        results.append(StreamGuard(clock=clock, name="answer").collect(source, threaded=True))

    # from a thread that is not a daemon: the worker must not inherit the flag, but set it
    consumer = threading.Thread(target=consume, daemon=False)
    consumer.start()
    consumer.join(WAIT)

    assert results == [StreamResult("a", True, "complete", first_token=0.0)]
    assert source.threads[0] == "pytest-resilience-stream:answer"
    assert daemon == [True]  # a source blocked for good must not keep the interpreter alive


def test_collect_and_the_stream_pull_in_the_callers_thread_by_default(
    clock: VirtualClock,
) -> None:
    here = threading.current_thread().name
    source = Script("a")
    StreamGuard(clock=clock).collect(source)
    assert source.threads == [here, here]

    source = Script("a")
    assert list(GuardedStream(StreamGuard(clock=clock), source)) == ["a"]
    assert source.threads == [here, here]


def test_a_source_without_close_is_fine(clock: VirtualClock) -> None:
    assert StreamGuard(clock=clock).collect(["a", "b"]).text == "ab"
    assert StreamGuard(clock=clock).collect(["a", "b"], threaded=True).text == "ab"


# ------------------------------------------------------------------------------ deadlines


def test_a_stall_names_the_streams_scope_in_its_cause(clock: VirtualClock) -> None:
    guard = StreamGuard(first_token=10.0, clock=clock, name="answer")
    with pytest.raises(StreamStalled) as info:
        guard.collect(Script(stall, "never"))
    assert str(info.value.__cause__) == "stream 'answer' exceeded"


def test_a_chunk_at_exactly_the_deadline_is_delivered(clock: VirtualClock) -> None:
    source = Script("a", lambda: clock.advance(5.0), "b")
    result = StreamGuard(idle=5.0, clock=clock).collect(source)
    assert result == StreamResult("ab", True, "complete", first_token=0.0)


def test_a_late_chunk_ends_the_stream_with_the_right_stall(
    clock: VirtualClock, journal: Journal
) -> None:
    source = Script(lambda: clock.advance(12.0), "late")
    stream = StreamGuard(first_token=10.0, idle=5.0, clock=clock, journal=journal).wrap(source)

    with pytest.raises(StreamStalled) as info:
        next(stream)

    assert (info.value.which, info.value.waited, info.value.partial) == ("first_token", 12.0, "")
    assert stream.result == StreamResult("", False, "first_token")
    assert [(e.which, e.waited) for e in journal.events(StallDetected)] == [("first_token", 12.0)]


def test_a_late_chunk_after_the_first_is_an_idle_stall(clock: VirtualClock) -> None:
    source = Script("a", lambda: clock.advance(7.0), "late")
    stream = StreamGuard(idle=5.0, on_stall="return", clock=clock).wrap(source)
    assert list(stream) == ["a"]
    assert stream.result == StreamResult("a", False, "idle", first_token=0.0)


# --------------------------------------------------------------------------- cancellation


def test_cancel_seen_by_a_cooperative_source_is_an_interruption(
    clock: VirtualClock, journal: Journal
) -> None:
    stream: GuardedStream

    def cancel() -> None:
        stream.cancel("user pressed stop")

    source = Script("a", cancel, stall, "never")
    stream = StreamGuard(idle=60.0, clock=clock, journal=journal).wrap(source)

    with pytest.raises(StreamInterrupted) as info:
        list(stream)

    assert (info.value.reason, info.value.partial) == ("cancelled: user pressed stop", "a")
    cause = info.value.__cause__
    assert isinstance(cause, Cancelled)
    assert cause.reason == "user pressed stop"
    assert stream.result == StreamResult(
        "a", False, "cancelled", "user pressed stop", first_token=0.0
    )
    assert [(e.reason, e.partial) for e in journal.events(StreamCancelled)] == [
        ("cancelled: user pressed stop", "a")
    ]
    assert clock.now() == 0.0


def test_cancel_has_a_default_reason(clock: VirtualClock) -> None:
    stream = StreamGuard(clock=clock).wrap(Script("a", "b"))
    assert next(stream) == "a"
    stream.cancel()
    with pytest.raises(StreamInterrupted) as info:
        next(stream)
    assert info.value.reason == "cancelled: cancelled"
    assert stream.result is not None
    assert stream.result.detail == "cancelled"


def test_an_outer_cancel_seen_by_a_cooperative_source_keeps_its_reason(
    clock: VirtualClock,
) -> None:
    with cancel_scope(clock=clock) as outer:
        source = Script("a", lambda: outer.cancel("shutting down"), stall, "never")
        stream = StreamGuard(idle=60.0, clock=clock).wrap(source)
        with pytest.raises(Cancelled, match="shutting down"):
            list(stream)
    assert stream.result == StreamResult("a", False, "cancelled", "shutting down", first_token=0.0)


def test_an_outer_cancel_a_source_does_not_check_ends_at_its_next_chunk(
    clock: VirtualClock, journal: Journal
) -> None:
    with cancel_scope(clock=clock) as outer:
        source = Script("a", lambda: outer.cancel("shutting down"), "b", "c")
        stream = StreamGuard(idle=60.0, clock=clock, journal=journal).wrap(source)
        assert next(stream) == "a"
        with pytest.raises(Cancelled) as info:
            next(stream)

    assert info.value.reason == "shutting down"
    assert stream.result == StreamResult("a", False, "cancelled", "shutting down", first_token=0.0)
    assert [(e.reason, e.partial) for e in journal.events(StreamCancelled)] == [
        ("cancelled: shutting down", "a")
    ]
    assert source.closed == 1


def test_own_cancel_a_source_does_not_check_is_recorded(
    clock: VirtualClock, journal: Journal
) -> None:
    source = Script("a", "b")
    stream = StreamGuard(clock=clock, journal=journal).wrap(source)
    assert next(stream) == "a"
    stream.cancel("user pressed stop")
    with pytest.raises(StreamInterrupted):
        next(stream)
    assert stream.result == StreamResult(
        "a", False, "cancelled", "user pressed stop", first_token=0.0
    )
    assert [e.reason for e in journal.events(StreamCancelled)] == ["cancelled: user pressed stop"]


# --------------------------------------------------------------------------- errors, end


def test_out_of_memory_without_buffered_is_recorded_as_an_error(
    clock: VirtualClock, journal: Journal
) -> None:
    stream = StreamGuard(clock=clock, journal=journal).wrap(
        Script("a", fail(ResourceExhausted("oom")))
    )
    with pytest.raises(ResourceExhausted):
        list(stream)
    assert stream.result == StreamResult(
        "a", False, "error", "ResourceExhausted: oom", first_token=0.0
    )
    assert [e.reason for e in journal.events(StreamCancelled)] == ["error: ResourceExhausted: oom"]


def test_repr_and_abandoned_of_a_stream_in_the_callers_thread(clock: VirtualClock) -> None:
    stream = StreamGuard(clock=clock, name="answer").wrap(Script("ab"))
    assert repr(stream) == "<GuardedStream 'answer' open chars=0>"
    assert not stream.abandoned
    assert stream.join(0)
    assert list(stream) == ["ab"]
    assert repr(stream) == "<GuardedStream 'answer' complete chars=2>"
    assert not stream.abandoned


def test_a_source_that_cannot_be_iterated_leaves_nothing_behind(clock: VirtualClock) -> None:
    # iter() fails before the stream is built: its finaliser must not trip over the half-built
    # object (a failure there would be an unraisable exception: an error in this suite)
    with pytest.raises(TypeError):
        StreamGuard(clock=clock).wrap(42)  # type: ignore[arg-type]
    gc.collect()


# ------------------------------------------------------------------------------ buffered


def test_the_buffered_switch_is_recorded_as_the_first_fallback(
    clock: VirtualClock, journal: Journal
) -> None:
    source = Script("Hel", fail(MemoryError("oom")))
    result = StreamGuard(clock=clock, journal=journal).collect(source, buffered=lambda: "Hello")
    assert result == StreamResult("Hello", True, "complete", buffered=True, first_token=0.0)
    (event,) = journal.events(FallbackUsed)
    assert (event.step, event.index, event.after) == ("buffered", 1, ("MemoryError: oom",))


def test_a_diverged_buffered_answer_ends_the_stream_as_an_error(clock: VirtualClock) -> None:
    stream = StreamGuard(clock=clock).wrap(
        Script("Hel", fail(MemoryError())), buffered=lambda: "No"
    )
    with pytest.raises(StreamInterrupted):
        list(stream)
    assert stream.result == StreamResult(
        "Hel", False, "error", "buffered answer diverged", buffered=True, first_token=0.0
    )


def test_a_buffered_call_past_the_total_deadline_is_a_total_stall(clock: VirtualClock) -> None:
    def buffered() -> str:
        stall()
        return "never"

    source = Script("a", fail(MemoryError()))
    with pytest.raises(StreamStalled) as info:
        StreamGuard(idle=1.0, total=30.0, clock=clock).collect(source, buffered=buffered)
    assert (info.value.which, info.value.waited) == ("total", 30.0)
    assert isinstance(info.value.__cause__, DeadlineExceeded)
    assert not isinstance(info.value.__cause__, StreamStalled)


def test_a_buffered_call_that_fails_is_recorded(clock: VirtualClock, journal: Journal) -> None:
    def buffered() -> str:
        raise ValueError("no answer")

    stream = StreamGuard(clock=clock, journal=journal).wrap(
        Script("a", fail(MemoryError())), buffered=buffered
    )
    with pytest.raises(ValueError, match="no answer"):
        list(stream)
    assert stream.result == StreamResult(
        "a", False, "error", "ValueError: no answer", buffered=True, first_token=0.0
    )
    assert [e.reason for e in journal.events(StreamCancelled)] == ["error: ValueError: no answer"]


def test_an_empty_buffered_rest_is_not_screened(clock: VirtualClock) -> None:
    source = Script("Hello", fail(MemoryError()))
    guard = StreamGuard(clock=clock, validators=[bool])  # bool("") would reject
    result = guard.collect(source, buffered=lambda: "Hello")
    assert result == StreamResult("Hello", True, "complete", buffered=True, first_token=0.0)


# ------------------------------------------------------------------------------ threaded


def test_the_worker_reads_at_most_64_chunks_ahead(clock: VirtualClock) -> None:
    pulled = itertools.count()
    counts: list[int] = []

    def source() -> Iterator[str]:
        while True:
            counts.append(next(pulled))
            yield "x"

    stream = StreamGuard(clock=clock).wrap(source(), threaded=True)
    try:
        stream.start()
        end = time.monotonic() + WAIT
        while len(counts) < 64 and time.monotonic() < end:
            time.sleep(0.001)
        assert len(counts) == 64
        time.sleep(0.05)  # a worker that read further would have done so by now
        assert len(counts) == 64
        assert next(stream) == "x"  # one taken: room for one more
        end = time.monotonic() + WAIT
        while len(counts) < 65 and time.monotonic() < end:
            time.sleep(0.001)
        time.sleep(0.05)  # as above: a worker that read past 65 would have done so by now
        assert len(counts) == 65
    finally:
        stream.close()
    assert stream.join(WAIT)


def test_closing_stops_a_worker_reading_an_endless_source(clock: VirtualClock) -> None:
    source = Script(*["x"] * 1000)
    stream = StreamGuard(clock=clock).wrap(source, threaded=True)
    assert next(stream) == "x"
    stream.close()
    assert stream.join(WAIT)
    assert len(source.threads) <= 66  # 64 ahead, the one delivered, at most one in flight
    assert source.closed >= 1


def test_a_worker_sees_the_stream_end_as_a_cancellation(clock: VirtualClock) -> None:
    seen: list[str] = []
    waiting = threading.Event()

    def source() -> Iterator[str]:
        yield "a"
        scope = current_scope()
        assert scope is not None  # the worker runs in a copy of the consumer's context
        waiting.set()
        try:
            scope.wait()
        except Cancelled as exc:
            seen.append(exc.reason)
            raise

    stream = StreamGuard(idle=60.0, clock=clock).wrap(source(), threaded=True)
    assert next(stream) == "a"
    assert waiting.wait(WAIT)
    stream.close()
    assert stream.join(WAIT)
    assert seen == ["stream ended"]


def test_join_waits_no_longer_than_its_timeout(clock: VirtualClock) -> None:
    release = threading.Event()

    def source() -> Iterator[str]:
        release.wait(WAIT)
        yield "late"

    stream = StreamGuard(first_token=1.0, clock=clock).wrap(source(), threaded=True)
    try:
        with pytest.raises(StreamStalled):
            next(stream)
        assert stream.abandoned
        assert not stream.join(0.01)  # the worker is still blocked: join gives up
    finally:
        release.set()
    assert stream.join(WAIT)


def test_cancel_wakes_a_consumer_waiting_without_a_deadline(clock: VirtualClock) -> None:
    release = threading.Event()
    started = threading.Event()

    def source() -> Iterator[str]:
        started.set()
        if not release.wait(WAIT):
            raise RuntimeError("the consumer was never woken")
        yield "late"

    stream = StreamGuard(clock=clock).wrap(source(), threaded=True)  # no deadline: real waits
    stream.start()
    assert started.wait(WAIT)

    def cancel_later() -> None:
        time.sleep(0.05)  # let the consumer block in its wait for the worker
        stream.cancel("user pressed stop")

    canceller = threading.Thread(target=cancel_later)
    canceller.start()
    try:
        with pytest.raises(StreamInterrupted) as info:
            next(stream)
        assert info.value.reason == "cancelled: user pressed stop"
    finally:
        canceller.join()
        release.set()
    assert stream.join(WAIT)


def test_a_worker_keeps_the_source_error_over_a_failing_close(clock: VirtualClock) -> None:
    class Failing(Script):
        def close(self) -> None:
            super().close()
            raise RuntimeError("close failed")

    source = Failing("a", fail(ValueError("bad chunk")))
    with pytest.raises(ValueError, match="bad chunk"):
        StreamGuard(clock=clock).collect(source, threaded=True)


def test_a_worker_hands_over_a_failing_close(clock: VirtualClock) -> None:
    class Failing(Script):
        def close(self) -> None:
            super().close()
            raise RuntimeError("close failed")

    source = Failing("a")
    stream = StreamGuard(clock=clock).wrap(source, threaded=True)
    with pytest.raises(RuntimeError, match="close failed"):
        list(stream)
    assert stream.text == "a"


def test_a_chunk_handed_over_while_the_consumer_rearms_its_wakeup_is_not_missed(
    clock: VirtualClock,
) -> None:
    """A forced interleaving: the worker appends a chunk and sets the wakeup just before
    the consumer clears the wakeup to wait for it. The consumer must find the chunk in the
    buffer, not wait for a wakeup that has already come and gone."""
    go, end = threading.Event(), threading.Event()

    def source() -> Iterator[str]:
        yield "a"
        assert go.wait(WAIT)
        yield "b"
        end.wait(WAIT)  # nothing more until the test is done

    class RacingWakeup(threading.Event):
        """Stands in for the worker's wakeup; its first clear() lets the worker go first."""

        def __init__(self) -> None:
            super().__init__()
            self.handed = threading.Event()
            self.raced = False

        def set(self) -> None:
            super().set()
            self.handed.set()

        def clear(self) -> None:
            if not self.raced:
                self.raced = True
                go.set()  # the worker appends "b" and sets the wakeup...
                assert self.handed.wait(WAIT)
            super().clear()  # ...and only then does the consumer clear it

    stream = StreamGuard(idle=5.0, clock=clock).wrap(source(), threaded=True)
    try:
        assert next(stream) == "a"  # the worker is now held before "b"
        pump = stream._pump  # the stand-in goes where the worker signals
        assert pump is not None
        pump.ready = RacingWakeup()
        assert next(stream) == "b"
        assert clock.now() == 0.0  # taken from the buffer at once, no wait for a deadline
    finally:
        end.set()
        stream.close()
    assert stream.join(WAIT)
