"""End to end: an application that retries with tenacity and falls back to a canned answer
(tests/integration/observe_app.py), under faults, with its reactions in the journal.

The ``faults`` fixture makes the model call fail; the watch records tenacity's retries and
the marked fallback into the test's ``journal``, which the assertions and the summary read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import faults.observe
from pytest_resilience.core.analytics import summarize
from pytest_resilience.core.events import FallbackUsed
from pytest_resilience.plugin.assertions import assert_fell_back, assert_retried
from tests.integration import observe_app

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pytest_resilience.core.journal import Journal
    from pytest_resilience.plugin.fixtures import FaultsFactory, TestClock

SITE = "py:tests.integration.observe_app:_request"


@pytest.fixture(autouse=True)
def watched(journal: Journal, clock: TestClock) -> Iterator[faults.observe.Watch]:
    """What the plugin does for every test: watch the app's retries into the journal."""
    with faults.observe.watch(journal, clock=clock) as watch:
        yield watch


@pytest.mark.virtual_time
def test_tenacity_retried_ask_twice_after_connection_error_then_succeeded(
    faults: FaultsFactory, journal: Journal, clock: TestClock
) -> None:
    faults(f"{SITE}=2*raise(ConnectionError)")
    assert observe_app.answer("hi") == "answer to hi"
    assert_retried(journal, times=2, name="ask", library="tenacity", error=ConnectionError)
    assert_fell_back(journal, times=0)
    assert clock.now() == 0.5 + 1.0  # tenacity's waits, in virtual seconds
    summary = summarize(journal)
    assert (summary.retries, summary.faults, summary.app_retries) == (2, 2, {"tenacity": 2})


@pytest.mark.virtual_time
def test_when_the_retries_are_spent_the_canned_answer_is_a_fallback(
    faults: FaultsFactory, journal: Journal
) -> None:
    faults(f"{SITE}=3*raise(ConnectionError)")
    assert observe_app.answer("hi") == observe_app.CANNED
    assert_retried(journal, times=2, name="ask", library="tenacity")
    assert_fell_back(journal, to="canned", times=1, error=ConnectionError)
    [fallback] = journal.events(FallbackUsed)
    assert (fallback.source, fallback.step) == ("app", "canned")
    summary = summarize(journal)
    assert summary.recovered_by_fallback == 1
    assert summary.errors == 3  # two failed attempts retried, and the last one
    assert "retries scheduled  2 (2 by tenacity)" in str(summary)


@pytest.mark.virtual_time
def test_a_fallback_marked_with_a_call(faults: FaultsFactory, journal: Journal) -> None:
    faults(f"{SITE}=3*raise(TimeoutError)")
    assert observe_app.answer_inline("hi") == observe_app.CANNED
    assert_retried(journal, times=2, error=TimeoutError)
    assert_fell_back(journal, to="canned", source="answer_inline", error=TimeoutError)


@pytest.mark.virtual_time
def test_a_failure_message_shows_how_the_app_reacted(
    faults: FaultsFactory, journal: Journal
) -> None:
    faults(f"{SITE}=3*raise(ConnectionError)")
    observe_app.answer("hi")
    with pytest.raises(AssertionError) as failed:
        assert_retried(journal, times=3, name="ask", library="tenacity")
    message = str(failed.value)
    assert "expected 3 retries of 'ask' with tenacity, got 2" in message
    assert "tenacity tests.integration.observe_app.ask after ConnectionError x2" in message
    assert "app.retry [tests.integration.observe_app.ask] library='tenacity'" in message
    assert "fallback.used [app] step='canned'" in message
