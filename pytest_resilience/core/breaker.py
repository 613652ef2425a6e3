"""A circuit breaker: stop calling a dependency that keeps failing, and probe it to recover.

The state machine, the lock-free views it publishes and the call forms that read them are
one piece, kept in this one module; the trip and recovery policies are in
:mod:`pytest_resilience.core.breaker_policy`.

::

    breaker = CircuitBreaker(
        "daemon",
        on=(ConnectionError, TimeoutError),             # required: what counts as a failure
        trip=CountWindow(size=20, rate=0.5, min_calls=10),
        recovery=HalfOpen(after=30.0, probes=1, successes=2),
        slow_after=10.0,
        clock=clock,
        journal=journal,
    )
    answer = breaker.call(client.generate, prompt)      # or await breaker.acall(...), @breaker

States (:class:`State`)::

    closed ──trip──> open ──recovery.after elapsed──> half_open ──enough probe successes──> closed
                      ^                                   │
                      └──────────── a probe fails ─────────┘

    forced_open     force_open(): every call is rejected
    forced_closed   force_closed(): every call is admitted; counts go on, the breaker never trips
    disabled        disable(): every call is admitted and nothing is counted
    reset()         back to closed with empty counts

The open -> half_open move happens lazily, on the next call or state read: there is no timer
thread. Every manual action (``reset``, ``force_open``, ``force_closed``, ``disable``) clears
the counts and starts a new generation, even when the state does not change.

What counts (decided when a call ends, in this order):

- an exception that matches ``exclude`` counts as neither success nor failure, and so does
  a ``BaseException`` that is not an ``Exception`` whatever ``on`` says:
  :class:`~pytest_resilience.core.errors.Cancelled`,
  :class:`~pytest_resilience.core.errors.HangDetected`, ``asyncio.CancelledError``,
  ``KeyboardInterrupt``. A cancelled call says nothing about the dependency's health, and a
  hang is the test's missing timeout, not the dependency failing. It propagates unchanged,
  the counts and the state stay as they were, and a half-open probe slot it held is given
  back, so the next call can probe;
- an exception that matches ``on`` is a failure;
- any other exception is a success for the breaker (the dependency answered; the error is
  about the request) and is re-raised unchanged, like every exception;
- a call that would count as a success (it returned, or raised an exception outside ``on``)
  but took longer than ``slow_after`` seconds on the breaker's clock is a failure ("slow").

``on`` and ``exclude`` take an exception class, a tuple of classes, or a predicate
``(exc) -> bool``. ``on`` is required: there is no default, because "every exception" would
count a caller's own bugs against a healthy dependency.

Trip policies (in :mod:`pytest_resilience.core.breaker_policy`, importable from here too):
:class:`ConsecutiveFailures`, :class:`CountWindow` (failure rate over the last N calls) and
:class:`TimeWindow` (failure rate over the calls that ended in the last T seconds). Only
outcomes in the closed state (and forced_closed) feed the policy; in half_open a single
failure reopens the breaker.

Generations: each admission carries the generation of the state that admitted it. An outcome
that arrives after a transition (a call admitted while closed that ends after the breaker
opened, a probe that ends after a manual reset) is ignored: it cannot move the new state.

Threads: admission and outcome recording are short critical sections; no lock is held while
the protected call runs. In the closed state admission is a single lock-free attribute read,
and so is a success that changes nothing (no failure streak to clear, a full count window
without failures): the healthy path takes no lock at all. Rejection while open is lock-free
too until the recovery time is up.

Transition events are appended to the journal under the breaker's (re-entrant) lock, so the
journal shows them in the order they happened; rejection events are appended outside it.
A successful call in the closed state appends nothing, unless the breaker was made with
``outcomes=True`` and a journal: then each call's end is a ``CallSucceeded`` or a
``CallFailed`` (its duration on the clock; a failure's category and severity), and every
call reads the clock before it runs, as with ``slow_after``.

Errors: a rejected call raises :class:`~pytest_resilience.core.errors.CircuitOpenError` with
``breaker`` (the name), ``state`` and ``retry_after`` (seconds until the breaker half-opens;
0 when half-open but every probe slot is taken; ``None`` when forced open).
"""

from __future__ import annotations

import enum
import functools
import inspect
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, Self, TypeVar, overload

from .breaker_policy import (
    ConsecutiveFailures,
    CountWindow,
    HalfOpen,
    TimeWindow,
    TripPolicy,
    TripTracker,
)
from .classify import classify
from .clock import Clock, SystemClock
from .errors import CircuitOpenError, ExceptionFilter, exception_filter
from .events import BreakerTransition, CallFailed, CallRejected, CallSucceeded, event_maker

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine
    from types import TracebackType

    from .journal import Journal

__all__ = [
    "BreakerStats",
    "CircuitBreaker",
    "ConsecutiveFailures",
    "CountWindow",
    "ExceptionFilter",
    "HalfOpen",
    "Permit",
    "State",
    "TimeWindow",
    "TripPolicy",
    "TripTracker",
]

P = ParamSpec("P")
T = TypeVar("T")


class State(enum.StrEnum):
    """The states of a :class:`CircuitBreaker`; the values are what events and errors show."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"
    DISABLED = "disabled"


_CLOSED, _OPEN, _HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN
_FORCED_OPEN, _FORCED_CLOSED, _DISABLED = State.FORCED_OPEN, State.FORCED_CLOSED, State.DISABLED
# Tuples, not sets: membership is then an identity test, while hashing an enum member runs
# Python code.
# States that admit every call without a lock: admission is one read of ``_fast_gen``.
_ADMIT_ALL = (_CLOSED, _FORCED_CLOSED, _DISABLED)
# States whose outcomes feed the trip policy.
_COUNTING = (_CLOSED, _FORCED_CLOSED)
_INF = float("inf")

# Outcomes of one call, as the breaker counts them.
_SUCCESS, _FAILURE, _SLOW, _IGNORED = 0, 1, 2, 3

_rejected = event_maker(CallRejected)
_transitioned = event_maker(BreakerTransition)
_succeeded = event_maker(CallSucceeded)
_failed = event_maker(CallFailed)


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A consistent snapshot of a breaker (see :meth:`CircuitBreaker.stats`)."""

    state: State
    generation: int
    calls: int  # outcomes in the trip policy's window
    failures: int
    probes_in_flight: int
    probe_successes: int
    retry_after: float | None  # while open: seconds until half-open


# ------------------------------------------------------------------------------- breaker


class CircuitBreaker:
    """A thread-safe circuit breaker; see the module docstring for the rules.

    ``on`` (required) and ``exclude`` say which exceptions count as failures and which count
    as nothing; ``trip`` says when a closed breaker opens (default ``ConsecutiveFailures(5)``);
    ``recovery`` is a :class:`HalfOpen` or just its ``after`` in seconds; ``slow_after``
    makes calls slower than that a failure. Raises ``ValueError``/``TypeError`` on bad
    settings.
    """

    def __init__(
        self,
        name: str,
        *,
        on: ExceptionFilter,
        trip: TripPolicy | None = None,
        recovery: HalfOpen | float = 30.0,
        exclude: ExceptionFilter = (),
        slow_after: float | None = None,
        clock: Clock | None = None,
        journal: Journal | None = None,
        outcomes: bool = False,
    ) -> None:
        if slow_after is not None and slow_after < 0:
            raise ValueError(f"slow_after must be >= 0, got {slow_after}")
        self.name = name
        self.trip: TripPolicy = trip if trip is not None else ConsecutiveFailures(5)
        self.recovery = recovery if isinstance(recovery, HalfOpen) else HalfOpen(after=recovery)
        self.slow_after = slow_after
        self.clock = clock if clock is not None else SystemClock()
        self.journal = journal
        self._outcomes = outcomes and journal is not None  # record every call's end
        self._timing = slow_after is not None or self._outcomes  # read the clock before a call
        self._is_failure = exception_filter(on, "on")[1]
        self._is_excluded = exception_filter(exclude, "exclude")[1] if exclude != () else None
        self._timed = self.trip.timed
        self._lock = threading.RLock()  # re-entrant: a journal listener may read the breaker
        self._state = _CLOSED
        self._gen = 0
        self._tracker = self.trip.tracker()
        self._opened_at = 0.0  # pragma: no mutate - read only while open; opening sets it
        self._probes = 0  # half-open probes in flight
        self._probe_successes = 0
        # Lock-free views, each one attribute so a reader sees a consistent value. Only the
        # lock holder writes them, and it hides a view (-1 / None) before changing what the
        # view summarises, and publishes it again after. Their first values are no-mutate:
        # _publish() below sets the fast view, the others are read only after a transition
        # set them (every call is admitted until then) or are unequal to generation 0.
        # the generation, while every call is admitted; else -1
        self._fast_gen = 0  # pragma: no mutate - set by _publish() below
        # the generation, while a success would change nothing; else -1
        self._quiet_gen = -1  # pragma: no mutate - unequal to generation 0; reset on moving
        # (reject until, the state's value) while open or forced open; else None
        self._reject: tuple[float, str] | None = None  # pragma: no mutate - read once moved
        # reject until, while open (not forced open): what the call forms read; else None
        self._open_until: float | None = None  # pragma: no mutate - read once moved
        self._publish()

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value}>"

    @property
    def clock(self) -> Clock:
        """The clock the breaker keeps time with (it may be replaced)."""
        return self._clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self._clock = clock

    # ------------------------------------------------------------------ reading the state

    @property
    def state(self) -> State:
        """The current state; an open breaker whose recovery time is up half-opens here."""
        with self._lock:
            if self._state is _OPEN:
                self._maybe_half_open(self._clock.now())
            return self._state

    def stats(self) -> BreakerStats:
        """A consistent snapshot (state, generation, window counts, probes)."""
        with self._lock:
            now = self._clock.now()
            if self._state is _OPEN:
                self._maybe_half_open(now)
            calls, failures = self._tracker.counts(now)
            retry_after = (
                self._opened_at + self.recovery.after - now if self._state is _OPEN else None
            )
            return BreakerStats(
                self._state,
                self._gen,
                calls,
                failures,
                self._probes,
                self._probe_successes,
                retry_after,
            )

    # ---------------------------------------------------------------------- manual control

    def reset(self) -> None:
        """Back to closed, with empty counts. In-flight outcomes become late and are ignored."""
        self._manual(_CLOSED, "reset()")

    def force_open(self) -> None:
        """Reject every call until ``reset()`` (or another manual action)."""
        self._manual(_FORCED_OPEN, "force_open()")

    def force_closed(self) -> None:
        """Admit every call and never trip, until ``reset()``; counts still accumulate."""
        self._manual(_FORCED_CLOSED, "force_closed()")

    def disable(self) -> None:
        """Switch the breaker off: admit every call, count nothing, until ``reset()``."""
        self._manual(_DISABLED, "disable()")

    def _manual(self, to: State, reason: str) -> None:
        with self._lock:
            self._transition(to, reason, self._clock.now())

    # ----------------------------------------------------------------------- the core

    def _publish(self) -> None:
        """Recompute the lock-free views from the state. Caller holds the lock."""
        state, gen = self._state, self._gen
        if state is _DISABLED or (state in _COUNTING and self._tracker.quiet()):
            self._quiet_gen = gen
        if state is _OPEN:
            until = self._opened_at + self.recovery.after
            self._reject = (until, state._value_)
            self._open_until = until  # pragma: no mutate - None: _admit() rejects alike
        elif state is _FORCED_OPEN:
            self._reject = (_INF, state._value_)
        self._fast_gen = gen if state in _ADMIT_ALL else -1

    def _transition(self, to: State, reason: str, now: float) -> None:
        """Move to ``to`` with a new generation and empty counts. Caller holds the lock."""
        self._fast_gen = self._quiet_gen = -1
        self._reject = self._open_until = None
        before = self._state
        self._state = to
        self._gen += 1
        self._tracker = self.trip.tracker()
        self._probes = self._probe_successes = 0
        if to is _OPEN:
            self._opened_at = now
        self._publish()
        if before is not to and self.journal is not None:
            self.journal.append(
                _transitioned(
                    time=now,
                    source=self.name,
                    from_state=before.value,
                    to_state=to.value,
                    reason=reason,
                )
            )

    def _maybe_half_open(self, now: float) -> None:
        if now - self._opened_at >= self.recovery.after:
            self._transition(_HALF_OPEN, f"recovery after {self.recovery.after:g}s", now)

    def _admit(self) -> int:
        """Admission outside the fast path: returns the generation or raises CircuitOpenError.

        While the published ``_reject`` view says open, a rejection takes no lock and makes
        nothing but the error (and, with a journal, its event). The call forms do that
        themselves while open (``_open_until``, the same rule; see :meth:`call`), and come
        here in the other states: forced open, half-open, or open with the recovery time up.
        The error is raised where it is made: returned for the caller to raise, it would sit
        in the caller's frame, which its traceback holds, and the cycles left behind cost
        more than the frame it saves."""
        reject = self._reject
        now = self._clock.now()
        if reject is None or now >= reject[0]:
            decided = self._admit_locked()
            if isinstance(decided, int):
                return decided
            until, state, now = decided
        else:
            until, state = reject
        journal = self.journal
        if journal is not None:  # outside the lock, as every rejection event
            journal.append(_rejected(time=now, source=self.name, state=state))
        raise CircuitOpenError(self.name, state, None if until == _INF else until - now)

    def _admit_locked(self) -> int | tuple[float, str, float]:
        """Admission under the lock: the generation of an admitted call, or ``(reject
        until, state, now)`` for a rejected one."""
        with self._lock:
            state = self._state
            if state in _ADMIT_ALL:  # the fast path raced with a transition back
                return self._gen
            now = self._clock.now()
            if state is _OPEN:
                self._maybe_half_open(now)
                state = self._state
            if state is not _HALF_OPEN:
                assert self._reject is not None  # open or forced open: published
                return (*self._reject, now)
            if self._probes < self.recovery.probes:
                self._probes += 1
                return self._gen
            return now, state._value_, now  # every probe slot is taken: retry_after 0

    def _verdict(self, exc: BaseException) -> int:
        if not isinstance(exc, Exception):
            return _IGNORED  # Cancelled, HangDetected, ^C: not the dependency's fault
        if self._is_excluded is not None and self._is_excluded(exc):
            return _IGNORED
        return _FAILURE if self._is_failure(exc) else _SUCCESS

    def _settle(
        self, gen: int, outcome: int, start: float | None, exc: BaseException | None
    ) -> None:
        """Record one outcome of a call admitted under generation ``gen``."""
        slow_after = self.slow_after
        if (
            start is not None
            and slow_after is not None
            and outcome != _IGNORED
            and self._clock.now() - start > slow_after
        ):
            outcome = _SLOW
        if self._outcomes and start is not None and outcome != _IGNORED:
            self._record_outcome(outcome, start, exc)
        if outcome == _SUCCESS and self._quiet_gen == gen:
            return  # nothing would change: skip the lock
        lock = self._lock
        lock.acquire()  # not ``with``: this is the hot path, and acquire/release is cheaper
        try:
            if gen != self._gen:
                return  # a late outcome: the state it was admitted under is gone
            state = self._state
            if state is _CLOSED or state is _FORCED_CLOSED:
                if outcome == _IGNORED:
                    return
                self._quiet_gen = -1
                timed = self._timed
                now = self._clock.now() if timed else 0.0
                why = self._tracker.record(outcome != _SUCCESS, now)
                if why is not None and state is _CLOSED:
                    now = now if timed else self._clock.now()
                    self._transition(_OPEN, why + _last(outcome, exc, start, now), now)
                elif not timed and self._tracker.quiet():
                    self._quiet_gen = gen
            elif state is _HALF_OPEN:
                self._probes -= 1
                if outcome == _SUCCESS:
                    self._probe_successes += 1
                    n = self._probe_successes
                    if n >= self.recovery.successes:
                        why = f"{n} probe{'s' if n > 1 else ''} succeeded"
                        self._transition(_CLOSED, why, self._clock.now())
                elif outcome != _IGNORED:
                    now = self._clock.now()
                    self._transition(_OPEN, "probe failed" + _last(outcome, exc, start, now), now)
        finally:
            lock.release()

    def _record_outcome(self, outcome: int, start: float, exc: BaseException | None) -> None:
        """Journal a call's end (``outcomes=True``): its duration, a failure's class."""
        journal = self.journal
        if journal is None:
            return
        now = self._clock.now()
        if outcome == _SUCCESS:
            journal.append(_succeeded(time=now, source=self.name, duration=now - start))
            return
        if exc is None:  # a slow success, or a permit's failure() without a cause
            error = "slow call" if outcome == _SLOW else "failure"
            category = "timeout" if outcome == _SLOW else "unknown"
            severity = "medium"
        else:
            found = classify(exc)
            error = f"{type(exc).__name__}: {exc}"
            category, severity = str(found.category), found.severity.name.lower()
        journal.append(
            _failed(
                time=now,
                source=self.name,
                duration=now - start,
                error=error,
                category=category,
                severity=severity,
            )
        )

    # --------------------------------------------------------------------- the call forms

    def acquire(self) -> Permit:
        """Admit one call or raise ``CircuitOpenError``; settle the permit when it ends.

        ``with breaker.acquire(): ...`` settles it from the ``with`` block's outcome.
        """
        gen = self._fast_gen
        if gen < 0:
            until = self._open_until  # pragma: no mutate - None: _admit() rejects alike
            if until is not None:  # open: _admit()'s lock-free rejection, inlined
                now = self._clock.now()
                if now < until:
                    if (journal := self.journal) is not None:  # outside the lock
                        journal.append(_rejected(time=now, source=self.name, state="open"))
                    raise CircuitOpenError(self.name, "open", until - now)
            gen = self._admit()
        return Permit(self, gen, self._clock.now() if self._timing else None)

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` through the breaker. Raises ``CircuitOpenError``.

        While open, each call form rejects by itself, lock-free, as :meth:`_admit` would:
        raised from ``_admit()``, the error would unwind one frame more, which costs a
        rejection more than all the rest it does (a traceback entry and the frame object
        it needs). The state's value is written out: ``"open"`` is ``State.OPEN``'s.
        """
        gen = self._fast_gen
        if gen < 0:
            until = self._open_until  # pragma: no mutate - None: _admit() rejects alike
            if until is not None:  # open: _admit()'s lock-free rejection, inlined
                now = self._clock.now()
                if now < until:
                    if (journal := self.journal) is not None:  # outside the lock
                        journal.append(_rejected(time=now, source=self.name, state="open"))
                    raise CircuitOpenError(self.name, "open", until - now)
            gen = self._admit()
        start = self._clock.now() if self._timing else None
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # Cancelled, HangDetected, ^C: _verdict ignores them
            self._settle(gen, self._verdict(exc), start, exc)
            raise
        if start is not None or self._quiet_gen != gen:  # the quiet check, inlined for speed
            self._settle(gen, _SUCCESS, start, None)
        return result

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker. Raises ``CircuitOpenError``.

        A cancelled call (``CancelledError``, ``Cancelled``) counts as neither success nor
        failure, and neither does ``HangDetected``.
        """
        gen = self._fast_gen
        if gen < 0:
            until = self._open_until  # pragma: no mutate - None: _admit() rejects alike
            if until is not None:  # open: _admit()'s lock-free rejection, inlined
                now = self._clock.now()
                if now < until:
                    if (journal := self.journal) is not None:  # outside the lock
                        journal.append(_rejected(time=now, source=self.name, state="open"))
                    raise CircuitOpenError(self.name, "open", until - now)
            gen = self._admit()
        start = self._clock.now() if self._timing else None
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:  # CancelledError included: _verdict ignores it
            self._settle(gen, self._verdict(exc), start, exc)
            raise
        if start is not None or self._quiet_gen != gen:
            self._settle(gen, _SUCCESS, start, None)
        return result

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, T]]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a function or a coroutine function so that every call goes through."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def guarded_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.acall(fn, *args, **kwargs)

            return guarded_async

        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
            # call()'s body, inlined: delegating to call() doubles what a success through a
            # closed breaker costs (90 -> 173 ns)
            gen = self._fast_gen
            if gen < 0:
                until = self._open_until
                if until is not None:  # open: _admit()'s lock-free rejection, inlined
                    now = self._clock.now()
                    if now < until:
                        if (journal := self.journal) is not None:  # outside the lock
                            journal.append(_rejected(time=now, source=self.name, state="open"))
                        raise CircuitOpenError(self.name, "open", until - now)
                gen = self._admit()
            start = self._clock.now() if self._timing else None
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._settle(gen, self._verdict(exc), start, exc)
                raise
            if start is not None or self._quiet_gen != gen:
                self._settle(gen, _SUCCESS, start, None)
            return result

        return guarded


def _last(outcome: int, exc: BaseException | None, start: float | None, now: float) -> str:
    if outcome == _SLOW and start is not None:
        return f" (last: slow call {now - start:.3g}s)"
    if exc is not None:
        return f" (last: {type(exc).__name__})"
    return ""


class Permit:
    """One admitted call. Settle it once: ``success()``, ``failure()`` or ``ignore()``.

    ``success()`` still counts as a failure when the call was slower than the breaker's
    ``slow_after``. ``failure(exc)`` always counts as a failure; ``settle(exc)`` applies the
    breaker's ``on``/``exclude`` rules instead. Used as a context manager, the permit settles
    itself from the block's outcome (unless already settled) and never swallows an exception.
    Settling twice raises ``RuntimeError``.
    """

    __slots__ = ("_breaker", "_done", "_start", "generation")

    def __init__(self, breaker: CircuitBreaker, generation: int, start: float | None) -> None:
        self._breaker = breaker
        self.generation = generation
        self._start = start
        self._done = False

    def _finish(self, outcome: int, exc: BaseException | None) -> None:
        if self._done:
            raise RuntimeError(f"permit of breaker {self._breaker.name!r} is already settled")
        self._done = True
        self._breaker._settle(self.generation, outcome, self._start, exc)

    @property
    def settled(self) -> bool:
        return self._done

    def success(self) -> None:
        """The call worked (a failure all the same if it was slow)."""
        self._finish(_SUCCESS, None)

    def failure(self, exc: BaseException | None = None) -> None:
        """The call failed; ``exc`` only names the cause in the transition reason."""
        self._finish(_FAILURE, exc)  # pragma: no mutate - None is counted as a failure too

    def ignore(self) -> None:
        """The call counts as neither (cancelled, or an excluded error); frees a probe slot."""
        self._finish(_IGNORED, None)

    def settle(self, exc: BaseException | None) -> None:
        """Success if ``exc`` is None, else whatever the breaker's rules make of ``exc``."""
        self._finish(_SUCCESS if exc is None else self._breaker._verdict(exc), exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self._finish(_SUCCESS if exc is None else self._breaker._verdict(exc), exc)
