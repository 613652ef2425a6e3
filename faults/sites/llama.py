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
``overflow``         at ``llama.generate``, ``llama.chat`` and ``llama.stream``:
                     ``ValueError("Requested tokens (N) exceed context window of C")``, what
                     llama-cpp-python raises for a prompt longer than the context: C is the
                     model's ``n_ctx()``, N the prompt's token count when it does not fit,
                     else C plus that count. Where the real error comes (at the call, or at
                     the first chunk of a stream, a streamed chat's too).
``llama.embed``      ``embed`` / ``create_embedding``: ``nan`` (NaN and Inf), ``corrupt``
                     (one dimension short), in every vector of a batch.
``crash``            at every llama.* site: the process aborts (:func:`faults.effects.crash`)
                     at the call; at ``llama.stream`` when the chunk after the first n is
                     asked for (``crash(after=n)``); a streamed chat crashes at the call.
===================  ======================================================================

A call that llama-cpp-python makes to itself (``__call__`` to ``create_completion``, a chat
handler to ``create_completion``, ``create_embedding`` to ``embed``) is not counted again.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from typing import TYPE_CHECKING, Any, NoReturn

from faults.effects import (
    context_overflow,
    corrupt_json,
    corrupt_text,
    corrupt_vector,
    crash,
    nan_vector,
    overflowing,
)
from faults.sites.base import Outputs, Patch, after_of, close_source

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from faults.schedule import Decision
    from faults.sites.base import Restorer, SiteFaults

__all__ = ["LLAMA_OUTPUTS", "LlamaSites"]


def _decode_oom() -> BaseException:
    return RuntimeError("llama_decode returned 1")


def _load_oom() -> BaseException:
    return ValueError("Failed to create llama_context")


def _n_ctx(llm: Any) -> int:
    try:
        return int(llm.n_ctx())
    except Exception:  # noqa: BLE001 - a model without a context: a plausible size
        return 512


def _prompt_tokens(llm: Any, prompt: Any) -> int | None:
    """The prompt's token count as llama-cpp-python counts it (a chat's messages as the
    tiny template lays them out); None when it cannot be counted."""
    try:
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return len(prompt)
        if isinstance(prompt, list):
            prompt = "".join(f"{m.get('role')}: {m.get('content') or ''}\n" for m in prompt)
        if isinstance(prompt, str):
            return len(llm.tokenize(prompt.encode("utf-8"), special=True)) if prompt else 1
    except Exception:  # noqa: BLE001 - a plausible count instead
        return None
    return None


def _overflow(args: Any, kwargs: Any) -> BaseException:
    """The context-window error of the call ``(llm, prompt or messages, ...)``."""
    llm = args[0] if args else None
    prompt = kwargs.get("prompt", kwargs.get("messages", args[1] if len(args) > 1 else None))
    n_ctx = _n_ctx(llm)
    return context_overflow(overflowing(_prompt_tokens(llm, prompt), n_ctx), n_ctx)


def _raising(error: BaseException, chunks: Iterable[Any]) -> Iterator[Any]:
    """A stream that fails at its first chunk, as a streamed call whose prompt overflows."""
    __tracebackhide__ = True
    try:
        raise error
    finally:
        close_source(chunks)
    yield  # type: ignore[unreachable]  # a generator: the error comes at the first next()


def _crash(f: SiteFaults, d: Decision) -> NoReturn:
    f.fire(d)
    crash(f.name)


def _crashing(site: str, after: int, chunks: Iterator[Any]) -> Iterator[Any]:
    """The chunks of a stream until ``after`` of them were read; the next one aborts."""
    n = 0
    try:
        while True:
            if n == after:
                crash(site)
            try:
                item = next(chunks)
            except StopIteration:
                return
            n += 1
            yield item
    finally:
        close_source(chunks)


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
    "generate": Outputs(oom=_decode_oom, corrupt=_corrupt_completion, overflow=_overflow),
    "chat": Outputs(oom=_decode_oom, corrupt=_corrupt_chat, overflow=_overflow),
    "stream": Outputs(oom=_decode_oom, corrupt=_corrupt_chunk, overflow=_overflow),
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
            if d.term.kind == "crash":
                _crash(f, d)
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
            if d.term.kind == "crash":
                _crash(f, d)
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
        if d.term.kind == "crash":
            return _crashing(f.name, after_of(d.term), self.guarded(chunks))
        if d.term.kind == "overflow":
            return _raising(f.out.overflow(args, kw), chunks)
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
            if d.term.kind == "crash":
                _crash(chat, d)
            if d.term.kind == "overflow":  # a streamed chat fails at its first chunk
                chat.fire(d)
                return _raising(chat.out.overflow((llm, *args), kwargs), ())
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
