"""A circuit breaker: stop calling a dependency that keeps failing, and probe it to recover.

::

    breaker = CircuitBreaker(
        "daemon",
        on=(ConnectionError, TimeoutError),             # required: what counts as a failure
        trip=CountWindow(size=20, rate=0.5, min_calls=10),
        recovery=Recovery(after=30.0, probes=1, successes=2),
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

Trip policies: :class:`ConsecutiveFailures`, :class:`CountWindow` (failure rate over the last
N calls) and :class:`TimeWindow` (failure rate over the calls that ended in the last T seconds).
Only outcomes in the closed state (and forced_closed) feed the policy; in half_open a single
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
A successful call in the closed state appends nothing.

Errors: a rejected call raises :class:`~pytest_resilience.core.errors.CircuitOpenError` with
``breaker`` (the name), ``state`` and ``retry_after`` (seconds until the breaker half-opens;
0 when half-open but every probe slot is taken; ``None`` when forced open).
"""

from __future__ import annotations

import enum
import functools
import inspect
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, Protocol, Self, TypeVar, overload

from .clock import Clock, SystemClock
from .errors import CircuitOpenError, ExceptionFilter, exception_filter
from .events import BreakerTransition, CallRejected

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine
    from types import TracebackType

    from .events import Journal

__all__ = [
    "BreakerStats",
    "CircuitBreaker",
    "ConsecutiveFailures",
    "CountWindow",
    "ExceptionFilter",
    "Permit",
    "Recovery",
    "State",
    "TimeWindow",
    "TripPolicy",
    "TripTracker",
]

P = ParamSpec("P")
T = TypeVar("T")

#: What ``on=`` and ``exclude=`` accept: a class, a tuple of classes, or a predicate.


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
_SUCCESS, _FAILURE, _SLOW, _IGNORED, _SETTLED = 0, 1, 2, 3, 4


# ------------------------------------------------------------------------ trip policies


class TripTracker(Protocol):
    """The mutable counts of one closed period. Used only under the breaker's lock."""

    def record(self, failed: bool, now: float) -> str | None:
        """Count one outcome; return why the breaker should open, or ``None``."""
        ...

    def counts(self, now: float) -> tuple[int, int]:
        """``(calls, failures)`` currently in the window."""
        ...

    def quiet(self) -> bool:
        """True when recording a success now would change nothing (lets successes skip the lock)."""
        ...


class TripPolicy(Protocol):
    """When a closed breaker opens. ``timed`` policies get ``now`` from the clock."""

    timed: ClassVar[bool]

    def tracker(self) -> TripTracker:
        """Fresh, empty counts."""
        ...


@dataclass(frozen=True, slots=True)
class ConsecutiveFailures:
    """Open after ``threshold`` failures in a row; a success starts the count again.

    Its window counts are the current run of failures (``calls == failures``).
    """

    timed: ClassVar[bool] = False
    threshold: int = 5

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"ConsecutiveFailures needs threshold >= 1, got {self.threshold}")

    def tracker(self) -> TripTracker:
        return _Streak(self.threshold)


@dataclass(frozen=True, slots=True)
class CountWindow:
    """Open when at least ``rate`` of the last ``size`` calls failed.

    The rate counts only once the window holds ``min_calls`` calls (default: ``size``).
    """

    timed: ClassVar[bool] = False
    size: int = 20
    rate: float = 0.5
    min_calls: int | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"CountWindow needs size >= 1, got {self.size}")
        _check_rate("CountWindow", self.rate)
        if self.min_calls is not None and not 1 <= self.min_calls <= self.size:
            raise ValueError(f"CountWindow needs 1 <= min_calls <= size, got {self.min_calls}")

    def tracker(self) -> TripTracker:
        return _Counted(
            self.size, self.rate, self.size if self.min_calls is None else self.min_calls
        )


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Open when at least ``rate`` of the calls that ended in the last ``seconds`` failed.

    A call that ended at time t counts while ``now - t < seconds`` (on the breaker's clock).
    The rate counts only once the window holds ``min_calls`` calls. Memory grows with the
    number of distinct end times in the window.
    """

    timed: ClassVar[bool] = True
    seconds: float = 60.0
    rate: float = 0.5
    min_calls: int = 10

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"TimeWindow needs seconds > 0, got {self.seconds}")
        _check_rate("TimeWindow", self.rate)
        if self.min_calls < 1:
            raise ValueError(f"TimeWindow needs min_calls >= 1, got {self.min_calls}")

    def tracker(self) -> TripTracker:
        return _Timed(self.seconds, self.rate, self.min_calls)


def _check_rate(who: str, rate: float) -> None:
    if not 0 < rate <= 1:
        raise ValueError(f"{who} needs 0 < rate <= 1, got {rate}")


class _Streak:
    __slots__ = ("streak", "threshold")

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.streak = 0

    def record(self, failed: bool, now: float) -> str | None:
        if not failed:
            self.streak = 0
            return None
        self.streak += 1
        if self.streak >= self.threshold:
            return f"{self.streak} consecutive failures"
        return None

    def counts(self, now: float) -> tuple[int, int]:
        return self.streak, self.streak

    def quiet(self) -> bool:
        return self.streak == 0


class _Counted:
    __slots__ = ("failures", "min_calls", "rate", "window")

    def __init__(self, size: int, rate: float, min_calls: int) -> None:
        self.window: deque[bool] = deque(maxlen=size)
        self.rate = rate
        self.min_calls = min_calls
        self.failures = 0

    def record(self, failed: bool, now: float) -> str | None:
        window = self.window
        if len(window) == window.maxlen and window[0]:
            self.failures -= 1
        window.append(failed)
        self.failures += failed
        calls = len(window)
        if calls >= self.min_calls and self.failures / calls >= self.rate:
            return f"failure rate {self.failures}/{calls} >= {self.rate:g} over the last calls"
        return None

    def counts(self, now: float) -> tuple[int, int]:
        return len(self.window), self.failures

    def quiet(self) -> bool:
        # A full window without failures: a success only replaces a success.
        return self.failures == 0 and len(self.window) == self.window.maxlen


class _Timed:
    # One bucket per distinct end time, in three parallel deques of numbers: a deque of
    # small lists would be scanned by the garbage collector over and over.
    __slots__ = (
        "calls",
        "counts_at",
        "fails_at",
        "failures",
        "min_calls",
        "rate",
        "seconds",
        "times",
    )

    def __init__(self, seconds: float, rate: float, min_calls: int) -> None:
        self.seconds = seconds
        self.rate = rate
        self.min_calls = min_calls
        self.times: deque[float] = deque()  # bucket end times, oldest first
        self.counts_at: deque[int] = deque()
        self.fails_at: deque[int] = deque()
        self.calls = 0
        self.failures = 0

    def _expire(self, now: float) -> None:
        times = self.times
        while times and now - times[0] >= self.seconds:
            times.popleft()
            self.calls -= self.counts_at.popleft()
            self.failures -= self.fails_at.popleft()

    def record(self, failed: bool, now: float) -> str | None:
        times = self.times
        if times and now - times[0] >= self.seconds:
            self._expire(now)
        if times and times[-1] == now:
            self.counts_at[-1] += 1
            self.fails_at[-1] += failed
        else:
            times.append(now)
            self.counts_at.append(1)
            self.fails_at.append(int(failed))
        calls = self.calls = self.calls + 1
        failures = self.failures = self.failures + failed
        if calls >= self.min_calls and failures / calls >= self.rate:
            return (
                f"failure rate {failures}/{calls} >= {self.rate:g} over the last {self.seconds:g}s"
            )
        return None

    def counts(self, now: float) -> tuple[int, int]:
        self._expire(now)
        return self.calls, self.failures

    def quiet(self) -> bool:
        return False  # every success adds a timestamped call


# ------------------------------------------------------------------------------ recovery


@dataclass(frozen=True, slots=True)
class Recovery:
    """How an open breaker recovers.

    After ``after`` seconds open, the breaker half-opens and admits at most ``probes`` calls
    in flight at once; ``successes`` successful probes close it; one failed probe reopens it.
    """

    after: float = 30.0
    probes: int = 1
    successes: int = 1

    def __post_init__(self) -> None:
        if self.after < 0:
            raise ValueError(f"Recovery needs after >= 0, got {self.after}")
        if self.probes < 1 or self.successes < 1:
            raise ValueError(
                f"Recovery needs probes >= 1 and successes >= 1, got {self.probes}, "
                f"{self.successes}"
            )


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
    ``recovery`` is a :class:`Recovery` or just its ``after`` in seconds; ``slow_after``
    makes calls slower than that a failure. Raises ``ValueError``/``TypeError`` on bad
    settings.
    """

    def __init__(
        self,
        name: str,
        *,
        on: ExceptionFilter,
        trip: TripPolicy | None = None,
        recovery: Recovery | float = 30.0,
        exclude: ExceptionFilter = (),
        slow_after: float | None = None,
        clock: Clock | None = None,
        journal: Journal | None = None,
    ) -> None:
        if slow_after is not None and slow_after < 0:
            raise ValueError(f"slow_after must be >= 0, got {slow_after}")
        self.name = name
        self.trip: TripPolicy = trip if trip is not None else ConsecutiveFailures(5)
        self.recovery = recovery if isinstance(recovery, Recovery) else Recovery(after=recovery)
        self.slow_after = slow_after
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.journal = journal
        self._is_failure = exception_filter(on, "on")[1]
        self._is_excluded = exception_filter(exclude, "exclude")[1] if exclude != () else None
        self._timed = self.trip.timed
        self._lock = threading.RLock()  # re-entrant: a journal listener may read the breaker
        self._state = _CLOSED
        self._gen = 0
        self._tracker = self.trip.tracker()
        self._opened_at = 0.0
        self._probes = 0  # half-open probes in flight
        self._probe_successes = 0
        # Lock-free views, each one attribute so a reader sees a consistent value. Only the
        # lock holder writes them, and it hides a view (-1 / None) before changing what the
        # view summarises, and publishes it again after.
        self._fast_gen = 0  # the generation, while every call is admitted; else -1
        self._quiet_gen = -1  # the generation, while a success would change nothing; else -1
        self._reject: tuple[float, State] | None = None  # (reject until, state) while open
        self._publish()

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value}>"

    # ------------------------------------------------------------------ reading the state

    @property
    def state(self) -> State:
        """The current state; an open breaker whose recovery time is up half-opens here."""
        with self._lock:
            if self._state is _OPEN:
                self._maybe_half_open(self.clock.now())
            return self._state

    def stats(self) -> BreakerStats:
        """A consistent snapshot (state, generation, window counts, probes)."""
        with self._lock:
            now = self.clock.now()
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
            self._transition(to, reason, self.clock.now())

    # ----------------------------------------------------------------------- the core

    def _publish(self) -> None:
        """Recompute the lock-free views from the state. Caller holds the lock."""
        state, gen = self._state, self._gen
        if state is _DISABLED or (state in _COUNTING and self._tracker.quiet()):
            self._quiet_gen = gen
        if state is _OPEN:
            self._reject = (self._opened_at + self.recovery.after, state)
        elif state is _FORCED_OPEN:
            self._reject = (_INF, state)
        self._fast_gen = gen if state in _ADMIT_ALL else -1

    def _transition(self, to: State, reason: str, now: float) -> None:
        """Move to ``to`` with a new generation and empty counts. Caller holds the lock."""
        self._fast_gen = self._quiet_gen = -1
        self._reject = None
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
                BreakerTransition(
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
        """Admission outside the fast path: returns the generation or raises CircuitOpenError."""
        reject = self._reject
        now = self.clock.now()
        if reject is None or now >= reject[0]:
            with self._lock:
                state = self._state
                if state in _ADMIT_ALL:  # the fast path raced with a transition back
                    return self._gen
                now = self.clock.now()
                if state is _OPEN:
                    self._maybe_half_open(now)
                    state = self._state
                if state is _HALF_OPEN and self._probes < self.recovery.probes:
                    self._probes += 1
                    return self._gen
                if state is _HALF_OPEN:
                    reject = (now, state)  # open but every probe slot is taken: retry_after 0
                else:
                    reject = (
                        self._opened_at + self.recovery.after if state is _OPEN else _INF,
                        state,
                    )
        # Still open (or forced open): rejected without the lock.
        until, state = reject
        value = state._value_  # not .value: that is a Python-level property
        if self.journal is not None:
            self.journal.append(CallRejected(time=now, source=self.name, state=value))
        raise CircuitOpenError(self.name, value, None if until == _INF else until - now)

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
            and self.clock.now() - start > slow_after
        ):
            outcome = _SLOW
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
                now = self.clock.now() if timed else 0.0
                why = self._tracker.record(outcome != _SUCCESS, now)
                if why is not None and state is _CLOSED:
                    now = now if timed else self.clock.now()
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
                        self._transition(_CLOSED, why, self.clock.now())
                elif outcome != _IGNORED:
                    now = self.clock.now()
                    self._transition(_OPEN, "probe failed" + _last(outcome, exc, start, now), now)
        finally:
            lock.release()

    # --------------------------------------------------------------------- the call forms

    def acquire(self) -> Permit:
        """Admit one call or raise ``CircuitOpenError``; settle the permit when it ends.

        ``with breaker.acquire(): ...`` settles it from the ``with`` block's outcome.
        """
        gen = self._fast_gen
        if gen < 0:
            gen = self._admit()
        return Permit(self, gen, self.clock.now() if self.slow_after is not None else None)

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` through the breaker. Raises ``CircuitOpenError``."""
        gen = self._fast_gen
        if gen < 0:
            gen = self._admit()
        start = self.clock.now() if self.slow_after is not None else None
        done = False  # stays False when a BaseException (Cancelled, HangDetected) goes through
        try:
            result = fn(*args, **kwargs)
            done = True
        except Exception as exc:
            done = True
            self._settle(gen, self._verdict(exc), start, exc)
            raise
        finally:
            if not done:
                self._settle(gen, _IGNORED, start, None)
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
            gen = self._admit()
        start = self.clock.now() if self.slow_after is not None else None
        done = False
        try:
            result = await fn(*args, **kwargs)
            done = True
        except Exception as exc:
            done = True
            self._settle(gen, self._verdict(exc), start, exc)
            raise
        finally:
            if not done:
                self._settle(gen, _IGNORED, start, None)
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
            # The body of call(), inlined: one call layer less on every decorated call.
            gen = self._fast_gen
            if gen < 0:
                gen = self._admit()
            start = self.clock.now() if self.slow_after is not None else None
            done = False
            try:
                result = fn(*args, **kwargs)
                done = True
            except Exception as exc:
                done = True
                self._settle(gen, self._verdict(exc), start, exc)
                raise
            finally:
                if not done:
                    self._settle(gen, _IGNORED, start, None)
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
        self._finish(_FAILURE, exc)

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
