"""Spans and events to OpenTelemetry, from a journal (the ``otel`` extra: the API only).

::

    from pytest_resilience.export.otel import OtelExporter

    journal = Journal()
    journal.subscribe(OtelExporter())          # default: the global tracer provider's tracer
    client = ResilientClient(daemon, direct, journal=journal)

:class:`OtelExporter` is a journal listener that also hears of spans
(:class:`~pytest_resilience.core.trace.SpanListener`). Every span that a component with that
journal opens (``retry:<name>``, ``fallback:<name>``, ``stream:<name>``, the resilient
client's ``<name>.generate`` ...) becomes an OpenTelemetry span, and every event becomes an
event of the span it was made in, named by its kind (``retry.scheduled``), its fields as
attributes (``time`` on the component's clock, ``source``, ``attempt``, ...; a field that
is None is left out).

The ids are OpenTelemetry's: our span adopts the ids of the OpenTelemetry span made for it
(:meth:`~pytest_resilience.core.trace.Span.adopt`), so the events in the journal, the JSON
log lines and the exported spans carry the same trace and span ids. A span opened inside
a span of the application's own (``tracer.start_as_current_span(...)``) becomes its child,
in its trace. Its parent is the exported span of our parent span, or, when the parent was
opened with a journal this exporter does not hear, a reference to it by its ids.

A span that ends by an exception records it (``record_exception``) and has the status
``ERROR``. An event of no known span (a circuit breaker used alone, outside any span)
goes to the application's current span if it records, else to a span of its own, named by
the event's kind, that ends at once. With the API alone (no SDK configured), OpenTelemetry's
spans record nothing: ours keep their own ids and nothing is exported.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import trace as otel
    from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "pytest_resilience.export.otel needs opentelemetry-api: "
        "pip install 'pytest-resilience[otel]'"
    ) from exc

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from ..core.events import Event
    from ..core.trace import Span

__all__ = ["OtelExporter"]

#: The instrumentation scope our tracer is named after.
SCOPE = "pytest_resilience"


class OtelExporter:
    """A journal listener that sends our spans and events to OpenTelemetry (module docs).

    ``tracer``: where the spans go (default: ``opentelemetry.trace.get_tracer(SCOPE)``, the
    global tracer provider's, looked up when the exporter is made). Subscribe it to the
    journal the components were given: ``journal.subscribe(OtelExporter())``.
    """

    def __init__(self, tracer: otel.Tracer | None = None) -> None:
        self.tracer = tracer if tracer is not None else otel.get_tracer(SCOPE)
        self._open: dict[str, otel.Span] = {}  # by our (adopted) span id
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------- spans

    def span_started(self, span: Span) -> Span | None:
        """Start the OpenTelemetry span for ``span``; ``span`` under its ids."""
        parent_context = self._parent_context(span)
        started = self.tracer.start_span(
            span.name,
            context=parent_context,
            attributes={"resilience.span": span.name},
            record_exception=False,  # span_ended records it, once
            set_status_on_exception=False,
        )
        ids = started.get_span_context()
        if not (started.is_recording() and ids.is_valid):  # the API alone: nothing to adopt
            return None
        parent = otel.get_current_span(parent_context).get_span_context()
        trace_id, span_id = otel.format_trace_id(ids.trace_id), otel.format_span_id(ids.span_id)
        with self._lock:
            self._open[span_id] = started
        return span.adopt(
            trace_id, span_id, otel.format_span_id(parent.span_id) if parent.is_valid else ""
        )

    def _parent_context(self, span: Span) -> Context | None:
        """Our parent's exported span; or a reference to it by its ids; or, for the first
        span of a trace, None: the application's current context."""
        if not span.parent_id:
            return None
        with self._lock:
            parent = self._open.get(span.parent_id)
        if parent is None:
            parent = NonRecordingSpan(
                SpanContext(
                    int(span.trace_id, 16),
                    int(span.parent_id, 16),
                    is_remote=False,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                )
            )
        return otel.set_span_in_context(parent)

    def span_ended(self, span: Span, error: BaseException | None) -> None:
        """End the OpenTelemetry span of ``span``; an ``error`` is recorded on it."""
        with self._lock:
            ended = self._open.pop(span.span_id, None)
        if ended is None:
            return
        if error is not None:
            ended.record_exception(error)
            ended.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        ended.end()

    # ---------------------------------------------------------------------------- events

    def __call__(self, event: Event) -> None:
        """Add ``event`` to the OpenTelemetry span of the span it was made in."""
        with self._lock:
            target = self._open.get(event.span_id) if event.span_id else None
        attributes = _attributes(event)
        if target is not None:
            target.add_event(event.kind, attributes)
            return
        current = otel.get_current_span()
        if current.is_recording():
            current.add_event(event.kind, attributes)
            return
        alone = self.tracer.start_span(event.kind, attributes={"resilience.span": event.kind})
        alone.add_event(event.kind, attributes)
        alone.end()

    def __repr__(self) -> str:
        return f"<OtelExporter open={len(self._open)}>"


def _attributes(event: Event) -> dict[str, Any]:
    """The event's fields as OpenTelemetry attributes (its kind and ids left out)."""
    data = event.to_dict()
    for key in ("kind", "trace_id", "span_id"):
        data.pop(key, None)
    return {key: value for key, value in data.items() if value is not None}
