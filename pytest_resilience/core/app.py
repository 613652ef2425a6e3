"""What an application's own resilience code tells the test: its fallbacks and retries.

Production code may call these; outside a test they do nothing and cost a list check. They
import neither pytest nor any retry library::

    from pytest_resilience.core.app import fallback_point, fell_back

    def answer(prompt):
        try:
            return ask(prompt)                # retried by tenacity, stamina, backoff, ...
        except RetryError as exc:
            fell_back("canned", after=exc)    # shows as a fallback.used event
            return CANNED

    @fallback_point("canned")                 # or mark the function that answers instead
    def canned(prompt):
        return CANNED

:func:`fell_back` and :func:`fallback_point` record a
:class:`~pytest_resilience.core.events.FallbackUsed` (``step`` the name given, ``source``
``"app"`` unless told, ``after`` the exception being handled), so ``assert_fell_back`` and
the summary count them like a :class:`~pytest_resilience.core.fallback.Fallback` chain's. A retry
loop of the application's own reports each retry with :func:`retried`
(an :class:`~pytest_resilience.core.events.AppRetry` event, library ``"app"``); those of
tenacity, stamina, backoff and the openai client are recorded without any call, by
:func:`faults.observe.watch`.

Where the events go: to the journal of the :class:`Observation` in effect, which
``faults.observe.watch()`` (and the pytest plugin, once per test) opens. An observation
opened in this context (thread, task) wins; otherwise the one opened last in the process,
so that a worker thread the application started still reports to the running test.
"""

from __future__ import annotations

import functools
import inspect
import reprlib
import sys
import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar, overload

from .classify import classify
from .events import AppRetry, FallbackUsed

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType

    from .clock import Clock
    from .events import Event
    from .journal import Journal

__all__ = [
    "Observation",
    "current",
    "describe",
    "fallback_point",
    "fell_back",
    "retried",
]

F = TypeVar("F", bound="Callable[..., Any]")

#: The library name of the retries an application reports itself, with :func:`retried`.
APP: Final = "app"

_context: ContextVar[Observation | None] = ContextVar("pytest_resilience_observation", default=None)
_open: tuple[Observation, ...] = ()  # every open observation, in the order opened
_lock = threading.Lock()


class Observation:
    """While open, the application's reports (and the retries that
    :mod:`faults.observe` sees) go to ``journal``, stamped with ``clock.now()``.

    ``libraries`` limits the retry libraries whose retries it takes (None: all); reports
    made with :func:`retried` and :func:`fell_back` are always taken. Observations nest:
    the one opened last is in effect until it closes, and closing is idempotent and may
    happen in any order.
    """

    __slots__ = ("_is_open", "_previous", "clock", "journal", "libraries")

    def __init__(
        self,
        journal: Journal,
        *,
        clock: Clock | None = None,
        libraries: Iterable[str] | None = None,
    ) -> None:
        if clock is None:
            from .clock import SystemClock  # noqa: PLC0415 - production imports need no asyncio

            clock = SystemClock()
        self.journal = journal
        self.clock: Clock = clock
        self.libraries: frozenset[str] | None = None if libraries is None else frozenset(libraries)
        self._is_open = False
        self._previous: Observation | None = None

    @property
    def is_open(self) -> bool:
        return self._is_open

    def observes(self, library: str) -> bool:
        return library == APP or self.libraries is None or library in self.libraries

    def open(self) -> Self:
        """Make this the observation in effect. Raises ``RuntimeError`` if already open."""
        global _open
        with _lock:
            if self._is_open:
                raise RuntimeError(f"{self!r} is already open")
            self._is_open = True
            _open = (*_open, self)
        self._previous = _context.get()
        _context.set(self)
        return self

    def close(self) -> None:
        """Stop taking events (a no-op if not open)."""
        global _open
        with _lock:
            if not self._is_open:
                return
            self._is_open = False
            _open = tuple(o for o in _open if o is not self)
        if _context.get() is self:  # else closed from another context: that one is stale
            _context.set(self._previous)
        self._previous = None

    def record(self, event: Event) -> None:
        self.journal.append(event)

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._is_open else "closed"
        return f"<Observation {state} journal={id(self.journal):#x} clock={self.clock!r}>"


def current(library: str | None = None) -> Observation | None:
    """The observation in effect here (that of ``library``'s retries, when given), or None."""
    if not _open:  # the production path: nothing is observing
        return None
    found = _context.get()
    if found is None or not found._is_open:
        opened = _open
        if not opened:
            return None
        found = opened[-1]
    if library is not None and not found.observes(library):
        return None
    return found


# --------------------------------------------------------------------------- reports


def describe(error: BaseException) -> str:
    """``"TypeName: first line of the message"`` (the type alone without a message); a retry
    library's give-up wrapper (tenacity's ``RetryError``) shows the error it wraps."""
    inner = _wrapped(error)
    if inner is not None:
        return f"{type(error).__name__}: {describe(inner)}"
    text = str(error).strip().partition("\n")[0]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _wrapped(error: BaseException) -> BaseException | None:
    """The last error inside a tenacity ``RetryError`` (its ``last_attempt`` future)."""
    last = getattr(error, "last_attempt", None)
    exception = getattr(last, "exception", None)
    if not callable(exception):
        return None
    try:
        inner = exception(timeout=0)
    except Exception:  # noqa: BLE001 - not a finished future: nothing to show
        return None
    return inner if isinstance(inner, BaseException) and inner is not error else None


def retried(
    name: str,
    *,
    attempt: int,
    delay: float,
    error: BaseException | None = None,
    result: object = None,
    library: str = APP,
) -> None:
    """Report that ``name`` failed its ``attempt`` (from 1) with ``error`` (or returned a
    ``result`` it will not accept, when ``error`` is None) and will be retried after
    ``delay`` seconds: an :class:`~pytest_resilience.core.events.AppRetry` event. For a retry
    loop of the application's own; a no-op when nothing observes."""
    observation = current(library)
    if observation is not None:
        record_retry(
            observation, library, name, attempt=attempt, delay=delay, error=error, result=result
        )


def record_retry(
    observation: Observation,
    library: str,
    name: str,
    *,
    attempt: int,
    delay: float,
    error: BaseException | None,
    result: object = None,
) -> None:
    """Append the :class:`~pytest_resilience.core.events.AppRetry` of one retry to
    ``observation`` (what :mod:`faults.observe`'s hooks call)."""
    if error is None:
        text, category = f"result: {reprlib.repr(result)}", "result"
    else:
        text, category = describe(error), str(classify(error).category)
    observation.record(
        AppRetry(
            time=observation.clock.now(),
            source=name,
            library=library,
            attempt=attempt,
            delay=float(delay),
            error=text,
            category=category,
        )
    )


def fell_back(to: str, *, after: BaseException | str | None = None, source: str = APP) -> None:
    """Report that the application answered with its fallback ``to`` (a name: ``"canned"``,
    ``"cache"``) because of ``after``: the exception (or a reason); by default the one
    being handled, so call it in the ``except`` branch that falls back. Records a
    :class:`~pytest_resilience.core.events.FallbackUsed` (``step=to``, ``index=1``); a no-op
    when nothing observes."""
    observation = current()
    if observation is None:
        return
    if after is None:
        after = sys.exc_info()[1]
    _record_fallback(observation, to, after, source)


def _record_fallback(
    observation: Observation, to: str, after: BaseException | str | None, source: str
) -> None:
    reasons = () if after is None else (after if isinstance(after, str) else describe(after),)
    observation.record(
        FallbackUsed(time=observation.clock.now(), source=source, step=to, index=1, after=reasons)
    )


@overload
def fallback_point(to: F, /) -> F: ...
@overload
def fallback_point(to: str | None = None, /, *, source: str = APP) -> Callable[[F], F]: ...
def fallback_point(to: Any = None, /, *, source: str = APP) -> Any:
    """Mark a function (sync or async) that answers instead of the real thing: each call
    that returns is reported as :func:`fell_back` to ``to`` (default: the function's
    name), after the exception being handled when it was called::

        @fallback_point("canned")
        def canned_answer(prompt): ...

        try:
            return ask(prompt)
        except ConnectionError:
            return canned_answer(prompt)

    A call that raises is not a fallback that answered, and records nothing.
    """
    if callable(to):
        return _marked(to, to.__name__, source)
    if to is not None and not isinstance(to, str):
        raise TypeError(f"fallback_point takes a name or a function, not {to!r}")

    def decorate(fn: F) -> F:
        return _marked(fn, to if to is not None else fn.__name__, source)

    return decorate


def _marked(fn: F, to: str, source: str) -> F:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def amarked(*args: Any, **kwargs: Any) -> Any:
            observation = current()
            cause = sys.exc_info()[1] if observation is not None else None
            result = await fn(*args, **kwargs)
            if observation is not None and observation.is_open:
                _record_fallback(observation, to, cause, source)
            return result

        return amarked  # type: ignore[return-value]

    @functools.wraps(fn)
    def marked(*args: Any, **kwargs: Any) -> Any:
        observation = current()
        cause = sys.exc_info()[1] if observation is not None else None
        result = fn(*args, **kwargs)
        if observation is not None and observation.is_open:
            _record_fallback(observation, to, cause, source)
        return result

    return marked  # type: ignore[return-value]
