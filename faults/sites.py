"""The built-in sites: where the injector patches, and what each fault kind does there.

Every site is a patch of a class or module attribute, applied by :func:`install` and undone,
restoring the exact original object, by the :class:`Patch` it returns. A site counts its
calls with its :class:`~faults.schedule.Schedule`; a call on which the schedule does not
fire costs one ``decide()`` and nothing else (no event, no allocation).

``llama.*`` patch ``llama_cpp.Llama`` itself, so any code that uses llama-cpp-python (ours
or a user's) meets the faults unchanged:

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

``daemon.*`` patch ``httpx.Client.send`` and ``httpx.AsyncClient.send`` and act on requests
to the daemon (the ``DaemonProcess`` and the fault proxy given to the injector; with
neither, on every httpx request), so any httpx client meets them. Time-based faults follow
the injected clock (a proxy could only delay in real time); where real sockets matter, the
faults use them:

==================  =======================================================================
``daemon.request``  ``refuse``: the request is sent to a port nobody listens on, so the
                    kernel refuses it (``httpx.ConnectError``). ``lost``: a sync request
                    through the proxy gets a real reset (``ResetAfter(0)`` upstream while it
                    is sent); otherwise ``RemoteProtocolError`` as httpx raises it for a
                    server that hangs up; ``lost(after=n)`` resets after n stream chunks.
                    ``timeout(d)``: hangs, then ``httpx.ReadTimeout``. ``ratelimit``: a 429
                    with ``Retry-After``. ``latency``, ``raise``.
``daemon.stream``   counts streamed answers (``text/event-stream``) and their data events:
                    ``stall``, ``truncate`` (``data: [DONE]`` after n chunks: a clean end),
                    ``corrupt`` (each chunk's data is invalid JSON), ``lost(after=n)``: the
                    daemon is SIGKILLed after n chunks and the client reads the real loss
                    (or, when the answer was already all received, the same
                    ``RemoteProtocolError`` httpx raises for a cut body).
``daemon.process``  counts requests to the daemon and acts on the process before sending:
                    ``lost`` SIGKILL (``after=n``: after n chunks of that answer),
                    ``pause(d)`` SIGSTOP, SIGCONT after d (a thread on a real clock; on a
                    :class:`VirtualClock` at the first request once the clock has passed
                    d; always at uninstall), ``restart``.
==================  =======================================================================

``py:MODULE:QUALNAME`` patch a module-level function or a method (plain, static or class
method), sync, async, generator or async generator, with ``functools.wraps`` (same name,
docstring and signature). For a generator function the wrapper is a generator function, and
the call is counted at the first ``next()``. ``oom`` is ``MemoryError``; ``timeout(d)`` hangs
then raises ``TimeoutError``; ``corrupt`` empties a ``str``/``bytes`` result and shortens a
vector; on generators ``corrupt`` and ``latency`` apply to every item.

Hangs (``timeout``, ``latency``, ``stall``) wait in the current cancel scope
(``current_scope().wait(d)``) when there is one, so a deadline above them ends them with
``DeadlineExceeded``; otherwise on the injector's clock. A hang that nothing can end under a
:class:`VirtualClock` raises ``HangDetected`` naming the site. In async code they await on
the clock (``async with deadline`` cancels them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import math
import re
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from faults.kinds import (
    corrupt_json,
    corrupt_text,
    corrupt_vector,
    make_exception,
    nan_vector,
    resolve_exception_type,
)
from faults.schedule import derive_rng
from faults.spec import Site, SpecError, format_duration
from pytest_resilience.cancel import current_scope
from pytest_resilience.clock import VirtualClock
from pytest_resilience.errors import DaemonUnavailable
from pytest_resilience.events import FaultInjected

if TYPE_CHECKING:
    import random
    from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping

    import httpx

    from faults.proxy import FaultProxy
    from faults.schedule import Decision, Schedule
    from faults.spec import Entry, Term
    from pytest_resilience.backends.daemon import DaemonProcess
    from pytest_resilience.clock import Clock
    from pytest_resilience.events import Journal

__all__ = ["SOURCE", "Env", "Patch", "Restorer", "SiteFaults", "install"]

#: The ``source`` of the FaultInjected events the injector writes (replay reads only these).
SOURCE = "faults"

_AFTER = frozenset({"stall", "truncate", "lost"})
_STREAM_KINDS = frozenset({"stall", "truncate"})


class Restorer:
    """Something :func:`install` did that ``restore()`` undoes."""

    def restore(self) -> None:
        raise NotImplementedError


class Patch(Restorer):
    """``owner.name`` replaced by ``replacement``; ``restore()`` puts back the exact original
    object (or deletes the attribute when the owner only inherited it)."""

    def __init__(self, owner: Any, name: str, replacement: object) -> None:
        self.owner, self.name, self.replacement = owner, name, replacement
        self.own = name in vars(owner)
        self.original = vars(owner)[name] if self.own else None
        setattr(owner, name, replacement)

    def restore(self) -> None:
        if self.own:
            setattr(self.owner, self.name, self.original)
        else:
            delattr(self.owner, self.name)

    def __repr__(self) -> str:
        return f"<Patch {getattr(self.owner, '__name__', self.owner)}.{self.name}>"


class _Cleanup(Restorer):
    def __init__(self, undo: Callable[[], None]) -> None:
        self.undo = undo

    def restore(self) -> None:
        self.undo()


@dataclass(eq=False)
class Env:
    """What the sites need from the injector: the clock, the journal that receives the
    ``FaultInjected`` events, the seed and scope (for latency jitter), the daemon and proxy,
    and the list of fired decisions."""

    clock: Clock
    journal: Journal
    seed: int | str = 0
    scope: str = ""
    daemon: DaemonProcess | None = None
    proxy: FaultProxy | None = None

    def __post_init__(self) -> None:
        self.decisions: list[tuple[str, Decision]] = []

    def record(self, site: str, decision: Decision) -> None:
        self.decisions.append((site, decision))
        event = FaultInjected(
            time=self.clock.now(),
            source=SOURCE,
            site=site,
            fault=decision.term.action,
            call=decision.call,
        )
        self.journal.append(event)


def _identity(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Outputs:
    """What the output-shaping kinds mean at one site."""

    oom: Callable[[], BaseException] = MemoryError
    timed_out: Callable[[str, float], BaseException] = lambda site, seconds: TimeoutError(
        f"fault injected at {site}: no answer within {format_duration(seconds)}"
    )
    corrupt: Callable[[Any], Any] = _identity
    nan: Callable[[Any], Any] = _identity
    lost: Callable[[str, int], BaseException] = lambda site, n: ConnectionResetError(
        f"fault injected at {site}: connection lost after {n} chunks"
    )


class SiteFaults:
    """One site's schedule, and the kinds applied the same way at every site."""

    __slots__ = ("_rng", "decide", "env", "name", "out", "schedule")

    def __init__(self, name: str, schedule: Schedule, env: Env, out: Outputs) -> None:
        self.name, self.schedule, self.env, self.out = name, schedule, env, out
        self.decide = schedule.decide
        self._rng: random.Random | None = None

    def fire(self, decision: Decision) -> None:
        self.env.record(self.name, decision)

    def exception(self, term: Term) -> BaseException:
        message = term.arg("message")
        return make_exception(
            str(term.arg("type")), None if message is None else str(message), site=self.name
        )

    def delay(self, term: Term) -> float:
        """The latency's duration, with its jitter drawn from a generator of the site's own."""
        base, jitter = _seconds(term, "duration"), _seconds(term, "jitter")
        if not jitter:
            return base
        if self._rng is None:
            self._rng = derive_rng(self.env.seed, self.env.scope, f"{self.name}#latency")
        return max(0.0, base + self._rng.uniform(-jitter, jitter))

    def _what(self, kind: str) -> str:
        return f"the injected {kind} at {self.name}, which no timeout or deadline guards,"

    def hang(self, seconds: float, kind: str) -> None:
        """Wait ``seconds`` (inf: forever) in the current cancel scope, else on the clock."""
        forever = math.isinf(seconds)
        scope = current_scope()
        if scope is not None:
            scope.wait(None if forever else seconds, what=self._what(kind))
        elif forever:
            self.env.clock.wait(threading.Event(), None, what=self._what(kind))
        else:
            self.env.clock.sleep(seconds)

    async def ahang(self, seconds: float, kind: str) -> None:
        """The async hang: on the clock (a cancelled task ends it); forever: until cancelled."""
        if not math.isinf(seconds):
            await self.env.clock.asleep(seconds)
            return
        task = asyncio.current_task()
        name = task.get_name() if task is not None else ""
        if task is not None:  # a hang report on a virtual loop names the task: name the site
            task.set_name(f"{name} (hung in {self._what(kind).rstrip(',')})")
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            if task is not None:
                task.set_name(name)

    # ------------------------------------------------------------------ calls

    def call(self, d: Decision, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """Apply the fault ``d`` to one call of ``fn``."""
        self.fire(d)
        term, kind = d.term, d.term.kind
        if kind == "none":
            return None
        if kind == "raise":
            raise self.exception(term)
        if kind == "oom":
            raise self.out.oom()
        if kind == "timeout":
            seconds = _seconds(term, "duration")
            self.hang(seconds, "timeout")
            raise self.out.timed_out(self.name, seconds)
        if kind == "latency":
            self.hang(self.delay(term), "latency")
        result = fn(*args, **kwargs)
        if kind == "corrupt":
            return self.out.corrupt(result)
        if kind == "nan":
            return self.out.nan(result)
        return result

    async def acall(self, d: Decision, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """:meth:`call` for a coroutine function."""
        self.fire(d)
        term, kind = d.term, d.term.kind
        if kind == "none":
            return None
        if kind == "raise":
            raise self.exception(term)
        if kind == "oom":
            raise self.out.oom()
        if kind == "timeout":
            seconds = _seconds(term, "duration")
            await self.ahang(seconds, "timeout")
            raise self.out.timed_out(self.name, seconds)
        if kind == "latency":
            await self.ahang(self.delay(term), "latency")
        result = await fn(*args, **kwargs)
        if kind == "corrupt":
            return self.out.corrupt(result)
        return result

    def stream(self, d: Decision, it: Iterator[Any]) -> Iterator[Any]:
        """The items of ``it`` with the fault ``d`` applied (already recorded); closes ``it``."""
        term, kind = d.term, d.term.kind
        after = _count(term) if kind in _AFTER else -1
        try:
            if kind == "none":
                return
            if kind in ("raise", "oom", "timeout"):
                raise self._failure(d)
            n = 0
            while True:
                if n == after:
                    after = -1
                    if kind == "truncate":
                        return
                    if kind == "lost":
                        raise self.out.lost(self.name, n)
                    self.hang(_seconds(term, "for"), "stall")  # kind == "stall"
                if kind == "latency":
                    self.hang(self.delay(term), "latency")
                try:
                    item = next(it)
                except StopIteration:
                    return
                n += 1
                yield self.out.corrupt(item) if kind == "corrupt" else item
        finally:
            _close(it)

    async def astream(self, d: Decision, it: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """:meth:`stream` for an async iterator."""
        term, kind = d.term, d.term.kind
        after = _count(term) if kind in _AFTER else -1
        try:
            if kind == "none":
                return
            if kind == "timeout":
                seconds = _seconds(term, "duration")
                await self.ahang(seconds, "timeout")
                raise self.out.timed_out(self.name, seconds)
            if kind in ("raise", "oom"):
                raise self._failure(d)
            n = 0
            while True:
                if n == after:
                    after = -1
                    if kind == "truncate":
                        return
                    if kind == "lost":
                        raise self.out.lost(self.name, n)
                    await self.ahang(_seconds(term, "for"), "stall")
                if kind == "latency":
                    await self.ahang(self.delay(term), "latency")
                try:
                    item = await anext(it)
                except StopAsyncIteration:
                    return
                n += 1
                yield self.out.corrupt(item) if kind == "corrupt" else item
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()

    def _failure(self, d: Decision) -> BaseException:
        """The exception a failing stream raises at its first item (timeout hangs first)."""
        term = d.term
        if term.kind == "raise":
            return self.exception(term)
        if term.kind == "oom":
            return self.out.oom()
        seconds = _seconds(term, "duration")  # timeout
        self.hang(seconds, "timeout")
        return self.out.timed_out(self.name, seconds)


def _seconds(term: Term, name: str) -> float:
    """A duration argument of ``term`` in seconds (0 when it has none)."""
    value = term.arg(name)
    return float(value) if isinstance(value, int | float) else 0.0


def _count(term: Term) -> int:
    """The ``after=`` argument of ``term`` (0 when it has none)."""
    value = term.arg("after")
    return value if isinstance(value, int) else 0


def _close(it: object) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


def _check_terms(entry: Entry) -> None:
    """Resolve the exception types of ``raise`` terms now, so a bad dotted path fails at
    install time (SpecError), never in the middle of the test."""
    for term in entry.chain:
        if term.kind == "raise":
            try:
                resolve_exception_type(str(term.arg("type")))
            except SpecError as exc:
                text = str(entry)
                raise SpecError(exc.message, text, text.find(str(term))) from exc


# ============================================================================ py: sites


def _corrupt_value(value: Any) -> Any:
    """``corrupt`` on a py: result: empty text, a vector one short, else unchanged type."""
    if isinstance(value, str):
        return corrupt_text(value)
    if isinstance(value, bytes):
        return b""
    if isinstance(value, list | tuple) and all(
        isinstance(v, int | float | list | tuple) for v in value
    ):
        return corrupt_vector(value)
    if isinstance(value, dict):
        return {}
    return value


_PY_OUT = Outputs(corrupt=_corrupt_value)


def _resolve(entry: Entry) -> tuple[Any, str]:
    """(owner, attribute name) of a py: site; SpecError naming what is missing."""
    site, text = entry.site, str(entry)
    try:
        owner: Any = importlib.import_module(site.module)
    except ImportError as exc:
        raise SpecError(f"cannot import {site.module!r} for {site}: {exc}", text, 3) from exc
    *path, name = site.qualname.split(".")
    for part in path:
        found = getattr(owner, part, None)
        if found is None:
            raise SpecError(f"{site}: {owner!r} has no attribute {part!r}", text, 0)
        owner = found
    if not hasattr(owner, name):
        raise SpecError(f"{site}: {owner!r} has no attribute {name!r}", text, 0)
    return owner, name


def _raw(owner: Any, name: str) -> Any:
    """The attribute as stored (a staticmethod stays a staticmethod), from the MRO."""
    for holder in owner.__mro__ if isinstance(owner, type) else (owner,):
        if name in vars(holder):
            return vars(holder)[name]
    return getattr(owner, name)


def _wrap(fn: Callable[..., Any], f: SiteFaults) -> Callable[..., Any]:
    """The wrapper of a py: target, of the same kind (sync, async, generator, async gen)."""
    decide = f.decide
    wrapper: Callable[..., Any]
    if inspect.isasyncgenfunction(fn):

        async def agen_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            d = decide()
            if d is None:
                async for item in fn(*args, **kwargs):
                    yield item
                return
            f.fire(d)
            async for item in f.astream(d, fn(*args, **kwargs)):
                yield item

        wrapper = agen_wrapper
    elif inspect.isgeneratorfunction(fn):

        def gen_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            d = decide()
            if d is None:
                result: Any = yield from fn(*args, **kwargs)
                return result
            f.fire(d)
            yield from f.stream(d, fn(*args, **kwargs))
            return None

        wrapper = gen_wrapper
    elif inspect.iscoroutinefunction(fn):
        acall = f.acall

        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            d = decide()
            if d is None:
                return await fn(*args, **kwargs)
            return await acall(d, fn, args, kwargs)

        wrapper = async_wrapper
    else:
        call = f.call

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            d = decide()
            if d is None:
                return fn(*args, **kwargs)
            return call(d, fn, args, kwargs)

    return functools.wraps(fn)(wrapper)


def _install_py(entry: Entry, f: SiteFaults) -> Patch:
    owner, name = _resolve(entry)
    raw = _raw(owner, name)
    text = str(entry)
    rewrap: Callable[[Any], Any] = _identity
    if isinstance(raw, staticmethod | classmethod):
        fn, rewrap = raw.__func__, type(raw)
    elif inspect.isfunction(raw) or (not isinstance(owner, type) and callable(raw)):
        fn = raw
    else:
        what = type(raw).__name__
        raise SpecError(
            f"{entry.site}: cannot patch a {what} (a function, a method, a staticmethod or a "
            "classmethod is needed)",
            text,
            0,
        )
    streams = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
    for term in entry.chain:
        if term.kind in _STREAM_KINDS and not streams:
            raise SpecError(
                f"{term.kind}() needs a generator, and {entry.site.qualname} is not a "
                "generator function (nor an async generator function)",
                text,
                text.find(str(term)),
            )
    return Patch(owner, name, rewrap(_wrap(fn, f)))


# =========================================================================== llama sites


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
        _close(chunks)
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


_LLAMA_OUT = {
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


class _LlamaSites:
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
            _close(it)

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
            d = f.decide()
            if d is None:
                return original(llm, *args, **kwargs)
            # Llama.__del__ closes self._stack: give a failed load what a real one leaves.
            llm.__dict__.setdefault("_stack", contextlib.ExitStack())
            return f.call(d, original, (llm, *args), kwargs)

        return __init__

    def _call(self, f: SiteFaults | None, original: Callable[..., Any], args: Any, kw: Any) -> Any:
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
            if self.busy():
                return original(llm, *args, **kwargs)
            return self._call(f, original, (llm, *args), kwargs)

        return embed


# ========================================================================== daemon sites

_SSE_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINES = re.compile(rb"\r\n|\n|\r")
_DONE = b"data: [DONE]\n\n"
_CUT_BODY = "peer closed connection without sending complete message body (incomplete chunked read)"


def _data(event: bytes) -> bytes | None:
    """The data of an SSE event that carries a chunk (None for comments, [DONE], ...)."""
    values = [
        line[5:].removeprefix(b" ") for line in _LINES.split(event) if line.startswith(b"data:")
    ]
    if not values:
        return None
    data = b"\n".join(values)
    return None if data.strip() == b"[DONE]" else data


def _corrupt_event(event: bytes) -> bytes:
    data = _data(event) or b""
    return b"data: " + corrupt_json(data.decode("utf-8", "replace")).encode() + b"\n\n"


class _Splitter:
    """Cuts a byte stream into whole SSE events (each with its blank line)."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        events = []
        while m := _SSE_END.search(self.buffer):
            events.append(self.buffer[: m.end()])
            self.buffer = self.buffer[m.end() :]
        return events


@dataclass(slots=True)
class _Action:
    after: int  # before the chunk numbered after+1 is delivered
    kind: str  # stall, truncate, kill, reset, corrupt
    faults: SiteFaults
    seconds: float = 0.0


class _Plan:
    """What happens to one answer's stream of SSE chunks."""

    def __init__(self, hooks: _DaemonSites) -> None:
        self.hooks = hooks
        self.actions: list[_Action] = []
        self.corrupt = False

    def due(self, n: int) -> list[_Action]:
        return [a for a in self.actions if a.after == n]


class _SyncEvents:
    """An httpx byte stream that delivers whole SSE events and applies the plan."""

    def __init__(self, inner: Any, plan: _Plan) -> None:
        self.inner, self.plan = inner, plan

    def __iter__(self) -> Iterator[bytes]:
        plan, splitter, n = self.plan, _Splitter(), 0
        it = iter(self.inner)
        for data in it:
            for event in splitter.feed(data):
                if _data(event) is not None:
                    for action in plan.due(n):
                        if action.kind == "stall":
                            action.faults.hang(action.seconds, "stall")
                        elif action.kind == "truncate":
                            yield _DONE
                            return
                        else:
                            raise plan.hooks.lose(action, it)
                    n += 1
                    yield _corrupt_event(event) if plan.corrupt else event
                    continue
                yield event
        if splitter.buffer:
            yield splitter.buffer

    def close(self) -> None:
        self.inner.close()


class _AsyncEvents:
    """:class:`_SyncEvents` for an async byte stream."""

    def __init__(self, inner: Any, plan: _Plan) -> None:
        self.inner, self.plan = inner, plan

    async def __aiter__(self) -> AsyncIterator[bytes]:
        plan, splitter, n = self.plan, _Splitter(), 0
        it = aiter(self.inner)
        async for data in it:
            for event in splitter.feed(data):
                if _data(event) is not None:
                    for action in plan.due(n):
                        if action.kind == "stall":
                            await action.faults.ahang(action.seconds, "stall")
                        elif action.kind == "truncate":
                            yield _DONE
                            return
                        else:
                            raise await plan.hooks.alose(action, it)
                    n += 1
                    yield _corrupt_event(event) if plan.corrupt else event
                    continue
                yield event
        if splitter.buffer:
            yield splitter.buffer

    async def aclose(self) -> None:
        await self.inner.aclose()


@functools.cache
def _byte_streams() -> tuple[type[_SyncEvents], type[_AsyncEvents]]:
    """The event streams as httpx byte streams (httpx checks the type on close)."""
    import httpx  # noqa: PLC0415 - optional; only daemon sites get here

    class SyncEvents(_SyncEvents, httpx.SyncByteStream):
        pass

    class AsyncEvents(_AsyncEvents, httpx.AsyncByteStream):
        pass

    return SyncEvents, AsyncEvents


def _retry_after(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _closed_port(host: str) -> int:
    """A port nobody listens on (bound a moment ago, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class _DaemonSites:
    """The patches of httpx's ``Client.send`` / ``AsyncClient.send`` for the daemon.* sites."""

    def __init__(self, faults: Mapping[str, SiteFaults], env: Env) -> None:
        self.request = faults.get("request")
        self.stream = faults.get("stream")
        self.process = faults.get("process")
        self.env = env
        self.resume_at: float | None = None
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ install

    def install(self) -> list[Restorer]:
        import httpx as hx  # noqa: PLC0415 - optional; loaded by install() already

        done: list[Restorer] = []
        done.append(Patch(hx.Client, "send", self.sync_send(vars(hx.Client)["send"])))
        try:
            original = vars(hx.AsyncClient)["send"]
            done.append(Patch(hx.AsyncClient, "send", self.async_send(original)))
        except BaseException:
            done[0].restore()
            raise
        return [_Cleanup(self.finish), *done]

    def finish(self) -> None:
        """At uninstall: stop the resume timers and resume a daemon we paused."""
        self.stop.set()
        for thread in self.threads:
            thread.join()
        daemon = self.env.daemon
        if self.resume_at is not None and daemon is not None and daemon.paused:
            with contextlib.suppress(DaemonUnavailable):
                daemon.resume()
        self.resume_at = None

    def targets(self, request: httpx.Request) -> bool:
        daemon, proxy = self.env.daemon, self.env.proxy
        if daemon is None and proxy is None:
            return True
        where = (request.url.host, request.url.port)
        return (daemon is not None and where == (daemon.host, daemon.port)) or (
            proxy is not None and proxy.running and where == proxy.address
        )

    def via_proxy(self, request: httpx.Request) -> bool:
        proxy = self.env.proxy
        where = (request.url.host, request.url.port)
        return proxy is not None and proxy.running and where == proxy.address

    # ------------------------------------------------------------------ decisions

    def before(self, request: httpx.Request) -> tuple[_Plan, Decision | None]:
        """Apply the process fault now; the plan for the answer and the request decision."""
        plan = _Plan(self)
        self.maybe_resume()
        f = self.process
        d = f.decide() if f is not None else None
        if f is not None and d is not None:
            f.fire(d)
            daemon = self.daemon_for("daemon.process")
            kind = d.term.kind
            if kind == "lost":
                after = _count(d.term)
                if after == 0:
                    daemon.kill()
                else:
                    plan.actions.append(_Action(after, "kill", f))
            elif kind == "pause":
                self.pause(daemon, _seconds(d.term, "duration"))
            elif kind == "restart":
                daemon.restart()
        r = self.request.decide() if self.request is not None else None
        if r is not None and self.request is not None:
            self.request.fire(r)
            if r.term.kind == "lost" and (after := _count(r.term)):
                plan.actions.append(_Action(after, "reset", self.request))
        return plan, r

    def daemon_for(self, site: str) -> DaemonProcess:
        if self.env.daemon is None:
            raise RuntimeError(f"{site} needs the DaemonProcess: Injector(..., daemon=...)")
        return self.env.daemon

    def pause(self, daemon: DaemonProcess, seconds: float) -> None:
        daemon.pause()
        clock = self.env.clock
        with self.lock:
            self.resume_at = clock.now() + seconds
        if isinstance(clock, VirtualClock) or math.isinf(seconds):
            return  # resumed lazily, when a request finds the clock past it, or at uninstall

        def resume_later() -> None:
            if not clock.wait(self.stop, seconds, what="the daemon's pause"):
                self.maybe_resume(force=True)

        thread = threading.Thread(target=resume_later, name="faults-resume:daemon", daemon=True)
        self.threads.append(thread)
        thread.start()

    def maybe_resume(self, *, force: bool = False) -> None:
        with self.lock:
            due = self.resume_at is not None and (force or self.env.clock.now() >= self.resume_at)
            if due:
                self.resume_at = None
        daemon = self.env.daemon
        if due and daemon is not None and daemon.paused:
            with contextlib.suppress(DaemonUnavailable):
                daemon.resume()

    def stream_plan(self, plan: _Plan, response: httpx.Response) -> bool:
        """Let the stream site decide on an SSE answer; whether the answer needs wrapping."""
        sse = response.headers.get("content-type", "").startswith("text/event-stream")
        f = self.stream
        if sse and f is not None and (d := f.decide()) is not None:
            f.fire(d)
            kind, term = d.term.kind, d.term
            if kind == "corrupt":
                plan.corrupt = True
            else:
                after = _count(term)
                action = {"stall": "stall", "truncate": "truncate", "lost": "kill"}[kind]
                seconds = _seconds(term, "for") if kind == "stall" else 0.0
                plan.actions.append(_Action(after, action, f, seconds))
        if not sse:
            for kill in [a for a in plan.actions if a.kind == "kill"]:
                self.daemon_for("daemon.process").kill()  # not a stream: dies after answering
                plan.actions.remove(kill)
        return bool(plan.actions) or plan.corrupt

    def lose(self, action: _Action, it: Iterator[bytes]) -> BaseException:
        """The error the client meets when the connection dies mid-answer."""
        import httpx as hx  # noqa: PLC0415 - optional; loaded by install() already

        if action.kind == "reset":
            _close(it)
            return hx.ReadError("[Errno 104] Connection reset by peer")
        daemon = self.env.daemon
        if daemon is not None:
            daemon.kill()
            try:  # read what the dead daemon's socket still holds, up to the real failure
                for _ in it:
                    pass
            except hx.TransportError as exc:
                return exc
        return hx.RemoteProtocolError(_CUT_BODY)

    async def alose(self, action: _Action, it: AsyncIterator[bytes]) -> BaseException:
        import httpx as hx  # noqa: PLC0415 - optional; loaded by install() already

        if action.kind == "reset":
            return hx.ReadError("[Errno 104] Connection reset by peer")
        daemon = self.env.daemon
        if daemon is not None:
            daemon.kill()
            try:
                async for _ in it:
                    pass
            except hx.TransportError as exc:
                return exc
        return hx.RemoteProtocolError(_CUT_BODY)

    def refused_url(self, request: httpx.Request) -> httpx.URL:
        host = request.url.host or "127.0.0.1"
        return request.url.copy_with(port=_closed_port(host))

    def ratelimited(self, request: httpx.Request, term: Term) -> httpx.Response:
        seconds = term.arg("retry_after")
        headers = {} if seconds is None else {"Retry-After": _retry_after(float(seconds))}
        body = {"error": {"message": "rate limited (fault injected at daemon.request)"}}
        import httpx as hx  # noqa: PLC0415 - optional; loaded by install() already

        return hx.Response(429, headers=headers, json=body, request=request)

    # ------------------------------------------------------------------ send

    def sync_send(self, original: Callable[..., Any]) -> Callable[..., Any]:
        import httpx as hx  # noqa: PLC0415 - optional; loaded by install() already

        @functools.wraps(original)
        def send(client: Any, request: httpx.Request, *, stream: bool = False, **kw: Any) -> Any:
            if not self.targets(request):
                return original(client, request, stream=stream, **kw)
            plan, r = self.before(request)
            kind = r.term.kind if r is not None else "off"
            if r is not None and self.request is not None:
                f = self.request
                if kind == "raise":
                    raise f.exception(r.term)
                if kind == "timeout":
                    seconds = _seconds(r.term, "duration")
                    f.hang(seconds, "timeout")
                    raise hx.ReadTimeout(f"fault injected at {f.name}", request=request)
                if kind == "latency":
                    f.hang(f.delay(r.term), "latency")
                if kind == "ratelimit":
                    return self.ratelimited(request, r.term)
                if kind == "refuse":
                    url, request.url = request.url, self.refused_url(request)
                    try:
                        return original(client, request, stream=stream, **kw)
                    finally:
                        request.url = url
                if kind == "lost" and not plan.actions:
                    if not self.via_proxy(request):
                        raise hx.RemoteProtocolError(
                            "Server disconnected without sending a response.", request=request
                        )
                    from faults.proxy import ResetAfter  # noqa: PLC0415 - only for this fault

                    assert self.env.proxy is not None  # via_proxy checked it
                    with self.env.proxy.toxic(ResetAfter(0), "upstream"):
                        return original(client, request, stream=stream, **kw)
            if self.stream is None and not plan.actions:
                return original(client, request, stream=stream, **kw)
            response = original(client, request, stream=True, **kw)
            try:
                if self.stream_plan(plan, response):
                    response.stream = _byte_streams()[0](response.stream, plan)
                if not stream:
                    response.read()
            except BaseException:
                response.close()
                raise
            return response

        return send

    def async_send(self, original: Callable[..., Any]) -> Callable[..., Any]:
        import httpx as hx  # noqa: PLC0415 - optional; loaded by install() already

        @functools.wraps(original)
        async def send(
            client: Any, request: httpx.Request, *, stream: bool = False, **kw: Any
        ) -> Any:
            if not self.targets(request):
                return await original(client, request, stream=stream, **kw)
            plan, r = self.before(request)
            kind = r.term.kind if r is not None else "off"
            if r is not None and self.request is not None:
                f = self.request
                if kind == "raise":
                    raise f.exception(r.term)
                if kind == "timeout":
                    await f.ahang(_seconds(r.term, "duration"), "timeout")
                    raise hx.ReadTimeout(f"fault injected at {f.name}", request=request)
                if kind == "latency":
                    await f.ahang(f.delay(r.term), "latency")
                if kind == "ratelimit":
                    return self.ratelimited(request, r.term)
                if kind == "refuse":
                    url, request.url = request.url, self.refused_url(request)
                    try:
                        return await original(client, request, stream=stream, **kw)
                    finally:
                        request.url = url
                if kind == "lost" and not plan.actions:
                    raise hx.RemoteProtocolError(
                        "Server disconnected without sending a response.", request=request
                    )
            if self.stream is None and not plan.actions:
                return await original(client, request, stream=stream, **kw)
            response = await original(client, request, stream=True, **kw)
            try:
                if self.stream_plan(plan, response):
                    response.stream = _byte_streams()[1](response.stream, plan)
                if not stream:
                    await response.aread()
            except BaseException:
                await response.aclose()
                raise
            return response

        return send


# ============================================================================== install


def install(
    entries: Iterable[Entry], schedules: Mapping[Site, Schedule], env: Env
) -> list[Restorer]:
    """Patch every site of ``entries``; the restorers, in the order they were applied.

    Raises :class:`SpecError` for a site that cannot be installed (a py: target that does not
    exist or cannot be patched, ``stall``/``truncate`` on a target that is not a generator,
    an exception type that does not resolve) and ``RuntimeError`` for a daemon.process site
    without a daemon; nothing stays patched then.
    """
    done: list[Restorer] = []
    try:
        llama: dict[str, SiteFaults] = {}
        daemon: dict[str, SiteFaults] = {}
        for entry in entries:
            _check_terms(entry)
            site, name = entry.site, str(entry.site)
            if site.family == "llama":
                out = _LLAMA_OUT[site.target]
                llama[site.target] = SiteFaults(name, schedules[site], env, out)
            elif site.family == "daemon":
                daemon[site.target] = SiteFaults(name, schedules[site], env, Outputs())
            else:
                done.append(_install_py(entry, SiteFaults(name, schedules[site], env, _PY_OUT)))
        if "process" in daemon and env.daemon is None:
            raise RuntimeError("daemon.process needs the DaemonProcess: Injector(..., daemon=...)")
        if llama:
            try:
                import llama_cpp  # noqa: PLC0415 - optional, and costly to import
            except ImportError as exc:
                raise RuntimeError("the llama.* sites need llama-cpp-python installed") from exc
            done.extend(_LlamaSites(llama).install(llama_cpp.Llama))
        if daemon:
            done.extend(_DaemonSites(daemon, env).install())
    except BaseException:
        for restorer in reversed(done):
            restorer.restore()
        raise
    return done
