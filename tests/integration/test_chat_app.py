"""End to end: the chat assistant of tests/integration/chat_app.py against a real model
daemon on the tiny model, under faults at ``daemon.request``, tested as its team would.

The ``daemon`` fixture starts llama-cpp-python's server on 127.0.0.1 for each test and
stops it after. The faults reach the app's ``openai`` client in process; the plugin records
the retries of tenacity (sync) and stamina (async) and the marked fallbacks into the test's
``journal``, and ``virtual_time`` runs the backoffs (stamina's half hour of them too) and
the client's timeouts on the test's clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import openai
import pytest
import tenacity

from pytest_resilience.core.events import AppRetry, FallbackUsed
from pytest_resilience.plugin.assertions import (
    assert_fell_back,
    assert_resilient,
    assert_retried,
)
from tests.integration.chat_app import CANNED, Assistant, AsyncAssistant

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pytest_resilience.backends.daemon import DaemonProcess
    from pytest_resilience.core.journal import Journal
    from pytest_resilience.plugin.fixtures import FaultsFactory, TestClock

PROMPT = "Say hello."

# stamina's backoff in AsyncAssistant: 30 s doubling, at most 5 min, plus up to 1 s jitter
STAMINA_WAITS = [30.0, 60.0, 120.0, 240.0, 300.0, 300.0, 300.0, 300.0, 300.0]
WAIT_MAX = 300.0
JITTER = 1.0
ROUNDING = 1e-9


def url(daemon: DaemonProcess) -> str:
    return daemon.base_url + "/v1"


def delays(journal: Journal, library: str) -> list[float]:
    """The waits ``library`` chose before each retry, in order."""
    return [e.delay for e in journal.events(AppRetry) if e.library == library]


def stamina_backoff(waited: list[float], retries: int) -> bool:
    """``waited`` is stamina's backoff for ``retries`` retries: each wait its base, jittered
    by at most a second, never above the maximum (stamina's own float rounding allowed)."""
    bases = STAMINA_WAITS[:retries]
    return len(waited) == retries and all(
        base - ROUNDING <= delay <= min(base + JITTER, WAIT_MAX) + ROUNDING
        for delay, base in zip(waited, bases, strict=True)
    )


@pytest.fixture
def assistant(daemon: DaemonProcess) -> Iterator[Assistant]:
    with Assistant(url(daemon), model=daemon.alias) as assistant:
        yield assistant


# --------------------------------------------------------------------- sync: tenacity


def test_answers_from_the_model_on_loopback(
    daemon: DaemonProcess, assistant: Assistant, journal: Journal
) -> None:
    assert daemon.host == "127.0.0.1"
    text = assistant.answer(PROMPT)
    assert text
    assert text != CANNED
    assert_retried(journal, times=0)
    assert_fell_back(journal, times=0)


@pytest.mark.virtual_time
def test_tenacity_retried_ask_twice_after_a_503_then_succeeded(
    assistant: Assistant, faults: FaultsFactory, journal: Journal, clock: TestClock
) -> None:
    expected = assistant.ask(PROMPT)  # greedy: the same answer every time
    run = faults("daemon.request=2*status(503)")
    assert assistant.answer(PROMPT) == expected
    assert_retried(
        journal, times=2, name="ask", library="tenacity", error=openai.InternalServerError
    )
    assert_fell_back(journal, times=0)
    assert delays(journal, "tenacity") == [0.5, 1.0]
    assert clock.now() == 0.5 + 1.0  # tenacity's backoff, in virtual seconds
    assert (run.calls("daemon.request"), run.injected("daemon.request")) == (3, 2)
    assert_resilient(journal)


@pytest.mark.virtual_time
@pytest.mark.faults("daemon.request=@1refuse->@2lost->@3timeout")
def test_refused_reset_and_timed_out_requests_are_retried(
    assistant: Assistant, journal: Journal, clock: TestClock
) -> None:
    assert assistant.answer(PROMPT) != CANNED  # the fourth and last attempt answered
    assert_retried(journal, times=3, name="Assistant.ask", library="tenacity")
    assert_retried(journal, times=2, name="ask", error=openai.APIConnectionError)
    assert_retried(journal, times=1, name="ask", error=openai.APITimeoutError)
    assert delays(journal, "tenacity") == [0.5, 1.0, 2.0]
    # the hung request ended with the client's own 10 s timeout, on the same clock
    assert clock.now() == 0.5 + 1.0 + 10.0 + 2.0
    assert_fell_back(journal, times=0)
    assert_resilient(journal)


@pytest.mark.virtual_time
@pytest.mark.faults("daemon.request=status(503)")
def test_when_tenacitys_retries_are_spent_the_canned_answer_is_a_fallback(
    assistant: Assistant, journal: Journal, clock: TestClock
) -> None:
    assert assistant.answer(PROMPT) == CANNED
    assert_retried(
        journal, times=3, name="ask", library="tenacity", error=openai.InternalServerError
    )
    assert_fell_back(journal, to="canned", times=1, error=openai.InternalServerError)
    [fallback] = journal.events(FallbackUsed)
    assert (fallback.source, fallback.time) == ("app", 0.5 + 1.0 + 2.0)
    assert_resilient(journal)  # four attempts under a lasting 503: bounded, backed off


@pytest.mark.virtual_time
def test_a_400_is_not_retried_and_breaks_no_verdict(
    assistant: Assistant, faults: FaultsFactory, journal: Journal, clock: TestClock
) -> None:
    run = faults("daemon.request=status(400)")
    with pytest.raises(openai.BadRequestError) as caught:
        assistant.answer(PROMPT)
    assert caught.value.status_code == 400
    assert run.calls("daemon.request") == 1  # one attempt: tenacity let the 4xx through
    assert_retried(journal, times=0)
    assert_fell_back(journal, times=0)
    assert clock.now() == 0.0
    assert_resilient(journal)  # a fault fired, and `permanent` (no retried 4xx) holds


@pytest.mark.virtual_time
@pytest.mark.verdicts(ignore=["permanent"])  # broken on purpose, to show the verdict
def test_a_caller_that_retries_a_400_breaks_the_permanent_verdict(
    assistant: Assistant, faults: FaultsFactory, journal: Journal
) -> None:
    faults("daemon.request=status(400)")
    careless = tenacity.retry(  # the caller's own retry, on top of the app's
        stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_fixed(1), reraise=True
    )(assistant.ask)
    with pytest.raises(openai.BadRequestError):
        careless(PROMPT)
    assert_retried(journal, times=1, library="tenacity", error=openai.BadRequestError)
    with pytest.raises(AssertionError, match=r"permanent .*BadRequestError"):
        assert_resilient(journal)


# ---------------------------------------------------------------------- async: stamina


@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_stamina_retried_with_30_second_backoffs_in_virtual_time(
    daemon: DaemonProcess, faults: FaultsFactory, journal: Journal, clock: TestClock
) -> None:
    async with AsyncAssistant(url(daemon), model=daemon.alias) as assistant:
        expected = await assistant.ask(PROMPT)
        faults("daemon.request=2*status(503)")
        assert await assistant.answer(PROMPT) == expected
    assert_retried(
        journal,
        times=2,
        name="AsyncAssistant.ask",
        library="stamina",
        error=openai.InternalServerError,
    )
    waited = delays(journal, "stamina")
    assert stamina_backoff(waited, retries=2), waited
    assert clock.now() == pytest.approx(sum(waited))  # 90 s and more, in virtual seconds
    assert_fell_back(journal, times=0)
    assert_resilient(journal)


@pytest.mark.asyncio
@pytest.mark.virtual_time
@pytest.mark.faults("daemon.request=refuse")
async def test_stamina_gives_up_after_ten_attempts_and_the_canned_answer_is_a_fallback(
    daemon: DaemonProcess, journal: Journal, clock: TestClock
) -> None:
    async with AsyncAssistant(url(daemon), model=daemon.alias) as assistant:
        assert await assistant.answer(PROMPT) == CANNED
    assert_retried(journal, times=9, name="ask", library="stamina", error=openai.APIConnectionError)
    waited = delays(journal, "stamina")
    assert stamina_backoff(waited, retries=9), waited
    assert clock.now() == pytest.approx(sum(waited))  # over half an hour of backoff
    assert clock.now() >= 1950.0
    assert_fell_back(journal, to="canned", times=1, error=openai.APIConnectionError)
    [fallback] = journal.events(FallbackUsed)
    assert fallback.time == clock.now()  # after the last wait, not before
    assert_resilient(journal)  # nine retries of a lasting fault: still bounded (at most 10)


@pytest.mark.asyncio
@pytest.mark.virtual_time
@pytest.mark.faults("daemon.request=1*latency(45s)")
async def test_a_slow_answer_times_out_and_stamina_retries_it(
    daemon: DaemonProcess, journal: Journal, clock: TestClock
) -> None:
    async with AsyncAssistant(url(daemon), model=daemon.alias) as assistant:
        assert await assistant.answer(PROMPT) != CANNED
    assert_retried(journal, times=1, name="ask", library="stamina", error=openai.APITimeoutError)
    [waited] = delays(journal, "stamina")
    assert stamina_backoff([waited], retries=1), waited
    # the client gave up on the 45 s answer at its own 30 s timeout, then stamina waited
    assert clock.now() == pytest.approx(30.0 + waited)
    assert_resilient(journal)


@pytest.mark.asyncio
@pytest.mark.virtual_time
@pytest.mark.faults("daemon.request=status(400)")
async def test_stamina_does_not_retry_a_400(
    daemon: DaemonProcess, journal: Journal, clock: TestClock
) -> None:
    async with AsyncAssistant(url(daemon), model=daemon.alias) as assistant:
        with pytest.raises(openai.BadRequestError):
            await assistant.answer(PROMPT)
    assert_retried(journal, times=0)
    assert_fell_back(journal, times=0)
    assert clock.now() == 0.0
    assert_resilient(journal)
