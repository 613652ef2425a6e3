"""The ``py:MODULE:QUALNAME`` sites: any downstream callable, patched in place.

A module-level function or a method (plain, static or class method), sync, async, generator
or async generator, is wrapped with ``functools.wraps`` (same name, docstring and signature).
For a generator function the wrapper is a generator function, and the call is counted at the
first ``next()``. ``oom`` is ``MemoryError``; ``timeout(d)`` hangs then raises
``TimeoutError``; ``corrupt`` empties a ``str``/``bytes`` result and shortens a vector; on
generators ``corrupt`` and ``latency`` apply to every item.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import TYPE_CHECKING, Any

from faults.effects import corrupt_text, corrupt_vector
from faults.sites.base import STREAM_KINDS, Outputs, Patch, SiteFaults, identity
from faults.spec import SpecError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Generator

    from faults.spec import Entry

__all__ = ["PY_OUTPUTS", "install_py", "resolve"]


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


PY_OUTPUTS = Outputs(corrupt=_corrupt_value)


def resolve(entry: Entry) -> tuple[Any, str]:
    """(owner, attribute name) of a py: site; SpecError naming what is missing."""
    site, text = entry.site, str(entry)
    try:
        owner: Any = importlib.import_module(site.module)
    except ImportError as exc:
        raise SpecError(f"cannot import {site.module!r} for {site}: {exc}", text, 3) from exc
    *path, name = site.qualname.split(".")
    column = text.find(":", 3) + 1  # the caret goes under the missing attribute
    for part in path:
        found = getattr(owner, part, None)
        if found is None:
            raise SpecError(f"{site}: {_named(owner)} has no attribute {part!r}", text, column)
        owner = found
        column += len(part) + 1
    if not hasattr(owner, name):
        raise SpecError(f"{site}: {_named(owner)} has no attribute {name!r}", text, column)
    return owner, name


def _named(owner: Any) -> str:
    if inspect.ismodule(owner):
        return f"module {owner.__name__!r}"
    return f"{type(owner).__name__} {getattr(owner, '__qualname__', owner)!r}"


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
            __tracebackhide__ = True
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
            __tracebackhide__ = True
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
            __tracebackhide__ = True
            d = decide()
            if d is None:
                return await fn(*args, **kwargs)
            return await acall(d, fn, args, kwargs)

        wrapper = async_wrapper
    else:
        call = f.call

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            d = decide()
            if d is None:
                return fn(*args, **kwargs)
            return call(d, fn, args, kwargs)

    return functools.wraps(fn)(wrapper)


def install_py(entry: Entry, f: SiteFaults) -> Patch:
    """Patch the callable a py: entry names with the faults of ``f``."""
    owner, name = resolve(entry)
    raw = _raw(owner, name)
    text = str(entry)
    rewrap: Callable[[Any], Any] = identity
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
        if term.kind in STREAM_KINDS and not streams:
            raise SpecError(
                f"{term.kind}() needs a generator, and {entry.site.qualname} is not a "
                "generator function (nor an async generator function)",
                text,
                text.find(str(term)),
            )
    return Patch(owner, name, rewrap(_wrap(fn, f)))
