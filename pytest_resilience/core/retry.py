"""Retry a call that fails transiently, with exponential backoff, jitter and a time budget.

A :class:`Retry` is an immutable policy: build it once, use it everywhere::

    retry = Retry(
        on=(ConnectionError, TimeoutError),       # required: what is worth another try
        attempts=4,                               # counts the first call
        backoff=Backoff(base=0.5, factor=2, cap=10, jitter="full"),
        budget=30.0,                              # seconds for everything, sleeps included
        on_result=result_is_empty,                # also retry a None or empty answer
        clock=clock, journal=journal,
    )

    @retry                                        # sync or async functions
    def ask(prompt: str) -> str: ...

    answer = retry.call(client.generate, prompt)  # or: await retry.acall(agenerate, prompt)

    for attempt in retry:                         # a block of code; `async for` works too
        with attempt:                             # (`async with attempt` inside `async for`)
            answer = client.generate(prompt)

What is retried
    ``on=`` is required and has no default: an exception class, a tuple of them, or a
    predicate ``(exc) -> bool``. :func:`is_retryable` retries what ``classify()`` calls
    retryable. ``on_result=`` is a predicate on the return value; :func:`result_is_none` and
    :func:`result_is_empty` cover the common cases. Only an ``Exception`` is ever retried:
    :class:`~pytest_resilience.core.errors.Cancelled`,
    :class:`~pytest_resilience.core.errors.HangDetected`, ``asyncio.CancelledError`` and
    ``KeyboardInterrupt`` are ``BaseException`` subclasses that propagate unchanged from the
    attempt that raised them, whatever ``on`` says, and leave no event in the journal. Nothing
    is retried either once a cancel scope around the retry is cancelled or past its deadline.
    An exception that ``on`` rejects propagates unchanged after the first try.

How long it waits
    Before retry *n* (after the *n*-th attempt failed), with ``d = min(cap, base * factor**(n-1))``
    (overflow-safe: any attempt number, even 10,000, gives ``cap``):

    =================  ==============================================================
    ``"none"``         ``d``
    ``"full"``         ``U(0, d)``
    ``"equal"``        ``d/2 + U(0, d/2)``
    ``"decorrelated"`` ``min(cap, U(base, 3 * prev))``, ``prev`` the previous delay
                       (``base`` at first); ignores ``factor``
    ``"proportional"`` ``d * U(0.8, 1.2)``
    =================  ==============================================================

    and then the cap is applied again, after jitter: ``delay = min(cap, jittered)``.
    When the failure's classification carries a Retry-After hint (``RateLimited(retry_after=2)``,
    an HTTP 429 with a ``Retry-After`` header), the wait is at least the hint, even above the
    cap. A zero delay makes no sleep call at all.

The budget
    ``budget`` seconds cover all attempts and sleeps. Each attempt runs inside a
    :func:`~pytest_resilience.core.cancel.deadline` scope of what is left of the budget, so
    cooperative work in flight stops when it runs out (``async`` attempts are cancelled at the
    deadline). The retry gives up at once, without sleeping in vain, when a wait (backoff or
    Retry-After hint) would use up everything that is left, or when nothing is left.

Giving up
    raises :class:`~pytest_resilience.core.errors.RetryError` with ``attempts``, ``last`` (the last
    exception, also its ``__cause__``), ``reason`` (``"attempts"`` or ``"budget"``) and
    ``result`` (the last rejected result, when the last attempt returned one). With
    ``reraise=True`` the last exception itself is raised instead (a rejected result still
    raises ``RetryError``).

Events (only with a ``journal``; the success path records nothing): ``AttemptStarted`` from
the second attempt on, ``AttemptFailed``, ``RetryScheduled``, ``GaveUp`` (reason
``"attempts"``, ``"budget"``, ``"not retryable"`` or ``"cancelled"``), all stamped with
``clock.now()``. ``on_retry``, if given, is called with a frozen :class:`RetryDetails` just
before each wait; what it raises propagates.

The first attempt costs a ``try`` around the call (no clock read, no scope, no allocation)
unless a budget is set.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import math
import reprlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar, overload

from .cancel import CancelScope, current_scope
from .clock import Clock, SystemClock
from .errors import (
    DeadlineExceeded,
    ExceptionFilter,
    RetryError,
    classify,
    exception_filter,
)
from .events import AttemptFailed, AttemptStarted, GaveUp, RetryScheduled
from .seeding import default_rng

if TYPE_CHECKING:
    import random
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
    from types import TracebackType

    from .errors import Classification, Classifier
    from .events import Journal

__all__ = [
    "Attempt",
    "Backoff",
    "ExceptionFilter",
    "Jitter",
    "Retry",
    "RetryDetails",
    "is_retryable",
    "result_is_empty",
    "result_is_none",
]

P = ParamSpec("P")
T = TypeVar("T")

#: What ``on=`` accepts: an exception class, a tuple of them, or a predicate.

#: Less budget than this counts as none: no attempt can run in it.
_NO_TIME = 1e-6


# ------------------------------------------------------------------------------ backoff


class Jitter(enum.StrEnum):
    """How the exponential delay ``d`` is randomised (formulas in the module docstring)."""

    NONE = "none"  # d
    FULL = "full"  # U(0, d)
    EQUAL = "equal"  # d/2 + U(0, d/2)
    DECORRELATED = "decorrelated"  # min(cap, U(base, 3 * prev))
    PROPORTIONAL = "proportional"  # d * U(0.8, 1.2)


# module constants: enum member lookups on the class are slow on the retry path
_NONE, _FULL, _EQUAL, _DECORRELATED = Jitter.NONE, Jitter.FULL, Jitter.EQUAL, Jitter.DECORRELATED


@dataclass(frozen=True, slots=True)
class Backoff:
    """The shape of the waits between attempts: ``base * factor**(n-1)``, jittered, capped.

    Raises ``ValueError`` for a negative or non-finite ``base``/``cap``, a ``factor`` that is
    not positive and finite, or an unknown jitter name.
    """

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    jitter: Jitter | str = Jitter.FULL

    def __post_init__(self) -> None:
        for name in ("base", "cap"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Backoff {name} must be finite and >= 0, got {value!r}")
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise ValueError(f"Backoff factor must be finite and > 0, got {self.factor!r}")
        try:
            jitter = Jitter(self.jitter)
        except ValueError:
            known = ", ".join(j.value for j in Jitter)
            raise ValueError(f"unknown jitter {self.jitter!r}; known: {known}") from None
        object.__setattr__(self, "jitter", jitter)
        # floats, so that factor**n overflows into OverflowError instead of a giant int
        for name in ("base", "factor", "cap"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def fixed(cls, seconds: float) -> Backoff:
        """The same wait every time, no jitter. ``Backoff.fixed(0)`` never sleeps."""
        return cls(base=seconds, factor=1.0, cap=seconds, jitter=Jitter.NONE)

    def exponential(self, n: int) -> float:
        """``min(cap, base * factor**(n-1))`` for retry ``n`` (from 1), safe for any ``n``."""
        if self.base == 0.0 or self.cap == 0.0:
            return 0.0
        try:
            d = self.base * self.factor ** (n - 1)
        except OverflowError:
            return self.cap
        return d if d < self.cap else self.cap  # also maps inf to cap

    def delay(self, n: int, rng: random.Random, prev: float | None = None) -> float:
        """The wait before retry ``n`` (from 1). ``prev`` is the previous delay (decorrelated)."""
        if self.base == 0.0 or self.cap == 0.0:  # every strategy gives 0: skip the rng
            return 0.0
        jitter = self.jitter
        if jitter is _DECORRELATED:
            low = self.base
            high = 3.0 * (low if prev is None else prev)
            return min(self.cap, rng.uniform(low, high) if high > low else low)
        d = self.exponential(n)
        if d == 0.0 or jitter is _NONE:
            return d
        if jitter is _FULL:
            value = rng.uniform(0.0, d)
        elif jitter is _EQUAL:
            value = d / 2 + rng.uniform(0.0, d / 2)
        else:  # PROPORTIONAL
            value = d * rng.uniform(0.8, 1.2)
        return min(self.cap, value)


# ------------------------------------------------------------------------------ predicates


def is_retryable(exc: BaseException) -> bool:
    """``on=`` predicate: retry what the default ``classify()`` table calls retryable.

    For a custom table: ``on=lambda exc: my_classifier(exc).retryable``.
    """
    return classify(exc).retryable


def result_is_none(result: object) -> bool:
    """``on_result=`` predicate: the call returned ``None`` (the model answered nothing)."""
    return result is None


def result_is_empty(result: object) -> bool:
    """``on_result=`` predicate: ``None``, a blank string, or any other empty sized value."""
    if result is None:
        return True
    if isinstance(result, str):
        return not result.strip()
    try:
        return len(result) == 0  # type: ignore[arg-type]
    except TypeError:  # not sized: a real answer
        return False


def _name_of(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__qualname__)


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """What ``on_retry`` receives just before a wait."""

    source: str  # the policy's name, or the decorated function's qualified name
    attempt: int  # the attempt that failed, from 1
    delay: float  # the wait before the next attempt
    exception: BaseException | None  # None when the result was rejected
    result: object = None  # the rejected result, if that was the failure


# ------------------------------------------------------------------------------- policy


class _Pending:
    """Sentinel: no rejected result to resume from."""


_PENDING: Any = _Pending()


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Retry:
    """An immutable retry policy; see the module docstring for the rules.

    Raises ``ValueError`` for ``attempts < 1`` or a budget that is not positive and finite,
    ``TypeError`` for an ``on=`` that is neither exception classes nor a predicate.
    """

    on: ExceptionFilter
    attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    budget: float | None = None
    on_result: Callable[[Any], bool] | None = None
    reraise: bool = False
    classifier: Classifier | None = None  # for Retry-After hints and event categories
    clock: Clock = field(default_factory=SystemClock)
    rng: random.Random | None = None  # default: the seed scope's generator for this name
    journal: Journal | None = None
    on_retry: Callable[[RetryDetails], None] | None = None
    name: str = ""  # the events' source; default: the function's qualified name
    # derived once, for the failure path: see __post_init__
    _types: tuple[type[BaseException], ...] | None = field(init=False, repr=False)
    _match: Callable[[BaseException], bool] = field(init=False, repr=False)
    _no_wait: bool = field(init=False, repr=False)
    _quiet: bool = field(init=False, repr=False)
    _fast: bool = field(init=False, repr=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"attempts must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(
                f"attempts counts the first call and must be >= 1, got {self.attempts}"
            )
        if self.budget is not None and not (math.isfinite(self.budget) and self.budget > 0):
            raise ValueError(f"budget must be positive and finite (or None), got {self.budget!r}")
        if not isinstance(self.backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff, got {self.backoff!r}")
        types, match = exception_filter(self.on)
        rng = self.rng if self.rng is not None else default_rng(f"retry:{self.name}")
        object.__setattr__(self, "_rng", rng)
        object.__setattr__(self, "_types", types)
        object.__setattr__(self, "_match", match)
        object.__setattr__(self, "_no_wait", self.backoff.base == 0.0 or self.backoff.cap == 0.0)
        object.__setattr__(self, "_quiet", self.journal is None and self.on_retry is None)
        fast = self._quiet and self._no_wait and types is not None
        object.__setattr__(self, "_fast", fast and self.budget is None and self.classifier is None)

    def evolve(self, **changes: Any) -> Retry:
        """A copy with some fields changed: ``retry.evolve(attempts=5)``."""
        return dataclasses.replace(self, **changes)

    # -------------------------------------------------------------------------- sync

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` under this policy. Raises ``RetryError`` on giving up."""
        if self.budget is None:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the policy decides; it re-raises what `on` rejects
                if self._fast:
                    return self._retry_at_once(fn, args, kwargs, self.name, exc)
                return self._resume(fn, args, kwargs, self.name, exc=exc)
            if self.on_result is None or not self.on_result(result):
                return result
            return self._resume(fn, args, kwargs, self.name, rejected=result)
        return self._resume(fn, args, kwargs, self.name)

    def _retry_at_once(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        source: str,
        exc: Exception,
    ) -> T:
        """The common case, fast: no budget, journal, hook or classifier, zero wait, ``on``
        given as classes. While a failure is one that :meth:`_Run.failed` would retry at once
        (it matches ``on``, attempts are left, no scope is around, it carries no Retry-After
        hint), try again here; anything else goes to :meth:`_resume`,
        which decides with the full rules from the same attempt on."""
        types, attempts, on_result = self._types, self.attempts, self.on_result
        assert types is not None
        attempt = 1
        while (
            attempt < attempts
            and isinstance(exc, types)
            and current_scope() is None
            and getattr(exc, "retry_after", None) is None
            and getattr(exc, "response", None) is None
        ):
            attempt += 1
            try:
                result = fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - decided by the loop condition or _resume
                exc = e
                continue
            del exc  # see _resume
            if on_result is None or not on_result(result):
                return result
            return self._resume(fn, args, kwargs, source, rejected=result, attempt=attempt)
        return self._resume(fn, args, kwargs, source, exc=exc, attempt=attempt)

    def _resume(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        source: str,
        *,
        exc: Exception | None = None,
        rejected: Any = _PENDING,
        attempt: int = 1,
    ) -> T:
        """Go on from a failed attempt (by default the first; with a budget, from scratch)."""
        run = _Run(self, source or _name_of(fn), attempt)
        if exc is not None:
            delay = run.failed(exc)
            if delay is None:
                raise exc
            # An exception left in a local when the function returns keeps its traceback's
            # frames alive, and CPython then copies this frame out: ~0.5 us per call.
            del exc
            run.pause(delay)
        elif rejected is not _PENDING:
            run.pause(run.rejected(rejected))
        on_result = self.on_result
        while True:
            try:
                if run.end is None:
                    result = fn(*args, **kwargs)
                else:
                    with CancelScope(run.left(), clock=self.clock, name="retry budget"):
                        result = fn(*args, **kwargs)
            except Exception as e:
                delay = run.failed(e)
                if delay is None:
                    raise
            else:
                if on_result is None or not on_result(result):
                    return result
                delay = run.rejected(result)
            run.pause(delay)

    # ------------------------------------------------------------------------- async

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` under this policy. Raises ``RetryError`` on giving up."""
        if self.budget is None:
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the policy decides; it re-raises what `on` rejects
                return await self._aresume(fn, args, kwargs, self.name, exc=exc)
            if self.on_result is None or not self.on_result(result):
                return result
            return await self._aresume(fn, args, kwargs, self.name, rejected=result)
        return await self._aresume(fn, args, kwargs, self.name)

    def _resume_after(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        source: str,
        exc: Exception,
    ) -> T:
        return self._resume(fn, args, kwargs, source, exc=exc)

    async def _aresume(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        source: str,
        *,
        exc: Exception | None = None,
        rejected: Any = _PENDING,
    ) -> T:
        run = _Run(self, source or _name_of(fn))
        if exc is not None:
            delay = run.failed(exc)
            if delay is None:
                raise exc
            del exc  # see _resume
            await run.apause(delay)
        elif rejected is not _PENDING:
            await run.apause(run.rejected(rejected))
        on_result = self.on_result
        while True:
            try:
                if run.end is None:
                    result = await fn(*args, **kwargs)
                else:
                    # async with: the task itself is cancelled when the budget runs out
                    async with CancelScope(run.left(), clock=self.clock, name="retry budget"):
                        result = await fn(*args, **kwargs)
            except Exception as e:
                delay = run.failed(e)
                if delay is None:
                    raise
            else:
                if on_result is None or not on_result(result):
                    return result
                delay = run.rejected(result)
            await run.apause(delay)

    # --------------------------------------------------------------------- decorator

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a function or a coroutine function so that every call is retried."""
        source = self.name or _name_of(fn)
        on_result = self.on_result
        budgeted = self.budget is not None
        # The policy is immutable, so the fast path is chosen once, here.
        if inspect.iscoroutinefunction(fn):
            aresume = self._aresume

            @functools.wraps(fn)
            async def retried_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                if budgeted:
                    return await aresume(fn, args, kwargs, source)
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - the policy decides; it re-raises what `on` rejects
                    return await aresume(fn, args, kwargs, source, exc=exc)
                if on_result is None or not on_result(result):
                    return result
                return await aresume(fn, args, kwargs, source, rejected=result)

            return retried_async

        resume = self._resume
        after_failure = self._retry_at_once if self._fast else self._resume_after

        @functools.wraps(fn)
        def retried(*args: P.args, **kwargs: P.kwargs) -> Any:
            if budgeted:
                return resume(fn, args, kwargs, source)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the policy decides; it re-raises what `on` rejects
                return after_failure(fn, args, kwargs, source, exc)
            if on_result is None or not on_result(result):
                return result
            return resume(fn, args, kwargs, source, rejected=result)

        return retried

    # ----------------------------------------------------------------------- loop form

    def __iter__(self) -> Iterator[Attempt]:
        """``for attempt in retry: with attempt: ...`` -- retry a block of code."""
        return _Attempts(_Run(self, self.name or "<block>"))

    def __aiter__(self) -> AsyncIterator[Attempt]:
        """``async for attempt in retry: async with attempt: ...`` -- the async loop form."""
        return _Attempts(_Run(self, self.name or "<block>"))


# --------------------------------------------------------------------------- one run


class _Run:
    """The state of one retried call: which attempt, the budget's end, the previous delay."""

    __slots__ = ("attempt", "end", "policy", "prev", "source")

    def __init__(self, policy: Retry, source: str, attempt: int = 1) -> None:
        self.policy = policy
        self.source = source
        self.attempt = attempt
        self.prev: float | None = None
        budget = policy.budget
        self.end = None if budget is None else policy.clock.now() + budget

    def left(self) -> float:
        assert self.end is not None
        return max(0.0, self.end - self.policy.clock.now())

    def failed(self, exc: Exception) -> float | None:
        """Decide after a failed attempt: the delay before the next one, or None to re-raise
        ``exc`` unchanged. Raises ``RetryError`` (from ``exc``) on giving up.

        Only ever sees an ``Exception``: ``Cancelled`` and ``HangDetected`` are not caught."""
        p = self.policy
        outer = current_scope()
        if outer is not None and (outer.cancelled or outer.expired):
            self._record(exc, None, "cancelled")
            return None
        types = p._types
        matched = isinstance(exc, types) if types is not None else p._match(exc)
        left = None if self.end is None else self.left()
        if left is not None and left <= _NO_TIME and (matched or isinstance(exc, DeadlineExceeded)):
            self._give_up(exc, None, "budget")
            return None
        if not matched:
            self._record(exc, None, "not retryable")
            return None
        if self.attempt >= p.attempts:
            self._give_up(exc, None, "attempts")
            return None
        delay = 0.0 if p._no_wait else self._backoff()
        # The default table only finds a Retry-After hint in exc.retry_after or exc.response:
        # skip the full classification (several regex searches) when neither is there.
        if (
            p.classifier is not None
            or getattr(exc, "retry_after", None) is not None
            or getattr(exc, "response", None) is not None
        ):
            hint = self._classify(exc).retry_after
            if hint is not None and hint > delay:
                delay = hint
        if left is not None and delay >= left:  # the wait would eat the rest of the budget
            self._give_up(exc, None, "budget")
            return None
        if not p._quiet:
            self._announce(delay, exc, None)
        return delay

    def rejected(self, result: object) -> float:
        """Like :meth:`failed`, for a result that ``on_result`` rejected."""
        p = self.policy
        if self.attempt >= p.attempts:
            self._give_up(None, result, "attempts")
        delay = self._backoff()
        if self.end is not None:
            left = self.left()
            if left <= _NO_TIME or delay >= left:
                self._give_up(None, result, "budget")
        if not p._quiet:
            self._announce(delay, None, result)
        return delay

    def _backoff(self) -> float:
        p = self.policy
        delay = p.backoff.delay(self.attempt, p._rng, self.prev)
        self.prev = delay
        return delay

    def _classify(self, exc: Exception) -> Classification:
        classifier = self.policy.classifier
        return classify(exc) if classifier is None else classifier(exc)

    def _announce(self, delay: float, exc: Exception | None, result: object) -> None:
        p = self.policy
        if p.journal is not None:
            now = p.clock.now()
            p.journal.append(self._failure_event(now, exc, result))
            p.journal.append(
                RetryScheduled(time=now, source=self.source, attempt=self.attempt + 1, delay=delay)
            )
        if p.on_retry is not None:
            p.on_retry(RetryDetails(self.source, self.attempt, delay, exc, result))

    def _give_up(self, exc: Exception | None, result: object, reason: str) -> None:
        """Record the end; return (so the caller re-raises ``exc``) or raise ``RetryError``."""
        self._record(exc, result, reason)
        if exc is not None and self.policy.reraise:
            return
        raise RetryError(self.attempt, exc, reason, result=result) from exc

    def _record(self, exc: Exception | None, result: object, reason: str) -> None:
        journal = self.policy.journal
        if journal is None:
            return
        now = self.policy.clock.now()
        failure = self._failure_event(now, exc, result)
        journal.append(failure)
        journal.append(
            GaveUp(
                time=now,
                source=self.source,
                attempts=self.attempt,
                error=failure.error,
                reason=reason,
            )
        )

    def _failure_event(self, now: float, exc: Exception | None, result: object) -> AttemptFailed:
        if exc is None:
            error, category = f"result: {reprlib.repr(result)}", "result"
        else:
            found = self._classify(exc)
            error, category = f"{type(exc).__name__}: {exc}", str(found.category)
        return AttemptFailed(
            time=now, source=self.source, attempt=self.attempt, error=error, category=category
        )

    def _started(self) -> None:
        policy = self.policy
        assert policy.journal is not None
        policy.journal.append(
            AttemptStarted(time=policy.clock.now(), source=self.source, attempt=self.attempt)
        )

    def pause(self, delay: float) -> None:
        """Wait ``delay`` (no sleep call at all for 0) and move on to the next attempt."""
        if delay > 0:
            self.policy.clock.sleep(delay)
        self.attempt += 1
        if self.policy.journal is not None:
            self._started()

    async def apause(self, delay: float) -> None:
        if delay > 0:
            await self.policy.clock.asleep(delay)
        self.attempt += 1
        if self.policy.journal is not None:
            self._started()


# ------------------------------------------------------------------------- loop form


class Attempt:
    """One attempt of the loop form; ``with attempt:`` (or ``async with``) runs it.

    Leaving the block with a retryable exception swallows it and lets the loop go on (after
    the wait); giving up raises ``RetryError`` (or re-raises, with ``reraise=True``) from the
    ``with`` statement. ``on_result`` does not apply here: the block has no result.
    """

    __slots__ = ("_delay", "_done", "_run", "_scope", "number")

    def __init__(self, run: _Run) -> None:
        self._run = run
        self.number = run.attempt
        self._scope: CancelScope | None = None
        self._delay: float | None = None  # set when the attempt failed and will be retried
        self._done = False

    def __repr__(self) -> str:
        return f"<Attempt {self.number} of {self._run.policy.attempts}>"

    def _open(self) -> CancelScope | None:
        if self._done:
            raise RuntimeError("an Attempt can be entered only once")
        self._done = True
        run = self._run
        if run.end is not None:
            self._scope = CancelScope(run.left(), clock=run.policy.clock, name="retry budget")
        return self._scope

    def _close(self, exc: BaseException | None) -> bool:
        if not isinstance(exc, Exception):  # success, Cancelled, HangDetected, ^C: not ours
            return False
        self._delay = self._run.failed(exc)
        return self._delay is not None

    def __enter__(self) -> Self:
        scope = self._open()
        if scope is not None:
            scope.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._scope is not None:
            self._scope.__exit__(exc_type, exc, tb)
        return self._close(exc)

    async def __aenter__(self) -> Self:
        scope = self._open()
        if scope is not None:
            await scope.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._scope is not None:
            try:
                await self._scope.__aexit__(exc_type, exc, tb)
            except DeadlineExceeded as expired:  # the scope turned our cancellation into this
                if self._close(expired):
                    return True
                raise
        return self._close(exc)


class _Attempts:
    """The iterator behind ``for attempt in retry`` and ``async for``."""

    __slots__ = ("_last", "_run")

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._last: Attempt | None = None

    def __iter__(self) -> Self:
        return self

    def __aiter__(self) -> Self:
        return self

    def _step(self) -> float | None:
        """The wait before the next attempt; None when the loop is over."""
        last = self._last
        if last is None:
            return 0.0
        return last._delay

    def __next__(self) -> Attempt:
        delay = self._step()
        if delay is None:
            raise StopIteration
        if self._last is not None:
            self._run.pause(delay)
        self._last = Attempt(self._run)
        return self._last

    async def __anext__(self) -> Attempt:
        delay = self._step()
        if delay is None:
            raise StopAsyncIteration
        if self._last is not None:
            await self._run.apause(delay)
        self._last = Attempt(self._run)
        return self._last
