"""The storyteller's error handling, each piece proven by a fault that needs it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from tales import RESTING

from pytest_resilience import CircuitOpenError, RetryError
from pytest_resilience.plugin.assertions import (
    assert_fell_back,
    assert_retried,
    assert_transitions,
)

if TYPE_CHECKING:
    from tales import Storyteller

    from pytest_resilience import Journal
    from pytest_resilience.plugin.fixtures import FaultsFactory, TestClock


def test_tells_a_story(teller: Storyteller) -> None:
    assert teller.tell("Once upon a time")


@pytest.mark.faults("llama.generate=2*none")
def test_empty_answers_are_retried(teller: Storyteller, journal: Journal, clock: TestClock) -> None:
    story = teller.tell("Once upon a time")
    assert story
    assert story != RESTING
    assert_retried(journal, times=2, source="story")
    assert clock.now() == 0.5 + 1.0  # the backoff, in virtual seconds
    # the core's Retry retried the two missing answers (llama.generate returned None)
    assert_retried(
        journal, times=2, source="story", library="pytest_resilience", error="result: None"
    )
    assert_fell_back(journal, times=0)  # the story is the model's, not the resting message


@pytest.mark.no_faults  # it counts the model's calls exactly
def test_a_failing_model_opens_the_breaker_and_recovers(
    teller: Storyteller, faults: FaultsFactory, journal: Journal, clock: TestClock
) -> None:
    injector = faults("llama.generate=3*raise(RuntimeError)")
    assert [teller.tell("Once upon a time") for _ in range(5)] == [RESTING] * 5
    assert injector.calls("llama.generate") == 3  # the open breaker spared the model
    clock.advance(60)
    assert teller.tell("Once upon a time") != RESTING
    assert_transitions(journal, "model", ["closed->open", "open->half_open", "half_open->closed"])
    # each failed call was a resting message, not the sixth: first the spent retries', then
    # the open breaker's (how many of each depends on the retry, which the test above guards)
    assert_fell_back(journal, to="resting", times=5)
    assert_fell_back(journal, to="resting", error=RetryError)
    assert_fell_back(journal, to="resting", error=CircuitOpenError)


@pytest.mark.faults("llama.stream=stall(after=3)")
def test_a_stalled_stream_keeps_its_partial_story(teller: Storyteller, clock: TestClock) -> None:
    result = teller.stream("Once upon a time")
    assert result.reason == "idle"
    assert result.text  # the three chunks that came before the stall
    assert clock.now() == 5.0  # the idle deadline, in virtual seconds
