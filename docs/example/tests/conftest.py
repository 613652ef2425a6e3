from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from tales import Storyteller

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from pytest_resilience import Journal
    from pytest_resilience.plugin.fixtures import TestClock


@pytest.fixture
def teller(tiny_model: Path, clock: TestClock, journal: Journal) -> Iterator[Storyteller]:
    """The storyteller on the built-in tiny model, in virtual time, writing to the journal."""
    teller = Storyteller(tiny_model, clock=clock, journal=journal)
    yield teller
    teller.close()


class Answers:
    """What the model answered the storyteller, as it reached the storyteller's code (after
    the test's faults): the text of each completion, None for a missing one, in call order;
    the text of each streamed chunk. A call that raised is not in them."""

    def __init__(self) -> None:
        self.completions: list[str | None] = []
        self.chunks: list[str] = []


class _RecordedStream:
    """A streamed completion whose chunks are recorded as the storyteller takes them."""

    def __init__(self, chunks: Any, into: list[str]) -> None:
        self._chunks = chunks
        self._into = into

    def __iter__(self) -> _RecordedStream:
        return self

    def __next__(self) -> Any:
        chunk = next(self._chunks)
        self._into.append(chunk["choices"][0]["text"])
        return chunk

    def close(self) -> None:
        self._chunks.close()


@pytest.fixture
def answers(teller: Storyteller, monkeypatch: pytest.MonkeyPatch) -> Answers:
    """Records what the model answers ``teller``, so that a test can tell the model's story
    from one made up without it."""
    llm, seen = teller.llm, Answers()
    model = type(llm)

    # llama-cpp-python types both kinds of completion as one union: Any is the honest type
    def create_completion(*args: Any, **kwargs: Any) -> Any:
        # looked up on the class at each call: that is where the test's faults are installed
        answer: Any = model.create_completion(llm, *args, **kwargs)
        if kwargs.get("stream"):
            return _RecordedStream(answer, seen.chunks)
        seen.completions.append(None if answer is None else answer["choices"][0]["text"])
        return answer

    monkeypatch.setattr(llm, "create_completion", create_completion)
    return seen
