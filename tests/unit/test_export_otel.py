"""The OpenTelemetry exporter, against the real SDK's in-memory span exporter."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from typing import TYPE_CHECKING

from opentelemetry import trace as otel
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pytest_resilience.core.breaker import CircuitBreaker
from pytest_resilience.core.errors import CircuitOpenError
from pytest_resilience.core.fallback import Fallback
from pytest_resilience.core.journal import Journal
from pytest_resilience.core.retry import Backoff, Retry
from pytest_resilience.core.stream import StreamGuard
from pytest_resilience.export.otel import OtelExporter

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def spans() -> Iterator[tuple[InMemorySpanExporter, otel.Tracer]]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory, provider.get_tracer("test")
    provider.shutdown()


def _tree(finished: tuple[ReadableSpan, ...]) -> list[tuple[str, str]]:
    by_id = {s.context.span_id: s.name for s in finished}
    return sorted((s.name, by_id.get(s.parent.span_id, "?") if s.parent else "") for s in finished)


def test_a_retried_fallback_under_faults_is_one_trace(
    spans: tuple[InMemorySpanExporter, otel.Tracer],
) -> None:
    memory, tracer = spans
    journal = Journal()
    journal.subscribe(OtelExporter(tracer))
    calls = [0]

    def flaky(prompt: str) -> str:
        calls[0] += 1
        if calls[0] < 2:
            raise ConnectionError("refused")
        return "ok"

    def down(prompt: str) -> str:
        raise ConnectionError("down")

    chain = Fallback(
        "answer", [("daemon", down), ("direct", flaky)], on=ConnectionError, journal=journal
    )
    retry = Retry(on=Exception, attempts=3, backoff=Backoff.fixed(0), journal=journal, name="ask")
    guard = StreamGuard(journal=journal, name="answer")

    def answer(prompt: str) -> str:
        return guard.collect(iter([chain(prompt), "!"])).text

    with tracer.start_as_current_span("request") as request:
        assert retry.call(answer, "hi") == "ok!"
    finished = memory.get_finished_spans()
    assert {s.context.trace_id for s in finished} == {request.get_span_context().trace_id}
    assert _tree(finished) == [
        ("fallback:answer", "retry:ask"),
        ("fallback:answer", "retry:ask"),
        ("request", ""),
        ("retry:ask", "request"),
        ("stream:answer", "retry:ask"),
    ]
    by_name: dict[str, list[ReadableSpan]] = {}
    for s in finished:
        by_name.setdefault(s.name, []).append(s)
    exhausted, used = by_name["fallback:answer"]
    assert [e.name for e in exhausted.events] == ["fallback.exhausted", "exception"]
    assert exhausted.status.status_code is StatusCode.ERROR
    assert [e.name for e in used.events] == ["fallback.used"]
    assert dict(used.events[0].attributes or {}) == {
        "time": journal.events()[-2].time,
        "source": "answer",
        "step": "direct",
        "index": 1,
        "after": ("daemon: ConnectionError: down",),
    }
    [retried] = by_name["retry:ask"]
    assert [e.name for e in retried.events] == [
        "attempt.failed",
        "retry.scheduled",
        "attempt.started",
    ]
    assert retried.status.status_code is StatusCode.UNSET
    [stream] = by_name["stream:answer"]
    assert [e.name for e in stream.events] == ["stream.first_token"]
    # our ids are OpenTelemetry's: the journal's events name the exported spans
    exported = {(f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}") for s in finished}
    assert {(e.trace_id, e.span_id) for e in journal.events()} <= exported


def test_without_an_app_span_our_first_span_is_the_root(
    spans: tuple[InMemorySpanExporter, otel.Tracer],
) -> None:
    memory, tracer = spans
    journal = Journal()
    journal.subscribe(OtelExporter(tracer))
    with pytest.raises(Exception, match="gave up"):
        Retry(on=ValueError, attempts=2, backoff=Backoff.fixed(0), journal=journal, name="r").call(
            _fail
        )
    [root] = memory.get_finished_spans()
    assert root.parent is None
    assert root.name == "retry:r"
    assert root.status.status_code is StatusCode.ERROR
    assert [e.name for e in root.events][-1] == "exception"
    assert journal.events()[0].trace_id == f"{root.context.trace_id:032x}"


def _fail() -> None:
    raise ValueError("no")


def test_events_of_no_span_go_to_the_app_span_or_one_of_their_own(
    spans: tuple[InMemorySpanExporter, otel.Tracer],
) -> None:
    memory, tracer = spans
    journal = Journal()
    journal.subscribe(OtelExporter(tracer))
    breaker = CircuitBreaker("b", on=ValueError, journal=journal, recovery=3600.0)
    for _ in range(5):
        with pytest.raises(ValueError, match="no"):
            breaker.call(_fail)
    [alone] = memory.get_finished_spans()
    assert alone.name == "breaker.transition"
    assert [e.name for e in alone.events] == ["breaker.transition"]
    with tracer.start_as_current_span("request"), pytest.raises(CircuitOpenError):
        breaker.call(lambda: 1)
    request = memory.get_finished_spans()[-1]
    assert [e.name for e in request.events] == ["breaker.rejected"]


def test_the_api_alone_exports_nothing_and_keeps_our_ids() -> None:
    journal = Journal()
    journal.subscribe(OtelExporter(otel.NoOpTracer()))
    with pytest.raises(Exception, match="gave up"):
        Retry(on=ValueError, attempts=2, backoff=Backoff.fixed(0), journal=journal).call(_fail)
    ids = {(e.trace_id, e.span_id) for e in journal.events()}
    assert len(ids) == 1
    [(trace_id, span_id)] = ids
    assert len(trace_id) == 32
    assert len(span_id) == 16
