"""Unit tests for journal analytics."""

from __future__ import annotations

import dataclasses

import pytest

from pytest_resilience.core.analytics import Summary, summarize
from pytest_resilience.core.breaker import CircuitBreaker, ConsecutiveFailures, HalfOpen
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.degrade import Degrader, Level
from pytest_resilience.core.errors import DaemonUnavailable, FallbackError
from pytest_resilience.core.events import (
    AttemptFailed,
    AttemptStarted,
    CallRejected,
    Event,
    FaultInjected,
    GaveUp,
    RetryScheduled,
)
from pytest_resilience.core.fallback import Fallback
from pytest_resilience.core.journal import Journal, JournalFull


def failed(t: float, attempt: int, category: str = "connection", source: str = "r") -> Event:
    return AttemptFailed(time=t, source=source, attempt=attempt, error="E: x", category=category)


def retried_then_recovered(t: float) -> list[Event]:
    return [
        failed(t, 1),
        RetryScheduled(time=t, source="r", attempt=2, delay=1.0),
        AttemptStarted(time=t + 1, source="r", attempt=2),
    ]


def retried_then_gave_up(t: float) -> list[Event]:
    return [
        failed(t, 1, "timeout"),
        RetryScheduled(time=t, source="r", attempt=2, delay=1.0),
        AttemptStarted(time=t + 1, source="r", attempt=2),
        failed(t + 1, 2, "timeout"),
        GaveUp(time=t + 1, source="r", attempts=2, error="E: x", reason="attempts"),
    ]


def test_empty_journal() -> None:
    summary = summarize(Journal())
    assert summary == Summary()
    assert summary.errors == 0
    assert summary.errors_per_minute is None
    assert summary.recovery_rate is None
    assert "0 events" in str(summary)


def test_retry_counts_categories_and_recovery() -> None:
    events = [*retried_then_recovered(0.0), *retried_then_gave_up(30.0), failed(90.0, 1)]
    summary = summarize(events)
    assert summary.errors_by_category == {"connection": 2, "timeout": 2}
    assert summary.errors == 4
    assert summary.retries == 2
    # the operation at t=90 failed once and has not given up: counted as recovered
    assert (summary.recovered_by_retry, summary.gave_up) == (2, 1)
    assert summary.recovery_rate == pytest.approx(2 / 3)
    assert summary.duration == 90.0
    assert summary.errors_per_minute == pytest.approx(4 / 1.5)
    assert summary.errors_by_minute == (3, 1)  # t=0, 30, 31 | t=90


def test_errors_by_minute_starts_at_the_first_event_of_any_kind() -> None:
    events: list[Event] = [
        FaultInjected(time=100.0, site="llama.generate", fault="none", call=1),
        failed(250.0, 1),
    ]
    summary = summarize(events)
    assert summary.start == 100.0
    assert summary.errors_by_minute == (0, 0, 1)
    assert summary.faults == 1


def test_fallback_and_breaker_and_degrader_from_real_components() -> None:
    clock, journal = VirtualClock(), Journal()
    breaker = CircuitBreaker(
        "daemon",
        on=DaemonUnavailable,
        trip=ConsecutiveFailures(2),
        recovery=HalfOpen(after=10.0),
        clock=clock,
        journal=journal,
    )

    def down() -> str:
        raise DaemonUnavailable("refused")

    chain = Fallback(
        "answer",
        [("daemon", lambda: breaker.call(down)), ("direct", lambda: "ok")],
        on=Exception,
        clock=clock,
        journal=journal,
    )
    for _ in range(3):
        assert chain() == "ok"  # the third daemon call is rejected by the open breaker
    clock.advance(10.0)
    assert chain() == "ok"  # the probe fails: open again
    failing = Fallback("strict", [("only", down)], on=DaemonUnavailable, journal=journal)
    with pytest.raises(FallbackError):
        failing()
    degrader = Degrader("llm", clock=clock, journal=journal)
    degrader.record(False, error=MemoryError())
    degrader.force(Level.FULL)

    summary = summarize(journal)
    assert summary.transitions == {"daemon": ("closed->open", "open->half_open", "half_open->open")}
    assert summary.rejected == 1
    assert summary.fallbacks == {"answer": ("direct",) * 4}
    assert summary.recovered_by_fallback == 4
    assert summary.gave_up == 1
    assert summary.fallback_step_failures == 5
    assert summary.recovery_rate == pytest.approx(4 / 5)
    assert summary.degradations == {"llm": ("full->reduced", "reduced->full")}
    text = str(summary)
    assert "breaker daemon" in text
    assert "closed->open, open->half_open, half_open->open" in text
    assert "fallback answer" in text
    assert "direct x4" in text
    assert "80%: 0 by retry, 4 by fallback" in text


def test_str_is_an_aligned_table() -> None:
    summary = summarize([*retried_then_recovered(0.0), *retried_then_gave_up(60.0)])
    lines = str(summary).splitlines()
    assert lines[0] == "resilience summary: 8 events over 61s"
    assert "  errors             3 (2.95/min, peak 2 in one minute)" in lines
    assert "    connection       1" in lines
    assert "    timeout          2" in lines
    assert "  recovered          1 of 2 (50%: 1 by retry, 0 by fallback)" in lines
    column = lines[1].index("3 (")  # every value starts in the same column
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in lines[1:])


def test_dropped_events_are_reported() -> None:
    journal = Journal(maxlen=2)
    first, second, third, *rest = retried_then_gave_up(0.0)
    journal.append(first)
    journal.append(second)
    with pytest.warns(JournalFull, match="keeps the last 2 events"):
        journal.append(third)
    for event in rest:  # warned once: no more warnings
        journal.append(event)
    summary = summarize(journal)
    assert summary.dropped == 3
    assert summary.events == 2
    assert "3 older events dropped: counts are partial" in str(summary)


def test_summary_is_frozen() -> None:
    summary = summarize([failed(0.0, 1)])
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.retries = 5  # type: ignore[misc]


def test_rejected_calls_count() -> None:
    events = [CallRejected(time=float(i), source="b", state="open") for i in range(3)]
    assert summarize(events).rejected == 3
