"""The Journal that holds what the components did, and the ways to read it.

The Journal is thread-safe, bounded (the oldest events go first; ``dropped`` counts them,
and the first drop warns :class:`JournalFull`) and append-only. Listeners subscribe to it
and are called, outside the lock, in the thread that appended. :class:`JsonLinesLogger` is
a listener that writes each event as one JSON line through the stdlib ``logging`` module
(:class:`~pytest_resilience.core.logs.JsonFormatter` renders such records, and any other,
as JSON objects). A listener that also has ``span_started`` and ``span_ended``
(:class:`~pytest_resilience.core.trace.SpanListener`) hears of the spans opened by the
components that have this journal, too (``span_listeners``).
The event records themselves, and how a dumped journal's lines become events again, are in
:mod:`pytest_resilience.core.events`.

An append is on the hot path of every component that records (a rejected call, a failed
attempt), so it takes no lock: ``deque.append`` is atomic, and the deque underneath is
unbounded, so that no drop goes uncounted. The appender that takes it past the bound
trims it, under the lock; once the journal has dropped (and warned), it lets up to
``_SLACK`` events pile up beyond the bound before trimming them in one go, so that a full
journal's appends stay lock-free too. Readers never see more than the bound, and
``dropped`` counts what lies beyond it, trimmed or not: every append is kept until the
bound pushes it out, and every event pushed out is counted once.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat, starmap
from typing import IO, TYPE_CHECKING, Any, TypeVar, overload

from .event_fields import show
from .trace import SpanListener

if TYPE_CHECKING:
    from .events import Event

__all__ = ["Journal", "JournalFull", "JsonLinesLogger", "Listener", "format_event"]

_log = logging.getLogger("pytest_resilience.core.events")

E = TypeVar("E", bound="Event")

Listener = Callable[["Event"], None]

#: How many events beyond the bound a journal that has already dropped lets pile up before
#: it trims them, under the lock, in one go.
_SLACK = 1024


class JournalFull(UserWarning):
    """A journal reached its bound and dropped its oldest event: warned once per journal."""


class Journal:
    """A thread-safe, bounded, append-only record of events.

    It keeps the last ``maxlen`` events: the oldest go first, ``dropped`` counts them, and
    the first drop warns :class:`JournalFull` (once per journal).
    """

    def __init__(self, maxlen: int = 100_000) -> None:
        if maxlen < 1:
            raise ValueError(f"Journal maxlen must be at least 1, got {maxlen}")
        # Unbounded underneath, so that no drop is silent (see the module docstring); the
        # appender that takes it past ``_trim_at`` trims it back to ``maxlen``.
        self._events: deque[Event] = deque()
        self._lock = threading.Lock()  # guards trimming, clearing and the counts
        self._listeners: tuple[Listener, ...] = ()
        self._span_listeners: tuple[SpanListener, ...] = ()
        self._warned = False  # pragma: no mutate - JournalFull was warned; only its truth is read
        self._trim_at = maxlen  # maxlen + slack once warned: see the module docstring
        self._trimmed = 0  # events trimmed since the last clear()
        self.maxlen = maxlen

    @property
    def dropped(self) -> int:
        """How many events the bound pushed out (since the last :meth:`clear`)."""
        with self._lock:
            return self._trimmed + max(0, len(self._events) - self.maxlen)

    def append(self, event: Event) -> None:
        """Add ``event``; then the listeners get it, in this thread."""
        events = self._events
        events.append(event)  # atomic: appends from any number of threads need no lock
        # no mutate: at the bound itself _after_append has nothing to do, so >= is the same
        if len(events) > self._trim_at or self._listeners:  # pragma: no mutate
            self._after_append(event)

    def _after_append(self, event: Event) -> None:
        """Trim to the bound, call the listeners, and warn of the first drop, in that order."""
        first_drop = False  # pragma: no mutate - only tested for truth: None would do the same
        if len(self._events) > self._trim_at:
            with self._lock:
                first_drop = self._trim()
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a broken listener must not break the call it observes
                _log.exception("journal listener %r failed on %s", listener, event.kind)
        if first_drop:  # last: under -W error it raises, and the listeners have had the event
            warnings.warn(
                f"the journal keeps the last {self.maxlen} events and has begun dropping the "
                f"oldest ({event.kind!r} pushed one out; Journal.dropped counts them): give it "
                "a larger bound, Journal(maxlen=...) (for the pytest plugin's journals, the "
                "ini option resilience_journal_maxlen)",
                JournalFull,
                stacklevel=3,  # the code that called append()
            )

    def _trim(self) -> bool:
        """Drop the oldest events beyond the bound, counting them; with the lock held.

        True when these are the journal's first drops, which are warned of."""
        events = self._events
        excess = len(events) - self.maxlen  # appends meanwhile are the next trim's
        if excess <= 0:  # another appender trimmed it first
            return False
        # in C, one popleft() after the other: no Python loop, no int per pass. The maxlen
        # only bounds the throwaway deque that drives popleft(): any maxlen pops the same.
        deque(starmap(events.popleft, repeat((), excess)), maxlen=0)  # pragma: no mutate
        self._trimmed += excess
        if self._warned:
            return False
        self._warned = True
        self._trim_at = self.maxlen + min(self.maxlen, _SLACK)
        return True

    @property
    def span_listeners(self) -> tuple[SpanListener, ...]:
        """The listeners that hear of spans too (:class:`~.trace.SpanListener`), in order."""
        return self._span_listeners

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every later event; returns the function that unsubscribes.

        A :class:`~pytest_resilience.core.trace.SpanListener` (``span_started`` and
        ``span_ended`` besides) is also told of every span opened with this journal."""
        spans = isinstance(listener, SpanListener)
        with self._lock:
            self._listeners = (*self._listeners, listener)
            if spans:
                self._span_listeners = (*self._span_listeners, listener)  # type: ignore[arg-type]

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)
                self._span_listeners = tuple(x for x in self._span_listeners if x is not listener)

        return unsubscribe

    @overload
    def events(self) -> list[Event]: ...
    @overload
    def events(self, kind: type[E], /, *more: type[E]) -> list[E]: ...
    def events(self, *kinds: type[Any]) -> list[Any]:
        """A snapshot of the events, optionally only those of the given types."""
        with self._lock:
            # list(deque) runs no Python code, so no append can interleave with the copy.
            snapshot = list(self._events)
        # an append is on its way to trimming: not kept (no mutate: >= deletes nothing more)
        if len(snapshot) > self.maxlen:  # pragma: no mutate
            del snapshot[: len(snapshot) - self.maxlen]
        if not kinds:
            return snapshot
        return [e for e in snapshot if isinstance(e, kinds)]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
            self._trimmed = 0

    def __len__(self) -> int:
        return min(len(self._events), self.maxlen)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events())

    def dump(self, stream: IO[str]) -> None:
        """Write the events as JSON lines."""
        for event in self.events():
            stream.write(json.dumps(event.to_dict()) + "\n")  # the fields in to_dict()'s order

    @classmethod
    def load(cls, lines: Iterable[str], maxlen: int = 100_000) -> Journal:
        """Read a journal written by :meth:`dump`. Raises ``ValueError`` naming the bad line."""
        from .events import event_from_dict  # noqa: PLC0415 - events re-exports this module

        journal = cls(maxlen)
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError(f"expected a JSON object, got {show(data)}")
                event = event_from_dict(data)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"journal line {number}: {exc}") from exc
            except RecursionError:
                raise ValueError(f"journal line {number}: JSON nested too deep") from None
            journal.append(event)
        return journal

    def timeline(self, last: int | None = None, *, since: float | None = None) -> str:
        """A readable timeline, one event a line: ``  12.500s retry.scheduled ...``.

        ``since`` shows times relative to it (``+12.500s``): a real-time journal's times are
        a monotonic clock's, meaningless without the moment the test started.
        """
        events = self.events()
        if last is not None:
            events = events[-last:]
        return "\n".join(format_event(e, since=since) for e in events)


def format_event(event: Event, *, since: float | None = None) -> str:
    """One line of a timeline: time, kind, ``[source]``, the fields. The span's ids are
    left out (the JSON forms carry them): a timeline is read by a person."""
    data = event.to_dict()
    kind, time, source = data.pop("kind"), data.pop("time"), data.pop("source")
    data.pop("trace_id", None)
    data.pop("span_id", None)
    fields = " ".join(f"{k}={v!r}" for k, v in data.items())
    where = f" [{source}]" if source else ""
    shown = f"{time:10.3f}s" if since is None else f"{time - since:+10.3f}s"
    return f"{shown} {kind}{where} {fields}".rstrip()


class JsonLinesLogger:
    """A journal listener that logs each event as one JSON line (``journal.subscribe(...)``).

    The message is :meth:`~.events.Event.to_dict` as JSON, the span's ids included when
    set; the record also carries the event itself as ``record.resilience_event``, which
    :class:`~pytest_resilience.core.logs.JsonFormatter` renders."""

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = logger if logger is not None else logging.getLogger("pytest_resilience")
        self.level = level

    def __call__(self, event: Event) -> None:
        if self.logger.isEnabledFor(self.level):
            self.logger.log(
                self.level, json.dumps(event.to_dict()), extra={"resilience_event": event}
            )
