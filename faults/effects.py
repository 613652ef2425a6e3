"""What the fault kinds do when they fire: the exception of ``raise``, and bad outputs.

:mod:`faults.kinds` says which kinds there are and what they take; this module holds the
small pure pieces the sites apply when a kind fires, so they can be tested without
installing anything: resolving an exception name to its class (importing a dotted path),
building the exception ``raise(type[, message])`` raises, and corrupting text, JSON and
vectors for ``corrupt`` and ``nan``; and :func:`crash`, the abort of ``crash``.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
from typing import TYPE_CHECKING, Final, NoReturn

from faults.kinds import check_exception_name, exception_class, raisable, refusal
from faults.spec import SpecError
from pytest_resilience.core import errors as core_errors

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "context_overflow",
    "corrupt_json",
    "corrupt_text",
    "corrupt_vector",
    "crash",
    "crash_message",
    "make_exception",
    "nan_vector",
    "on_crash",
    "overflowing",
    "resolve_exception_type",
    "resolve_raise_type",
]

# ----------------------------------------------------------------------------- exceptions


def resolve_exception_type(name: str) -> type[BaseException]:
    """The exception class that ``name`` means; dotted paths are imported here.

    Any exception class: this resolves the types a policy catches too (``on = [...]``). For
    the type ``raise(name)`` injects, see :func:`resolve_raise_type`. Raises
    :class:`faults.spec.SpecError` (a ``ValueError``) when the name is unknown, the module
    cannot be imported, or the object is not an exception class.
    """
    found = exception_class(name)
    if found is not None:
        return found
    module_name, _, attr = name.rpartition(".")
    if not module_name:
        message, hint = check_exception_name(name) or (f"unknown exception type {name!r}", None)
        raise SpecError(message, name, 0, suggestion=hint)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"cannot import {module_name!r} for raise({name}): {exc}", name, 0) from exc
    value = getattr(module, attr, None)
    if not (isinstance(value, type) and issubclass(value, BaseException)):
        raise SpecError(f"{name!r} is not an exception class", name, len(module_name) + 1)
    return value


def resolve_raise_type(name: str) -> type[BaseException]:
    """The exception class ``raise(name)`` injects: :func:`resolve_exception_type`, and a
    :class:`faults.spec.SpecError` saying why for a class that is not
    :func:`~faults.kinds.raisable` (``raise(mypkg.Stop)`` where ``Stop`` derives from
    ``BaseException`` only)."""
    cls = resolve_exception_type(name)
    if not raisable(cls):
        raise SpecError(refusal(name, cls), name, 0)
    return cls


# Core errors whose constructor does not take a single message.
_FACTORIES: Final[Mapping[type[BaseException], Callable[[str, str], BaseException]]] = {
    core_errors.RetryError: lambda msg, site: core_errors.RetryError(1, None, msg),
    core_errors.CircuitOpenError: lambda msg, site: core_errors.CircuitOpenError(site, "open"),
    core_errors.FallbackError: lambda msg, site: core_errors.FallbackError(site, ()),
    core_errors.StreamStalled: lambda msg, site: core_errors.StreamStalled("idle", 0.0),
    core_errors.StreamInterrupted: lambda msg, site: core_errors.StreamInterrupted(msg),
    core_errors.ModelNotFound: lambda msg, site: core_errors.ModelNotFound(site, msg),
    core_errors.ServerError: lambda msg, site: core_errors.ServerError(500, msg),
}


def make_exception(name: str, message: str | None = None, *, site: str = "") -> BaseException:
    """The exception instance that ``raise(name[, message])`` at ``site`` raises.

    The message defaults to ``"fault injected at <site>"``. Core errors with richer
    constructors get plausible values (``ServerError`` is a 500, ``CircuitOpenError`` names
    the site). A class whose constructor refuses a single message is built without calling
    its ``__init__`` and given the message as its only argument. Raises :class:`SpecError`
    as :func:`resolve_raise_type` does (a class that is not :func:`~faults.kinds.raisable` is
    refused).
    """
    cls = resolve_raise_type(name)
    text = message if message is not None else f"fault injected at {site or 'a site'}"
    factory = _FACTORIES.get(cls)
    if factory is not None:
        return factory(text, site)
    try:
        return cls(text)
    except TypeError:
        # e.g. UnicodeDecodeError or a third-party error with required fields.
        exc = cls.__new__(cls)
        exc.args = (text,)
        return exc


# ------------------------------------------------------------------------------ overflow


def context_overflow(prompt_tokens: int, n_ctx: int) -> ValueError:
    """The error llama-cpp-python raises for a prompt of ``prompt_tokens`` tokens that does
    not fit a context of ``n_ctx``: the same type and words (the daemon's server matches
    them to answer 400 ``context_length_exceeded``)."""
    return ValueError(f"Requested tokens ({prompt_tokens}) exceed context window of {n_ctx}")


def overflowing(prompt_tokens: int | None, n_ctx: int) -> int:
    """A token count that overflows ``n_ctx``: the prompt's own when it does, else the
    context's size plus the prompt's count (at least one more than the context holds)."""
    count = max(prompt_tokens or 0, 0)
    return count if count >= n_ctx else n_ctx + max(count, 1)


# --------------------------------------------------------------------------- bad outputs


def corrupt_text(text: str) -> str:
    """Corrupt plain generated text: the model answered with nothing."""
    del text  # the corruption does not depend on it, by design
    return ""


def corrupt_json(text: str) -> str:
    """Corrupt text that should be JSON: the first half of it and a replacement character.

    The result is never valid JSON: a document cannot end with U+FFFD outside a string,
    and inside a string the string is unterminated.
    """
    return text[: len(text) // 2] + "\ufffd"


Vector = list[float]


def corrupt_vector(
    vector: Sequence[float] | Sequence[Sequence[float]],
) -> list[float] | list[Vector]:
    """A vector of the wrong shape: one element short (one element, if it was empty).

    A batch (a sequence of vectors) has every row corrupted the same way.
    """
    if vector and not isinstance(vector[0], int | float):
        return [_short(row) for row in vector]  # type: ignore[arg-type]
    return _short(vector)  # type: ignore[arg-type]


def _short(row: Sequence[float]) -> Vector:
    return [float(x) for x in row[:-1]] if row else [0.0]


def nan_vector(vector: Sequence[float] | Sequence[Sequence[float]]) -> list[float] | list[Vector]:
    """The vector with non-finite values: the first element NaN, the last +Inf (same shape).

    An empty vector becomes ``[nan]``; a batch has every row treated the same way.
    """
    if vector and not isinstance(vector[0], int | float):
        return [_nan(row) for row in vector]  # type: ignore[arg-type]
    return _nan(vector)  # type: ignore[arg-type]


def _nan(row: Sequence[float]) -> Vector:
    out = [float(x) for x in row] or [math.nan]
    out[0] = math.nan
    if len(out) > 1:
        out[-1] = math.inf
    return out


# ---------------------------------------------------------------------------------- crash

#: Called with the site just before an injected crash aborts the process (:func:`on_crash`).
_crash_hooks: list[Callable[[str], None]] = []


def on_crash(hook: Callable[[str], None]) -> Callable[[], None]:
    """Call ``hook(site)`` before every crash this process injects; returns the function
    that removes it. A hook that raises stops the crash: its exception propagates from the
    call that would have aborted (a test runner that must not die refuses so), and the
    hooks after it are not called. A hook runs in whatever process crashes: one that means
    a single process compares ``os.getpid()``."""
    _crash_hooks.append(hook)

    def remove() -> None:
        if hook in _crash_hooks:
            _crash_hooks.remove(hook)

    return remove


def crash_message(site: str) -> str:
    """The last words of a crash at ``site``, in llama.cpp's style for a failed assert."""
    return f"ggml/src/ggml.c:0: GGML_ASSERT(fault injected at {site}) failed\n"


def crash(site: str) -> NoReturn:
    """Abort the process as llama.cpp does on a failed ``GGML_ASSERT``: its last words on
    stderr, then ``os.abort()`` (SIGABRT; no exception, no ``finally``, no atexit).

    The :func:`on_crash` hooks run first. What Python buffered for stdout and stderr is
    flushed, so the app's own output is not lost with it; the message goes straight to file
    descriptor 2, as C writes it; no core file is written.
    """
    for hook in _crash_hooks.copy():  # a hook may remove itself
        hook(site)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(OSError):
        os.write(2, crash_message(site).encode())
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource  # noqa: PLC0415 - POSIX only, and only now

        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    os.abort()
