"""The one small protocol every model backend speaks.

A backend generates text, streams it as chunks, and embeds text. A stream is an iterator
of text chunks with ``close()``: closing it (or abandoning it) must stop the generation
behind it. Backends honour the current cancel scope (``pytest_resilience.core.cancel``)
between tokens or chunks, and raise the core's errors (``pytest_resilience.core.errors``),
chaining the library's own exception with ``raise ... from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Sequence

__all__ = ["AsyncBackend", "AsyncTextStream", "Backend", "GenerationParams", "TextStream"]


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """What to generate. Degradation lowers these (fewer tokens, a smaller model)."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    repeat_penalty: float = 1.0  # the daemon defaults to 1.1: always sent explicitly
    stop: tuple[str, ...] = field(default_factory=tuple)

    def with_(self, **changes: object) -> Self:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]


@runtime_checkable
class TextStream(Protocol):
    """An iterator of text chunks that can be closed early."""

    def __iter__(self) -> Iterator[str]: ...
    def __next__(self) -> str: ...
    def close(self) -> None: ...


@runtime_checkable
class AsyncTextStream(Protocol):
    def __aiter__(self) -> AsyncIterator[str]: ...
    async def __anext__(self) -> str: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """A synchronous model backend."""

    name: str

    def generate(self, prompt: str, params: GenerationParams | None = None) -> str:
        """The whole completion of ``prompt``."""
        ...

    def stream(self, prompt: str, params: GenerationParams | None = None) -> TextStream:
        """The completion as chunks; closing the stream stops the generation."""
        ...

    def embed(self, text: str) -> Sequence[float]:
        """A validated embedding vector of ``text``."""
        ...

    def close(self) -> None:
        """Release the model or the connection pool."""
        ...


@runtime_checkable
class AsyncBackend(Protocol):
    """The async counterpart, for backends that have one (the daemon)."""

    name: str

    async def agenerate(self, prompt: str, params: GenerationParams | None = None) -> str: ...
    def astream(self, prompt: str, params: GenerationParams | None = None) -> AsyncTextStream: ...
    async def aembed(self, text: str) -> Sequence[float]: ...
    async def aclose(self) -> None: ...
