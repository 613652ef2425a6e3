"""The fault kinds and sites: the table behind the ``--inject-faults`` grammar.

The parser (:mod:`faults.spec`) validates against this table, docs and error messages quote
it, and the injector reads it. It says which kinds there are, which sites admit each, and
what arguments each takes; what a kind *does* when it fires (building the exception of
``raise``, corrupting text and vectors) is in :mod:`faults.effects`.

Sites (:data:`SITES`) are ``llama.load``, ``llama.generate``, ``llama.chat``,
``llama.stream``, ``llama.embed``, ``daemon.request``, ``daemon.stream``,
``daemon.process``, and ``py:MODULE:QUALNAME`` for any downstream callable (the family
:data:`PY`). Each :class:`KindInfo` lists the sites that admit it; ``off`` fits everywhere.

Arguments (:class:`Param`) have one of four types (:class:`ArgType`): a whole number, a
duration (``500ms``, ``30s``, ``2m``, ``1h``, normalised to float seconds; ``forever`` where
the parameter allows it, as ``math.inf``), a name (an identifier or dotted path) or a
string (quoted; a bare name is accepted). A parameter is positional in the canonical text
unless it is ``keyword`` (``stall(after=5)``); both forms are accepted on input. The
exception type of ``raise`` is checked here, without importing anything
(:func:`check_exception_name`): a bare name must be one :func:`exception_names` lists.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pytest_resilience.core import errors as core_errors

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "BUILTIN_SITES",
    "INTERRUPTS",
    "KINDS",
    "PY",
    "SITES",
    "ArgType",
    "ArgValue",
    "KindInfo",
    "Param",
    "check_exception_name",
    "exception_class",
    "exception_names",
    "kinds_for",
    "raisable",
    "refusal",
]

#: STRING); ``None`` only as the default of an optional parameter that has no value.
ArgValue = int | float | str | None

#: The family of ``py:MODULE:QUALNAME`` sites, as it appears in :attr:`KindInfo.sites`.
PY: Final = "py"

#: Every built-in site, with where it acts.
SITES: Final[Mapping[str, str]] = {
    "llama.load": "llama_cpp.Llama(...): loading a model",
    "llama.generate": "Llama.create_completion / __call__, not streaming",
    "llama.chat": "Llama.create_chat_completion, not streaming",
    "llama.stream": "the chunk iterator of a streaming llama call",
    "llama.embed": "Llama.embed / create_embedding",
    "daemon.request": "an HTTP request to the model daemon",
    "daemon.stream": "the SSE chunks of a streaming daemon answer",
    "daemon.process": "the daemon process itself",
}
BUILTIN_SITES: Final = tuple(SITES)


class ArgType(enum.Enum):
    """The type of a kind's argument, as the parser checks it."""

    INT = "int"  # a whole number, 0 or more
    DURATION = "duration"  # 500ms, 30s, 2m, 1h -> float seconds
    NAME = "name"  # an identifier or a dotted path
    STRING = "string"  # quoted text; a bare name is taken as its text


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of a kind.

    ``required`` parameters have no default. ``keyword`` ones are written ``name=value`` in
    the canonical text. ``forever`` lets a duration be ``forever`` (``math.inf``). ``check``
    validates a value further: it returns ``None`` when the value is good, else an error
    message and an optional suggestion.
    """

    name: str
    type: ArgType
    default: ArgValue = None
    required: bool = False
    keyword: bool = False
    forever: bool = False
    check: Callable[[ArgValue], tuple[str, str | None] | None] | None = None

    @property
    def placeholder(self) -> str:
        """How the signature shows the parameter: ``after=n``, ``duration``."""
        short = {ArgType.INT: "n", ArgType.DURATION: "d"}.get(self.type, self.name)
        return f"{self.name}={short}" if self.keyword else self.name


@dataclass(frozen=True, slots=True)
class KindInfo:
    """A fault kind: its parameters, the sites that admit it, and a one-line description."""

    name: str
    doc: str
    sites: frozenset[str]  # built-in site names, and PY for py:MODULE:QUALNAME sites
    params: tuple[Param, ...] = ()

    def param(self, name: str) -> Param | None:
        """The parameter called ``name``, or ``None``."""
        for p in self.params:
            if p.name == name:
                return p
        return None

    @property
    def signature(self) -> str:
        """The kind as the docs write it: ``stall(after=n[, for=d])``."""
        if not self.params:
            return self.name
        text = ""
        for i, p in enumerate(self.params):
            sep = ", " if i else ""
            text += f"{sep}{p.placeholder}" if p.required else f"[{sep}{p.placeholder}]"
        # Optional brackets nest at the end: "a[, b][, c]" reads the same either way.
        return f"{self.name}({text})"

    def admits(self, site: str) -> bool:
        """Whether the site (a built-in name, or ``PY`` for a ``py:`` site) admits this kind."""
        return site in self.sites


# ------------------------------------------------------------------------ exception names


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module in (builtins, core_errors):
        for name in dir(module):
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, BaseException):
                found.setdefault(name, value)
    return found


#: Every exception class a bare name means, for ``raise`` and for lists of types to catch.
_EXCEPTIONS: Final = _exception_classes()

#: The ``BaseException`` kinds that ``raise`` injects although they are not an ``Exception``:
#: the interrupts every resilience policy lets through (no retry, fallback or breaker
#: handles them), so code under test meets them as it would for real, and pytest fails the
#: one test they reach (docs/faults.md, "Kinds").
INTERRUPTS: Final[tuple[type[BaseException], ...]] = (
    core_errors.Cancelled,
    core_errors.HangDetected,
    asyncio.CancelledError,
)


def raisable(cls: type[BaseException]) -> bool:
    """Whether ``raise(...)`` may inject ``cls``: an ``Exception``, or one of :data:`INTERRUPTS`
    (or a subclass of either)."""
    return issubclass(cls, (Exception, *INTERRUPTS))


def refusal(name: str, cls: type[BaseException]) -> str:
    """Why ``raise(name)`` is refused, for a class that is not :func:`raisable`."""
    if issubclass(cls, KeyboardInterrupt):
        why = "pytest would stop the whole run, not fail the test"
    elif issubclass(cls, SystemExit):
        why = "it asks the process to exit, and a worker or thread it reaches would end"
    elif issubclass(cls, GeneratorExit):
        why = "Python raises it only to close a generator"
    else:
        why = "it would interrupt the run rather than fail the call, and no code should catch it"
    return (
        f"raise() refuses {name}: it is a BaseException but not an Exception ({why}); "
        "raise() takes an Exception, or Cancelled, HangDetected or asyncio.CancelledError"
    )


_RAISABLE: Final = tuple(sorted(n for n, cls in _EXCEPTIONS.items() if raisable(cls)))


def exception_names() -> tuple[str, ...]:
    """The bare names ``raise`` accepts: builtin exceptions and pytest_resilience.core.errors'
    (the ``Exception`` ones, and ``Cancelled`` and ``HangDetected``)."""
    return _RAISABLE


def _nearest(word: str, choices: Sequence[str]) -> str | None:
    import difflib  # noqa: PLC0415 - only an error message needs it

    found = difflib.get_close_matches(
        word,
        choices,
        n=1,  # pragma: no mutate - only the best match is used: any n >= 1 gives the same
        cutoff=0.6,  # pragma: no mutate - difflib's default: without it the same matches
    )
    return found[0] if found else None


def check_exception_name(value: ArgValue) -> tuple[str, str | None] | None:
    """Validate the exception type of ``raise`` without importing anything.

    A bare name must be a builtin exception or a name from ``pytest_resilience.core.errors``, and
    :func:`raisable` (``raise(KeyboardInterrupt)`` is refused here, at parse time); a dotted
    path (``pkg.mod.Name``) is only checked when the fault is installed
    (:func:`faults.effects.resolve_raise_type`). Returns ``None`` when the name is
    acceptable, else a message and a suggestion.
    """
    if not isinstance(value, str):
        return ("raise() needs an exception type name", None)
    if "." in value:
        return None
    found = _EXCEPTIONS.get(value)
    if found is not None:
        return None if raisable(found) else (refusal(value, found), None)
    return (
        f"unknown exception type {value!r} (a builtin exception, a pytest_resilience error, "
        "or a dotted path pkg.mod.Name)",
        _nearest(value, _RAISABLE),
    )


def exception_class(name: str) -> type[BaseException] | None:
    """The class a bare exception name means (a builtin, or one of
    ``pytest_resilience.core.errors``), raisable or not; ``None`` for any other name."""
    return _EXCEPTIONS.get(name)


# ---------------------------------------------------------------------------------- kinds

_GEN = frozenset({"llama.generate", "llama.chat"})
_STREAMS = frozenset({"llama.stream", "daemon.stream"})
_EVERYWHERE = frozenset({*SITES, PY})


_D = ArgType.DURATION
_FOREVER = math.inf


def _after(*, required: bool = False) -> Param:
    return Param("after", ArgType.INT, 0 if not required else None, required, keyword=True)


def _check_status(value: ArgValue) -> tuple[str, str | None] | None:
    if isinstance(value, int) and 400 <= value <= 599:
        return None
    return (f"status() needs an HTTP error status from 400 to 599, not {value!r}", None)


_KIND_LIST: Final = (
    KindInfo("off", "pass through: the real call runs", _EVERYWHERE),
    KindInfo("none", "return None instead of calling", _GEN | {"llama.embed", PY}),
    KindInfo(
        "raise",
        "raise the exception type, with the message if given",
        _GEN | {"llama.load", "llama.stream", "llama.embed", "daemon.request", PY},
        (
            Param("type", ArgType.NAME, required=True, check=check_exception_name),
            Param("message", ArgType.STRING),
        ),
    ),
    KindInfo(
        "timeout",
        "hang for the duration (default forever), so the caller's timeout must fire",
        _GEN | {"daemon.request", PY},
        (Param("duration", _D, _FOREVER, forever=True),),
    ),
    KindInfo(
        "latency",
        "delay the call by the duration, plus or minus a uniform jitter",
        _GEN | {"llama.stream", "daemon.request", PY},
        (Param("duration", _D, required=True), Param("jitter", _D, 0.0)),
    ),
    KindInfo(
        "oom",
        "fail for lack of memory (MemoryError, or the backend's allocation failure)",
        _GEN | {"llama.load", PY},
    ),
    KindInfo(
        "crash",
        "the process aborts (SIGABRT) as llama.cpp does on a failed GGML_ASSERT; at "
        "llama.stream after n chunks",
        frozenset(site for site in SITES if site.startswith("llama.")),
        (_after(),),
    ),
    KindInfo(
        "stall",
        "the stream stops after n chunks, for the duration (default forever)",
        _STREAMS | {PY},
        (_after(), Param("for", _D, _FOREVER, keyword=True, forever=True)),
    ),
    KindInfo(
        "truncate",
        "the stream ends cleanly after n chunks",
        _STREAMS | {PY},
        (_after(required=True),),
    ),
    KindInfo(
        "corrupt",
        "the output is unusable: empty text, invalid JSON, a wrong-shape vector",
        _GEN | _STREAMS | {"llama.embed", PY},
    ),
    KindInfo("nan", "the embedding holds NaN and Inf", frozenset({"llama.embed"})),
    KindInfo(
        "lost",
        "the daemon dies (SIGKILL, or the connection reset) after n chunks",
        _STREAMS | {"daemon.request", "daemon.process"},
        (_after(),),
    ),
    KindInfo("refuse", "the connection to the daemon is refused", frozenset({"daemon.request"})),
    KindInfo(
        "pause",
        "freeze the daemon (SIGSTOP) for the duration, then resume it (SIGCONT)",
        frozenset({"daemon.process"}),
        (Param("duration", _D, required=True, forever=True),),
    ),
    KindInfo(
        "ratelimit",
        "the daemon answers 429, with Retry-After if given",
        frozenset({"daemon.request"}),
        (Param("retry_after", _D, keyword=True),),
    ),
    KindInfo(
        "status",
        "the daemon answers this HTTP error status (500, 503, ...) with a JSON error body",
        frozenset({"daemon.request"}),
        (
            Param("code", ArgType.INT, required=True, check=_check_status),
            Param("retry_after", _D, keyword=True),
        ),
    ),
    KindInfo(
        "restart",
        "the daemon is killed and started again",
        frozenset({"daemon.process"}),
    ),
    KindInfo(
        "overflow",
        "the prompt exceeds the context window: llama-cpp-python's ValueError, the daemon's "
        "400 context_length_exceeded (an empty 200 stream for a streamed request)",
        _GEN | _STREAMS | {"daemon.request"},
    ),
    KindInfo(
        "error",
        "the stream sends n chunks, then an in-band error event, and ends",
        frozenset({"daemon.stream"}),
        (_after(),),
    ),
)

#: Every kind by name, in the order the docs list them.
KINDS: Final[Mapping[str, KindInfo]] = {k.name: k for k in _KIND_LIST}


def kinds_for(site: str) -> tuple[str, ...]:
    """The kinds a site admits: ``site`` is a built-in site name or ``PY``."""
    return tuple(name for name, info in KINDS.items() if site in info.sites)
