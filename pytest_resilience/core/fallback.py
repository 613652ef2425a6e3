"""Fallback chains: try a list of ways to answer, in order, until one works.

::

    answer = Fallback(
        "answer",
        [
            ("daemon", daemon.generate),                        # the chain's own on= / reject=
            FallbackStep("direct", llama.generate, on=BackendError),  # a step with its own rules
            ("static", lambda prompt: "The model is resting; try again soon."),
        ],
        on=(DaemonUnavailable, DeadlineExceeded),              # required: what a failure is
        reject=result_is_empty,                                 # None or "" is a failure too
        journal=journal,
    )
    text = answer(prompt)              # or: await answer.acall(prompt)

Each step is called with the chain's arguments. A step *fails* when it raises an exception
that its ``on`` filter matches, or returns a result that its ``reject`` predicate refuses;
the chain then moves on to the next step. Any other exception is re-raised unchanged at
once: a caller's bug is not a reason to fall back. So are
:class:`~pytest_resilience.core.errors.Cancelled` and
:class:`~pytest_resilience.core.errors.HangDetected` (``BaseException`` subclasses, never a
failure whatever ``on`` says): no later step runs and nothing is journaled. Between steps
the current cancel scope is checked, so an expired deadline stops the chain instead of
trying every step. The
predicates of :mod:`pytest_resilience.core.retry` serve as ``reject``: ``result_is_none`` and
``result_is_empty`` (None, blank text, empty containers). Calls return ``Any``: a chain
mixes functions, so annotate the result where you use it.

Journal: when a step other than the first answers, a
:class:`~pytest_resilience.core.events.FallbackUsed` event names it and says why each earlier step
did not (``"daemon: DaemonUnavailable: refused"``, ``"direct: result None"``). When every
step fails, a :class:`FallbackExhausted` event lists the same reasons and
:class:`~pytest_resilience.core.errors.FallbackError` is raised, chained from the last exception
seen. A first step that answers records nothing. With a journal, each call is a span
``fallback:<name>`` (:mod:`pytest_resilience.core.trace`) that its steps run in.

The cached answer: a :class:`CachedStep` in the chain answers with the last good answer
to the same arguments, from a :class:`~pytest_resilience.core.cache.ResponseCache`::

    Fallback("answer", [("model", llama.generate), CachedStep(cache), ("static", resting)],
             on=BackendError, journal=journal)

Each text answer of a step before it is stored in the cache under the key of the call's
arguments (``key(*args, **kwargs)``; default: :func:`~pytest_resilience.core.cache.request_key`
of the arguments and the chain's name). The step itself answers with the cached text, or
fails with :class:`~pytest_resilience.core.cache.CacheMiss` (``on`` is always that), so
the chain moves on to the template. When it answers, ``FallbackUsed`` names it as any step,
and the cache journals its ``CacheHit``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .cache import CacheMiss, request_key
from .cancel import check_cancelled
from .clock import Clock, SystemClock
from .errors import FallbackError, exception_filter
from .events import Event, FallbackUsed, event_maker
from .trace import span

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .cache import ResponseCache
    from .errors import ExceptionFilter
    from .journal import Journal

__all__ = [
    "CachedStep",
    "Fallback",
    "FallbackExhausted",
    "FallbackStep",
]


_fallback_used = event_maker(FallbackUsed)


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackExhausted(Event):
    """Every step of a fallback chain failed; ``failures`` says why, step by step."""

    kind: ClassVar[str] = "fallback.exhausted"
    failures: tuple[str, ...] = ()


def _accept_all(result: object) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class FallbackStep:
    """One way to answer. ``on`` and ``reject`` default to the chain's when left ``None``.

    ``fn`` may be a plain function or, for :meth:`Fallback.acall`, a coroutine function.
    """

    name: str
    fn: Callable[..., Any]
    on: ExceptionFilter | None = None
    reject: Callable[[Any], bool] | None = None


@dataclass(frozen=True, slots=True)
class CachedStep:
    """The last good answer to the same arguments, from ``cache`` (see the module docs).

    ``key`` turns the chain's arguments into a cache key (None: the arguments and the
    chain's name, through :func:`~pytest_resilience.core.cache.request_key`).
    """

    cache: ResponseCache
    key: Callable[..., str] | None = None
    name: str = "cache"


_fallback_exhausted = event_maker(FallbackExhausted)  # its __init__ stamps the span's ids too


class _Resolved:
    """A step with its filters compiled; built once, when the chain is."""

    __slots__ = ("fn", "is_failure", "name", "rejects")

    def __init__(
        self, step: FallbackStep, on: ExceptionFilter, reject: Callable[[Any], bool]
    ) -> None:
        self.name = step.name
        self.fn = step.fn
        self.is_failure = exception_filter(step.on if step.on is not None else on)[1]
        self.rejects = step.reject if step.reject is not None else reject


def _lookup(cache: ResponseCache, key: Callable[..., str]) -> Callable[..., str]:
    """The cached step's function: the cached answer to the arguments, or ``CacheMiss``."""

    def cached_answer(*args: Any, **kwargs: Any) -> str:
        value = cache.get(key(*args, **kwargs))
        if value is None:
            raise CacheMiss(f"no answer cached for this request in {cache.name!r}")
        return value

    return cached_answer


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Fallback:
    """An ordered fallback chain; call it like the functions it wraps.

    ``steps`` are :class:`FallbackStep` objects or ``(name, fn)`` pairs. ``on`` (required: there is
    no "every exception" default) is an exception class, a tuple of them or a predicate;
    ``reject`` refuses results (default: accept every result). Raises ``ValueError`` for an
    empty chain or duplicate step names, ``TypeError`` for a bad ``on``.
    """

    def __init__(
        self,
        name: str,
        steps: Iterable[FallbackStep | CachedStep | tuple[str, Callable[..., Any]]],
        *,
        on: ExceptionFilter,
        reject: Callable[[Any], bool] | None = None,
        clock: Clock | None = None,
        journal: Journal | None = None,
    ) -> None:
        given: list[FallbackStep] = []
        self._cache: tuple[int, ResponseCache, Callable[..., str]] | None = None
        for index, step in enumerate(steps):
            if isinstance(step, CachedStep):
                if self._cache is not None:
                    raise ValueError(f"fallback chain {name!r} has more than one CachedStep")
                key = step.key or (lambda *a, **kw: request_key(list(a), kw, model=name))
                self._cache = (index, step.cache, key)
                given.append(FallbackStep(step.name, _lookup(step.cache, key), on=CacheMiss))
            else:
                given.append(step if isinstance(step, FallbackStep) else FallbackStep(*step))
        if not given:
            raise ValueError(f"fallback chain {name!r} needs at least one step")
        names = [s.name for s in given]
        if len(set(names)) != len(names):
            raise ValueError(f"fallback chain {name!r} has duplicate step names: {names}")
        self.name = name
        self._steps = tuple(_Resolved(s, on, reject or _accept_all) for s in given)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.journal = journal

    @property
    def steps(self) -> tuple[str, ...]:
        """The step names, in order."""
        return tuple(s.name for s in self._steps)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the steps in order; return the first accepted result.

        Raises :class:`~pytest_resilience.core.errors.FallbackError` when every step fails,
        ``TypeError`` if a step returns an awaitable (use :meth:`acall`), and re-raises
        unchanged any exception that the failing step's ``on`` does not match.
        """
        if self.journal is not None:
            with span(f"fallback:{self.name}", self.journal):
                return self._run(args, kwargs)
        return self._run(args, kwargs)

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        tried = _Tried()
        for index, step in enumerate(self._steps):
            if index:
                check_cancelled()
            try:
                result = step.fn(*args, **kwargs)
            except Exception as exc:
                if not step.is_failure(exc):
                    raise
                tried.raised(step.name, exc)
                continue
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never awaited: close it quietly, no RuntimeWarning
                raise TypeError(
                    f"step {step.name!r} of fallback chain {self.name!r} is async: "
                    "use `await chain.acall(...)`"
                )
            if step.rejects(result):
                tried.rejected(step.name, result)
                continue
            return self._answered(index, tried, result, args, kwargs)
        raise self._exhausted(tried) from tried.last_exc

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """The async form of ``__call__``: steps may be sync or async functions."""
        if self.journal is not None:
            with span(f"fallback:{self.name}", self.journal):
                return await self._arun(args, kwargs)
        return await self._arun(args, kwargs)

    async def _arun(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        tried = _Tried()
        for index, step in enumerate(self._steps):
            if index:
                check_cancelled()
            try:
                result = step.fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                if not step.is_failure(exc):
                    raise
                tried.raised(step.name, exc)
                continue
            if step.rejects(result):
                tried.rejected(step.name, result)
                continue
            return self._answered(index, tried, result, args, kwargs)
        raise self._exhausted(tried) from tried.last_exc

    def _answered(
        self,
        index: int,
        tried: _Tried,
        result: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        cache = self._cache
        if cache is not None and index < cache[0] and isinstance(result, str):
            cache[1].put(cache[2](*args, **kwargs), result)
        if index and self.journal is not None:
            self.journal.append(
                _fallback_used(
                    time=self.clock.now(),
                    source=self.name,
                    step=self._steps[index].name,
                    index=index,
                    after=tuple(tried.reasons),
                )
            )
        return result

    def _exhausted(self, tried: _Tried) -> FallbackError:
        if self.journal is not None:
            self.journal.append(
                _fallback_exhausted(
                    time=self.clock.now(), source=self.name, failures=tuple(tried.reasons)
                )
            )
        return FallbackError(self.name, tried.failures)

    def __repr__(self) -> str:
        return f"<Fallback {self.name!r} steps={list(self.steps)}>"


class _Tried:
    """What the failed steps of one call did: for FallbackError and for the journal."""

    __slots__ = ("failures", "last_exc", "reasons")

    def __init__(self) -> None:
        self.failures: list[tuple[str, BaseException | None]] = []
        self.reasons: list[str] = []
        self.last_exc: BaseException | None = None

    def raised(self, name: str, exc: BaseException) -> None:
        self.failures.append((name, exc))
        message = str(exc)
        what = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        self.reasons.append(f"{name}: {what}")
        self.last_exc = exc

    def rejected(self, name: str, result: object) -> None:
        self.failures.append((name, None))
        self.reasons.append(f"{name}: result {_short(result)}")
