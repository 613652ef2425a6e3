"""The application code under test: a storyteller on llama-cpp-python, called directly.

Each call to the model is protected three ways, and the tests in ``tests/`` prove each one:

- an empty or missing answer is retried, with backoff;
- a model that keeps failing trips a circuit breaker, and callers get a resting message
  at once instead of waiting on it;
- a stream that stops mid-story ends after five idle seconds with the text it had.

When the retries are spent or the breaker is open, the answer is a resting message, marked
as a fallback (``fell_back``, which does nothing outside a test). The clock and journal are
arguments, so that tests can run the waits in virtual time and read what happened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import llama_cpp

from pytest_resilience import (
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    ConsecutiveFailures,
    HalfOpen,
    Retry,
    RetryError,
    StreamGuard,
    SystemClock,
    result_is_empty,
)
from pytest_resilience.core.app import fell_back

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from pytest_resilience import Clock, Journal, StreamResult

RESTING = "The storyteller is resting; come back in a minute."


class Storyteller:
    """Stories from a local model; never raises for a failing model, says so instead."""

    def __init__(
        self, model_path: Path | str, *, clock: Clock | None = None, journal: Journal | None = None
    ) -> None:
        clock = clock or SystemClock()
        # one thread for the prompt too (n_threads_batch defaults to every core): a model
        # this small gains nothing from more, and on a busy machine llama.cpp's threads spin
        # waiting for each other, which makes a call many times slower
        self.llm = llama_cpp.Llama(
            model_path=str(model_path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False
        )
        self.retry = Retry(
            on=RuntimeError,  # what llama-cpp-python raises when decoding fails
            on_result=result_is_empty,
            attempts=3,
            backoff=Backoff(base=0.5, factor=2.0, jitter="none"),
            clock=clock,
            journal=journal,
            name="story",
        )
        self.breaker = CircuitBreaker(
            "model",
            on=RuntimeError,
            trip=ConsecutiveFailures(3),
            recovery=HalfOpen(after=60.0),
            clock=clock,
            journal=journal,
        )
        self.guard = StreamGuard(
            first_token=10.0, idle=5.0, on_stall="return", clock=clock, journal=journal
        )

    def tell(self, prompt: str) -> str:
        """A story for ``prompt``, or :data:`RESTING` when the model keeps failing."""
        try:
            story = self.retry.call(self.breaker.call, self._complete, prompt)
        except (RetryError, CircuitOpenError) as exc:
            fell_back("resting", after=exc)
            return RESTING
        return story or RESTING  # the retry only returns a story that is not empty

    def stream(self, prompt: str) -> StreamResult:
        """A streamed story; ``.text`` keeps what arrived even if the stream stalled."""
        return self.guard.collect(self._chunks(prompt))

    # llama-cpp-python types both kinds of completion as one union: Any is the honest type
    def _complete(self, prompt: str) -> str | None:
        answer: Any = self.llm.create_completion(prompt, max_tokens=12, temperature=0.0)
        return None if answer is None else str(answer["choices"][0]["text"])

    def _chunks(self, prompt: str) -> Iterator[str]:
        chunks: Any = self.llm.create_completion(
            prompt, max_tokens=12, temperature=0.0, stream=True
        )
        try:
            for chunk in chunks:
                yield chunk["choices"][0]["text"]
        finally:
            chunks.close()  # a stopped story must stop the generation too

    def close(self) -> None:
        self.llm.close()
