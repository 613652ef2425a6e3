"""An assistant that answers with a local model, loaded on first use, and never raises for
a failing model: it answers with an apology instead. Built with ``fixed=False`` it has the
three bugs the fault sweep must find, each seen in real apps on llama-cpp-python:

(a) its retry lists the errors it expects from a network (``ConnectionError``,
    ``TimeoutError``), and llama-cpp-python raises ``RuntimeError`` when decoding fails:
    a failure that one retry would have absorbed reaches the user;
(b) it says "busy" for ``MemoryError`` only, and llama-cpp-python reports running out of
    memory as ``ValueError("Failed to create llama_context")`` when loading and
    ``RuntimeError("llama_decode returned 1")`` when decoding: neither is classified;
(c) its stream checks the idle time between chunks after the loop over them has ended, so
    a stream that stalls keeps it waiting forever.

``fixed=True`` is the same app with the three mended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import llama_cpp

from pytest_resilience import Backoff, Retry, RetryError, StreamGuard, result_is_empty
from pytest_resilience.core.app import fell_back
from pytest_resilience.core.cancel import deadline
from pytest_resilience.core.errors import DeadlineExceeded

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from pytest_resilience import Clock

SORRY: Final = "Sorry, the assistant is unavailable; try again later."
BUSY: Final = "The assistant is busy; try a shorter question."
TOO_LONG: Final = "That question is too long for the assistant."
#: How llama-cpp-python says that memory ran out: loading, decoding.
_OUT_OF_MEMORY: Final = ("Failed to create llama_context", "llama_decode returned 1")


@dataclass(frozen=True, slots=True)
class Reply:
    """The assistant's answer: ``kind`` is ``model`` (the model's text), ``busy``,
    ``too long`` or ``sorry``; ``complete`` is false for a stream that ended early."""

    text: str
    kind: str
    complete: bool = True


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the model running out of memory, as llama-cpp-python says it."""
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError | ValueError) and str(exc).startswith(_OUT_OF_MEMORY)
    )


class Assistant:
    def __init__(self, model_path: Path | str, *, clock: Clock, fixed: bool = False) -> None:
        self.model_path = str(model_path)
        self.clock = clock
        self.fixed = fixed
        self.llm: Any = None
        expected: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
        if fixed:  # (a): what llama-cpp-python raises when a decode fails
            expected += (RuntimeError,)
        self.retry = Retry(
            on=expected,
            on_result=result_is_empty,
            attempts=3,
            backoff=Backoff(base=0.5, factor=2.0, jitter="none"),
            clock=clock,
            name="answer",
        )
        self.guard = StreamGuard(first_token=10.0, idle=5.0, on_stall="return", clock=clock)

    def _model(self) -> Any:
        if self.llm is None:
            self.llm = llama_cpp.Llama(
                model_path=self.model_path, n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False
            )
        return self.llm

    def answer(self, question: str) -> Reply:
        """The model's answer, or a reply that says why there is none."""
        try:
            text = self.retry.call(self._complete, question)
        except RetryError:
            return Reply(SORRY, "sorry")
        except MemoryError:
            return Reply(BUSY, "busy")
        except (RuntimeError, ValueError) as exc:
            if not self.fixed:
                raise
            if out_of_memory(exc):  # (b): llama-cpp-python's own words for it
                return Reply(BUSY, "busy")
            if "exceed context window" in str(exc):
                return Reply(TOO_LONG, "too long")
            raise
        return Reply(str(text), "model")

    def _complete(self, question: str) -> str | None:
        try:
            llm = self._model()
            with deadline(30.0, clock=self.clock):
                answer: Any = llm.create_completion(question, max_tokens=12, temperature=0.0)
        except (RuntimeError, ValueError) as exc:
            if self.fixed and out_of_memory(exc):
                raise MemoryError(str(exc)) from exc  # retrying will not free the memory
            raise
        except DeadlineExceeded:
            raise
        if answer is None:
            return None
        return str(answer["choices"][0].get("text") or "") or None

    def stream(self, question: str) -> Reply:
        """The model's answer as it streams; what arrived if the stream stalls, fails or is
        cut (no chunk said why it finished), marked as a fallback."""
        if not self.fixed:
            return self._stream_unguarded(question)
        finished: list[str] = []
        try:
            result = self.guard.collect(self._chunks(question, finished))
        except (RuntimeError, ValueError, ConnectionError) as exc:
            fell_back("sorry", after=exc)
            return Reply(BUSY if out_of_memory(exc) else SORRY, "sorry")
        if not result.text or not finished:
            fell_back("partial", after=result.reason if finished else "cut")
            return Reply(result.text or SORRY, "sorry", complete=False)
        return Reply(result.text, "model", result.complete)

    def _stream_unguarded(self, question: str) -> Reply:
        # (c): the idle time is checked once the loop is over: a stalled stream never ends it
        parts: list[str] = []
        last = self.clock.now()
        idle = 0.0
        for text in self._chunks(question):
            idle = max(idle, self.clock.now() - last)
            last = self.clock.now()
            parts.append(text)
        if idle > 5.0:
            return Reply("".join(parts) or SORRY, "sorry", complete=False)
        return Reply("".join(parts) or SORRY, "model" if parts else "sorry")

    def _chunks(self, question: str, finished: list[str] | None = None) -> Iterator[str]:
        chunks: Any = self._model().create_completion(
            question, max_tokens=12, temperature=0.0, stream=True
        )
        try:
            for chunk in chunks:
                choices = chunk.get("choices") or [{}]
                if choices[0].get("finish_reason") and finished is not None:
                    finished.append(str(choices[0]["finish_reason"]))
                yield str(choices[0].get("text") or "")
        finally:
            chunks.close()

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
