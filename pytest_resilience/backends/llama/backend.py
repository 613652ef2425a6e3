"""The in-process backend: :class:`LlamaBackend` speaks the
:class:`~pytest_resilience.backends.base.Backend` protocol over a ``llama_cpp.Llama``.
``llama_cpp`` is imported when a backend is built, never when this module is imported, and
always through the module attribute (``llama_cpp.Llama``, ``Llama.create_completion``, ...),
so the fault injector's patches of llama-cpp-python reach every call made here. One
``Llama`` holds one context, so one generation runs at a time per backend: calls are
serialised by a lock, and starting a generation closes a stream still open on the same
backend (its next ``next()`` raises StreamInterrupted).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from ...core.cancel import current_scope
from ...core.errors import BackendError, InvalidOutput, ModelNotFound
from ...core.leaks import track
from ..base import GenerationParams
from .checks import EmbeddingCheck, _completion_text, map_llama_error
from .stream import LlamaStream, _criteria, _StopSignal

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

__all__ = ["LlamaBackend"]


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
