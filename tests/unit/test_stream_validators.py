"""Streams that are not complete though nothing failed: empty, invalid, capped; sync and async."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from pytest_resilience import Journal, StreamGuard, StreamResult, VirtualClock
from pytest_resilience.core.events import (
    StreamCancelled,
    StreamCapped,
    StreamEmpty,
    StreamFirstToken,
    StreamInvalid,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


class Script:
    """A source of fixed chunks that counts how often it was closed."""

    def __init__(self, *chunks: str) -> None:
        self.chunks = list(chunks)
        self.pulled = 0
        self.closed = 0

    def __iter__(self) -> Script:
        return self

    def __next__(self) -> str:
        if not self.chunks:
            raise StopIteration
        self.pulled += 1
        return self.chunks.pop(0)

    def close(self) -> None:
        self.closed += 1


class AsyncScript:
    def __init__(self, *chunks: str) -> None:
        self.chunks = list(chunks)
        self.closed = 0

    def __aiter__(self) -> AsyncScript:
        return self

    async def __anext__(self) -> str:
        await asyncio.sleep(0)
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)

    async def aclose(self) -> None:
        self.closed += 1


def no_shouting(chunk: str) -> bool:
    return not chunk.isupper()


def no_digits(chunk: str) -> bool:
    if any(c.isdigit() for c in chunk):
        raise ValueError(f"digits in {chunk!r}")
    return True


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def journal() -> Journal:
    return Journal()


def kinds(journal: Journal) -> list[str]:
    return [e.kind for e in journal]


# ----------------------------------------------------------------------------- empty


def test_a_stream_without_chunks_is_empty_not_complete(
    clock: VirtualClock, journal: Journal
) -> None:
    source = Script()
    with StreamGuard(idle=5.0, clock=clock, journal=journal).wrap(source) as stream:
        assert list(stream) == []

    assert stream.result == StreamResult("", False, "empty", "no text")
    assert source.closed == 1
    assert [(e.kind, e.partial) for e in journal.events(StreamEmpty)] == [("stream.empty", "")]


def test_a_whitespace_only_stream_is_empty_and_keeps_its_text(
    clock: VirtualClock, journal: Journal
) -> None:
    guard = StreamGuard(clock=clock, journal=journal)
    result = guard.collect(Script(" ", "\n\t"))

    assert (result.text, result.complete, result.reason) == (" \n\t", False, "empty")
    assert result.detail == "whitespace only"
    assert [e.partial for e in journal.events(StreamEmpty)] == [" \n\t"]


def test_one_visible_character_makes_a_stream_complete(
    clock: VirtualClock, journal: Journal
) -> None:
    result = StreamGuard(clock=clock, journal=journal).collect(Script(" ", ".", "\n"))

    assert (result.text, result.complete, result.reason) == (" .\n", True, "complete")
    assert journal.events(StreamEmpty) == []


def test_a_buffered_answer_that_is_empty_is_empty(clock: VirtualClock, journal: Journal) -> None:
    def source() -> Iterator[str]:
        yield from ()
        raise MemoryError("out of memory")

    guard = StreamGuard(clock=clock, journal=journal)
    result = guard.collect(source(), buffered=lambda: "  ")

    assert (result.text, result.reason, result.buffered) == ("  ", "empty", True)


@pytest.mark.asyncio
async def test_async_empty_stream(journal: Journal) -> None:
    source = AsyncScript(" ")
    guard = StreamGuard(idle=5.0, journal=journal)
    result = await guard.acollect(source)

    assert (result.text, result.complete, result.reason) == (" ", False, "empty")
    assert source.closed == 1
    assert [e.partial for e in journal.events(StreamEmpty)] == [" "]


# ------------------------------------------------------------------------ validators


def test_a_rejected_chunk_ends_the_stream_with_the_text_before_it(
    clock: VirtualClock, journal: Journal
) -> None:
    source = Script("hel", "lo ", "WORLD", "again")
    guard = StreamGuard(idle=5.0, clock=clock, journal=journal, validators=[no_shouting])
    with guard.wrap(source) as stream:
        assert list(stream) == ["hel", "lo "]

    assert stream.result == StreamResult(
        "hello ", False, "invalid", "no_shouting rejected chunk 3", first_token=0.0
    )
    assert source.closed == 1
    assert source.pulled == 3  # nothing read past the rejected chunk
    [event] = journal.events(StreamInvalid)
    assert (event.chunk, event.detail, event.partial) == (
        3,
        "no_shouting rejected chunk 3",
        "hello ",
    )
    assert journal.events(StreamCancelled) == []


def test_validators_run_in_order_and_a_value_error_is_the_reason(
    clock: VirtualClock, journal: Journal
) -> None:
    seen: list[str] = []

    def record(chunk: str) -> bool:
        seen.append(chunk)
        return True

    guard = StreamGuard(clock=clock, journal=journal, validators=(no_digits, record))
    result = guard.collect(Script("a", "b2", "c"))

    assert (result.text, result.reason) == ("a", "invalid")
    assert result.detail == "no_digits: digits in 'b2'"
    assert seen == ["a"]  # the second validator never saw the rejected chunk
    assert [e.detail for e in journal.events(StreamInvalid)] == ["no_digits: digits in 'b2'"]


def test_a_rejected_first_chunk_delivers_nothing(clock: VirtualClock, journal: Journal) -> None:
    result = StreamGuard(clock=clock, journal=journal, validators=[no_shouting]).collect(
        Script("NO", "yes")
    )

    assert result == StreamResult("", False, "invalid", "no_shouting rejected chunk 1")
    assert journal.events(StreamFirstToken) == []


def test_a_validator_that_breaks_ends_the_stream_as_an_error(
    clock: VirtualClock, journal: Journal
) -> None:
    def broken(chunk: str) -> bool:
        raise KeyError(chunk)

    source = Script("a")
    stream = StreamGuard(clock=clock, journal=journal, validators=[broken]).wrap(source)
    with pytest.raises(KeyError):
        next(stream)

    assert stream.result is not None
    assert (stream.result.reason, stream.result.detail) == ("error", "KeyError: 'a'")
    assert source.closed == 1
    assert [e.reason for e in journal.events(StreamCancelled)] == ["error: KeyError: 'a'"]


def test_threaded_stream_rejected_chunk_stops_the_worker(
    clock: VirtualClock, journal: Journal
) -> None:
    source = Script("ok", "BAD", "more")
    guard = StreamGuard(clock=clock, journal=journal, validators=[no_shouting])
    with guard.wrap(source, threaded=True) as stream:
        assert list(stream) == ["ok"]
    assert stream.join(timeout=60)  # generous: the worker stops at once; this bounds a bug

    assert stream.result is not None
    assert (stream.result.text, stream.result.reason) == ("ok", "invalid")
    assert source.closed == 1


# ------------------------------------------------------------------------------ caps


def test_max_chunks_caps_the_stream_and_keeps_whole_chunks(
    clock: VirtualClock, journal: Journal
) -> None:
    source = Script("a", "b", "c", "d")
    result = StreamGuard(clock=clock, journal=journal, max_chunks=2).collect(source)

    assert (result.text, result.complete, result.reason) == ("ab", False, "capped")
    assert result.detail == "max_chunks=2"
    assert source.closed == 1
    assert [(e.limit, e.partial) for e in journal.events(StreamCapped)] == [("max_chunks=2", "ab")]


def test_a_stream_that_ends_at_its_cap_is_complete(clock: VirtualClock, journal: Journal) -> None:
    guard = StreamGuard(clock=clock, journal=journal, max_chunks=2, max_chars=4)
    result = guard.collect(Script("ab", "cd"))

    assert (result.text, result.reason) == ("abcd", "complete")
    assert journal.events(StreamCapped) == []


def test_max_chars_refuses_the_chunk_that_would_pass_it(
    clock: VirtualClock, journal: Journal
) -> None:
    result = StreamGuard(clock=clock, journal=journal, max_chars=5).collect(
        Script("abc", "de", "f")
    )
    assert (result.text, result.reason, result.detail) == ("abcde", "capped", "max_chars=5")

    result = StreamGuard(clock=clock, max_chars=5).collect(Script("abc", "def"))
    assert (result.text, result.reason) == ("abc", "capped")


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_chunks must be at least 1, got 0"):
        StreamGuard(max_chunks=0)
    with pytest.raises(ValueError, match="max_chars must be at least 1, got -1"):
        StreamGuard(max_chars=-1)


@pytest.mark.asyncio
async def test_async_validators_and_caps(journal: Journal) -> None:
    source = AsyncScript("a", "B2", "c")
    result = await StreamGuard(journal=journal, validators=[no_digits]).acollect(source)
    assert (result.text, result.reason, result.detail) == (
        "a",
        "invalid",
        "no_digits: digits in 'B2'",
    )
    assert source.closed == 1

    source = AsyncScript("a", "b", "c")
    result = await StreamGuard(journal=journal, max_chunks=2).acollect(source)
    assert (result.text, result.reason, result.detail) == ("ab", "capped", "max_chunks=2")
    assert source.closed == 1
    assert kinds(journal) == [
        "stream.first_token",
        "stream.invalid",
        "stream.first_token",
        "stream.capped",
    ]


@pytest.mark.asyncio
async def test_async_buffered_rest_is_screened_too(journal: Journal) -> None:
    async def source() -> AsyncIterator[str]:
        yield "ab"
        raise MemoryError("out of memory")

    async def buffered() -> str:
        return "abcdef"

    guard = StreamGuard(journal=journal, max_chars=4)
    result = await guard.acollect(source(), buffered=buffered)
    assert (result.text, result.reason, result.buffered) == ("ab", "capped", True)


def test_sync_buffered_rest_is_screened_too(clock: VirtualClock, journal: Journal) -> None:
    def source() -> Iterator[str]:
        yield "ab"
        raise MemoryError("out of memory")

    guard = StreamGuard(clock=clock, journal=journal, validators=[no_shouting])
    result = guard.collect(source(), buffered=lambda: "abCD")
    assert (result.text, result.reason, result.buffered) == ("ab", "invalid", True)
