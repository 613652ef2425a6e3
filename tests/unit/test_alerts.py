"""Alerts read from the journal of real policies: streaks, error rates, breakers, cooldowns."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import pytest

from pytest_resilience import (
    Alert,
    Alerts,
    Backoff,
    BreakerOpened,
    CircuitBreaker,
    ConsecutiveFailures,
    ErrorRate,
    FailureStreak,
    Fallback,
    Journal,
    Retry,
    RetryError,
    VirtualClock,
)
from pytest_resilience.core.events import AlertFired, AppRetry
from pytest_resilience.plugin.assertions import assert_alerted

if TYPE_CHECKING:
    from collections.abc import Callable

NO_WAIT = Backoff(base=0.0, jitter="none")


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def journal() -> Journal:
    return Journal()


def always_fails() -> str:
    raise ConnectionError("refused")


def flaky() -> Callable[[], str]:
    """Fails every other call: a retry with two attempts always recovers."""
    calls = 0

    def call() -> str:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise ConnectionError("refused")
        return "ok"

    return call


def retry(clock: VirtualClock, journal: Journal, name: str = "ask") -> Retry:
    return Retry(
        on=ConnectionError, attempts=2, backoff=NO_WAIT, clock=clock, journal=journal, name=name
    )


def run(policy: Retry, fn: Callable[[], str], times: int) -> None:
    for _ in range(times):
        with contextlib.suppress(RetryError):
            policy.call(fn)


# --------------------------------------------------------------------- failure streak


def test_a_streak_of_failures_fires_once_then_again_after_the_cooldown(
    clock: VirtualClock, journal: Journal
) -> None:
    got: list[Alert] = []
    alerts = Alerts(FailureStreak(4, cooldown=30.0), clock=clock, on_alert=[got.append])
    alerts.attach(journal)
    policy = retry(clock, journal)

    run(policy, always_fails, 2)  # two failed attempts a call: the fourth crosses
    assert [(a.name, a.rule, a.about, a.value, a.threshold, a.time) for a in got] == [
        ("consecutive_failures", "consecutive_failures", "ask", 4, 4, 0.0)
    ]
    run(policy, always_fails, 1)  # still failing, inside the cooldown: held back
    assert len(got) == 1
    assert alerts.suppressed == {"consecutive_failures": 2}

    clock.advance(30.0)
    run(policy, always_fails, 1)
    assert [(a.value, a.time) for a in got] == [(4, 0.0), (7, 30.0)]
    assert_alerted(journal, name="consecutive_failures", times=2)


def test_a_retry_that_recovers_ends_the_streak(clock: VirtualClock, journal: Journal) -> None:
    alerts = Alerts(FailureStreak(2), clock=clock).attach(journal)
    run(retry(clock, journal), flaky(), 5)  # each call fails once, then succeeds

    assert alerts.fired == []
    assert_alerted(journal, times=0)


def test_streaks_are_kept_per_source(clock: VirtualClock, journal: Journal) -> None:
    alerts = Alerts(FailureStreak(3), clock=clock).attach(journal)
    run(retry(clock, journal, "a"), always_fails, 1)
    run(retry(clock, journal, "b"), always_fails, 1)
    assert alerts.fired == []

    run(retry(clock, journal, "b"), always_fails, 1)
    assert_alerted(journal, name="consecutive_failures", about="b", times=1)
    assert_alerted(journal, about="a", times=0)


def test_a_fallback_that_answers_ends_the_streak(clock: VirtualClock, journal: Journal) -> None:
    alerts = Alerts(FailureStreak(2), clock=clock).attach(journal)
    chain = Fallback(
        "answer",
        [("daemon", always_fails), ("canned", lambda: "sorry")],
        on=ConnectionError,
        journal=journal,
        clock=clock,
    )
    for _ in range(3):
        assert chain() == "sorry"
    assert alerts.fired == []


def test_an_app_retry_run_that_starts_again_ends_the_streak(
    clock: VirtualClock, journal: Journal
) -> None:
    alerts = Alerts(FailureStreak(2), clock=clock).attach(journal)

    def app_retry(attempt: int) -> None:  # as faults.observe.watch records tenacity's
        journal.append(
            AppRetry(
                time=clock.now(),
                source="myapp.ask",
                library="tenacity",
                attempt=attempt,
                delay=0.0,
                error="ConnectionError: refused",
            )
        )

    for _ in range(3):  # three calls, each retried once and then answered
        app_retry(1)
    assert alerts.fired == []

    app_retry(2)  # the third call fails its second attempt too
    assert [(a.about, a.value) for a in alerts.fired] == [("myapp.ask", 2)]


def test_a_source_filter_keeps_other_sources_out(clock: VirtualClock, journal: Journal) -> None:
    Alerts(FailureStreak(1, source="b"), clock=clock).attach(journal)
    run(retry(clock, journal, "a"), always_fails, 3)
    assert_alerted(journal, times=0)


# ------------------------------------------------------------------------ error rate


def test_error_rate_counts_errors_in_the_sliding_window(
    clock: VirtualClock, journal: Journal
) -> None:
    alerts = Alerts(ErrorRate(errors=3, window=10.0), clock=clock).attach(journal)
    policy = Retry(on=ConnectionError, attempts=1, clock=clock, journal=journal, name="ask")

    for at in (0.0, 5.0, 10.0):  # the error at 0 has left the window by 10
        clock.advance(at - clock.now())
        run(policy, always_fails, 1)
    assert alerts.fired == []

    clock.advance(1.0)  # errors at 5, 10, 11: three within 10 seconds
    run(policy, always_fails, 1)
    [alert] = alerts.fired
    assert (alert.name, alert.rule, alert.value, alert.threshold, alert.time) == (
        "error_rate",
        "error_rate",
        3,
        3,
        11.0,
    )
    assert_alerted(journal, name="error_rate", times=1)


# --------------------------------------------------------------------------- breaker


def test_a_breaker_opening_is_alerted_logged_and_journaled(
    clock: VirtualClock, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[Alert] = []
    Alerts(BreakerOpened(), clock=clock, on_alert=[got.append]).attach(journal)
    breaker = CircuitBreaker(
        "daemon", on=ConnectionError, trip=ConsecutiveFailures(2), clock=clock, journal=journal
    )
    caplog.set_level(logging.WARNING, logger="pytest_resilience.alerts")

    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(always_fails)

    assert [(a.name, a.about) for a in got] == [("breaker_open", "daemon")]
    [record] = [r for r in caplog.records if r.name == "pytest_resilience.alerts"]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("alert breaker_open: breaker 'daemon' opened")
    assert (record.alert_name, record.alert_rule, record.alert_about) == (  # type: ignore[attr-defined]
        "breaker_open",
        "breaker_open",
        "daemon",
    )
    [event] = journal.events(AlertFired)
    assert (event.name, event.about, event.source, event.time) == (
        "breaker_open",
        "daemon",
        "alerts",
        0.0,
    )
    assert_alerted(journal, name="breaker_open", about="daemon", times=1)


# ------------------------------------------------------------------------ delivering


def test_a_broken_callback_is_logged_and_the_others_still_run(
    clock: VirtualClock, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[str] = []

    def broken(alert: Alert) -> None:
        raise RuntimeError("pager down")

    Alerts(FailureStreak(1), clock=clock, on_alert=[broken, lambda a: got.append(a.name)]).attach(
        journal
    )
    run(retry(clock, journal), always_fails, 1)

    assert got == ["consecutive_failures"]
    assert any("alert callback" in r.getMessage() for r in caplog.records)
    assert_alerted(journal, name="consecutive_failures", times=1)


def test_detached_alerts_read_nothing(clock: VirtualClock, journal: Journal) -> None:
    with Alerts(FailureStreak(1), clock=clock).attach(journal) as alerts:
        pass
    run(retry(clock, journal), always_fails, 1)
    assert alerts.fired == []


def test_rules_are_checked() -> None:
    with pytest.raises(ValueError, match="given twice: x"):
        Alerts(FailureStreak(1, name="x"), ErrorRate(errors=1, window=1.0, name="x"))
    with pytest.raises(ValueError, match="threshold must be at least 1"):
        FailureStreak(0)
    with pytest.raises(ValueError, match="window must be > 0"):
        ErrorRate(errors=1, window=0.0)


def test_assert_alerted_says_what_fired(clock: VirtualClock, journal: Journal) -> None:
    Alerts(FailureStreak(1), clock=clock).attach(journal)
    run(retry(clock, journal), always_fails, 1)

    with pytest.raises(AssertionError, match=r"expected 1 alerts 'error_rate', got 0 "):
        assert_alerted(journal, name="error_rate", times=1)
    with pytest.raises(AssertionError, match=r"alerts fired: consecutive_failures x1\)"):
        assert_alerted(journal, name="consecutive_failures", times=3)
