"""What llama-cpp-python gives back, checked before anyone sees it: :func:`map_llama_error`
turns its failures into the core's errors, :class:`EmbeddingCheck` validates embedding
vectors (the daemon's client uses it too), and the readers of completions and stream chunks
raise InvalidOutput for a malformed answer.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

from ...core.errors import (
    BackendError,
    InvalidOutput,
    ModelNotFound,
    ResilienceError,
    ResourceExhausted,
)

__all__ = ["EmbeddingCheck", "map_llama_error"]

_NOT_FOUND = re.compile(r"model path does not exist|failed to load model|failed to get vocab", re.I)
_NO_MEMORY = re.compile(r"failed to create llama_(context|batch)|out of memory|alloc", re.I)
_DECODE = re.compile(r"llama_(decode|encode) returned (-?\d+)")


def map_llama_error(exc: BaseException, model_path: str) -> BaseException | None:
    """The core error for a llama-cpp-python failure, or None if it is not one we know.

    Callers raise the error ``from exc``; a None means the failure propagates unchanged (a
    prompt longer than the context, for one, is a plain ``ValueError``)::

        ValueError "Model path does not exist" / "Failed to load model from file" /
          "Failed to get vocab"                          -> ModelNotFound(path)
        ValueError "Failed to create llama_context" / "... llama_batch", MemoryError,
          RuntimeError "llama_decode returned 1" (no KV slot)  -> ResourceExhausted
        RuntimeError "llama_decode/encode returned n"    -> BackendError
    """
    if isinstance(exc, ResilienceError):
        return None
    text = str(exc)
    if isinstance(exc, MemoryError):
        return ResourceExhausted(text or "out of memory")
    if isinstance(exc, ValueError):
        if _NOT_FOUND.search(text):
            return ModelNotFound(model_path, text)
        if _NO_MEMORY.search(text):
            return ResourceExhausted(text)
    if isinstance(exc, RuntimeError) and (m := _DECODE.search(text)):
        # llama_decode: 1 = no KV slot for the batch (context full); other codes are errors
        return ResourceExhausted(text) if m.group(2) == "1" else BackendError(text)
    return None


@dataclass(frozen=True, slots=True)
class EmbeddingCheck:
    """How embeddings are validated: the expected dimension (None: the model's width) and
    whether to L2-normalise them.
    """

    dim: int | None = None
    normalize: bool = False

    def __call__(self, vector: object, *, dim: int | None = None) -> list[float]:
        """``vector`` as a list of floats; raises InvalidOutput naming what is wrong: not a
        flat sequence of numbers, the wrong dimension, NaN or Inf (with the index), or an
        all-zero vector that cannot be normalised.
        """
        expected = self.dim if self.dim is not None else dim
        if vector is None:
            raise InvalidOutput("embedding is None")
        if isinstance(vector, str | bytes) or not hasattr(vector, "__len__"):
            raise InvalidOutput(f"embedding is not a vector: {type(vector).__name__}")
        values = list(vector)  # type: ignore[call-overload]
        if values and not all(isinstance(v, numbers.Real) for v in values):
            bad = next(v for v in values if not isinstance(v, numbers.Real))
            raise InvalidOutput(
                f"embedding is not a flat vector of numbers (found {type(bad).__name__})"
            )
        if expected is not None and len(values) != expected:
            raise InvalidOutput(f"embedding has {len(values)} dimensions, expected {expected}")
        if not values:
            raise InvalidOutput("embedding is empty")
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise InvalidOutput(f"embedding has {v} at index {i}")
        floats = [float(v) for v in values]
        if not self.normalize:
            return floats
        norm = math.sqrt(math.fsum(v * v for v in floats))
        if norm == 0.0:
            raise InvalidOutput("embedding is all zeros: cannot normalise it")
        return [v / norm for v in floats]


def _chunk_text(chunk: object) -> tuple[str, str | None]:
    """(text, finish_reason) of a completion or chat stream chunk."""
    try:
        choice = chunk["choices"][0]  # type: ignore[index]
        # completions carry "text"; chat chunks a "delta" whose "content" may be absent
        text = choice["text"] if "text" in choice else choice.get("delta", {}).get("content")
        text = "" if text is None else text
        reason = choice.get("finish_reason")
    except (TypeError, KeyError, IndexError, AttributeError) as exc:
        raise InvalidOutput(f"malformed stream chunk: {chunk!r:.200}") from exc
    if not isinstance(text, str):
        raise InvalidOutput(f"stream chunk text is {type(text).__name__}, not str")
    return text, reason


def _completion_text(response: object, *, chat: bool = False) -> str:
    if response is None:
        raise InvalidOutput("llama-cpp-python returned None")
    try:
        choice = response["choices"][0]  # type: ignore[index]
        text = choice["message"]["content"] if chat else choice["text"]
    except (TypeError, KeyError, IndexError) as exc:
        raise InvalidOutput(f"malformed completion: {response!r:.200}") from exc
    if chat and text is None:
        return ""
    if not isinstance(text, str):
        raise InvalidOutput(f"completion text is {type(text).__name__}, not str")
    return text
