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

    and then the cap is applied again, after jitter: ``delay = min(cap, jittered)``
    (:mod:`pytest_resilience.core.backoff`, whose names are importable from here too).
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
``clock.now()``. With ``outcomes=True`` (and a journal) every call also ends with a
``CallSucceeded`` (its duration on the clock, its attempts) or a ``CallFailed`` (duration,
category, severity); such a policy reads the clock before each call, one without pays
nothing. ``on_retry``, if given, is called with a frozen :class:`RetryDetails` just
before each wait; what it raises propagates.

Spans (only with a ``journal``): each call through ``call``, ``acall`` or the decorator is a
span ``retry:<name>`` (:mod:`pytest_resilience.core.trace`), a child of the span it is made
in, and its events and everything its attempts record carry that span's ids. The loop
form opens none: its events carry the ids of the span around the loop.

The first attempt costs a ``try`` around the call (no clock read, no scope, no allocation)
unless a budget is set. What happens after a failure is decided by one :class:`_Run` per
retried call (:mod:`pytest_resilience.core.retry_run`), which also drives the loop form.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from .backoff import Backoff, Jitter
from .cancel import CancelScope, current_scope
from .classify import classify
from .clock import Clock, SystemClock
from .errors import ExceptionFilter, exception_filter
from .retry_run import Attempt, RetryDetails, _Attempts, _Run
from .seeding import default_rng
from .trace import span

if TYPE_CHECKING:
    import random
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator

    from .classify import Classifier
    from .journal import Journal

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
    outcomes: bool = False  # with a journal: record each call's outcome and duration
    # derived once, for the failure path: see __post_init__
    _types: tuple[type[BaseException], ...] | None = field(init=False, repr=False)
    _match: Callable[[BaseException], bool] = field(init=False, repr=False)
    _no_wait: bool = field(init=False, repr=False)
    _quiet: bool = field(init=False, repr=False)
    _fast: bool = field(init=False, repr=False)
    _scratch: bool = field(init=False, repr=False)  # every call is a _Run from its start
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
        # either one zero: every wait is 0 (Backoff.delay gives 0 then too, only slower)
        object.__setattr__(self, "_no_wait", 0.0 in (self.backoff.base, self.backoff.cap))
        object.__setattr__(self, "_quiet", self.journal is None and self.on_retry is None)
        fast = self._quiet and self._no_wait and types is not None
        object.__setattr__(self, "_fast", fast and self.budget is None and self.classifier is None)
        timed = self.outcomes and self.journal is not None
        object.__setattr__(self, "_scratch", self.budget is not None or timed)

    def with_(self, **changes: Any) -> Retry:
        """A copy with some fields changed: ``retry.with_(attempts=5)``."""
        return dataclasses.replace(self, **changes)

    # -------------------------------------------------------------------------- sync

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` under this policy. Raises ``RetryError`` on giving up."""
        if self.journal is not None:  # a span per call, from a run made at once
            with span(f"retry:{self.name or _name_of(fn)}", self.journal):
                return self._resume(fn, args, kwargs, self.name)
        if not self._scratch:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the policy decides; it re-raises what `on` rejects
                if self._fast:
                    return self._retry_at_once(
                        fn,
                        args,
                        kwargs,
                        self.name,  # pragma: no mutate - unread: no journal, no hook
                        exc,
                    )
                return self._resume(fn, args, kwargs, self.name, exc)
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
        which decides with the full rules from the same attempt on.

        Kept apart from :meth:`_resume` for speed: a call that fails twice costs 45% more
        through ``_resume`` (1.44 against 0.99 µs). The events' source is never read here,
        nor in the run it hands on to: such a policy has no journal and no hook."""
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
                # no mutate: ``break`` hands the same failure to _resume, which decides alike
                continue  # pragma: no mutate
            del exc  # see _resume
            if on_result is None or not on_result(result):
                return result
            return self._resume(
                fn,
                args,
                kwargs,
                source,  # pragma: no mutate - unread: no journal, no hook
                rejected=result,
                attempt=attempt,
            )
        return self._resume(
            fn,
            args,
            kwargs,
            source,  # pragma: no mutate - unread: no journal, no hook
            exc,
            attempt=attempt,
        )

    def _resume(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        source: str,
        exc: Exception | None = None,
        *,
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
                    if run.start is not None:
                        run.succeeded()
                    return result
                delay = run.rejected(result)
            run.pause(delay)

    # ------------------------------------------------------------------------- async

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` under this policy. Raises ``RetryError`` on giving up."""
        if self.journal is not None:  # a span per call, from a run made at once
            with span(f"retry:{self.name or _name_of(fn)}", self.journal):
                return await self._aresume(fn, args, kwargs, self.name)
        if not self._scratch:
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the policy decides; it re-raises what `on` rejects
                return await self._aresume(fn, args, kwargs, self.name, exc)
            if self.on_result is None or not self.on_result(result):
                return result
            return await self._aresume(fn, args, kwargs, self.name, rejected=result)
        return await self._aresume(fn, args, kwargs, self.name)

    async def _aresume(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        source: str,
        exc: Exception | None = None,
        *,
        rejected: Any = _PENDING,
    ) -> T:
        """:meth:`_resume`, awaiting the attempts and the waits."""
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
                    if run.start is not None:
                        run.succeeded()
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
        budgeted = self._scratch  # a budget, or outcomes to time: a _Run from the start
        # The policy is immutable, so the fast path is chosen once, here. The wrappers repeat
        # the first attempt of call() and acall(): delegating to them doubles what a
        # successful call costs (73 -> 158 ns sync, 152 -> 276 ns async).
        journal = self.journal
        if journal is not None:
            return self._traced(fn, source, journal)
        if inspect.iscoroutinefunction(fn):
            aresume = self._aresume

            @functools.wraps(fn)
            async def retried_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                if budgeted:
                    return await aresume(fn, args, kwargs, source)
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - the policy decides; it re-raises what `on` rejects
                    return await aresume(fn, args, kwargs, source, exc)
                if on_result is None or not on_result(result):
                    return result
                return await aresume(fn, args, kwargs, source, rejected=result)

            return retried_async

        resume = self._resume
        # no mutate: _resume decides alike from the same failure, only slower (the property
        # tests check that the two paths decide the same)
        after_failure = self._retry_at_once if self._fast else resume  # pragma: no mutate

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

    def _traced(self, fn: Callable[P, Any], source: str, journal: Journal) -> Callable[P, Any]:
        """The decorator's wrapper with a journal: a span per call, from a run made at once."""
        name = f"retry:{source}"
        if inspect.iscoroutinefunction(fn):
            aresume = self._aresume

            @functools.wraps(fn)
            async def traced_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                with span(name, journal):
                    return await aresume(fn, args, kwargs, source)

            return traced_async

        resume = self._resume

        @functools.wraps(fn)
        def traced(*args: P.args, **kwargs: P.kwargs) -> Any:
            with span(name, journal):
                return resume(fn, args, kwargs, source)

        return traced

    # ----------------------------------------------------------------------- loop form

    def __iter__(self) -> Iterator[Attempt]:
        """``for attempt in retry: with attempt: ...`` -- retry a block of code."""
        return _Attempts(_Run(self, self.name or "<block>"))

    def __aiter__(self) -> AsyncIterator[Attempt]:
        """``async for attempt in retry: async with attempt: ...`` -- the async loop form."""
        return _Attempts(_Run(self, self.name or "<block>"))
