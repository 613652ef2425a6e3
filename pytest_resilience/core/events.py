"""What the components did, as frozen event records, and the Journal that holds them.

Every component takes an optional ``journal``; with none, it records nothing and pays
nothing. Events carry the time of the component's clock, so under a virtual clock a
timeline reads in virtual seconds. Success paths record nothing: a call that works on the
first attempt through a closed breaker costs no append.

The Journal is thread-safe, bounded (the oldest events go first; ``dropped`` counts them,
and the first drop warns :class:`JournalFull`) and append-only. Listeners subscribe to it
and are called, outside the lock, in the thread that appended. :class:`JsonLinesLogger` is
a listener that writes each event as one JSON line through the stdlib ``logging`` module.

Journals are read back (:meth:`Journal.load`, :mod:`faults.journal`) through an explicit
registry of event classes by ``kind``: the ones of this module, those the package defines
elsewhere (``_ELSEWHERE``, imported when first needed), and an application's own, added
with :func:`register_event`. Each field is checked against its annotation as it is read.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import threading
import types
import typing
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, ClassVar, Final, TypeVar, overload

__all__ = [
    "AppRetry",
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
    "JournalFull",
    "JsonLinesLogger",
    "Listener",
    "Recovered",
    "RetryScheduled",
    "StreamCancelled",
    "StreamFirstToken",
    "StreamStalled",
    "event_from_dict",
    "event_type",
    "event_types",
    "register_event",
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


@dataclass(frozen=True, slots=True, kw_only=True)
class AppRetry(Event):
    """An application's own retry code scheduled a retry: a retry library (tenacity,
    stamina, backoff), an HTTP client's built-in retries (openai), or a loop of its own
    (:func:`pytest_resilience.core.app.retried`). Recorded by :func:`faults.observe.watch`.

    ``source`` is the retried callable as the library names it (``"myapp.llm.ask"``), as a
    core retry's events carry the policy's name; ``name`` is the same, by its other name.
    """

    kind: ClassVar[str] = "app.retry"
    library: str  # "tenacity", "stamina", "backoff", "openai", "app", ...
    attempt: int  # the attempt that failed, from 1; the next one is attempt + 1
    delay: float  # seconds the library waits before the next attempt
    error: str  # "TypeName: message", or "result: None" for a rejected result
    category: str = ""  # classify()'s category of the error ("result" for a result)

    @property
    def name(self) -> str:
        return self.source


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


# ------------------------------------------------------------------------------ registry
#
# Reading a journal back needs the class of each line's ``kind``: it comes from this table
# and from nothing else. (It used to come from ``Event.__subclasses__()``, which knows only
# the classes whose module the process happens to have imported, so a journal holding
# ``fallback.exhausted`` or ``scenario.*`` events could not be read back.)

_HERE: Final[tuple[type[Event], ...]] = (
    AttemptStarted,
    AttemptFailed,
    RetryScheduled,
    GaveUp,
    AppRetry,
    BreakerTransition,
    CallRejected,
    FallbackUsed,
    DegradationChanged,
    StreamFirstToken,
    StreamStalled,
    StreamCancelled,
    DaemonDown,
    DaemonUp,
    DaemonSlow,
    DaemonRestarted,
    HealthChecked,
    CheckpointSaved,
    Recovered,
    FaultInjected,
)

#: The event classes of the package defined in other modules, by kind, as
#: ``"module:ClassName"``. Those modules import this one, so it cannot import them: each is
#: imported the first time a line of one of its kinds is read. A new event class outside
#: this module gets a line here (tests/property/test_event_roundtrip.py fails until every
#: ``Event`` subclass in ``pytest_resilience`` and ``faults`` is registered); an
#: application's own event classes use :func:`register_event`.
_ELSEWHERE: Final[Mapping[str, str]] = {
    "fallback.exhausted": "pytest_resilience.core.fallback:FallbackExhausted",
    "scenario.op": "faults.scenario:ScenarioOp",
    "scenario.step": "faults.scenario:ScenarioStep",
}

_registry: dict[str, type[Event] | str] = {cls.kind: cls for cls in _HERE} | dict(_ELSEWHERE)
_registry_lock = threading.Lock()

# How each field of an event class is read from JSON: the converter, and whether the
# field is required (has no default). Built from the annotations on first use.
_Convert = Callable[[object], object]
_fields: dict[type[Event], dict[str, tuple[_Convert, bool]]] = {}


def register_event(cls: type[E]) -> type[E]:
    """Register an event class of your own, so that journals holding its events load.

    A class decorator, above ``@dataclass``::

        @register_event
        @dataclass(frozen=True, slots=True, kw_only=True)
        class CacheMissed(Event):
            kind: ClassVar[str] = "myapp.cache_missed"
            key: str

    Fields may be ``str``, ``int``, ``float``, ``bool``, ``tuple[T, ...]`` of one of those,
    or ``T | None``. Registering a class again is a no-op, and a class of the same module
    and name (its module imported again) replaces it. Raises ``ValueError`` if its ``kind``
    is another class's, and ``TypeError`` if it is not a dataclass subclass of
    :class:`Event` or a field has another type.
    """
    if not (isinstance(cls, type) and issubclass(cls, Event) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"register_event takes a dataclass subclass of Event, not {cls!r}")
    if cls is Event:
        raise TypeError("register_event takes a subclass of Event, not Event itself")
    _fields_of(cls)  # every field has a type a journal can hold
    with _registry_lock:
        known = _registry.get(cls.kind)
        where = known if known is None or isinstance(known, str) else _path(known)
        if where is not None and where != _path(cls):
            raise ValueError(f"cannot register {_path(cls)}: event kind {cls.kind!r} is {where}'s")
        if not isinstance(known, str):  # one of _ELSEWHERE stays looked up by its path
            _registry[cls.kind] = cls
    return cls


def event_type(kind: object) -> type[Event]:
    """The class registered for ``kind``. Raises ``ValueError`` if there is none."""
    entry = _registry.get(kind) if isinstance(kind, str) else None
    if entry is None:
        if kind is None:
            raise ValueError("the event has no kind")
        known = ", ".join(sorted(_registry))
        raise ValueError(f"unknown event kind {_show(kind)}; known: {known}")
    if isinstance(entry, str):
        return _resolve(str(kind), entry)
    return entry


def event_types() -> dict[str, type[Event]]:
    """Every registered event class by its kind (importing those defined elsewhere)."""
    return {kind: event_type(kind) for kind in sorted(_registry)}


def _path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve(kind: str, where: str) -> type[Event]:
    module, _, name = where.partition(":")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"event kind {kind!r} is {where}, which cannot be imported: {exc}"
        ) from exc
    if not (isinstance(found, type) and issubclass(found, Event) and found.kind == kind):
        raise ValueError(f"event kind {kind!r} should be {where}, but that is {found!r}")
    return found  # not kept: the class its module has now, should the module be reloaded


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """Rebuild an event from :meth:`Event.to_dict` output.

    Raises ``ValueError`` naming what is wrong: a kind that is not registered, or a field
    that is missing, unknown, or not of its annotated type (``true`` is not an ``int``, nor
    ``1`` a ``bool``). JSON arrays become tuples, integers in ``float`` fields floats.
    """
    fields = dict(data)
    kind = fields.pop("kind", None)
    cls = event_type(kind)
    known = _fields_of(cls)
    unknown = sorted(str(name) for name in fields if name not in known)
    if unknown:
        shown = ", ".join(_name(name) for name in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValueError(f"event {kind!r} has no field(s) {shown}{more}")
    missing = [name for name, (_, required) in known.items() if required and name not in fields]
    if missing:
        raise ValueError(f"event {kind!r} lacks the field(s) {', '.join(missing)}")
    for name, value in fields.items():
        try:
            fields[name] = known[name][0](value)
        except ValueError as exc:
            raise ValueError(f"event {kind!r}: {name} must be {exc}") from None
    return cls(**fields)


def _fields_of(cls: type[Event]) -> dict[str, tuple[_Convert, bool]]:
    found = _fields.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = {}
        for f in dataclasses.fields(cls):
            try:
                convert = _converter(hints[f.name])
            except TypeError as exc:
                raise TypeError(f"{_path(cls)}.{f.name}: {exc}") from None
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            found[f.name] = (convert, required)
        _fields[cls] = found
    return found


def _converter(hint: object) -> _Convert:
    """What reads a JSON value into a field of type ``hint``; ``ValueError`` says what it
    should have been. ``TypeError`` for a type a journal cannot hold."""
    simple = _SIMPLE.get(hint)
    if simple is not None:
        return simple
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _SIMPLE:
        return functools.partial(_to_tuple, _SIMPLE[args[0]], _NAMES[args[0]])
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = _converter(args[0] if args[1] is type(None) else args[1])
        return functools.partial(_or_none, inner)
    raise TypeError(
        f"a journal holds str, int, float, bool, tuple[T, ...] of one of those, or T | None; "
        f"not {hint!r}"
    )


def _to_int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"an integer, not {_show(value)}")


def _to_float(value: object) -> float:
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"a number a float can hold, not {_show(value)}") from None
    raise ValueError(f"a number, not {_show(value)}")


def _to_str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"a string, not {_show(value)}")


def _to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"true or false, not {_show(value)}")


_SIMPLE: Final[dict[object, _Convert]] = {
    int: _to_int,
    float: _to_float,
    str: _to_str,
    bool: _to_bool,
}
_NAMES: Final[dict[object, str]] = {
    int: "integers",
    float: "numbers",
    str: "strings",
    bool: "true or false",
}


def _to_tuple(item: _Convert, names: str, value: object) -> tuple[object, ...]:
    if isinstance(value, list | tuple):
        try:
            return tuple(item(x) for x in value)
        except ValueError:
            pass
    raise ValueError(f"a list of {names}, not {_show(value)}")


def _or_none(inner: _Convert, value: object) -> object:
    if value is None:
        return None
    try:
        return inner(value)
    except ValueError as exc:
        raise ValueError(f"null or {exc}") from None


def _name(text: str) -> str:
    """A name read from JSON, printable and short, for messages."""
    shown = repr(text)[1:-1]
    return shown if len(shown) <= 40 else f"{shown[:37]}..."


def _show(value: object) -> str:
    """A short, one-line, printable rendering of a value read from JSON, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"an object of {len(value)} key(s)"
    text = repr(value) if isinstance(value, str | int | float) else type(value).__name__
    return text if len(text) <= 60 else f"{text[:57]}..."


class JournalFull(UserWarning):
    """A journal reached its bound and dropped its oldest event: warned once per journal."""


# ------------------------------------------------------------------------------- journal

Listener = Callable[[Event], None]


class Journal:
    """A thread-safe, bounded, append-only record of events.

    It keeps the last ``maxlen`` events: the oldest go first, ``dropped`` counts them, and
    the first drop warns :class:`JournalFull` (once per journal).
    """

    def __init__(self, maxlen: int = 100_000) -> None:
        if maxlen < 1:
            raise ValueError(f"Journal maxlen must be at least 1, got {maxlen}")
        self._events: deque[Event] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._listeners: tuple[Listener, ...] = ()
        self._warned = False  # JournalFull was warned
        self.maxlen = maxlen
        self.dropped = 0  # events pushed out by the bound

    def append(self, event: Event) -> None:
        full = False
        with self._lock:
            if len(self._events) == self.maxlen:
                self.dropped += 1
                if not self._warned:
                    self._warned = full = True
            self._events.append(event)
            listeners = self._listeners
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a broken listener must not break the call it observes
                _log.exception("journal listener %r failed on %s", listener, event.kind)
        if full:  # last: under -W error it raises, and the listeners have had the event
            warnings.warn(
                f"the journal keeps the last {self.maxlen} events and has begun dropping the "
                f"oldest ({event.kind!r} pushed one out; Journal.dropped counts them): give it "
                "a larger bound, Journal(maxlen=...) (for the pytest plugin's journals, the "
                "ini option resilience_journal_maxlen)",
                JournalFull,
                stacklevel=2,
            )

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
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError(f"expected a JSON object, got {_show(data)}")
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
    data = event.to_dict()
    kind, time, source = data.pop("kind"), data.pop("time"), data.pop("source")
    fields = " ".join(f"{k}={v!r}" for k, v in data.items())
    where = f" [{source}]" if source else ""
    shown = f"{time:10.3f}s" if since is None else f"{time - since:+10.3f}s"
    return f"{shown} {kind}{where} {fields}".rstrip()


class JsonLinesLogger:
    """A journal listener that logs each event as one JSON line (``journal.subscribe(...)``)."""

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = logger if logger is not None else logging.getLogger("pytest_resilience")
        self.level = level

    def __call__(self, event: Event) -> None:
        if self.logger.isEnabledFor(self.level):
            self.logger.log(self.level, json.dumps(event.to_dict()))
