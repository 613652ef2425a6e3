"""How a journal line's values are read back into event fields, and shown when they are bad.

:func:`converter` turns a field's annotation into the function that reads a JSON value into
it (``str``, ``int``, ``float``, ``bool``, ``tuple[T, ...]`` of one of those, or
``T | None``); a value of the wrong type raises ``ValueError`` saying what it should have
been. :func:`show` and :func:`show_name` render what was read, short and printable, for
those messages. The registry in :mod:`pytest_resilience.core.events` uses them.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable
from typing import Final

__all__ = ["Convert", "converter", "show", "show_name"]

#: Reads one JSON value into a field; ``ValueError`` says what it should have been.
Convert = Callable[[object], object]


def converter(hint: object) -> Convert:
    """What reads a JSON value into a field of type ``hint``; ``ValueError`` says what it
    should have been. ``TypeError`` for a type a journal cannot hold."""
    simple = _SIMPLE.get(hint)
    if simple is not None:
        return simple
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and args[0] in _SIMPLE:
        return functools.partial(_to_tuple, _SIMPLE[args[0]], _NAMES[args[0]])
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = converter(args[0] if args[1] is type(None) else args[1])
        return functools.partial(_or_none, inner)
    raise TypeError(
        f"a journal holds str, int, float, bool, tuple[T, ...] of one of those, or T | None; "
        f"not {hint!r}"
    )


def _to_int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"an integer, not {show(value)}")


def _to_float(value: object) -> float:
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"a number a float can hold, not {show(value)}") from None
    raise ValueError(f"a number, not {show(value)}")


def _to_str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"a string, not {show(value)}")


def _to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"true or false, not {show(value)}")


_SIMPLE: Final[dict[object, Convert]] = {
    int: _to_int,
    float: _to_float,
    str: _to_str,
    bool: _to_bool,
}
_NAMES: Final[dict[object, str]] = {
    int: "integers",
    float: "numbers",
    str: "strings",
    bool: "true or false",
}


def _to_tuple(item: Convert, names: str, value: object) -> tuple[object, ...]:
    if isinstance(value, list | tuple):
        try:
            return tuple(item(x) for x in value)
        except ValueError:
            pass
    raise ValueError(f"a list of {names}, not {show(value)}")


def _or_none(inner: Convert, value: object) -> object:
    if value is None:
        return None
    try:
        return inner(value)
    except ValueError as exc:
        raise ValueError(f"null or {exc}") from None


def show_name(text: str) -> str:
    """A name read from JSON, printable and short, for messages."""
    shown = repr(text)[1:-1]
    return shown if len(shown) <= 40 else f"{shown[:37]}..."


def show(value: object) -> str:
    """A short, one-line, printable rendering of a value read from JSON, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"an object of {len(value)} key(s)"
    text = repr(value) if isinstance(value, str | int | float) else type(value).__name__
    return text if len(text) <= 60 else f"{text[:57]}..."
