"""Unit tests for journal analytics."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from pytest_resilience.core.analytics import Rolling, Summary, summarize
from pytest_resilience.core.breaker import CircuitBreaker, ConsecutiveFailures, HalfOpen
from pytest_resilience.core.classify import classify
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.degrade import Degrader, Level
from pytest_resilience.core.errors import DaemonUnavailable, FallbackError, RetryError
from pytest_resilience.core.events import (
    AttemptFailed,
    AttemptStarted,
    CallFailed,
    CallRejected,
    CallSucceeded,
    Event,
    FaultInjected,
    GaveUp,
    RetryScheduled,
)
from pytest_resilience.core.fallback import Fallback
from pytest_resilience.core.journal import Journal, JournalFull
from pytest_resilience.core.retry import Backoff, Retry

if TYPE_CHECKING:
    from collections.abc import Iterator


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


# ----------------------------------------------------------- outcomes and the window


def _outcomes(journal: Journal) -> list[CallSucceeded | CallFailed]:
    return journal.events(CallSucceeded, CallFailed)


def test_a_retry_with_outcomes_records_every_call_with_its_duration() -> None:
    clock, journal = VirtualClock(), Journal()
    retry = Retry(
        on=ConnectionError,
        attempts=2,
        backoff=Backoff.fixed(1.0),
        clock=clock,
        journal=journal,
        name="ask",
        outcomes=True,
    )
    calls = [0]

    def flaky() -> str:
        calls[0] += 1
        clock.sleep(0.5)  # the call itself takes half a second of the clock
        if calls[0] in (1, 3, 4):
            raise ConnectionError(f"port {8000 + calls[0]} refused")
        return "ok"

    assert retry.call(flaky) == "ok"  # fails, waits 1 s, answers: 2.0 s in all
    with pytest.raises(RetryError):
        retry(flaky)()  # fails twice: gives up after 0.5 + 1 + 0.5 s
    for attempt in retry:  # the loop form: answers at once
        with attempt:
            clock.sleep(0.25)
    got = _outcomes(journal)
    assert [type(e).__name__ for e in got] == ["CallSucceeded", "CallFailed", "CallSucceeded"]
    first, failed, loop = got
    assert isinstance(first, CallSucceeded)
    assert (first.source, first.duration, first.attempts) == ("ask", 2.0, 2)
    assert isinstance(failed, CallFailed)
    assert (failed.duration, failed.attempts, failed.category) == (2.0, 2, "connection")
    assert failed.severity == classify(ConnectionError()).severity.name.lower()
    assert failed.error == "ConnectionError: port 8004 refused"
    assert isinstance(loop, CallSucceeded)
    assert (loop.duration, loop.attempts) == (0.25, 1)


def test_without_outcomes_a_success_records_nothing() -> None:
    clock, journal = VirtualClock(), Journal()
    retry = Retry(on=ConnectionError, clock=clock, journal=journal)
    breaker = CircuitBreaker("b", on=ConnectionError, clock=clock, journal=journal)
    assert retry.call(lambda: 1) == 1
    assert breaker.call(lambda: 2) == 2
    assert journal.events() == []


def test_a_breaker_with_outcomes_records_successes_and_failures() -> None:
    clock, journal = VirtualClock(), Journal()
    breaker = CircuitBreaker(
        "daemon", on=ConnectionError, clock=clock, journal=journal, outcomes=True
    )

    def slow(fail: bool) -> str:
        clock.sleep(0.75)
        if fail:
            raise ConnectionRefusedError("refused")
        return "ok"

    assert breaker.call(slow, False) == "ok"
    assert breaker.call(slow, False) == "ok"  # a success that changes nothing: still recorded
    with pytest.raises(ConnectionRefusedError):
        breaker.call(slow, True)
    got = _outcomes(journal)
    assert [(type(e).__name__, e.source, e.duration) for e in got] == [
        ("CallSucceeded", "daemon", 0.75),
        ("CallSucceeded", "daemon", 0.75),
        ("CallFailed", "daemon", 0.75),
    ]
    failed = got[2]
    assert isinstance(failed, CallFailed)
    assert failed.category == "connection"
    assert failed.severity == classify(ConnectionRefusedError()).severity.name.lower()


def test_rolling_figures_over_a_sliding_window_of_the_clock() -> None:
    clock, journal = VirtualClock(), Journal()
    rolling = Rolling(60.0, clock=clock, top=2)
    journal.subscribe(rolling)
    retry = Retry(
        on=(ConnectionError, TimeoutError),
        attempts=2,
        backoff=Backoff.fixed(0.0),
        clock=clock,
        journal=journal,
        name="gen",
        outcomes=True,
    )
    script = iter(
        [
            *(ConnectionError("port 8001 refused"), 1.0, 3.0, 2.0),
            *(ConnectionError("port 8002 refused"), ConnectionError("port 8003 refused")),
            *(TimeoutError("read 5s"), TimeoutError("read 6s")),
        ]
    )

    def step() -> str:
        item = next(script)
        if isinstance(item, Exception):
            raise item
        assert isinstance(item, float)
        clock.sleep(item)
        return "ok"

    for _ in range(3):  # recovered after one failure (1 s), then 3 s, then 2 s
        assert retry.call(step) == "ok"
    with pytest.raises(RetryError):  # two connection errors: gives up
        retry.call(step)
    with pytest.raises(RetryError):  # two timeouts: gives up
        retry.call(step)
    figures = rolling.figures()
    assert (figures.successes, figures.failures) == (3, 2)
    assert figures.success_rate == pytest.approx(3 / 5)
    assert (figures.recovered, figures.gave_up) == (1, 2)
    assert figures.recovery_rate == pytest.approx(1 / 3)
    assert figures.errors == 5  # failed attempts; each CallFailed repeats its last one
    assert figures.error_rate_per_minute == pytest.approx(5.0)
    assert figures.top_categories == (("connection", 3), ("timeout", 2))
    assert figures.top_shapes == (
        ("ConnectionError: port N refused", 3),
        ("TimeoutError: read Ns", 2),
    )
    severities = Counter(
        classify(exc).severity.name.lower() for exc in (ConnectionError(), TimeoutError())
    )
    assert figures.failures_by_severity == dict(severities)
    assert figures.latency == {"gen": {"p50": 2.0, "p95": 3.0}}
    assert json.loads(json.dumps(figures.to_dict())) == figures.to_dict()

    clock.advance(61.0)  # everything is older than the window now
    empty = rolling.figures()
    assert (empty.errors, empty.successes, empty.success_rate, empty.latency) == (0, 0, None, {})


def test_rolling_over_a_whole_journal_and_message_shapes() -> None:
    events = [
        AttemptFailed(
            time=0.0, source="r", attempt=1, error="E: id 0xdeadbeef 'a b'", category="x"
        ),
        CallSucceeded(time=30.0, source="r", duration=4.0, attempts=2),
        CallSucceeded(time=60.0, source="r", duration=1.0),
    ]
    figures = Rolling(math.inf).feed(events).figures()
    assert figures.error_rate_per_minute == pytest.approx(1.0)  # one error over the 60 s fed
    assert figures.top_shapes == (("E: id X '…'", 1),)
    assert figures.latency == {"r": {"p50": 1.0, "p95": 4.0}}
    assert figures.to_dict()["window"] is None
    with pytest.raises(ValueError, match="window must be > 0"):
        Rolling(0)


# ------------------------------------------------------------ error and recovery rates


def succeeded(source: str, attempts: int = 1) -> Event:
    return CallSucceeded(time=0.0, source=source, duration=0.1, attempts=attempts)


def call_failed(source: str, attempts: int = 1) -> Event:
    return CallFailed(
        time=0.0,
        source=source,
        duration=0.1,
        error="E: x",
        category="connection",
        severity="high",
        attempts=attempts,
    )


def test_error_and_recovery_rates_from_recorded_outcomes() -> None:
    # "a": three calls, one at once, one after a retry, one failed for good; its retry
    # events are the same calls, not counted again
    events = [
        succeeded("a"),
        failed(1.0, 1, source="a"),
        succeeded("a", attempts=2),
        *[failed(2.0, n, source="a") for n in (1, 2)],
        GaveUp(time=2.0, source="a", attempts=2, error="E: x", reason="attempts"),
        call_failed("a", attempts=2),
    ]
    summary = summarize(events)
    assert (summary.calls, summary.calls_failed) == (3, 1)
    assert (summary.calls_with_failure, summary.calls_recovered) == (2, 1)
    assert summary.error_rate == pytest.approx(1 / 3)
    assert summary.call_recovery_rate == 0.5
    assert summary.rate_rows() == [
        ("error rate", "33% (1 of 3 calls failed)"),
        ("recovery rate", "50% (1 of 2 calls that failed recovered)"),
    ]


def test_without_outcomes_the_retry_runs_give_the_recovery_rate_only() -> None:
    # "r": one run recovered, one gave up, one in flight (recovered); "b" records outcomes
    events = [
        *retried_then_recovered(0.0),
        *retried_then_gave_up(30.0),
        failed(90.0, 1),
        succeeded("b"),
    ]
    summary = summarize(events)
    assert (summary.calls, summary.calls_failed, summary.error_rate) == (1, 0, 0.0)
    assert (summary.calls_with_failure, summary.calls_recovered) == (3, 2)
    assert summary.call_recovery_rate == pytest.approx(2 / 3)
    only_runs = summarize(retried_then_gave_up(0.0))
    assert only_runs.error_rate is None  # the calls that answered at once are unknown
    assert (only_runs.calls_with_failure, only_runs.calls_recovered) == (1, 0)
    assert only_runs.call_recovery_rate == 0.0
    assert only_runs.rate_rows() == [("recovery rate", "0% (0 of 1 calls that failed recovered)")]


def test_no_rates_and_no_rows_when_no_call_is_known() -> None:
    summary = summarize([FaultInjected(time=0.0, source="f", site="s", fault="none", call=1)])
    assert (summary.error_rate, summary.call_recovery_rate) == (None, None)
    assert summary.rate_rows() == []
    assert "rate" not in str(summary)


def test_rates_of_real_policies_with_and_without_outcomes() -> None:
    clock, journal = VirtualClock(), Journal()
    replies: Iterator[str | Exception] = iter(
        [DaemonUnavailable("down"), "ok", "ok", DaemonUnavailable("down"), "ok"]
    )

    def call() -> str:
        reply = next(replies)
        if isinstance(reply, Exception):
            raise reply
        return reply

    common = {"on": DaemonUnavailable, "attempts": 2, "clock": clock, "journal": journal}
    timed = Retry(**common, name="timed", outcomes=True)  # type: ignore[arg-type]
    plain = Retry(**common, name="plain")  # type: ignore[arg-type]
    assert timed.call(call) == timed.call(call) == "ok"
    assert plain.call(call) == "ok"
    summary = summarize(journal)
    assert (summary.calls, summary.calls_failed) == (2, 0)
    assert (summary.calls_with_failure, summary.calls_recovered) == (2, 2)
    assert "  recovery rate      100% (2 of 2 calls that failed recovered)" in str(summary)
