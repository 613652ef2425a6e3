"""Spans: one call's trace and span ids through Retry, Fallback and the stream guard, in
threads and asyncio tasks; the ids in journal files and in JSON logs."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import random
import threading
from typing import TYPE_CHECKING

import pytest

from pytest_resilience.core.breaker import CircuitBreaker
from pytest_resilience.core.errors import CircuitOpenError
from pytest_resilience.core.events import (
    AttemptFailed,
    CallRejected,
    Event,
    FallbackUsed,
    StreamInvalid,
    event_from_dict,
)
from pytest_resilience.core.fallback import Fallback, FallbackExhausted
from pytest_resilience.core.journal import Journal, JsonLinesLogger, format_event
from pytest_resilience.core.logs import JsonFormatter, SpanFilter
from pytest_resilience.core.retry import Backoff, Retry
from pytest_resilience.core.stream import StreamGuard
from pytest_resilience.core.trace import (
    Span,
    check_ids,
    current_span,
    new_span_id,
    new_trace_id,
    span,
    start_span,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


class Spans:
    """A span listener that keeps what it hears."""

    def __init__(self) -> None:
        self.started: list[Span] = []
        self.ended: list[tuple[Span, BaseException | None]] = []

    def __call__(self, event: object) -> None:
        pass

    def span_started(self, opened: Span) -> Span | None:
        self.started.append(opened)
        return None

    def span_ended(self, closed: Span, error: BaseException | None) -> None:
        self.ended.append((closed, error))


def _flaky(failures: int, answer: str = "ok"):  # type: ignore[no-untyped-def]
    calls = [0]
    seen: list[Span | None] = []

    def call(*args: object) -> str:
        calls[0] += 1
        seen.append(current_span())
        if calls[0] <= failures:
            raise ConnectionError(f"down {calls[0]}")
        return answer

    return call, seen


def _chain(journal: Journal) -> tuple[Retry, Fallback, list[Span | None], list[Span | None]]:
    first, first_seen = _flaky(99)
    second, second_seen = _flaky(1)
    chain = Fallback(
        "answer", [("daemon", first), ("direct", second)], on=ConnectionError, journal=journal
    )
    retry = Retry(on=Exception, attempts=3, backoff=Backoff.fixed(0), journal=journal, name="ask")
    return retry, chain, first_seen, second_seen


def test_one_call_is_one_trace_through_retry_fallback_and_stream() -> None:
    journal = Journal()
    spans = Spans()
    journal.subscribe(spans)
    retry, chain, _, second_seen = _chain(journal)
    guard = StreamGuard(journal=journal, name="answer", validators=[lambda c: c != "bad"])
    source_saw: list[Span | None] = []

    def answer(prompt: str) -> str:
        text = chain(prompt)

        def chunks() -> Iterator[str]:
            source_saw.append(current_span())
            yield text
            yield "bad"

        return guard.collect(chunks()).text

    assert retry.call(answer, "hi") == "ok"
    events = journal.events()
    traces = {e.trace_id for e in events}
    assert len(traces) == 1
    assert "" not in traces
    [root] = [s for s in spans.started if not s.parent_id]
    assert root.name == "retry:ask"
    by_id = {s.span_id: s for s in spans.started}
    # retry -> fallback (two calls: the first exhausted, the second fell back) -> stream
    names = [(s.name, by_id[s.parent_id].name if s.parent_id else "") for s in spans.started]
    assert names == [
        ("retry:ask", ""),
        ("fallback:answer", "retry:ask"),
        ("fallback:answer", "retry:ask"),
        ("stream:answer", "retry:ask"),
    ]
    kinds = {e.kind: by_id[e.span_id].name for e in events}
    assert kinds == {
        "fallback.exhausted": "fallback:answer",
        "attempt.failed": "retry:ask",
        "retry.scheduled": "retry:ask",
        "attempt.started": "retry:ask",
        "fallback.used": "fallback:answer",
        "stream.first_token": "stream:answer",
        "stream.invalid": "stream:answer",
    }
    # the steps and the stream's source ran in the spans
    assert second_seen[-1] == spans.started[2]
    assert source_saw == [spans.started[3]]
    # every span ended, the exhausted fallback by its error, in order inner first
    ended = {s.span_id: e for s, e in spans.ended}
    assert set(ended) == set(by_id)
    assert type(ended[spans.started[1].span_id]).__name__ == "FallbackError"
    assert ended[root.span_id] is None
    assert current_span() is None


def test_nested_calls_are_children_and_two_calls_two_traces() -> None:
    journal = Journal()
    spans = Spans()
    journal.subscribe(spans)
    inner = Retry(on=ValueError, attempts=1, journal=journal, name="inner")
    outer = Retry(on=ValueError, attempts=1, journal=journal, name="outer")
    outer.call(inner.call, current_span)
    outer.call(lambda: 1)
    first, child, second = spans.started
    assert (first.name, child.name, second.name) == ("retry:outer", "retry:inner", "retry:outer")
    assert child.trace_id == first.trace_id
    assert child.parent_id == first.span_id
    assert second.trace_id != first.trace_id
    assert second.parent_id == ""
    assert len(first.trace_id) == 32
    assert len(first.span_id) == 16


def test_the_decorator_opens_a_span_per_call() -> None:
    journal = Journal()
    spans = Spans()
    journal.subscribe(spans)

    @Retry(on=ValueError, journal=journal)
    def ask() -> Span | None:
        return current_span()

    assert ask() == spans.started[0]
    assert spans.started[0].name.startswith("retry:")
    assert "ask" in spans.started[0].name


def ask_model() -> Span | None:
    return current_span()


async def aask_model() -> Span | None:
    return current_span()


def test_call_and_acall_name_their_span_after_the_policy_or_the_function() -> None:
    journal = Journal()
    spans = Spans()
    journal.subscribe(spans)
    unnamed = Retry(on=ValueError, journal=journal)
    named = unnamed.with_(name="ask")
    inside = [
        unnamed.call(ask_model),
        asyncio.run(unnamed.acall(aask_model)),
        named.call(ask_model),
        asyncio.run(named.acall(aask_model)),
    ]
    assert inside == spans.started
    assert [s.name for s in spans.started] == [
        "retry:ask_model",
        "retry:aask_model",
        "retry:ask",
        "retry:ask",
    ]
    assert [s for s, _ in spans.ended] == spans.started


@pytest.mark.asyncio
async def test_an_async_fallback_runs_its_steps_in_its_span() -> None:
    journal = Journal()
    spans = Spans()
    journal.subscribe(spans)

    async def down() -> Span | None:
        raise ConnectionError("down")

    chain = Fallback(
        "answer", [("first", down), ("second", aask_model)], on=ConnectionError, journal=journal
    )
    inside = await chain.acall()
    [opened] = spans.started
    assert inside == opened
    assert opened.name == "fallback:answer"
    assert journal.events(FallbackUsed)[0].span_id == opened.span_id
    assert spans.ended == [(opened, None)]
    assert current_span() is None


def test_no_journal_no_span() -> None:
    seen: list[Span | None] = []

    def call() -> str:
        seen.append(current_span())
        return "ok"

    Retry(on=ValueError)(call)()
    Retry(on=ValueError).call(call)
    Fallback("f", [("a", lambda: seen.append(current_span()))], on=ValueError)()
    StreamGuard().collect(iter(["a"]))
    assert seen == [None, None, None]
    event = AttemptFailed(time=0.0, attempt=1, error="E", category="c")
    assert (event.trace_id, event.span_id) == ("", "")


def test_ids_follow_threads_with_a_copied_context_and_asyncio_tasks() -> None:
    journal = Journal()

    def in_thread() -> None:
        journal.append(CallRejected(time=0.0, state="open"))

    async def task() -> None:
        await asyncio.sleep(0)
        journal.append(CallRejected(time=1.0, state="open"))

    async def main() -> None:
        async def both() -> None:
            await asyncio.gather(task(), asyncio.to_thread(in_thread))

        await Retry(on=ValueError, journal=journal, name="a").acall(both)

    with span("outer", journal) as outer:
        worker = threading.Thread(target=contextvars.copy_context().run, args=(in_thread,))
        worker.start()
        worker.join()
        plain = threading.Thread(target=in_thread)  # a plain thread starts with no span
        plain.start()
        plain.join()
        asyncio.run(main())
    copied, bare, *from_async = journal.events()
    assert (copied.trace_id, copied.span_id) == (outer.trace_id, outer.span_id)
    assert (bare.trace_id, bare.span_id) == ("", "")
    assert {e.trace_id for e in from_async} == {outer.trace_id}
    assert len({e.span_id for e in from_async}) == 1
    assert from_async[0].span_id != outer.span_id  # the retry's span, a child


def test_concurrent_tasks_keep_their_own_traces() -> None:
    journal = Journal()
    retry = Retry(on=ValueError, journal=journal, name="t")

    async def record(n: int) -> None:
        await asyncio.sleep(0)
        journal.append(CallRejected(time=float(n), state=str(n)))
        await asyncio.sleep(0)
        journal.append(CallRejected(time=float(n), state=str(n)))

    async def main() -> None:
        await asyncio.gather(*(retry.acall(record, n) for n in range(3)))

    asyncio.run(main())
    by_call: dict[str, set[str]] = {}
    for e in journal.events(CallRejected):
        by_call.setdefault(e.state, set()).add(e.trace_id)
    assert all(len(ids) == 1 for ids in by_call.values())
    assert len(set.union(*by_call.values())) == 3


def test_a_breaker_alone_leaves_the_ids_empty_and_inside_a_span_takes_them() -> None:
    journal = Journal()
    breaker = CircuitBreaker("b", on=ValueError, journal=journal, recovery=3600.0)
    for _ in range(5):
        with pytest.raises(ValueError, match="down"):
            breaker.call(_raise)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: 1)
    with span("app") as around, pytest.raises(CircuitOpenError):
        breaker.call(lambda: 1)
    *alone, inside = journal.events()
    assert alone
    assert {(e.trace_id, e.span_id) for e in alone} == {("", "")}
    assert (inside.trace_id, inside.span_id) == (around.trace_id, around.span_id)


def _raise() -> None:
    raise ValueError("down")


def test_a_stream_that_fails_ends_its_span_with_the_error() -> None:
    journal = Journal()
    spans = Spans()
    journal.subscribe(spans)

    def broken() -> Iterator[str]:
        yield "a"
        raise ConnectionError("cut")

    with pytest.raises(ConnectionError):
        StreamGuard(journal=journal, name="s").collect(broken())
    [(closed, error)] = spans.ended
    assert closed.name == "stream:s"
    assert isinstance(error, ConnectionError)
    assert {e.span_id for e in journal.events()} == {closed.span_id}


@pytest.mark.asyncio
async def test_an_async_stream_runs_its_source_in_its_span() -> None:
    journal = Journal()
    spans = Spans()
    journal.subscribe(spans)
    seen: list[Span | None] = []

    async def source() -> AsyncIterator[str]:
        seen.append(current_span())
        yield "a"
        seen.append(current_span())
        yield "b"

    result = await StreamGuard(journal=journal, name="s").acollect(source())
    assert result.text == "ab"
    [opened] = spans.started
    assert seen == [opened, opened]
    assert current_span() is None
    assert [s for s, _ in spans.ended] == [opened]
    assert journal.events()[0].span_id == opened.span_id


# ---------------------------------------------------------------- the ids in the journal


def test_ids_take_no_part_in_equality_or_repr_and_are_written_only_when_set() -> None:
    with span("s") as s:
        stamped = CallRejected(time=1.0, state="open")
    plain = CallRejected(time=1.0, state="open")
    assert stamped == plain
    assert repr(stamped) == repr(plain)
    assert (stamped.trace_id, stamped.span_id) == (s.trace_id, s.span_id)
    assert "trace_id" not in plain.to_dict()
    assert stamped.to_dict() == plain.to_dict() | {"trace_id": s.trace_id, "span_id": s.span_id}
    explicit = CallRejected(time=1.0, state="o", trace_id="a" * 32, span_id="b" * 16)
    assert explicit.span_id == "b" * 16


def test_journal_files_carry_the_ids_and_old_ones_still_load() -> None:
    journal = Journal()
    with span("s", journal) as s:
        journal.append(FallbackExhausted(time=0.0, source="f", failures=("a: x",)))
        journal.append(FallbackUsed(time=1.0, step="b", index=1))
    out = io.StringIO()
    journal.dump(out)
    with span("reader"):  # reading inside another span keeps the file's ids
        loaded = Journal.load(out.getvalue().splitlines()).events()
    assert [(e.trace_id, e.span_id) for e in loaded] == [(s.trace_id, s.span_id)] * 2
    old = '{"kind": "breaker.rejected", "time": 1.0, "source": "b", "state": "open"}'
    with span("reader"):
        [event] = Journal.load([old]).events()
    assert (event.trace_id, event.span_id) == ("", "")


def test_ids_of_the_wrong_type_in_a_journal_line_are_named() -> None:
    line = {"kind": "breaker.rejected", "time": 1.0, "state": "open", "span_id": 7}
    with pytest.raises(ValueError, match="span_id must be a string, not 7") as caught:
        Journal.load([json.dumps(line)])
    assert "journal line 1" in str(caught.value)


def test_the_timeline_leaves_the_ids_out() -> None:
    with span("s"):
        event = StreamInvalid(time=1.0, source="g", chunk=2, detail="d", partial="p")
    shown = format_event(event)
    assert shown == format_event(
        StreamInvalid(time=1.0, source="g", chunk=2, detail="d", partial="p")
    )
    assert "trace" not in shown
    assert event.span_id not in shown


# ------------------------------------------------------------------------------ JSON logs


@pytest.fixture(autouse=True)
def _restore_loggers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loggers these tests configure get their handlers, level and filters back."""
    for name in ("events", "app", "raw", "queue"):
        logger = logging.getLogger(f"test_trace.{name}")
        for attr in ("handlers", "filters"):
            monkeypatch.setattr(logger, attr, [])
        monkeypatch.setattr(logger, "propagate", logger.propagate)
        monkeypatch.setattr(logger, "level", logger.level)


def _handler(logger: logging.Logger) -> io.StringIO:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return out


def test_json_logs_carry_the_events_and_the_ids() -> None:
    logger = logging.getLogger("test_trace.events")
    out = _handler(logger)
    journal = Journal()
    journal.subscribe(JsonLinesLogger(logger))
    app = logging.getLogger("test_trace.app")
    app_out = _handler(app)
    retry, chain, _, _ = _chain(journal)

    def answer(prompt: str) -> str:
        app.info("asking %s", prompt)
        return str(chain(prompt))

    retry.call(answer, "hi")
    app.info("outside")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"]["kind"] for line in lines] == [e.kind for e in journal.events()]
    first = lines[0]
    assert set(first) == {"time", "level", "logger", "message", "trace_id", "span_id", "event"}
    assert first["level"] == "INFO"
    assert first["logger"] == "test_trace.events"
    assert first["message"] == "fallback.exhausted [answer]"
    assert first["event"]["failures"] == [
        "daemon: ConnectionError: down 1",
        "direct: ConnectionError: down 1",
    ]
    event = journal.events()[0]
    assert (first["trace_id"], first["span_id"]) == (event.trace_id, event.span_id)
    assert "trace_id" not in first["event"]
    app_lines = [json.loads(line) for line in app_out.getvalue().splitlines()]
    assert app_lines[0]["message"] == "asking hi"
    assert app_lines[0]["trace_id"] == event.trace_id
    assert "trace_id" not in app_lines[-1]
    assert app_lines[-1]["message"] == "outside"


def test_the_json_message_of_the_listener_carries_the_ids() -> None:
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("test_trace.raw")
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign, assignment]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    with span("s") as s:
        JsonLinesLogger(logger)(CallRejected(time=1.0, state="open"))
    assert json.loads(records[0].getMessage())["span_id"] == s.span_id


def test_span_filter_keeps_the_ids_for_a_handler_in_another_thread() -> None:
    logger = logging.getLogger("test_trace.queue")
    logger.addFilter(SpanFilter())
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign, assignment]
    logger.addHandler(handler)
    logger.propagate = False
    with span("s") as s:
        logger.warning("boom")
    formatted = json.loads(JsonFormatter().format(records[0]))  # formatted outside the span
    assert (formatted["trace_id"], formatted["span_id"]) == (s.trace_id, s.span_id)
    try:
        raise KeyError("k")
    except KeyError:
        logger.exception("failed")
    failed = json.loads(JsonFormatter().format(records[1]))
    assert "KeyError: 'k'" in failed["error"]
    assert "trace_id" not in failed


def test_an_event_made_outside_a_span_is_still_an_event() -> None:
    data = Event(time=0.0).to_dict()
    assert data == {"kind": "event", "time": 0.0, "source": ""}
    assert event_from_dict(CallRejected(time=0.0, state="s").to_dict()).trace_id == ""


# ------------------------------------------------------------------- ids drawn lazily


def _count_draws(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from pytest_resilience.core import trace  # noqa: PLC0415

    drawn: list[str] = []
    real_trace, real_span = trace.new_trace_id, trace.new_span_id

    def new_trace_id() -> str:
        drawn.append("trace")
        return real_trace()

    def new_span_id() -> str:
        drawn.append("span")
        return real_span()

    monkeypatch.setattr(trace, "new_trace_id", new_trace_id)
    monkeypatch.setattr(trace, "new_span_id", new_span_id)
    return drawn


def test_a_call_that_records_nothing_draws_no_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = _count_draws(monkeypatch)
    journal = Journal()
    retry = Retry(on=ValueError, attempts=3, backoff=Backoff.fixed(0), journal=journal)
    for _ in range(5):
        assert retry.call(lambda: "ok") == "ok"
    assert drawn == []
    assert list(journal) == []


def test_ids_are_drawn_at_the_first_event_and_hold_for_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn = _count_draws(monkeypatch)
    journal = Journal()
    retry = Retry(on=ConnectionError, attempts=3, backoff=Backoff.fixed(0), journal=journal)
    flaky, _ = _flaky(2)
    with span("outer", journal) as outer:
        assert drawn == []
        assert retry.call(flaky) == "ok"
        # the outer span drew a trace and its id when the retry's first event was stamped,
        # then the retry's span its own id in the same trace: three draws, once each
        assert drawn == ["trace", "span", "span"]
        ids = {(e.trace_id, e.span_id) for e in journal}
        assert len(ids) == 1
        [(trace_id, span_id)] = ids
        assert trace_id == outer.trace_id
        assert span_id != outer.span_id
    assert drawn == ["trace", "span", "span"]
    assert outer == Span(outer.trace_id, outer.span_id, "", "outer")
    assert hash(outer) == hash(Span(outer.trace_id, outer.span_id, "", "outer"))


def test_threads_sharing_a_lazy_span_read_the_same_ids() -> None:
    barrier = threading.Barrier(8)
    seen: list[tuple[str, str]] = []

    def read(shared: Span) -> None:
        barrier.wait()
        seen.append((shared.trace_id, shared.span_id))

    for _ in range(20):
        with span("shared") as shared:
            threads = [threading.Thread(target=read, args=(shared,)) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert len(set(seen)) == 1
        seen.clear()


# --------------------------------------------------------------------- spans themselves


class Adopting(Spans):
    """A span listener that gives every span other ids, as an exporter does."""

    def __init__(self, parent_id: str | None = None) -> None:
        super().__init__()
        self.parent_id = parent_id

    def span_started(self, opened: Span) -> Span:
        super().span_started(opened)
        return opened.adopt("c" * 32, "d" * 16, self.parent_id)


class Broken(Spans):
    """A span listener whose every span call raises."""

    def span_started(self, opened: Span) -> None:
        super().span_started(opened)
        raise RuntimeError("exporter down")

    def span_ended(self, closed: Span, error: BaseException | None) -> None:
        super().span_ended(closed, error)
        raise RuntimeError("exporter down")


def test_adopt_keeps_the_name_and_the_parent_unless_given_one() -> None:
    mine = Span("a" * 32, "b" * 16, "e" * 16, "retry:ask")
    kept = mine.adopt("c" * 32, "d" * 16)
    assert kept == Span("c" * 32, "d" * 16, "e" * 16, "retry:ask")
    assert mine.adopt("c" * 32, "d" * 16, "f" * 16) == Span(
        "c" * 32, "d" * 16, "f" * 16, "retry:ask"
    )
    assert mine.adopt("c" * 32, "d" * 16, "").parent_id == ""


@pytest.mark.parametrize(
    ("trace_id", "span_id", "message"),
    [
        (
            "abc",
            "d" * 16,
            "trace_id must be 32 lowercase hex digits, not all zero (or both ids empty), got 'abc'",
        ),
        (
            "A" * 32,
            "d" * 16,
            "trace_id must be 32 lowercase hex digits, not all zero (or both ids empty), got 'AAAA",
        ),
        (
            "0" * 32,
            "d" * 16,
            "trace_id must be 32 lowercase hex digits, not all zero (or both ids empty), got '0000",
        ),
        (
            "c" * 32,
            "d" * 15,
            "span_id must be 16 lowercase hex digits, not all zero (or both ids empty), got 'ddd",
        ),
        (
            "c" * 32,
            "0" * 16,
            "span_id must be 16 lowercase hex digits, not all zero (or both ids empty), got '000",
        ),
        (
            "c" * 32,
            "",
            "span_id must be 16 lowercase hex digits, not all zero (or both ids empty), got ''",
        ),
        (
            "",
            "d" * 16,
            "trace_id must be 32 lowercase hex digits, not all zero (or both ids empty), got ''",
        ),
    ],
    ids=["short", "upper-case", "all-zero", "short-span", "zero-span", "no-span", "no-trace"],
)
def test_adopting_malformed_ids_says_which_and_why(
    trace_id: str, span_id: str, message: str
) -> None:
    mine = Span("a" * 32, "b" * 16, "", "s")
    with pytest.raises(ValueError, match=r"^adopted ids: ") as caught:
        mine.adopt(trace_id, span_id)
    assert str(caught.value).startswith(f"adopted ids: {message}")


def test_check_ids_takes_two_empty_ids_as_no_span() -> None:
    check_ids("", "", "here")  # no error
    with pytest.raises(ValueError, match=r"^here: trace_id must be 32 "):
        check_ids("", "0" * 16, "here")


def test_new_ids_have_their_size_and_are_never_all_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = [new_trace_id() for _ in range(64)] + [new_span_id() for _ in range(64)]
    assert [len(i) for i in drawn] == [32] * 64 + [16] * 64
    assert all(set(i) <= set("0123456789abcdef") for i in drawn)
    asked: list[int] = []

    def zero(bits: int) -> int:
        asked.append(bits)
        return 0

    monkeypatch.setattr(random, "getrandbits", zero)  # what trace draws its ids from
    assert (new_trace_id(), new_span_id()) == ("0" * 31 + "1", "0" * 15 + "1")
    assert asked == [128, 64]


def test_start_span_under_an_explicit_parent_ignores_the_current_span() -> None:
    parent = Span("a" * 32, "b" * 16, "", "elsewhere")
    with span("current"):
        opened = start_span("child", parent=parent)
    assert (opened.span.trace_id, opened.span.parent_id) == (parent.trace_id, parent.span_id)
    assert opened.span.name == "child"
    assert opened.span.span_id not in (parent.span_id, "")
    assert repr(opened) == f"<OpenSpan 'child' trace={'a' * 32} span={opened.span.span_id}>"


def test_a_listener_may_give_a_span_other_ids_and_a_new_parent() -> None:
    journal = Journal()
    adopting = Adopting(parent_id="f" * 16)
    journal.subscribe(adopting)
    with span("outer", journal) as outer:
        journal.append(CallRejected(time=0.0, state="open"))
    assert outer == Span("c" * 32, "d" * 16, "f" * 16, "outer")
    assert (journal.events()[0].trace_id, journal.events()[0].span_id) == ("c" * 32, "d" * 16)
    assert adopting.ended == [(outer, None)]


def test_a_span_ends_once_however_often_it_is_ended() -> None:
    journal = Journal()
    spans = Spans()
    journal.subscribe(spans)
    opened = start_span("s", journal)
    opened.end()
    opened.end(RuntimeError("late"))
    assert spans.ended == [(opened.span, None)]


def test_a_broken_span_listener_is_logged_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = Journal()
    broken, after = Broken(), Spans()
    journal.subscribe(broken)
    journal.subscribe(after)
    with (
        caplog.at_level(logging.ERROR, logger="pytest_resilience.core.events"),
        span("call", journal) as opened,
    ):
        pass
    assert len(opened.span_id) == 16  # its own ids: the broken listener adopted nothing
    assert after.started == [opened]
    assert after.ended == [(opened, None)]
    assert broken.ended == [(opened, None)]
    started, ended = caplog.records
    assert started.name == ended.name == "pytest_resilience.core.events"
    assert started.getMessage() == f"span listener {broken!r} failed in span_started of 'call'"
    assert ended.getMessage() == f"span listener {broken!r} failed in span_ended of 'call'"
    assert started.exc_info is not None
    assert str(started.exc_info[1]) == "exporter down"


@pytest.mark.asyncio
async def test_async_with_span_ends_it_with_the_error_and_restores_the_current_one() -> None:
    journal = Journal()
    spans = Spans()
    journal.subscribe(spans)
    inside: list[Span | None] = []

    async def fails() -> None:
        async with span("a", journal) as opened:
            inside.append(opened)
            inside.append(current_span())
            raise KeyError("k")

    with pytest.raises(KeyError):
        await fails()
    assert current_span() is None
    assert inside[0] == inside[1]
    [(closed, error)] = spans.ended
    assert closed == inside[0]
    assert isinstance(error, KeyError)
    async with span("b", journal) as fine:
        pass
    assert spans.ended[-1] == (fine, None)


def test_an_async_span_with_no_listener_opens_and_closes() -> None:
    async def main() -> tuple[str, str]:
        async with span("quiet", Journal()) as inside:
            assert current_span() is inside
        assert current_span() is None
        return inside.name, inside.parent_id

    assert asyncio.run(main()) == ("quiet", "")
