"""What the components did, as frozen event records, and the Journal that holds them.

Every component takes an optional ``journal``; with none, it records nothing and pays
nothing. Events carry the time of the component's clock, so under a virtual clock a
timeline reads in virtual seconds. Success paths record nothing: a call that works on the
first attempt through a closed breaker costs no append.

The Journal is thread-safe, bounded (the oldest events go first; ``dropped`` counts them)
and append-only. Listeners subscribe to it and are called, outside the lock, in the thread
that appended. :class:`JsonLinesLogger` is a listener that writes each event as one JSON
line through the stdlib ``logging`` module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, ClassVar, TypeVar, overload

__all__ = [
    "AttemptFailed",
    "AttemptStarted",
    "BreakerTransition",
    "CallRejected",
    "CheckpointSaved",
    "DaemonDown",
    "DaemonRestarted",
    "DaemonSlow",
    "DaemonUp",
    "DegradationChanged",
    "Event",
    "FallbackUsed",
    "FaultInjected",
    "GaveUp",
    "HealthChecked",
    "Journal",
    "JsonLinesLogger",
    "Listener",
    "Recovered",
    "RetryScheduled",
    "StreamCancelled",
    "StreamFirstToken",
    "StreamStalled",
    "event_from_dict",
]

_log = logging.getLogger(__name__)

E = TypeVar("E", bound="Event")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of all events: ``time`` on the component's clock, ``source`` names the component."""

    kind: ClassVar[str] = "event"
    time: float
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The event as plain JSON-ready data, with its ``kind`` first."""
        data: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data


def _event_kinds() -> dict[str, type[Event]]:
    """Every event class by its ``kind``, including ones defined outside this module."""
    found: dict[str, type[Event]] = {}
    stack: list[type[Event]] = [Event]
    while stack:
        cls = stack.pop()
        found.setdefault(cls.kind, cls)
        stack.extend(cls.__subclasses__())
    return found


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """Rebuild an event from :meth:`Event.to_dict` output. Raises ``ValueError`` if unknown."""
    fields = dict(data)
    kind = fields.pop("kind", None)
    kinds = _event_kinds()
    cls = kinds.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(sorted(kinds))}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(fields) - set(names)
    if unknown:
        raise ValueError(f"event {kind!r} has no field(s) {', '.join(sorted(unknown))}")
    for name, value in fields.items():
        if isinstance(value, list):
            fields[name] = tuple(value)
    return cls(**fields)


# ------------------------------------------------------------------------------- retry


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptStarted(Event):
    """A retry attempt began. Recorded from the second attempt on; the first is implied."""

    kind: ClassVar[str] = "attempt.started"
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptFailed(Event):
    kind: ClassVar[str] = "attempt.failed"
    attempt: int
    error: str  # "TypeName: message", or "result: None" for a rejected result
    category: str  # the classification's category


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(Event):
    kind: ClassVar[str] = "retry.scheduled"
    attempt: int  # the attempt that will run after the delay
    delay: float


@dataclass(frozen=True, slots=True, kw_only=True)
class GaveUp(Event):
    kind: ClassVar[str] = "retry.gave_up"
    attempts: int
    error: str
    reason: str  # "attempts", "budget", "not retryable", "cancelled"


# ----------------------------------------------------------------------------- breaker


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerTransition(Event):
    kind: ClassVar[str] = "breaker.transition"
    from_state: str
    to_state: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRejected(Event):
    kind: ClassVar[str] = "breaker.rejected"
    state: str


# ----------------------------------------------------------------- fallback, degradation


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackUsed(Event):
    """A step other than the first answered; ``after`` says why each earlier one did not."""

    kind: ClassVar[str] = "fallback.used"
    step: str
    index: int
    after: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DegradationChanged(Event):
    kind: ClassVar[str] = "degradation.changed"
    from_level: str
    to_level: str
    reason: str


# ----------------------------------------------------------------------------- streams


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamFirstToken(Event):
    kind: ClassVar[str] = "stream.first_token"
    latency: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamStalled(Event):
    kind: ClassVar[str] = "stream.stalled"
    which: str  # first_token | idle | total
    waited: float
    partial: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamCancelled(Event):
    kind: ClassVar[str] = "stream.cancelled"
    reason: str
    partial: str


# ------------------------------------------------------------------- daemon and health


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonDown(Event):
    kind: ClassVar[str] = "daemon.down"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonUp(Event):
    kind: ClassVar[str] = "daemon.up"
    latency: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonSlow(Event):
    kind: ClassVar[str] = "daemon.slow"
    latency: float
    threshold: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonRestarted(Event):
    kind: ClassVar[str] = "daemon.restarted"
    pid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthChecked(Event):
    kind: ClassVar[str] = "health.checked"
    check: str
    healthy: bool
    message: str


# ------------------------------------------------------------------------------ recovery


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint.saved"
    key: str
    step: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovered(Event):
    kind: ClassVar[str] = "recovery.recovered"
    key: str
    how: str  # "checkpoint", "fallback", "retry"


# -------------------------------------------------------------------------------- faults


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultInjected(Event):
    kind: ClassVar[str] = "fault.injected"
    site: str
    fault: str  # the term as the grammar writes it, e.g. "timeout(30s)"
    call: int  # the site's call number, from 1


# ------------------------------------------------------------------------------- journal

Listener = Callable[[Event], None]


class Journal:
    """A thread-safe, bounded, append-only record of events."""

    def __init__(self, maxlen: int = 100_000) -> None:
        if maxlen < 1:
            raise ValueError(f"Journal maxlen must be at least 1, got {maxlen}")
        self._events: deque[Event] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._listeners: tuple[Listener, ...] = ()
        self.maxlen = maxlen
        self.dropped = 0  # events pushed out by the bound

    def append(self, event: Event) -> None:
        with self._lock:
            if len(self._events) == self.maxlen:
                self.dropped += 1
            self._events.append(event)
            listeners = self._listeners
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a broken listener must not break the call it observes
                _log.exception("journal listener %r failed on %s", listener, event.kind)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every later event; returns the function that unsubscribes."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return unsubscribe

    @overload
    def events(self) -> list[Event]: ...
    @overload
    def events(self, kind: type[E], /, *more: type[E]) -> list[E]: ...
    def events(self, *kinds: type[Any]) -> list[Any]:
        """A snapshot of the events, optionally only those of the given types."""
        with self._lock:
            snapshot = list(self._events)
        if not kinds:
            return snapshot
        return [e for e in snapshot if isinstance(e, kinds)]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
            self.dropped = 0

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events())

    def dump(self, stream: IO[str]) -> None:
        """Write the events as JSON lines."""
        for event in self.events():
            stream.write(json.dumps(event.to_dict(), sort_keys=False) + "\n")

    @classmethod
    def load(cls, lines: Iterable[str], maxlen: int = 100_000) -> Journal:
        """Read a journal written by :meth:`dump`. Raises ``ValueError`` naming the bad line."""
        journal = cls(maxlen)
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                journal.append(event_from_dict(json.loads(line)))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"journal line {number}: {exc}") from exc
        return journal

    def timeline(self, last: int | None = None) -> str:
        """A readable timeline, one event a line: ``+12.500s retry.scheduled attempt=2 ...``."""
        events = self.events()
        if last is not None:
            events = events[-last:]
        return "\n".join(format_event(e) for e in events)


def format_event(event: Event) -> str:
    data = event.to_dict()
    kind, time, source = data.pop("kind"), data.pop("time"), data.pop("source")
    fields = " ".join(f"{k}={v!r}" for k, v in data.items())
    where = f" [{source}]" if source else ""
    return f"{time:10.3f}s {kind}{where} {fields}".rstrip()


class JsonLinesLogger:
    """A journal listener that logs each event as one JSON line (``journal.subscribe(...)``)."""

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = logger if logger is not None else logging.getLogger("pytest_resilience")
        self.level = level

    def __call__(self, event: Event) -> None:
        if self.logger.isEnabledFor(self.level):
            self.logger.log(self.level, json.dumps(event.to_dict()))
