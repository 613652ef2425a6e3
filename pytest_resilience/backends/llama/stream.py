"""Cancellation and streaming for the in-process backend. Generation reads the cancel scope
current when it starts (and, for a stream, the one current at each ``next()``) through
llama-cpp-python's ``stopping_criteria``, so a cancelled or expired scope stops llama.cpp
after at most one more token, and the call then raises the scope's error (Cancelled or
DeadlineExceeded). Closing a :class:`LlamaStream`, or dropping it, closes the generator
behind it, which ends the generation; a stream superseded by the backend's next generation
raises StreamInterrupted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...core.cancel import current_scope
from ...core.errors import StreamInterrupted
from ...core.leaks import track
from .checks import _chunk_text, map_llama_error

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from ...core.cancel import CancelScope
    from .backend import LlamaBackend

__all__ = ["LlamaStream"]


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


def _criteria(signal: _StopSignal) -> Any:
    import llama_cpp  # noqa: PLC0415 - optional, and costly to import

    return llama_cpp.StoppingCriteriaList([signal])
