"""When a :class:`~pytest_resilience.core.breaker.CircuitBreaker` opens, and how it recovers.

Trip policies decide when a closed breaker opens: :class:`ConsecutiveFailures`,
:class:`CountWindow` (failure rate over the last N calls) and :class:`TimeWindow` (failure
rate over the calls that ended in the last T seconds). Each is an immutable setting; its
:meth:`~TripPolicy.tracker` makes the mutable counts of one closed period, which the
breaker updates under its lock. :class:`HalfOpen` says how an open breaker half-opens and
closes again. A policy of your own implements :class:`TripPolicy`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Protocol

__all__ = [
    "ConsecutiveFailures",
    "CountWindow",
    "HalfOpen",
    "TimeWindow",
    "TripPolicy",
    "TripTracker",
]


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
class HalfOpen:
    """How an open breaker recovers.

    After ``after`` seconds open, the breaker half-opens and admits at most ``probes`` calls
    in flight at once; ``successes`` successful probes close it; one failed probe reopens it.
    """

    after: float = 30.0
    probes: int = 1
    successes: int = 1

    def __post_init__(self) -> None:
        if self.after < 0:
            raise ValueError(f"HalfOpen needs after >= 0, got {self.after}")
        if self.probes < 1 or self.successes < 1:
            raise ValueError(
                f"HalfOpen needs probes >= 1 and successes >= 1, got {self.probes}, "
                f"{self.successes}"
            )
