"""Hypothesis strategies for the settings of retry and breaker policies.

Install the extra (``pip install pytest-resilience[hypothesis]``) and import this module in
your tests; ``import pytest_resilience`` never imports it, nor hypothesis. It imports
hypothesis and the core, and never pytest.

:func:`retry_settings` and :func:`breaker_settings` draw small frozen settings objects
(:class:`RetrySettings`, :class:`BreakerSettings`) rather than the policies themselves: a
``Retry`` or a ``CircuitBreaker`` carries a clock, a random source and a journal, so its
repr cannot say how to build it again, while a settings object prints as the values that
matter, and ``.build(on=..., clock=..., journal=...)`` makes the real thing.
:func:`backoffs` and :func:`trip_policies` draw the parts.

Fault specs have strategies of their own, beside the faults (:mod:`faults.strategies`), and
the breaker state machine is :mod:`pytest_resilience.plugin.breaker_machine`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from hypothesis import strategies as st

from ..core.breaker import CircuitBreaker, ConsecutiveFailures, CountWindow, HalfOpen, TimeWindow
from ..core.clock import VirtualClock
from ..core.retry import Backoff, Jitter, Retry

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..core.breaker import TripPolicy
    from ..core.clock import Clock
    from ..core.errors import ExceptionFilter
    from ..core.journal import Journal

__all__ = [
    "BreakerSettings",
    "RetrySettings",
    "backoffs",
    "breaker_settings",
    "retry_settings",
    "trip_policies",
]


def _names(value: str | Iterable[str], what: str) -> list[str]:
    """The names given, once each and in order; a single string is one name."""
    names = list(dict.fromkeys([value] if isinstance(value, str) else value))
    if not names:
        raise ValueError(f"{what}= names nothing: give at least one, or leave it out")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{what}= takes names (strings), got {name!r}")
    return names


# ---------------------------------------------------------------------------------- retry


def backoffs(
    *, max_delay: float = 60.0, jitters: str | Iterable[Jitter | str] | None = None
) -> st.SearchStrategy[Backoff]:
    """Backoff shapes: ``base`` and ``cap`` from 0 to ``max_delay`` seconds, ``factor``
    from 1 to 10, one of ``jitters`` (default: every :class:`~pytest_resilience.core.retry.Jitter`).

    Shrinks towards ``Backoff(base=0, factor=1, cap=0, jitter="none")``, which never
    sleeps. Raises ``ValueError`` for a negative or infinite ``max_delay`` or an unknown
    jitter name.
    """
    if not (math.isfinite(max_delay) and max_delay >= 0):
        raise ValueError(f"backoffs needs a finite max_delay >= 0, got {max_delay!r}")
    names = list(Jitter) if jitters is None else _names(jitters, "jitters")
    chosen: list[Jitter] = []
    for name in names:
        try:
            chosen.append(Jitter(name))
        except ValueError:
            known = ", ".join(j.value for j in Jitter)
            raise ValueError(f"backoffs: unknown jitter {name!r}; known: {known}") from None
    delays = st.floats(0.0, max_delay, allow_subnormal=False)
    return st.builds(
        Backoff,
        base=delays,
        factor=st.floats(1.0, 10.0, allow_subnormal=False),
        cap=delays,
        jitter=st.sampled_from(chosen),
    )


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """The settings of a retry policy, as hypothesis prints them; :meth:`build` makes one.

    ``seed`` seeds the policy's jitter, so the printed settings rebuild the exact policy.
    """

    attempts: int
    backoff: Backoff
    budget: float | None = None
    seed: int = 0

    def build(
        self,
        on: ExceptionFilter,
        *,
        clock: Clock | None = None,
        journal: Journal | None = None,
        **options: Any,
    ) -> Retry:
        """A :class:`~pytest_resilience.core.retry.Retry` with these settings, retrying ``on``.

        ``clock`` defaults to a new :class:`~pytest_resilience.core.clock.VirtualClock`; the
        other ``options`` (``on_result``, ``reraise``, ``classifier``, ``on_retry``,
        ``name``) go to ``Retry`` as they are. Raises what ``Retry`` raises.
        """
        return Retry(
            on=on,
            attempts=self.attempts,
            backoff=self.backoff,
            budget=self.budget,
            clock=clock if clock is not None else VirtualClock(),
            rng=random.Random(self.seed),
            journal=journal,
            **options,
        )


def retry_settings(
    *,
    attempts: st.SearchStrategy[int] | None = None,
    backoff: st.SearchStrategy[Backoff] | None = None,
    budget: st.SearchStrategy[float | None] | None = None,
) -> st.SearchStrategy[RetrySettings]:
    """:class:`RetrySettings` drawn from the given strategies.

    Defaults: ``attempts`` from 1 to 5, ``backoff`` from :func:`backoffs`, ``budget`` none
    or 0.001 to 3600 seconds (pass ``st.none()`` for no budget, ``st.just(30.0)`` for a
    fixed one), and any 32-bit jitter seed. Shrinks towards one attempt, no wait, no budget.
    """
    return st.builds(
        RetrySettings,
        attempts=st.integers(1, 5) if attempts is None else attempts,
        backoff=backoffs() if backoff is None else backoff,
        budget=st.none() | st.floats(0.001, 3600.0) if budget is None else budget,
        seed=st.integers(0, 2**32 - 1),
    )


# -------------------------------------------------------------------------------- breaker

_RATES: Final = st.sampled_from([0.5, 1.0, 0.25, 0.75]) | st.floats(
    0.0, 1.0, exclude_min=True, allow_subnormal=False
)


@st.composite
def _count_windows(draw: st.DrawFn, max_calls: int) -> CountWindow:
    size = draw(st.integers(1, max_calls))
    rate = draw(_RATES)
    return CountWindow(size, rate, draw(st.none() | st.integers(1, size)))


def trip_policies(*, max_calls: int = 10) -> st.SearchStrategy[TripPolicy]:
    """Trip policies: :class:`~pytest_resilience.core.breaker.ConsecutiveFailures`,
    :class:`~pytest_resilience.core.breaker.CountWindow` and
    :class:`~pytest_resilience.core.breaker.TimeWindow`, in that order of simplicity.

    Thresholds, window sizes and minimum calls go up to ``max_calls``; time windows span
    0.5 to 600 seconds. Raises ``ValueError`` for ``max_calls`` below 1.
    """
    if max_calls < 1:
        raise ValueError(f"trip_policies needs max_calls >= 1, got {max_calls}")
    consecutive = st.builds(ConsecutiveFailures, threshold=st.integers(1, max_calls))
    timed = st.builds(
        TimeWindow,
        seconds=st.sampled_from([60.0, 10.0, 1.0]) | st.floats(0.5, 600.0),
        rate=_RATES,
        min_calls=st.integers(1, max_calls),
    )
    return st.one_of(consecutive, _count_windows(max_calls), timed)


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """The settings of a circuit breaker, as hypothesis prints them; :meth:`build` makes one."""

    trip: TripPolicy
    recovery: HalfOpen
    slow_after: float | None = None

    @property
    def threshold(self) -> int | None:
        """How many consecutive failures certainly open a closed breaker with these settings.

        ``ConsecutiveFailures(n)``: ``n``. ``CountWindow``: the larger of its minimum calls
        and the fewest failures that reach its rate in a full window (fewer may do, from
        other histories). ``None`` for a ``TimeWindow``, where it depends on timing, and for
        a trip policy of your own.
        """
        trip = self.trip
        if isinstance(trip, ConsecutiveFailures):
            return trip.threshold
        if isinstance(trip, CountWindow):
            # Worst case, the window is full of successes: k failures make k/size. The
            # breaker compares the float quotient, so this does too.
            k = next(k for k in range(1, trip.size + 1) if k / trip.size >= trip.rate)
            return max(k, trip.size if trip.min_calls is None else trip.min_calls)
        return None

    def build(
        self,
        name: str = "breaker",
        *,
        on: ExceptionFilter,
        clock: Clock | None = None,
        journal: Journal | None = None,
        **options: Any,
    ) -> CircuitBreaker:
        """A :class:`~pytest_resilience.core.breaker.CircuitBreaker` with these settings.

        ``clock`` defaults to a new :class:`~pytest_resilience.core.clock.VirtualClock`; the
        other ``options`` (``exclude``) go to the breaker. Raises what it raises.
        """
        return CircuitBreaker(
            name,
            on=on,
            trip=self.trip,
            recovery=self.recovery,
            slow_after=self.slow_after,
            clock=clock if clock is not None else VirtualClock(),
            journal=journal,
            **options,
        )


def breaker_settings(
    *,
    trip: st.SearchStrategy[TripPolicy] | None = None,
    recovery: st.SearchStrategy[HalfOpen] | None = None,
    slow_after: st.SearchStrategy[float | None] | None = None,
) -> st.SearchStrategy[BreakerSettings]:
    """:class:`BreakerSettings` drawn from the given strategies.

    Defaults: ``trip`` from :func:`trip_policies`; ``recovery`` waits 0 to 600 seconds with
    1 to 3 probes and 1 to 3 successes; ``slow_after`` none or 0.1 to 60 seconds. Shrinks
    towards ``ConsecutiveFailures(1)``, a 30-second recovery with one probe, no slow calls.
    """
    recoveries = st.builds(
        HalfOpen,
        after=st.sampled_from([30.0, 1.0, 5.0, 60.0]) | st.floats(0.0, 600.0),
        probes=st.integers(1, 3),
        successes=st.integers(1, 3),
    )
    return st.builds(
        BreakerSettings,
        trip=trip_policies() if trip is None else trip,
        recovery=recoveries if recovery is None else recovery,
        slow_after=st.none() | st.floats(0.1, 60.0) if slow_after is None else slow_after,
    )
