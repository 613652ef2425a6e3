"""What the components did, as frozen event records, and how a journal's lines become events.

Every component takes an optional ``journal``; with none, it records nothing and pays
nothing. Events carry the time of the component's clock, so under a virtual clock a
timeline reads in virtual seconds. Success paths record nothing: a call that works on the
first attempt through a closed breaker costs no append, unless its policy was made with
``outcomes=True`` (:class:`CallSucceeded`, :class:`CallFailed`). The
:class:`~pytest_resilience.core.journal.Journal` that holds them is in
:mod:`pytest_resilience.core.journal`, which this module does not import.

Journals are read back (``Journal.load``, :mod:`faults.journal`) through an explicit
registry of event classes by ``kind``: the ones of this module, those the package defines
elsewhere (``_ELSEWHERE``, imported when first needed), and an application's own, added
with :func:`register_event`. Each field is checked against its annotation as it is read
(:mod:`pytest_resilience.core.event_fields`); nothing is checked when an event is made.

Making an event is on the hot path of the components that record (a rejected call, a
failed attempt). The classes here are frozen, slotted dataclasses as the ones an
application defines, but their ``__init__`` stores the fields with plain attribute stores,
on an unfrozen twin of the class (see :func:`_speed_up`), instead of ``object.__setattr__``
per field, and the components build them with :func:`event_maker`, which also skips
``type.__call__``: the same frozen event, in about a third of the time (a journaled event,
made and appended, takes about 170 ns, whatever its number of fields).

Every event carries the ids of the span it was made in (``trace_id``, ``span_id``;
:mod:`pytest_resilience.core.trace`), empty outside any span. The makers, and the
``__init__`` of this module's classes, read them from the current span unless they are
given (one ``ContextVar.get()``); :func:`event_from_dict` gives them, from the line or
empty. They take no part in equality or ``repr``, and :meth:`Event.to_dict` writes them
only when set, so journals written before they existed, or outside any span, read the same.
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

from .event_fields import Convert, converter, show, show_name
from .trace import current_ids

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "AlertFired",
    "AppRetry",
    "AttemptFailed",
    "AttemptStarted",
    "BreakerTransition",
    "CacheHit",
    "CacheMissed",
    "CallFailed",
    "CallRejected",
    "CallSucceeded",
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
    "Recovered",
    "RetryScheduled",
    "StallDetected",
    "StreamCancelled",
    "StreamCapped",
    "StreamEmpty",
    "StreamFirstToken",
    "StreamInvalid",
    "event_from_dict",
    "event_maker",
    "event_type",
    "event_types",
    "register_event",
]

E = TypeVar("E", bound="Event")

#: faults.journal's name for :func:`~pytest_resilience.core.event_fields.show`.
_show = show


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of all events: ``time`` on the component's clock, ``source`` names the component,
    ``trace_id`` and ``span_id`` the span it was made in ("" outside any span)."""

    kind: ClassVar[str] = "event"
    time: float
    source: str = ""
    trace_id: str = field(default="", compare=False, repr=False)
    span_id: str = field(default="", compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The event as plain JSON-ready data, with its ``kind`` first; the span's ids
        (last) only when set."""
        data: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            if f.name in _IDS:
                continue
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        if self.trace_id or self.span_id:
            data["trace_id"] = self.trace_id
            data["span_id"] = self.span_id
        return data


#: The fields every event has that say which span it was made in.
_IDS: Final = frozenset({"trace_id", "span_id"})


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


# ------------------------------------------------------------------------------ outcomes


@dataclass(frozen=True, slots=True, kw_only=True)
class CallSucceeded(Event):
    """A call through a policy answered, ``duration`` clock seconds after it began.

    Recorded only by a policy made with ``outcomes=True`` and a journal. ``attempts`` > 1
    means it recovered: it failed first and a retry answered.
    """

    kind: ClassVar[str] = "call.succeeded"
    duration: float
    attempts: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class CallFailed(Event):
    """A call through a policy failed for good, ``duration`` clock seconds after it began.

    Recorded only by a policy made with ``outcomes=True`` and a journal. ``severity`` is the
    classification's (``"low"``, ``"medium"``, ``"high"``, ``"critical"``).
    """

    kind: ClassVar[str] = "call.failed"
    duration: float
    error: str  # "TypeName: message", or "result: ..." for a rejected result
    category: str
    severity: str
    attempts: int = 1


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
class StallDetected(Event):
    kind: ClassVar[str] = "stream.stalled"
    which: str  # first_token | idle | total
    waited: float
    partial: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamCancelled(Event):
    kind: ClassVar[str] = "stream.cancelled"
    reason: str
    partial: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEmpty(Event):
    """The source ran out without a visible character: ``partial`` is "" or whitespace."""

    kind: ClassVar[str] = "stream.empty"
    partial: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamInvalid(Event):
    """A validator rejected chunk number ``chunk`` (from 1), which was not delivered."""

    kind: ClassVar[str] = "stream.invalid"
    chunk: int
    detail: str  # the validator's name, and its ValueError's message if it raised one
    partial: str  # what was delivered before the rejected chunk


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamCapped(Event):
    """The next chunk would have passed the guard's cap; it was not delivered."""

    kind: ClassVar[str] = "stream.capped"
    limit: str  # "max_chunks=N" or "max_chars=N"
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


# --------------------------------------------------------------------------------- cache


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheHit(Event):
    """A response cache answered ``key``; ``age`` is the entry's age in clock seconds."""

    kind: ClassVar[str] = "cache.hit"
    key: str
    age: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheMissed(Event):
    """A response cache had no answer for ``key``: ``reason`` is "absent" or "expired"."""

    kind: ClassVar[str] = "cache.missed"
    key: str
    reason: str


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


# -------------------------------------------------------------------------------- alerts


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertFired(Event):
    """An alert's threshold was crossed (:mod:`pytest_resilience.core.alerts`)."""

    kind: ClassVar[str] = "alert.fired"
    name: str  # the alert's name
    rule: str  # "consecutive_failures", "error_rate" or "breaker_open"
    about: str  # the source of the event that crossed it (a policy's name)
    value: float  # what was measured: failures in a row, errors in the window, 1 for a breaker
    threshold: float
    message: str


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
    CallSucceeded,
    CallFailed,
    BreakerTransition,
    CallRejected,
    FallbackUsed,
    DegradationChanged,
    StreamFirstToken,
    StallDetected,
    StreamCancelled,
    StreamEmpty,
    StreamInvalid,
    StreamCapped,
    DaemonDown,
    DaemonUp,
    DaemonSlow,
    DaemonRestarted,
    HealthChecked,
    CacheHit,
    CacheMissed,
    CheckpointSaved,
    Recovered,
    FaultInjected,
    AlertFired,
)

#: The event classes of the package defined in other modules, by kind, as
#: ``"module:ClassName"``. Those modules import this one, so it cannot import them: each is
#: imported the first time a line of one of its kinds is read. A new event class outside
#: this module gets a line here (tests/property/test_event_roundtrip.py fails until every
#: ``Event`` subclass in ``pytest_resilience`` and ``faults`` is registered); an
#: application's own event classes use :func:`register_event`.
_ELSEWHERE: Final[Mapping[str, str]] = {
    "fallback.exhausted": "pytest_resilience.core.fallback:FallbackExhausted",
    "llama.stream_ended_early": "faults.model_use:StreamEndedEarly",
    "scenario.op": "faults.scenario.events:ScenarioOp",
    "scenario.step": "faults.scenario.events:ScenarioStep",
}

_registry: dict[str, type[Event] | str] = {cls.kind: cls for cls in _HERE} | dict(_ELSEWHERE)
_registry_lock = threading.Lock()

# How each field of an event class is read from JSON: the converter, and whether the
# field is required (has no default). Built from the annotations on first use.
_fields: dict[type[Event], dict[str, tuple[Convert, bool]]] = {}


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
        raise ValueError(f"unknown event kind {show(kind)}; known: {known}")
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
        shown = ", ".join(show_name(name) for name in unknown[:5])
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
    # given, never stamped from the span that reads the journal
    fields.setdefault("trace_id", "")
    fields.setdefault("span_id", "")
    return cls(**fields)


def _fields_of(cls: type[Event]) -> dict[str, tuple[Convert, bool]]:
    found = _fields.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = {}
        for f in dataclasses.fields(cls):
            try:
                convert = converter(hints[f.name])
            except TypeError as exc:
                raise TypeError(f"{_path(cls)}.{f.name}: {exc}") from None
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            found[f.name] = (convert, required)
        _fields[cls] = found
    return found


# -------------------------------------------------------------------------- fast making


def _speed_up(cls: type[E]) -> Callable[..., E]:
    """Give one of this module's event classes a faster ``__init__``; return its maker.

    Both take the dataclass ``__init__``'s keyword-only arguments and defaults, and make
    the same frozen event. A frozen class's ``__setattr__`` refuses every store, and storing
    through each slot's descriptor (``object.__setattr__`` does that after looking the
    descriptor up) costs a C call per field. So the fields are stored while the instance is
    of ``_Unfrozen``, a subclass that adds nothing but the plain ``object.__setattr__``
    (the same layout: plain attribute stores, one bytecode each), and the instance becomes
    a ``cls`` again before anybody else sees it. The maker makes it an ``_Unfrozen`` from
    the start; ``__init__`` switches the instance ``type.__call__`` made, and stores through
    the descriptors for a subclass's instance (whose layout may differ).
    """
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    if not (params.frozen and "__slots__" in vars(cls)) or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__qualname__} is not a plain frozen, slotted event class")
    unfrozen = type(
        cls.__name__,
        (cls,),
        {
            "__slots__": (),
            "__setattr__": object.__setattr__,
            "__delattr__": object.__delattr__,
            "__init__": object.__init__,  # the maker calls it with no arguments
            "__module__": cls.__module__,
            "__qualname__": f"{cls.__qualname__}._Unfrozen",  # not a name of its module
        },
    )
    namespace: dict[str, Any] = {
        "_cls": cls,
        "_Unfrozen": unfrozen,
        "_set_class": vars(object)["__class__"].__set__,
        "_current_ids": current_ids,
    }
    params_src, stores, slow_stores = [], [], []
    for f in dataclasses.fields(cls):
        if not f.init or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__qualname__}.{f.name} needs the dataclass __init__")
        slot = next(k.__dict__[f.name] for k in cls.__mro__ if f.name in k.__dict__)
        if not isinstance(slot, types.MemberDescriptorType):
            raise TypeError(f"{cls.__qualname__}.{f.name} is not a slot")
        namespace[f"_set_{f.name}"] = slot.__set__
        if f.name in _IDS:  # stamped below, from the current span unless given
            params_src.append(f"{f.name}=None")
        elif f.default is dataclasses.MISSING:
            params_src.append(f.name)
        else:
            namespace[f"_default_{f.name}"] = f.default
            params_src.append(f"{f.name}=_default_{f.name}")
        if f.name not in _IDS:
            stores.append(f"self.{f.name} = {f.name}")
            slow_stores.append(f"_set_{f.name}(self, {f.name})")
    # The span's ids: one ContextVar.get() when neither is given (its default has empty ids)
    stamp = (
        "if trace_id is None is span_id:",
        "    _span = _current_ids()",
        "    trace_id = _span.trace_id",
        "    span_id = _span.span_id",
        "elif trace_id is None:",
        "    trace_id = ''",
        "elif span_id is None:",
        "    span_id = ''",
    )
    stores += [*stamp, "self.trace_id = trace_id", "self.span_id = span_id"]
    slow_stores += [*stamp, "_set_trace_id(self, trace_id)", "_set_span_id(self, span_id)"]
    signature = ", ".join(params_src)

    def block(lines: list[str], indent: str) -> str:
        return "".join(f"{indent}{line}\n" for line in lines)

    source = (
        f"def __init__(self, *, {signature}):\n"
        "    if self.__class__ is _cls:\n"
        "        _set_class(self, _Unfrozen)\n"
        f"{block(stores, ' ' * 8)}"
        "        self.__class__ = _cls\n"
        "    else:  # a subclass's instance\n"
        f"{block(slow_stores, ' ' * 8)}"
        f"def make(*, {signature}):\n"
        "    self = _Unfrozen()\n"
        f"{block(stores, ' ' * 4)}"
        "    self.__class__ = _cls\n"
        "    return self\n"
    )
    exec(source, namespace)  # code built from the class's own field names, as dataclasses does
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init  # type: ignore[method-assign]
    make: Callable[..., E] = namespace["make"]
    make.__qualname__ = make.__name__ = f"make_{cls.__name__}"
    make.__module__ = cls.__module__
    return make


_MAKERS: Final[dict[type[Event], Callable[..., Event]]] = {cls: _speed_up(cls) for cls in _HERE}


def event_maker(cls: type[E]) -> Callable[..., E]:
    """A function that builds ``cls`` events as ``cls(**fields)`` does, in half the time,
    stamped with the current span's ids unless ``trace_id``/``span_id`` are given.

    ``cls`` is one of this module's event classes, or a plain frozen, slotted event class
    of the package's own (``FallbackExhausted``), whose ``__init__`` then stamps too
    (``KeyError`` for any other class); the components use it on their hot paths:
    ``rejected = event_maker(CallRejected)`` once, then
    ``journal.append(rejected(time=now, source=name, state=state))``.
    """
    found = _MAKERS.get(cls)
    if found is None:
        if not (isinstance(cls, type) and issubclass(cls, Event) and cls is not Event):
            raise KeyError(f"event_maker takes a subclass of Event, not {cls!r}")
        with _registry_lock:
            found = _MAKERS.get(cls)
            if found is None:
                found = _MAKERS[cls] = _speed_up(cls)
    return found  # type: ignore[return-value]
