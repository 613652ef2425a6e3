"""The resilient client's stream is one span from the call that makes it to its end, with
the fake backends of ``test_resilient_unit`` on a virtual clock: the client's events of the
whole stream (a fallback midway, the breaker opening, the cache finishing it) carry its ids,
and the guard's ``stream:`` spans are its children."""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING, cast

import pytest

from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.backends.resilient import ResilientClient
from pytest_resilience.core.breaker import CircuitBreaker, ConsecutiveFailures
from pytest_resilience.core.cache import ResponseCache, request_key
from pytest_resilience.core.errors import DaemonLost, FallbackError, StreamInterrupted
from pytest_resilience.core.events import (
    BreakerTransition,
    CacheHit,
    DaemonDown,
    FallbackUsed,
    StreamCancelled,
)
from pytest_resilience.core.fallback import FallbackExhausted
from tests.unit.test_resilient_unit import FakeDaemon, FakeDirect, answer, chunks

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from pytest_resilience.backends.daemon import DaemonBackend
    from pytest_resilience.core.clock import VirtualClock
    from pytest_resilience.core.journal import Journal
    from pytest_resilience.core.trace import Span

PROMPT = "abcdefgh"
ROOT = "resilient.stream"
GUARD = "stream:resilient"


class Daemon(FakeDaemon):
    model = "fake"

    async def astream(
        self, prompt: str, params: GenerationParams | None = None
    ) -> AsyncIterator[str]:
        for chunk in self.stream(prompt, params):
            yield chunk


class Spans:
    """A span listener that logs what it hears, in order, among the test's own marks."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.started: list[Span] = []
        self.ended: list[tuple[Span, BaseException | None]] = []

    def __call__(self, event: object) -> None:
        pass

    def span_started(self, opened: Span) -> None:
        self.started.append(opened)
        self.log.append(("start", opened.span_id))

    def span_ended(self, closed: Span, error: BaseException | None) -> None:
        self.ended.append((closed, error))
        self.log.append(("end", closed.span_id))

    def named(self, name: str) -> list[Span]:
        return [s for s in self.started if s.name == name]

    def root(self) -> Span:
        (root,) = self.named(ROOT)
        return root

    def ends_of(self, opened: Span) -> list[BaseException | None]:
        return [error for closed, error in self.ended if closed.span_id == opened.span_id]


@pytest.fixture
def spans(journal: Journal) -> Spans:
    heard = Spans()
    journal.subscribe(heard)
    return heard


def make(
    clock: VirtualClock, journal: Journal, daemon: Daemon, direct: FakeDirect, **options: object
) -> ResilientClient:
    return ResilientClient(
        cast("DaemonBackend", daemon),
        direct,
        clock=clock,
        journal=journal,
        timeout=5.0,
        **options,  # type: ignore[arg-type]
    )


def one_failure_opens(clock: VirtualClock, journal: Journal) -> CircuitBreaker:
    return CircuitBreaker(
        "resilient.daemon",
        on=DaemonLost,
        trip=ConsecutiveFailures(1),
        clock=clock,
        journal=journal,
    )


def read_sync(client: ResilientClient, spans: Spans) -> list[str]:
    stream = client.stream(PROMPT)
    assert stream is not None
    parts: list[str] = []
    for chunk in stream:
        parts.append(chunk)
        spans.log.append(("chunk", chunk))
    return parts


def read_async(client: ResilientClient, spans: Spans) -> list[str]:
    async def read() -> list[str]:
        stream = await client.astream(PROMPT)
        assert stream is not None
        parts: list[str] = []
        async for chunk in stream:
            parts.append(chunk)
            spans.log.append(("chunk", chunk))
        return parts

    return client.clock.run(read())  # type: ignore[attr-defined, no-any-return]


READERS = pytest.mark.parametrize("read", [read_sync, read_async], ids=["sync", "async"])


@READERS
def test_a_stream_that_falls_back_midway_is_one_span_to_its_end(
    clock: VirtualClock,
    journal: Journal,
    spans: Spans,
    read: Callable[[ResilientClient, Spans], list[str]],
) -> None:
    daemon = Daemon(clock)
    daemon.fail_after = 2  # two chunks, then the connection is lost: on in process
    client = make(clock, journal, daemon, FakeDirect(), breaker=one_failure_opens(clock, journal))
    assert "".join(read(client, spans)) == answer(PROMPT)

    root = spans.root()
    assert root.parent_id == ""
    guards = spans.named(GUARD)  # the daemon's stream, then the in-process one
    assert len(guards) == 2
    assert {(g.trace_id, g.parent_id) for g in guards} == {(root.trace_id, root.span_id)}
    assert len(spans.started) == 3

    events = journal.events()
    assert {e.trace_id for e in events} == {root.trace_id}
    assert {e.span_id for e in events} <= {root.span_id, *(g.span_id for g in guards)}
    mine = [e for e in events if isinstance(e, FallbackUsed | DaemonDown | BreakerTransition)]
    assert [e.kind for e in mine] == ["breaker.transition", "daemon.down", "fallback.used"]
    assert {e.span_id for e in mine} == {root.span_id}

    # ended once, without an error, after the last chunk and after its children
    assert spans.ends_of(root) == [None]
    end = spans.log.index(("end", root.span_id))
    last_chunk = max(i for i, (what, _) in enumerate(spans.log) if what == "chunk")
    assert end > last_chunk
    assert all(spans.log.index(("end", g.span_id)) < end for g in guards)


@READERS
def test_the_cache_finishing_a_stream_is_in_its_span(
    clock: VirtualClock,
    journal: Journal,
    spans: Spans,
    read: Callable[[ResilientClient, Spans], list[str]],
) -> None:
    daemon = Daemon(clock)
    daemon.fail_after = 2
    cache = ResponseCache(clock=clock, journal=journal)
    cache.put(request_key(PROMPT, GenerationParams(), model="fake"), answer(PROMPT))
    down = make(clock, journal, daemon, FakeDirect(fail=True), cache=cache)
    assert read(down, spans) == [*chunks(answer(PROMPT), 3)[:2], answer(PROMPT)[6:]]

    root = spans.root()
    hits = journal.events(CacheHit)
    assert len(hits) == 1
    assert (hits[0].trace_id, hits[0].span_id) == (root.trace_id, root.span_id)
    served = journal.events(FallbackUsed)[-1]
    assert (served.step, served.span_id) == ("cache", root.span_id)
    # ended once, as the cached rest was handed out: before the reader saw it (its mark
    # follows), not at the StopIteration after it
    assert spans.ends_of(root) == [None]
    marks = [i for i, (what, _) in enumerate(spans.log) if what == "chunk"]
    assert marks[-2] < spans.log.index(("end", root.span_id)) < marks[-1]


@READERS
def test_a_stream_that_fails_ends_its_span_with_the_error(
    clock: VirtualClock,
    journal: Journal,
    spans: Spans,
    read: Callable[[ResilientClient, Spans], list[str]],
) -> None:
    daemon = Daemon(clock)
    daemon.fail_after = 2
    diverging = make(clock, journal, daemon, FakeDirect(diverge=True))
    with pytest.raises(StreamInterrupted, match="fallback diverged") as raised:
        read(diverging, spans)

    root = spans.root()
    assert spans.ends_of(root) == [raised.value]
    # the client's own event (the guard's carry its spans' ids)
    (cancelled,) = [e for e in journal.events(StreamCancelled) if e.reason == "fallback diverged"]
    assert (cancelled.trace_id, cancelled.span_id) == (root.trace_id, root.span_id)


def test_a_stream_closed_early_ends_its_span_once(
    clock: VirtualClock, journal: Journal, spans: Spans
) -> None:
    daemon = Daemon(clock)
    client = make(clock, journal, daemon, FakeDirect())
    with client.stream(PROMPT) as stream:  # type: ignore[union-attr]
        assert next(stream) == chunks(answer(PROMPT), 3)[0]
        assert spans.ended == []  # open while the stream is
    root = spans.root()
    assert spans.ends_of(root) == [None]
    (guard,) = spans.named(GUARD)
    assert spans.log.index(("end", guard.span_id)) < spans.log.index(("end", root.span_id))
    stream.close()
    assert list(stream) == []
    assert spans.ends_of(root) == [None]  # still once


def test_an_async_stream_closed_early_ends_its_span_once(
    clock: VirtualClock, journal: Journal, spans: Spans
) -> None:
    client = make(clock, journal, Daemon(clock), FakeDirect())

    async def read() -> None:
        stream = await client.astream(PROMPT)
        assert stream is not None
        async with stream:
            assert await anext(stream) == chunks(answer(PROMPT), 3)[0]
            assert spans.ended == []
        await stream.aclose()

    clock.run(read())
    assert spans.ends_of(spans.root()) == [None]


def test_a_stream_that_cannot_start_ends_its_span_in_the_call(
    clock: VirtualClock, journal: Journal, spans: Spans
) -> None:
    daemon = Daemon(clock)
    daemon.mode = "down"
    failing = make(clock, journal, daemon, FakeDirect(fail=True))
    with pytest.raises(FallbackError) as raised:
        failing.stream(PROMPT)
    root = spans.root()
    assert spans.ends_of(root) == [raised.value]
    (exhausted,) = journal.events(FallbackExhausted)
    assert exhausted.span_id == root.span_id

    quiet = make(clock, journal, daemon, FakeDirect(fail=True), policy="never_fail")
    assert quiet.stream(PROMPT) is None
    second = spans.named(ROOT)[1]
    assert spans.ends_of(second) == [None]


def test_a_stream_over_before_it_is_returned_ends_its_span_in_the_call(
    clock: VirtualClock, journal: Journal, spans: Spans
) -> None:
    client = make(clock, journal, Daemon(clock), FakeDirect())
    stream = client.stream("")  # an empty answer on both sides: nothing to read
    assert stream is not None
    assert stream.complete
    assert spans.ends_of(spans.root()) == [None]  # not left for a read that may never come
    assert list(stream) == []
    assert spans.ends_of(spans.root()) == [None]


def test_a_stream_dropped_without_close_ends_no_span(
    clock: VirtualClock, journal: Journal, spans: Spans
) -> None:
    daemon = Daemon(clock)
    client = make(clock, journal, daemon, FakeDirect())
    stream = client.stream(PROMPT)
    assert stream is not None
    next(stream)
    del stream
    gc.collect()
    # the guard's finaliser closed the daemon's stream, and announced nothing: no finaliser
    # may take the locks a listener's span_ended takes
    assert daemon.streams[0].closed
    assert spans.ended == []


@pytest.mark.parametrize("call", ["generate", "agenerate", "embed", "aembed"])
def test_a_call_opens_its_span_on_a_journal_still_empty(
    clock: VirtualClock, journal: Journal, spans: Spans, call: str
) -> None:
    client = make(clock, journal, Daemon(clock), FakeDirect())
    assert len(journal) == 0  # an empty journal is falsy: still a journal
    made = getattr(client, call)(PROMPT)
    if call.startswith("a"):
        clock.run(made)
    name = "resilient." + call.removeprefix("a")
    assert [s.name for s in spans.started if not s.name.startswith("retry:")] == [name]
    assert [s.name for s, _ in spans.ended if s.name == name] == [name]


def test_no_journal_no_span(clock: VirtualClock) -> None:
    daemon = Daemon(clock)
    daemon.fail_after = 2
    client = ResilientClient(cast("DaemonBackend", daemon), FakeDirect(), clock=clock, timeout=5.0)
    stream = client.stream(PROMPT)
    assert stream is not None
    assert "".join(stream) == answer(PROMPT)
    assert stream._span is None


def test_the_exporter_sees_one_root_span_ending_after_the_last_chunk(
    clock: VirtualClock, journal: Journal
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415 - the otel extra
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
        InMemorySpanExporter,
    )

    from pytest_resilience.export.otel import OtelExporter  # noqa: PLC0415

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    try:
        journal.subscribe(OtelExporter(provider.get_tracer("test")))
        daemon = Daemon(clock)
        daemon.fail_after = 2
        client = make(
            clock, journal, daemon, FakeDirect(), breaker=one_failure_opens(clock, journal)
        )
        stream = client.stream(PROMPT)
        assert stream is not None
        parts: list[str] = []
        while len("".join(parts)) < len(answer(PROMPT)):
            parts.append(next(stream))
        after_last_chunk = time.time_ns()  # wall time: the SDK stamps the span's end in it
        with pytest.raises(StopIteration):
            next(stream)
        finished = memory.get_finished_spans()
    finally:
        provider.shutdown()

    (root,) = [s for s in finished if s.name == ROOT]
    assert root.end_time is not None
    assert root.end_time >= after_last_chunk
    assert [s.name for s in finished if s.parent is None] == [ROOT]  # the only root
    children = [s for s in finished if s is not root]
    assert sorted(s.name for s in children) == [GUARD, GUARD]
    assert {s.parent.span_id for s in children if s.parent} == {root.context.span_id}
    assert {s.context.trace_id for s in finished} == {root.context.trace_id}
    assert [e.name for e in root.events] == [
        "breaker.transition",
        "daemon.down",
        "fallback.used",
    ]
    assert all(s.end_time is not None and s.end_time <= root.end_time for s in children)
