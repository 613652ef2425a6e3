"""Spans: one call followed through retry, fallback and stream, with W3C-style ids.

A :class:`Span` names one call of a component: a ``trace_id`` (32 lowercase hex digits)
shared by every span of the same outermost call, its own ``span_id`` (16 hex digits), the
``parent_id`` of the span it runs in ("" for the first of a trace) and a ``name``
(``"retry:ask"``, ``"fallback:answer"``, ``"stream:chat"``). The current span is a context
variable, so it follows the code into the asyncio tasks it starts and into the threads
that run a copied context (``asyncio.to_thread``, ``contextvars.copy_context().run``);
a plain ``threading.Thread`` starts with no span, as it starts with no cancel scope.

::

    with span("ask", journal):           # a child of the current span, or a new trace
        retry.call(client.generate, prompt)

Who opens spans: ``Retry.call``/``acall`` and its decorator, ``Fallback``, the guarded
streams and the resilient client's calls, each only when it has a journal: without one
nothing is opened and nothing is paid. The circuit breaker opens none; its events belong
to the span around it, and a breaker used alone records events with empty ids. Every event
the components make carries the current span's ids (``Event.trace_id``, ``span_id``):
reading them costs one ``ContextVar.get()``, since the variable's default is a span whose
ids are empty.

Listeners. A span is announced to the *span listeners* of the journal of the component
that opens it: the journal's listeners that also have ``span_started(span)`` and
``span_ended(span, error)`` (:class:`SpanListener`; ``Journal.subscribe`` tells them
apart). ``span_started`` may return the same span under other ids (``Span.adopt``): an
exporter to another tracing system (:mod:`pytest_resilience.export.otel`) lets that
system give the ids, so that its spans, our events and our log lines all carry the same
ones, and a span opened inside the application's own current span becomes its child. This
module keeps no state but the context variable: nothing is installed process-wide.

A span that no listener hears of draws its ids when they are first read, so a call
that records no event pays for a context variable's set and reset, not for its ids.
Ids are drawn from the ``random`` module's generator, as OpenTelemetry's SDK draws its own:
not the seeded generators of :mod:`pytest_resilience.core.seeding`, whose draws decide the
jitter of a seeded run and must not depend on how many spans were opened.
"""

from __future__ import annotations

import contextvars
import logging
import random
import threading
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from types import TracebackType

    from .journal import Journal

__all__ = [
    "OpenSpan",
    "Span",
    "SpanListener",
    "current_span",
    "new_span_id",
    "new_trace_id",
    "span",
    "start_span",
]


class Span:
    """One call of a component: its trace, its own id, its parent's id ("" for a root).

    ``Span(trace_id, span_id, parent_id, name)``; read-only, compared and hashed by those
    four. A span opened with no span listener to announce it to draws its ids only when
    they are first read (an event stamped in it, ``current_span().trace_id``): a call
    that records nothing pays for no random ids. Once read, they never change.
    """

    __slots__ = ("_ids", "_name", "_up")

    def __init__(self, trace_id: str, span_id: str, parent_id: str, name: str) -> None:
        self._ids: tuple[str, str, str] | None = (trace_id, span_id, parent_id)
        self._up: Span | None = None  # a lazy span's parent, until its ids are drawn
        self._name = name

    @classmethod
    def _child(cls, up: Span, name: str) -> Span:
        """A child of ``up`` whose ids are drawn when first read."""
        lazy = cls.__new__(cls)
        lazy._ids, lazy._up, lazy._name = None, up, name
        return lazy

    def _drawn(self) -> tuple[str, str, str]:
        ids = self._ids
        if ids is None:
            with _DRAWING:  # two threads sharing the span (a copied context) draw once
                ids = self._ids
                if ids is None:
                    up = self._up
                    assert up is not None  # set while _ids is None, cleared with it
                    parent = up._drawn()
                    if parent[0]:
                        ids = (parent[0], new_span_id(), parent[1])
                    else:
                        ids = (new_trace_id(), new_span_id(), "")
                    self._ids, self._up = ids, None
        return ids

    @property
    def trace_id(self) -> str:
        return self._drawn()[0]

    @property
    def span_id(self) -> str:
        return self._drawn()[1]

    @property
    def parent_id(self) -> str:
        return self._drawn()[2]

    @property
    def name(self) -> str:
        return self._name

    def adopt(self, trace_id: str, span_id: str, parent_id: str | None = None) -> Span:
        """This span under other ids (for :meth:`SpanListener.span_started`).

        Raises ``ValueError`` unless ``trace_id`` is 32 and ``span_id`` 16 lowercase hex
        digits, not all zero."""
        check_ids(trace_id, span_id, "adopted ids")
        parent = self.parent_id if parent_id is None else parent_id
        return Span(trace_id, span_id, parent, self.name)

    def _key(self) -> tuple[str, str, str, str]:
        return (*self._drawn(), self._name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Span):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        trace_id, span_id, parent_id = self._drawn()
        return (
            f"Span(trace_id={trace_id!r}, span_id={span_id!r}, parent_id={parent_id!r}, "
            f"name={self._name!r})"
        )


#: Held only while a lazy span draws its ids (and its lazy parents theirs: re-entered).
_DRAWING = threading.RLock()

#: The ids of "no span": what events made outside any span carry.
_NONE = Span("", "", "", "")

# The one piece of state: the current span, per context (thread, task, copied context).
_current: contextvars.ContextVar[Span] = contextvars.ContextVar(
    "pytest_resilience.span", default=_NONE
)
#: One ContextVar.get(): what the event makers call to stamp an event.
current_ids = _current.get


def current_span() -> Span | None:
    """The span the calling code runs in, or None."""
    found = _current.get()
    return None if found is _NONE else found


def new_trace_id() -> str:
    """32 random lowercase hex digits, never all zero."""
    return f"{random.getrandbits(128) or 1:032x}"


def new_span_id() -> str:
    """16 random lowercase hex digits, never all zero."""
    return f"{random.getrandbits(64) or 1:016x}"


_HEX = frozenset("0123456789abcdef")


def check_ids(trace_id: str, span_id: str, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` unless both ids are well formed, or both empty.

    Well formed: ``trace_id`` 32 and ``span_id`` 16 lowercase hex digits, not all zero.
    """
    if trace_id == span_id == "":
        return
    for what, value, size in (("trace_id", trace_id, 32), ("span_id", span_id, 16)):
        if not (
            isinstance(value, str)
            and len(value) == size
            and _HEX.issuperset(value)
            and value != "0" * size
        ):
            raise ValueError(
                f"{where}: {what} must be {size} lowercase hex digits, not all zero "
                f"(or both ids empty), got {value!r}"
            )


@runtime_checkable
class SpanListener(Protocol):
    """A journal listener that also hears of the spans opened with that journal."""

    def __call__(self, event: object, /) -> None: ...

    def span_started(self, span: Span, /) -> Span | None:
        """``span`` opens (not yet current). Return None, or ``span.adopt(...)`` to give
        it other ids; raising lets the span open with its own ids (and is logged)."""

    def span_ended(self, span: Span, error: BaseException | None, /) -> None:
        """``span`` closed, by ``error`` if the call raised."""


class OpenSpan:
    """A span that has been started and not yet ended: :func:`start_span` returns one.

    ``activate()`` makes it current (returns the token that ``deactivate`` takes);
    ``end(error)`` announces its end once (later calls do nothing).
    """

    __slots__ = ("_ended", "_listeners", "span")

    def __init__(self, span: Span, listeners: tuple[SpanListener, ...]) -> None:
        self.span = span
        self._listeners = listeners
        self._ended = False  # pragma: no mutate - only its truth is read: None would do alike

    def activate(self) -> contextvars.Token[Span]:
        return _current.set(self.span)

    def deactivate(self, token: contextvars.Token[Span]) -> None:
        _current.reset(token)

    def end(self, error: BaseException | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        for listener in self._listeners:
            try:
                listener.span_ended(self.span, error)
            except Exception:  # noqa: BLE001 - a broken exporter must not break the call
                _log_failure(listener, "span_ended", self.span)

    def __repr__(self) -> str:
        s = self.span
        return f"<OpenSpan {s.name!r} trace={s.trace_id} span={s.span_id}>"


def start_span(name: str, journal: Journal | None = None, parent: Span | None = None) -> OpenSpan:
    """Open a span named ``name``, a child of ``parent`` (default: the current span) or the
    first of a new trace, and announce it to ``journal``'s span listeners. It is not made
    current: see :meth:`OpenSpan.activate`, or use :func:`span`."""
    up = _current.get() if parent is None else parent
    listeners = journal.span_listeners if journal is not None else ()
    if not listeners:  # nobody to announce it to: its ids are drawn when first read
        return OpenSpan(Span._child(up, name), ())
    if up.trace_id:
        opened = Span(up.trace_id, new_span_id(), up.span_id, name)
    else:
        opened = Span(new_trace_id(), new_span_id(), "", name)
    for listener in listeners:
        try:
            adopted = listener.span_started(opened)
        except Exception:  # noqa: BLE001 - a broken exporter must not break the call
            _log_failure(listener, "span_started", opened)
            continue
        if adopted is not None:
            opened = adopted
    return OpenSpan(opened, listeners)


class span:  # lower case: used as a function, ``with span("ask", journal):``
    """``with span(name, journal) as s:`` -- open a span, current inside the block.

    It ends when the block does; an exception leaving the block is its ``error``."""

    __slots__ = ("_journal", "_name", "_open", "_token")

    def __init__(self, name: str, journal: Journal | None = None) -> None:
        self._name = name
        self._journal = journal

    def __enter__(self) -> Span:
        journal = self._journal
        if journal is None or not journal.span_listeners:  # the common case, kept cheap
            self._open = None
            lazy = Span._child(_current.get(), self._name)
            self._token = _current.set(lazy)
            return lazy
        opened = self._open = start_span(self._name, journal)
        self._token = _current.set(opened.span)
        return opened.span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _current.reset(self._token)
        if self._open is not None:
            self._open.end(exc)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _current.reset(self._token)  # as __exit__ does: neither reads exc_type or tb
        if self._open is not None:
            self._open.end(exc)


def _log_failure(listener: object, what: str, failed: Span) -> None:
    logging.getLogger("pytest_resilience.core.events").exception(
        "span listener %r failed in %s of %r", listener, what, failed.name
    )
