"""The in-process backend: llama-cpp-python, cancellable between tokens.

:class:`LlamaBackend` speaks the :class:`~pytest_resilience.backends.base.Backend` protocol
over a ``llama_cpp.Llama``. ``llama_cpp`` is imported when a backend is built, never when
this module is imported, and always through the module attribute (``llama_cpp.Llama``,
``Llama.create_completion``, ...), so the fault injector's patches of llama-cpp-python reach
every call made here.

Cancellation: generation reads the cancel scope current when it starts (and, for a stream,
the one current at each ``next()``) through llama-cpp-python's ``stopping_criteria``, so a
cancelled or expired scope stops llama.cpp after at most one more token, and the call then
raises the scope's error (:class:`~pytest_resilience.core.errors.Cancelled` or
:class:`~pytest_resilience.core.errors.DeadlineExceeded`). Closing a :class:`LlamaStream`, or
dropping it, closes the generator behind it, which ends the generation.

One ``Llama`` holds one context, so one generation runs at a time per backend: calls are
serialised by a lock, and starting a generation closes a stream still open on the same
backend (its next ``next()`` raises :class:`~pytest_resilience.core.errors.StreamInterrupted`).

llama-cpp-python's failures are mapped with ``raise ... from exc``::

    ValueError "Model path does not exist" / "Failed to load model from file" /
      "Failed to get vocab"                          -> ModelNotFound(path)
    ValueError "Failed to create llama_context" / "... llama_batch", MemoryError,
      RuntimeError "llama_decode returned 1" (no KV slot)  -> ResourceExhausted
    RuntimeError "llama_decode/encode returned n"    -> BackendError
    a malformed answer, a bad embedding              -> InvalidOutput

Anything else (a prompt longer than the context is a ``ValueError``) propagates unchanged.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.cancel import current_scope
from ..core.errors import (
    BackendError,
    InvalidOutput,
    ModelNotFound,
    ResilienceError,
    ResourceExhausted,
    StreamInterrupted,
)
from ..core.leaks import track
from .base import GenerationParams

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from types import TracebackType

    from ..core.cancel import CancelScope

__all__ = ["EmbeddingCheck", "LlamaBackend", "LlamaStream", "map_llama_error"]

_NOT_FOUND = re.compile(r"model path does not exist|failed to load model|failed to get vocab", re.I)
_NO_MEMORY = re.compile(r"failed to create llama_(context|batch)|out of memory|alloc", re.I)
_DECODE = re.compile(r"llama_(decode|encode) returned (-?\d+)")


def map_llama_error(exc: BaseException, model_path: str) -> BaseException | None:
    """The core error for a llama-cpp-python failure, or None if it is not one we know."""
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


class _StopSignal:
    """The stopping criterion: true once the stream is closed or a cancel scope has ended.

    It reads the scope captured when the generation started and the scope current in the
    thread that drives the generator, so it is right whoever iterates.
    """

    __slots__ = ("closed", "scope")

    def __init__(self, scope: CancelScope | None) -> None:
        self.scope = scope
        self.closed = False

    def _scopes(self) -> tuple[CancelScope, ...]:
        here = current_scope()
        if here is None or here is self.scope:
            return () if self.scope is None else (self.scope,)
        return (here,) if self.scope is None else (self.scope, here)

    def __call__(self, input_ids: object = None, logits: object = None) -> bool:
        return self.closed or any(s.cancelled or s.expired for s in self._scopes())

    def check(self) -> None:
        """Raise the error of an ended scope (Cancelled or DeadlineExceeded)."""
        for scope in self._scopes():
            scope.check()


class LlamaStream:
    """The chunks of one streaming completion; ``close()`` stops the generation.

    ``text`` holds what has been received so far. Iterating after the scope is cancelled
    raises the scope's error; after the backend started another generation, raises
    :class:`StreamInterrupted`; after ``close()``, ends. Closing from another thread stops
    the generation after at most one more token.
    """

    def __init__(self, backend: LlamaBackend, chunks: Iterator[Any], signal: _StopSignal) -> None:
        self._backend = backend
        self._chunks: Iterator[Any] | None = chunks
        self._signal = signal
        self._superseded = False
        self.text = ""
        self.finish_reason: str | None = None
        track(self, "stream")  # open until closed, ended or superseded (see leaks)

    @property
    def closed(self) -> bool:
        """Whether the generation behind it is over: closed, run out, failed or superseded."""
        return self._chunks is None or self._signal.closed

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        size = f"{len(self.text)} character{'' if len(self.text) == 1 else 's'} so far"
        return f"<LlamaStream of {self._backend.name!r} {state}, {size}>"

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        with self._backend._lock:
            if self._superseded:
                raise StreamInterrupted("superseded by another generation", self.text)
            ok = False
            try:
                text = self._next_text()
                ok = True
                return text
            finally:
                if not ok:  # ended, cancelled or failed: the generation behind it stops here
                    self._close_locked()

    def _next_text(self) -> str:
        while True:
            if self._chunks is None or self._signal.closed:
                raise StopIteration
            self._signal.check()
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._signal.check()  # the criterion ended it: raise, as generate() does
                raise
            except (ValueError, RuntimeError, MemoryError) as exc:
                mapped = map_llama_error(exc, self._backend.model_path)
                if mapped is None:
                    raise
                raise mapped from exc
            if self._signal.closed:
                raise StopIteration
            self._signal.check()  # cancelled while llama.cpp worked: deliver nothing more
            text, self.finish_reason = _chunk_text(chunk)
            if text:
                self.text += text
                return text

    def close(self) -> None:
        """Stop the generation and release the model. Idempotent, safe from any thread."""
        self._signal.closed = True  # a next() running elsewhere stops at its next token
        with self._backend._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        chunks, self._chunks = self._chunks, None
        if chunks is not None:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _supersede(self) -> None:
        self._superseded = True
        self._close_locked()

    def __enter__(self) -> LlamaStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


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


def _criteria(signal: _StopSignal) -> Any:
    import llama_cpp  # noqa: PLC0415 - optional, and costly to import

    return llama_cpp.StoppingCriteriaList([signal])


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


class LlamaBackend:
    """A model loaded in process with llama-cpp-python.

    ``model_path``: a GGUF file. ``n_ctx``: the context size. ``seed``: the model's seed
    (each call also passes ``GenerationParams.seed``). ``n_threads``: llama.cpp's threads
    (None: its default). ``embedding``: load the embedding context now rather than at the
    first ``embed()`` (it is a second context with mean pooling: a causal model cannot
    generate and pool in one). ``embedding_check`` validates vectors. ``verbose`` is passed on.

    Raises ModelNotFound when the file is missing or not a model, ResourceExhausted when
    llama.cpp cannot allocate the model or its context.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int = 512,
        seed: int = 0,
        n_threads: int | None = None,
        embedding: bool = False,
        embedding_check: EmbeddingCheck | None = None,
        name: str = "llama",
        verbose: bool = False,
    ) -> None:
        self.name = name
        self.model_path = os.fspath(model_path)
        self.embedding_check = embedding_check or EmbeddingCheck()
        self._options: dict[str, Any] = {"n_ctx": n_ctx, "seed": seed, "verbose": verbose}
        if n_threads is not None:
            self._options |= {"n_threads": n_threads, "n_threads_batch": n_threads}
        self._lock = threading.RLock()
        self._active: weakref.ref[LlamaStream] | None = None
        self._embedder: Any = None
        self._closed = False
        self._llm: Any = self._load()
        if embedding:
            self._embedder = self._load(embedding=True)
        track(self, "backend")  # a loaded model: open until close() (see leaks)

    # ----------------------------------------------------------------- loading, closing

    def _load(self, *, embedding: bool = False) -> Any:
        if not os.path.isfile(self.model_path):
            what = "is not a file" if os.path.exists(self.model_path) else "does not exist"
            raise ModelNotFound(self.model_path, what)
        import llama_cpp  # noqa: PLC0415 - optional, and costly to import

        options = dict(self._options)
        if embedding:
            options |= {"embedding": True, "pooling_type": llama_cpp.LLAMA_POOLING_TYPE_MEAN}
        try:
            return llama_cpp.Llama(model_path=self.model_path, **options)
        except (ValueError, RuntimeError, MemoryError) as exc:
            mapped = map_llama_error(exc, self.model_path)
            if mapped is None:
                raise
            raise mapped from exc

    @property
    def llama(self) -> Any:
        """The underlying ``llama_cpp.Llama`` (for tests and measurements)."""
        self._check_open()
        return self._llm

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Close any open stream and free the model and its contexts. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._supersede_active()
            for llm in (self._llm, self._embedder):
                if llm is not None:
                    llm.close()
            self._llm = self._embedder = None

    def __enter__(self) -> LlamaBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"backend {self.name!r} is closed")

    def _supersede_active(self) -> None:
        stream = self._active() if self._active is not None else None
        if stream is not None:
            stream._supersede()
        self._active = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<LlamaBackend {self.name!r} {self.model_path!r} {state}>"

    # ------------------------------------------------------------------------ generation

    @staticmethod
    def _sampling(params: GenerationParams) -> dict[str, Any]:
        # repeat_penalty always explicit: the daemon defaults to 1.1, create_completion to 1.0
        return {
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
            "repeat_penalty": params.repeat_penalty,
            "stop": list(params.stop),
        }

    def _call(self, method: str, signal: _StopSignal, **kwargs: Any) -> Any:
        """Run one llama-cpp-python call under the lock with errors mapped."""
        signal.check()
        with self._lock:
            self._check_open()
            self._supersede_active()
            try:
                return getattr(self._llm, method)(**kwargs)
            except (ValueError, RuntimeError, MemoryError) as exc:
                mapped = map_llama_error(exc, self.model_path)
                if mapped is None:
                    raise
                raise mapped from exc

    def generate(self, prompt: str, params: GenerationParams | None = None) -> str:
        """The completion of ``prompt``. Raises the scope's error if it is cancelled or
        expires meanwhile (generation stops within one token), InvalidOutput for a
        malformed answer, ResourceExhausted / BackendError when llama.cpp fails.
        """
        params = params or GenerationParams()
        signal = _StopSignal(current_scope())
        response = self._call(
            "create_completion",
            signal,
            prompt=prompt,
            stream=False,
            stopping_criteria=_criteria(signal),
            **self._sampling(params),
        )
        signal.check()  # stopped by the scope: raise, never return the partial text
        return _completion_text(response)

    def stream(self, prompt: str, params: GenerationParams | None = None) -> LlamaStream:
        """The completion of ``prompt`` as text chunks (about one per token)."""
        params = params or GenerationParams()
        signal = _StopSignal(current_scope())
        chunks = self._call(
            "create_completion",
            signal,
            prompt=prompt,
            stream=True,
            stopping_criteria=_criteria(signal),
            **self._sampling(params),
        )
        return self._track(chunks, signal)

    def chat(
        self, messages: Sequence[Mapping[str, str]], params: GenerationParams | None = None
    ) -> str:
        """The assistant's reply to ``messages`` (``{"role": ..., "content": ...}``), formatted
        by the model's chat template. Streams internally, because ``create_chat_completion``
        takes no stopping criteria, so cancellation still stops it between tokens; raises
        like :meth:`generate`.
        """
        params = params or GenerationParams()
        signal = _StopSignal(current_scope())
        chunks = self._call(
            "create_chat_completion",
            signal,
            messages=[dict(m) for m in messages],
            stream=True,
            **self._sampling(params),
        )
        if isinstance(chunks, dict):  # a patched create_chat_completion may ignore stream=True
            return _completion_text(chunks, chat=True)
        with self._track(chunks, signal) as stream:
            return "".join(stream)

    def _track(self, chunks: object, signal: _StopSignal) -> LlamaStream:
        """Wrap a chunk iterator as the backend's one active stream."""
        if chunks is None:
            raise InvalidOutput("llama-cpp-python returned None instead of a stream")
        stream = LlamaStream(self, iter(chunks), signal)  # type: ignore[call-overload]
        with self._lock:
            self._supersede_active()
            self._active = weakref.ref(stream)
        return stream

    # ------------------------------------------------------------------------ embeddings

    def embed(self, text: str) -> list[float]:
        """The validated embedding of ``text`` (mean-pooled); raises InvalidOutput naming
        the defect (None, wrong dimension, NaN/Inf at an index, not normalisable).
        """
        signal = _StopSignal(current_scope())
        signal.check()
        with self._lock:
            self._check_open()
            if self._embedder is None:
                self._embedder = self._load(embedding=True)
            try:
                vector = self._embedder.embed(text)
                width = int(self._embedder.n_embd())
            except (ValueError, RuntimeError, MemoryError) as exc:
                mapped = map_llama_error(exc, self.model_path)
                if mapped is None:
                    raise
                raise mapped from exc
        return self.embedding_check(vector, dim=width)
