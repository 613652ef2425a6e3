"""The detector of one ``llama_cpp.Llama`` used by two generations at once.

One ``Llama`` holds one llama.cpp context. A second generation started while another is
still running in another thread, or while a stream is still open (neither exhausted nor
closed), works on the same KV cache and batch: the answers are corrupted, or llama.cpp
crashes, at random. While the detector is on, such a call raises
:class:`~pytest_resilience.core.errors.ConcurrentModelUse` in the caller, naming where the
generation still in progress began and where the refused call was made::

    from faults import model_use

    model_use.install()          # once llama_cpp is importable; the pytest plugin does it
    stream = llm.create_completion("Hi", stream=True)
    next(stream)
    llm.create_completion("Hello")   # ConcurrentModelUse: the stream above is still open

What is checked: the calls that work on the context. Every completion goes through
``Llama._create_completion`` (``create_completion``, ``__call__``, and the chat handlers of
``create_chat_completion``, streamed or not), and every embedding through ``Llama.embed``
(``create_embedding`` calls it); those two are wrapped. ``tokenize`` and ``detokenize`` are
not: they read the model's vocabulary, never the context, and the generation methods call
them from inside a generation. The low-level token API (``eval``, ``generate``, ``sample``)
is not checked either.

A generation holds its ``Llama`` from the call until it ends: a plain call until it
returns or raises, a stream until it is exhausted, closed, or garbage-collected (dropping
a stream closes it). A stream that llama-cpp-python would finish without the context (its
last chunk already read) still counts as open: it runs the cache's ``save_state`` when it
is resumed, and "close it" is the rule to keep. Before refusing a call because of an open
stream, the detector collects garbage once, so a stream only a reference cycle keeps is
closed rather than reported.

The patches coexist with the fault injector's patches of ``llama_cpp.Llama``
(:mod:`faults.sites.llama`): ``_create_completion`` is below every method the injector
patches, whatever the order; ``embed`` is patched by both, and :func:`ensure` puts the
detector's wrapper back when an injection installed before it restored the original.

The detector also keeps what the pytest plugin's verdicts read (:mod:`faults.verdicts`):

- the streams still open (:func:`open_streams`), each with where it was opened: the
  ``stream-closed`` verdict. A stream opened through this package's own backends is left
  to them (``LlamaBackend`` registers its own stream with the leak check);
- a :class:`StreamEndedEarly` event when a stream ends before its last chunk having
  delivered some text (closed early, cut by an injected fault, or failed), with that
  text, in the journal of the observation in effect (:func:`pytest_resilience.core.app.current`):
  the ``no-repeat`` verdict. Nothing is recorded while nothing observes.
"""

from __future__ import annotations

import functools
import gc
import itertools
import os
import sys
import sysconfig
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from pytest_resilience.core.app import current, describe
from pytest_resilience.core.errors import ConcurrentModelUse
from pytest_resilience.core.events import Event
from pytest_resilience.core.leaks import Leak

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType

__all__ = [
    "StreamEndedEarly",
    "ensure",
    "install",
    "installed",
    "is_on",
    "open_streams",
    "pop",
    "push",
    "serial",
    "uninstall",
]

#: The attribute of a ``Llama`` instance holding its generation in progress.
_KEY: Final = "_pytest_resilience_generation"
#: The kind of the open-stream records (:func:`open_streams`).
STREAM_KIND: Final = "llama stream"


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEndedEarly(Event):
    """A llama stream ended before its last chunk: ``delivered`` is the text its chunks had
    carried, ``reason`` ``"closed"`` (closed or dropped early, by the consumer or by an
    injected cut) or the error that ended it, ``opened`` where it was opened."""

    kind: ClassVar[str] = "llama.stream_ended_early"
    delivered: str
    reason: str
    opened: str = ""


# ------------------------------------------------------------------------------ sites

_PATHS = sysconfig.get_paths()


def _dirs(*paths: str | None) -> tuple[str, ...]:
    return tuple(os.path.normcase(os.path.abspath(p)) + os.sep for p in paths if p)


_HERE = os.path.dirname(os.path.abspath(__file__))
_OURS = _dirs(_HERE, os.path.join(os.path.dirname(_HERE), "pytest_resilience"))
_BACKENDS = _dirs(os.path.join(os.path.dirname(_HERE), "pytest_resilience", "backends"))
_STDLIB = _dirs(_PATHS.get("stdlib"), _PATHS.get("platstdlib"))
_INSTALLED = _dirs(_PATHS.get("purelib"), _PATHS.get("platlib"))
_LLAMA: list[str] = []  # llama_cpp's folder, once installed
_SKIP, _OWN_BACKEND, _LIBRARY, _CALLER = range(4)
_kinds: dict[str, int] = {}


def _kind(filename: str) -> int:
    name = os.path.normcase(filename)
    if name.startswith(("<frozen", *_LLAMA)) or (
        name.startswith(_STDLIB) and not name.startswith(_INSTALLED)
    ):
        return _SKIP
    if name.startswith(_BACKENDS):
        return _OWN_BACKEND
    return _SKIP if name.startswith(_OURS) else _CALLER


def _site(depth: int) -> tuple[str, str, bool]:
    """(``file:line in function`` of the first frame outside llama_cpp, this package and
    the standard library, the llama_cpp method it called, whether one of our backends
    made the call), from ``depth`` frames up."""
    return _site_of(sys._getframe(depth + 1))


def _site_of(start: FrameType) -> tuple[str, str, bool]:
    """:func:`_site` from the frame ``start``."""
    frame: FrameType | None = start
    method, backend = "", False
    llama = _LLAMA[0] if _LLAMA else "\0"
    while frame is not None:
        code = frame.f_code
        filename = code.co_filename
        if filename.startswith(llama):
            method = code.co_name
        else:
            kind = _kinds.get(filename)
            if kind is None:
                kind = _kinds[filename] = _kind(filename)
            if kind == _CALLER:
                return f"{filename}:{frame.f_lineno} in {code.co_name}", method, backend
            backend = backend or kind == _OWN_BACKEND
        frame = frame.f_back
    return "", method, backend


# ------------------------------------------------------------------------- generations


class _Generation:
    """One generation holding its ``Llama``: where it began, in which thread, and, for a
    stream, whether it is still open and what it delivered.

    A plain call keeps its caller's frame instead of its site, and the site is read only
    when another call is refused: the frames of a running call are alive and stopped at
    their calls meanwhile, so the site is the same, and the common case pays no frame walk
    (a stream's site is read at once: its caller goes on).
    """

    __slots__ = ("_site", "frame", "serial", "stream", "texts", "thread")

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.thread = threading.current_thread()
        self.serial = 0
        self.texts: list[str] = []
        self.frame: FrameType | None = None
        self._site: tuple[str, str, bool] | None = None

    def where(self) -> tuple[str, str, bool]:
        if self._site is None:
            frame, self.frame = self.frame, None
            self._site = ("", "", False) if frame is None else _site_of(frame)
        return self._site

    @property
    def site(self) -> str:
        return self.where()[0]

    @property
    def method(self) -> str:
        return self.where()[1]

    @property
    def backend(self) -> bool:
        return self.where()[2]

    def describe(self) -> str:
        call = f"{self.method or 'create_completion'}({'stream=True' if self.stream else ''})"
        return f"{call} at {self.site or 'an unknown site'}"


_serials = itertools.count(1)
_open: dict[int, tuple[_Generation, Any]] = {}  # serial -> (stream, its Llama), open streams
_stack: list[bool] = []  # one entry per push(): whether that configuration wants it on
_on = False
_lock = threading.Lock()
_installed: dict[str, Any] = {}  # method name -> (llama class, our wrapper, the original)


def is_on() -> bool:
    """Whether the detector refuses concurrent calls now."""
    return _on


def push(on: bool = True) -> None:
    """Turn the detector on (or off) until the matching :func:`pop`; the innermost wins (a
    pytest run inside a test may turn it off for itself)."""
    global _on
    with _lock:
        _stack.append(on)
        _on = on


def pop() -> None:
    """Undo the last :func:`push`."""
    global _on
    with _lock:
        if _stack:
            _stack.pop()
        _on = bool(_stack and _stack[-1])


def serial() -> int:
    """A number that orders stream openings: :func:`open_streams` takes it as ``since``."""
    return next(_serials)


def _refuse(llm: Any, held: _Generation, depth: int) -> None:
    __tracebackhide__ = True
    second, method, _ = _site(depth + 1)
    elsewhere = held.thread is not threading.current_thread()
    if not held.stream:
        how = "running"
        state = "is still running " + (
            f"in thread {held.thread.name!r}"
            if elsewhere
            else "(the new call comes from inside it)"
        )
    else:
        how = "open"
        state = "is still open: neither exhausted nor closed"
        if elsewhere:
            state += f" (opened in thread {held.thread.name!r})"
    raise ConcurrentModelUse(
        f"one llama_cpp.Llama used by two generations at once: {held.describe()} {state}, "
        f"and {method or 'a generation'}() was called at {second or 'an unknown site'}. "
        "One Llama holds one context: exhaust or close the stream first "
        "(contextlib.closing), serialise the calls with a lock, or give each thread its "
        f"own Llama (model {getattr(llm, 'model_path', '?')!r})",
        first=held.site,
        second=second,
        how=how,
    )


def _claim(llm: Any, stream: bool, depth: int) -> _Generation:
    """Take ``llm`` for a new generation, or raise ConcurrentModelUse."""
    __tracebackhide__ = True
    mine = _Generation(stream)
    if stream:
        mine._site = _site(depth + 1)
    else:
        mine.frame = sys._getframe(depth + 1)
    slots = vars(llm)
    held = slots.setdefault(_KEY, mine)
    if held is not mine:
        if held.stream:  # only a reference cycle may keep it: collect, then look again
            gc.collect()
            held = slots.setdefault(_KEY, mine)
        if held is not mine:
            _refuse(llm, held, depth + 1)
    return mine


def _release(llm: Any, mine: _Generation) -> None:
    slots = vars(llm)
    if slots.get(_KEY) is mine:
        del slots[_KEY]
    mine.frame = None
    if mine.serial:
        _open.pop(mine.serial, None)


class _Once:
    """The iterator of a plain (not streamed) completion: ``create_completion`` takes its
    one item; ``llm`` is released once it is taken, or when the iterator is dropped."""

    __slots__ = ("inner", "llm", "mine")

    def __init__(self, inner: Iterator[Any], llm: Any, mine: _Generation) -> None:
        self.inner, self.llm = inner, llm
        self.mine: _Generation | None = mine

    def __iter__(self) -> _Once:
        return self

    def __next__(self) -> Any:
        try:
            return next(self.inner)
        finally:
            self.close()

    def close(self) -> None:
        mine, self.mine = self.mine, None
        if mine is not None:
            _release(self.llm, mine)

    def __del__(self) -> None:
        self.close()


def _chunk_text(chunk: Any) -> str:
    try:
        text = chunk["choices"][0]["text"]
    except (KeyError, IndexError, TypeError):
        return ""
    return text if isinstance(text, str) else ""


def _ended_early(mine: _Generation, reason: str) -> None:
    observation = current()
    if observation is None:
        return
    delivered = "".join(mine.texts)
    if delivered:
        observation.record(
            StreamEndedEarly(
                time=observation.clock.now(),
                source="llama",
                delivered=delivered,
                reason=reason,
                opened=mine.site,
            )
        )


def _held(inner: Iterator[Any], llm: Any, mine: _Generation) -> Iterator[Any]:
    """``inner``'s chunks, holding ``llm`` until it is exhausted, closed or dropped."""
    ended = ""
    try:
        yield None  # primed by the wrapper: from here on, closing or dropping releases llm
        for chunk in inner:
            mine.texts.append(_chunk_text(chunk))
            yield chunk
        ended = "exhausted"
    except GeneratorExit:
        ended = "closed"
        raise
    except BaseException as exc:
        ended = describe(exc)
        raise
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            close()
        _release(llm, mine)
        if ended != "exhausted":
            _ended_early(mine, ended or "closed")


def _wrap_completion(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _create_completion(llm: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        if not _on:
            return original(llm, *args, **kwargs)
        stream = bool(kwargs.get("stream", False))
        mine = _claim(llm, stream, 1)
        try:
            inner = original(llm, *args, **kwargs)
        except BaseException:
            _release(llm, mine)
            raise
        if not stream:
            return _Once(inner, llm, mine)
        if not mine.backend:
            mine.serial = next(_serials)
            _open[mine.serial] = (mine, llm)
        held = _held(inner, llm, mine)
        next(held)
        return held

    return _create_completion


def _wrap_embed(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def embed(llm: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        if not _on:
            return original(llm, *args, **kwargs)
        mine = _claim(llm, False, 1)
        try:
            return original(llm, *args, **kwargs)
        finally:
            _release(llm, mine)

    return embed


_WRAPPERS: Final = {"_create_completion": _wrap_completion, "embed": _wrap_embed}


def install(llama: type | None = None) -> None:
    """Patch ``llama`` (default: ``llama_cpp.Llama``) so that concurrent generations raise;
    idempotent. The patches do nothing until :func:`push` turns the detector on."""
    if llama is None:
        import llama_cpp  # noqa: PLC0415 - only when asked for, and costly

        llama = llama_cpp.Llama
    if not _LLAMA:
        module = sys.modules.get(llama.__module__)
        path = getattr(module, "__file__", None)
        if path:
            _LLAMA.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    with _lock:
        for name, wrap in _WRAPPERS.items():
            known = _installed.get(name)
            now = vars(llama).get(name)
            if now is None or (known is not None and known[1] is now):
                continue
            if (
                known is not None
                and known[0] is llama
                and getattr(now, "__wrapped__", 0) is (known[1])
            ):
                continue  # an injection wrapped ours: ours still runs, below it
            wrapper = wrap(now)
            setattr(llama, name, wrapper)
            _installed[name] = (llama, wrapper, now)


def ensure() -> None:
    """Patch again what an injection installed before the detector restored (``embed``);
    a no-op when ``llama_cpp`` is not imported or the patches are in place."""
    if _installed:
        install(next(iter(_installed.values()))[0])


def installed() -> bool:
    """Whether the patches are in place."""
    return bool(_installed)


def uninstall() -> None:
    """Put back the originals that the detector's wrappers still stand for (a wrapper that
    something patched over is left, inert while the detector is off)."""
    with _lock:
        for name, (llama, wrapper, original) in list(_installed.items()):
            if vars(llama).get(name) is wrapper:
                setattr(llama, name, original)
            del _installed[name]


def open_streams(since: int = 0) -> list[Leak]:
    """The llama streams opened after :func:`serial` returned ``since`` and still open
    (neither exhausted nor closed), oldest first, each as a :class:`Leak` of kind
    ``"llama stream"`` with where it was opened. Streams opened through this package's
    backends are theirs to track, not listed."""
    found = [(n, g, llm) for n, (g, llm) in list(_open.items()) if n > since]
    if found:  # a stream only a reference cycle keeps is closed, not open
        gc.collect()
        found = [(n, g, llm) for n, g, llm in found if n in _open]
    return [
        Leak(
            STREAM_KIND,
            f"{g.describe().partition(' at ')[0]} on {_name(llm)}, "
            f"{len(g.texts)} chunk{'' if len(g.texts) == 1 else 's'} read",
            g.site,
        )
        for _, g, llm in sorted(found, key=lambda row: row[0])
    ]


def _name(llm: Any) -> str:
    path = getattr(llm, "model_path", "")
    return f"the Llama of {os.path.basename(str(path))!r}" if path else "a Llama"
