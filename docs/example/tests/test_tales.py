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
    from tests.conftest import Answers


def test_tells_a_story(teller: Storyteller, answers: Answers) -> None:
    story = teller.tell("Once upon a time")
    assert story != RESTING
    assert story
    # the model's own text, from its last call: under run-wide faults the calls before it
    # may have met a fault and been retried
    assert answers.completions[-1:] == [story]


@pytest.mark.faults("llama.generate=2*none")
def test_empty_answers_are_retried(
    teller: Storyteller, answers: Answers, journal: Journal, clock: TestClock
) -> None:
    story = teller.tell("Once upon a time")
    assert story != RESTING
    assert story
    assert answers.completions == [None, None, story]  # the third call's text is the story
    assert_retried(journal, times=2, source="story")
    assert clock.now() == 0.5 + 1.0  # the backoff, in virtual seconds
    # the core's Retry retried the two missing answers (llama.generate returned None)
    assert_retried(
        journal, times=2, source="story", library="pytest_resilience", error="result: None"
    )
    assert_fell_back(journal, times=0)  # the story is the model's, not the resting message


@pytest.mark.no_faults  # it counts the model's calls exactly
def test_a_failing_model_opens_the_breaker_and_recovers(
    teller: Storyteller,
    answers: Answers,
    faults: FaultsFactory,
    journal: Journal,
    clock: TestClock,
) -> None:
    injector = faults("llama.generate=3*raise(RuntimeError)")
    assert [teller.tell("Once upon a time") for _ in range(5)] == [RESTING] * 5
    assert injector.calls("llama.generate") == 3  # the open breaker spared the model
    clock.advance(60)
    story = teller.tell("Once upon a time")
    assert story != RESTING
    assert injector.calls("llama.generate") == 4  # the half-open breaker let one call through
    assert answers.completions == [story]  # the three before it raised; this one answered
    assert_transitions(journal, "model", ["closed->open", "open->half_open", "half_open->closed"])
    # each failed call was a resting message, not the sixth: first the spent retries', then
    # the open breaker's (how many of each depends on the retry, which the test above guards)
    assert_fell_back(journal, to="resting", times=5)
    assert_fell_back(journal, to="resting", error=RetryError)
    assert_fell_back(journal, to="resting", error=CircuitOpenError)


@pytest.mark.faults("llama.stream=stall(after=3)")
def test_a_stalled_stream_keeps_its_partial_story(
    teller: Storyteller, answers: Answers, clock: TestClock
) -> None:
    result = teller.stream("Once upon a time")
    assert result.reason == "idle"
    assert not result.complete
    assert len(answers.chunks) == 3  # the model's chunks that came before the stall
    assert all(answers.chunks)
    assert result.text == "".join(answers.chunks)  # all three are kept, in order
    assert clock.now() == 5.0  # the idle deadline, in virtual seconds
