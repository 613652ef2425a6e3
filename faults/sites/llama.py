"""The ``llama.*`` sites: ``llama_cpp.Llama`` itself, patched for the injection, so any code
that uses llama-cpp-python (ours or a user's) meets the faults unchanged.

===================  ======================================================================
``llama.load``       ``Llama.__init__``. ``oom`` raises ``ValueError("Failed to create
                     llama_context")``: what llama-cpp-python raises when llama.cpp cannot
                     allocate the context (LlamaBackend maps it to ResourceExhausted).
``llama.generate``   ``create_completion`` / ``__call__`` without ``stream=True``. ``oom``
                     raises ``RuntimeError("llama_decode returned 1")``: llama.cpp's "no KV
                     slot" as llama-cpp-python reports it. ``corrupt``: empty text.
``llama.chat``       every ``create_chat_completion`` call, streamed or not (LlamaBackend
                     streams chat internally). ``corrupt``: the reply is invalid JSON.
``llama.stream``     the chunk iterator of a streaming completion or chat. ``corrupt``: each
                     chunk loses its choices; ``lost(after=n)``: ``ConnectionResetError``.
``llama.embed``      ``embed`` / ``create_embedding``: ``nan`` (NaN and Inf), ``corrupt``
                     (one dimension short), in every vector of a batch.
===================  ======================================================================

A call that llama-cpp-python makes to itself (``__call__`` to ``create_completion``, a chat
handler to ``create_completion``, ``create_embedding`` to ``embed``) is not counted again.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from typing import TYPE_CHECKING, Any

from faults.effects import corrupt_json, corrupt_text, corrupt_vector, nan_vector
from faults.sites.base import Outputs, Patch, close_source

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from faults.sites.base import Restorer, SiteFaults

__all__ = ["LLAMA_OUTPUTS", "LlamaSites"]


def _decode_oom() -> BaseException:
    return RuntimeError("llama_decode returned 1")


def _load_oom() -> BaseException:
    return ValueError("Failed to create llama_context")


def _corrupt_completion(response: Any) -> Any:
    if not isinstance(response, dict):
        return response
    choices = [dict(c) for c in response.get("choices", [])]
    for choice in choices:
        choice["text"] = corrupt_text(str(choice.get("text", "")))
    return {**response, "choices": choices}


def _corrupt_chat(response: Any) -> Any:
    if isinstance(response, dict):
        choices = []
        for choice in response.get("choices", []):
            message = dict(choice.get("message", {}))
            message["content"] = corrupt_json(str(message.get("content") or ""))
            choices.append({**choice, "message": message})
        return {**response, "choices": choices}
    if response is None:
        return None
    return _corrupt_chat_stream(iter(response))


def _corrupt_chat_stream(chunks: Iterator[Any]) -> Iterator[Any]:
    """A streamed chat reply read whole and sent again as one chunk of invalid JSON."""
    first: Any = None
    parts: list[str] = []
    try:
        for chunk in chunks:
            first = chunk if first is None else first
            parts.extend(
                str(c.get("delta", {}).get("content") or "") for c in chunk.get("choices", [])
            )
    finally:
        close_source(chunks)
    head = {k: v for k, v in (first or {}).items() if k != "choices"}
    delta = {"role": "assistant", "content": corrupt_json("".join(parts))}
    yield {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": "stop"}]}


def _corrupt_chunk(chunk: Any) -> Any:
    return {**chunk, "choices": []} if isinstance(chunk, dict) else None


def _vectors(transform: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Apply ``transform`` to what embed() or create_embedding() returned, whatever shape."""

    def apply(result: Any) -> Any:
        if isinstance(result, tuple):  # embed(..., return_count=True)
            return (apply(result[0]), *result[1:])
        if isinstance(result, dict):  # create_embedding
            rows = [{**r, "embedding": transform(r["embedding"])} for r in result["data"]]
            return {**result, "data": rows}
        return None if result is None else transform(result)

    return apply


LLAMA_OUTPUTS = {
    "load": Outputs(oom=_load_oom),
    "generate": Outputs(oom=_decode_oom, corrupt=_corrupt_completion),
    "chat": Outputs(oom=_decode_oom, corrupt=_corrupt_chat),
    "stream": Outputs(oom=_decode_oom, corrupt=_corrupt_chunk),
    "embed": Outputs(corrupt=_vectors(corrupt_vector), nan=_vectors(nan_vector)),
}


def _position(fn: Callable[..., Any], name: str) -> int:
    """The index of parameter ``name`` among the positional arguments after ``self``."""
    names = list(inspect.signature(fn).parameters)
    return names.index(name) - 1 if name in names else 1 << 30


class LlamaSites:
    """The patches of ``llama_cpp.Llama`` for the llama.* sites of one injection.

    ``depth`` (per thread) is how many patched calls are running: a call llama-cpp-python
    makes to itself from inside one passes straight through.
    """

    def __init__(self, faults: Mapping[str, SiteFaults]) -> None:
        self.faults = faults
        self.local = threading.local()

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        local = self.local
        local.depth = getattr(local, "depth", 0) + 1
        try:
            yield
        finally:
            local.depth -= 1

    def busy(self) -> bool:
        return getattr(self.local, "depth", 0) > 0

    def guarded(self, chunks: Iterable[Any]) -> Iterator[Any]:
        __tracebackhide__ = True
        it = iter(chunks)
        try:
            while True:
                with self.inside():
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                yield item
        finally:
            close_source(it)

    def install(self, llama: type) -> list[Restorer]:
        f = self.faults
        wanted: dict[str, Callable[[Any], Any]] = {}
        if "load" in f:
            wanted["__init__"] = self.load
        if "generate" in f or "stream" in f:
            wanted["create_completion"] = wanted["__call__"] = self.completion
        if "chat" in f or "stream" in f:
            wanted["create_chat_completion"] = self.chat
        if "embed" in f:
            wanted["embed"] = wanted["create_embedding"] = self.embed
        done: list[Restorer] = []
        try:
            for name, make in wanted.items():
                done.append(Patch(llama, name, make(vars(llama)[name])))
        except BaseException:
            for patch in reversed(done):
                patch.restore()
            raise
        return done

    def load(self, original: Callable[..., Any]) -> Callable[..., Any]:
        f = self.faults["load"]

        @functools.wraps(original)
        def __init__(llm: Any, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            d = f.decide()
            if d is None:
                return original(llm, *args, **kwargs)
            # Llama.__del__ closes self._stack: give a failed load what a real one leaves.
            llm.__dict__.setdefault("_stack", contextlib.ExitStack())
            return f.call(d, original, (llm, *args), kwargs)

        return __init__

    def _call(self, f: SiteFaults | None, original: Callable[..., Any], args: Any, kw: Any) -> Any:
        __tracebackhide__ = True
        d = f.decide() if f is not None else None
        with self.inside():
            if d is None or f is None:
                return original(*args, **kw)
            return f.call(d, original, args, kw)

    def _streamed(self, original: Callable[..., Any], args: Any, kw: Any) -> Any:
        """A streaming call: the stream site decides, its chunks are iterated guarded."""
        with self.inside():
            chunks = original(*args, **kw)
        if chunks is None or isinstance(chunks, dict):
            return chunks
        f = self.faults.get("stream")
        d = f.decide() if f is not None else None
        if d is None or f is None:
            return self.guarded(chunks)
        f.fire(d)
        return f.stream(d, self.guarded(chunks))

    def completion(self, original: Callable[..., Any]) -> Callable[..., Any]:
        at = _position(original, "stream")
        generate = self.faults.get("generate")

        @functools.wraps(original)
        def completion(llm: Any, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            if self.busy():
                return original(llm, *args, **kwargs)
            if kwargs.get("stream", len(args) > at and args[at]):
                return self._streamed(original, (llm, *args), kwargs)
            return self._call(generate, original, (llm, *args), kwargs)

        return completion

    def chat(self, original: Callable[..., Any]) -> Callable[..., Any]:
        at = _position(original, "stream")
        chat = self.faults.get("chat")

        @functools.wraps(original)
        def create_chat_completion(llm: Any, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            if self.busy():
                return original(llm, *args, **kwargs)
            if not kwargs.get("stream", len(args) > at and args[at]):
                return self._call(chat, original, (llm, *args), kwargs)
            d = chat.decide() if chat is not None else None
            if d is None or chat is None:
                return self._streamed(original, (llm, *args), kwargs)
            return chat.call(d, lambda: self._streamed(original, (llm, *args), kwargs), (), {})

        return create_chat_completion

    def embed(self, original: Callable[..., Any]) -> Callable[..., Any]:
        f = self.faults["embed"]

        @functools.wraps(original)
        def embed(llm: Any, *args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            if self.busy():
                return original(llm, *args, **kwargs)
            return self._call(f, original, (llm, *args), kwargs)

        return embed
