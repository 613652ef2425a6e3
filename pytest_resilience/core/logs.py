"""Structured logs: any ``logging`` record as one JSON object, with the span's ids.

Put :class:`JsonFormatter` on a handler of your own::

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    journal.subscribe(JsonLinesLogger())      # the journal's events go there too

Each record becomes one line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
``message``, then ``trace_id`` and ``span_id`` when known, ``error`` (the formatted
traceback) for ``logger.exception``, and ``event`` for a record that
:class:`~pytest_resilience.core.journal.JsonLinesLogger` wrote: the event's own fields
(``kind``, ``time`` on the component's clock, ``source``, ...), its message then being
``"kind [source]"``. The ids are the event's for such a record; for the application's own
log lines they are those of the span current where the record was made, which is the thread
that formats it for ordinary handlers. A handler that formats elsewhere (a
``QueueHandler``'s listener thread) needs :class:`SpanFilter` on the logger or the
handler that runs in the calling thread: it copies the ids onto the record.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from .trace import current_ids

__all__ = ["JsonFormatter", "SpanFilter"]


class SpanFilter(logging.Filter):
    """Copy the current span's ids onto each record (``record.trace_id``, ``span_id``).

    Keeps every record; a record that has ids already keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "trace_id", ""):
            found = current_ids()
            record.trace_id = found.trace_id
            record.span_id = found.span_id
        return True


class JsonFormatter(logging.Formatter):
    """Render a ``LogRecord`` as one JSON object (see the module docs for its keys).

    Values JSON cannot hold are written as their ``str()``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        event = getattr(record, "resilience_event", None)
        fields: dict[str, Any] | None = None
        if event is not None and hasattr(event, "to_dict"):
            fields = event.to_dict()
            trace_id = fields.pop("trace_id", "")
            span_id = fields.pop("span_id", "")
            where = f" [{fields['source']}]" if fields.get("source") else ""
            data["message"] = f"{fields['kind']}{where}"
        else:
            data["message"] = record.getMessage()
            trace_id = getattr(record, "trace_id", "")
            span_id = getattr(record, "span_id", "")
            if not trace_id:
                found = current_ids()
                trace_id, span_id = found.trace_id, found.span_id
        if trace_id:
            data["trace_id"] = trace_id
            data["span_id"] = span_id
        if record.exc_info:
            data["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["error"] = record.exc_text
        if fields is not None:
            data["event"] = fields
        return json.dumps(data, default=str)
