"""Scenario files: a failure, the steps that meet it, and what must hold (DESIGN §7).

A scenario is a TOML file, read with the stdlib ``tomllib``; Chaos Toolkit's experiment is
the model: a steady state checked before and after, a method (the steps, run under the
faults), and rollbacks that always run. pytest collects scenario files as test items (the
plugin calls :func:`load` and :func:`run`); ``python -m faults.scenario scenarios/`` runs a
folder of them and prints a report.

::

    scenario = load("scenarios/daemon_lost.toml")      # ScenarioError: file, line, key
    outcome = run(scenario, seed=1234)
    if not outcome.passed:
        print(format_failure(outcome))                  # failures, timeline, replay command

The file (UTF-8; every key is checked: an unknown key, a wrong type, a value over its cap
or nesting deeper than :data:`MAX_DEPTH` is a :class:`ScenarioError` naming the file, the
line and the key, with a suggestion for a misspelt key; ``title``, ``model`` and names are
one line of printable text)::

    version = 1                       # required; the only version so far
    title = "..."                     # required
    seed = 1234                       # the fault seed, 0 to 2**64 - 1 (default 0);
                                      # run(seed=) replaces it: pass one only when the
                                      # user asked (--fault-seed N, --seed N; see
                                      # seed_override)
    clock = "virtual"                 # "virtual" (default: waits cost nothing) or "real"

    [target]                          # what the steps call: one of client, factory, callable
    client = "resilient"              # llama | daemon | resilient (default llama) ...
    factory = "myapp.llm:build"       # ... or factory(TargetContext) -> a Backend adapter ...
    callable = "myapp.chat:answer"    # ... or an app function (sync or async), which "call"
                                      # steps call; a top-level `target = "myapp.chat:answer"`
                                      # is short for this. Given the scenario's clock and
                                      # journal when it has parameters of those names
    model = "tiny"                    # tiny | tiny-small | gemma3-270m | a .gguf path
                                      # (relative to the scenario file); default tiny
    max_tokens = 32                   # generation length of every step (default 32)
    timeout = 10.0                    # resilient: seconds per daemon call (default 10)
    policy = "raise"                  # resilient: raise | never_fail
    daemon_url = "http://127.0.0.1:11434"   # factory, callable: the app's own server, which
                                      # daemon.* faults act on (not daemon.process)
    route = "wire"                    # daemon, resilient: daemon.* faults through a fault
                                      # proxy in front of the daemon, in real time (default
                                      # "hooks": in the HTTP clients, on the scenario's clock)
    errors = ["myapp.errors.ModelDown"]     # more exceptions that count as a failed op

    [faults]
    spec = "daemon.stream=@2lost(after=3)"     # the --inject-faults grammar (DESIGN §6)

    [resilience.retry]                # every table optional; each configures one core object
    attempts = 3                      # counting the first; at most MAX_ATTEMPTS (100)
    base = 0.5                        # Backoff(base, factor, cap, jitter)
    factor = 2.0
    cap = 30.0
    jitter = "full"                   # none | full | equal | decorrelated | proportional
    budget = 60.0                     # seconds for all attempts
    on = ["InvalidOutput"]            # exception names (builtins, pytest_resilience errors,
                                      # dotted paths: checked at load, imported by run());
                                      # default: BackendError, ConnectionError, TimeoutError
    on_result = "none"                # also retry a None ("none") or empty ("empty") answer
    [resilience.breaker]
    name = "model"                    # the journal source (default: "daemon" for daemon and
                                      # resilient targets, else "model")
    failures = 3                      # consecutive failures that open it
    recovery = 30.0                   # seconds open before half-open
    probes = 1
    successes = 1                     # probe successes that close it
    on = ["BackendError"]             # what counts as a failure (default as retry's)
    [resilience.stream]               # the StreamGuard
    first_token = 10.0
    idle = 5.0
    total = 120.0
    on_stall = "return"               # return (keep the partial answer) | raise
    [resilience.fallback]             # a chain after the target's model
    models = ["tiny-small"]           # step names are the model names
    static = "The model is resting."  # a last step that always answers (text ops)
    [resilience.degrade]              # a Degrader; OOM steps down at once
    models = ["tiny", "tiny-small"]   # large to small: the level picks the model
    lowest = "minimal"                # reduced | minimal | cached_only | static
    [resilience.checkpoint]           # what the "job" op does
    key = "story"
    parts = 5                         # one generation per part, a checkpoint after each
                                      # (at most MAX_PARTS, 1000)
    killed_after = 2                  # the first run is a child process, SIGKILLed once
                                      # it has saved 2 checkpoints; the job then resumes
                                      # in process from what it left on disk

    [steady_state]                    # optional: a probe that must succeed before the
    op = "generate"                   # steps, and again after them once the faults are
    prompt = "Hello"                  # removed (generate | stream | embed | chat)

    [[steps]]                         # run in order, under the faults
    op = "stream"                     # generate | stream | embed | chat | job (model ops)
                                      # call (a callable target's op)
                                      # kill_daemon | pause_daemon | resume_daemon |
                                      # restart_daemon | advance (act on the world)
    prompt = "Tell me a story"        # call: the first argument, when there is no args
    args = ["Tell me a story"]        # call: the positional arguments
    kwargs = { temperature = 0.2 }    # call: the keyword arguments
    repeat = 5                        # default 1; at most MAX_REPEAT (10000)
    seconds = 30.0                    # advance: virtual seconds (real clock: sleeps)
    max_tokens = 16                   # overrides the target's
    resilience = { retry = { attempts = 5 } }   # per step: retry and stream only (the
                                      # stateful breaker, fallback, degradation and
                                      # checkpoint belong to the whole scenario)

    [expect]                          # evaluated over the journal of the steps
    success_rate = 1.0                # model ops (or calls) that answered / all of them,
                                      # to 0.005
    fallbacks = ["direct"]            # the fallback steps that answered, in first-use order
    transitions.daemon = ["closed->open", "open->half_open", "half_open->closed"]
    max_attempts = 3                  # no call took more attempts than this
    retries = 2                       # retries scheduled, exactly
    rejected = 1                      # calls an open breaker refused, exactly
    min_retry_delay = 5.0             # every retry waited at least this (Retry-After)
    degraded_to = "reduced"           # the degradation level at the end
    partial_kept = true               # a stalled stream kept what it had delivered
    source_closed = true              # every guarded stream's source was closed
    resumed_from_checkpoint = true    # a job resumed from its last checkpoint
    faults_injected = 2               # faults that fired, exactly
    leaks = "none"                    # no thread, fd or child process left behind

Model ops and calls count towards ``success_rate``: an op *fails* when it raises one of the
errors a failure produces (any :class:`~pytest_resilience.core.errors.ResilienceError`,
``OSError``, ``TimeoutError``, ``MemoryError``, and the target's ``errors``) or answers
``None``; a stream that stalls with ``on_stall = "return"`` answers (with its partial
text). A call of an async function runs on an event loop of its own (under a virtual
clock, one whose ``asyncio.sleep`` is virtual); a generator's items are read to the end.
A callable target takes ``[resilience.retry]`` and ``[resilience.breaker]`` only, and
cannot expect ``partial_kept`` or ``source_closed``. Any other exception ends the steps
(``Outcome.error``); the rollbacks run all the same: the faults are uninstalled, every
stream, backend and client is closed, the daemon is stopped, the checkpoint folder removed.

Under a virtual clock the daemon (a real child process) still runs in real time; only the
waits of the core and of the injected faults are virtual. Daemon targets start
``llama_cpp.server`` with the chosen model (``n_threads=1``; with embeddings configured
when a step embeds, in which case that daemon serves embeddings only).

Every step and model op is journaled (``scenario.step``, ``scenario.op`` events) next to
the faults and the reactions, so :meth:`Journal.timeline` reads as one story.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import difflib
import importlib
import inspect
import keyword
import math
import os
import re
import select
import shlex
import subprocess
import sys
import tempfile
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

from faults.injector import Injector
from faults.kinds import resolve_exception_type
from faults.schedule import derive_rng
from faults.spec import Spec, SpecError, parse
from faults.target import address_of
from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.core.analytics import Summary, summarize
from pytest_resilience.core.breaker import CircuitBreaker, ConsecutiveFailures, Recovery
from pytest_resilience.core.clock import SystemClock, VirtualClock
from pytest_resilience.core.degrade import Degrader, Level
from pytest_resilience.core.errors import (
    BackendError,
    InvalidOutput,
    ResilienceError,
    StreamInterrupted,
    StreamStalled,
)
from pytest_resilience.core.events import (
    AttemptFailed,
    AttemptStarted,
    DegradationChanged,
    Event,
    FallbackUsed,
    FaultInjected,
    Journal,
    Recovered,
    RetryScheduled,
)
from pytest_resilience.core.fallback import Fallback
from pytest_resilience.core.retry import Backoff, Retry, result_is_empty, result_is_none
from pytest_resilience.core.stream import StreamGuard

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Awaitable,
        Callable,
        Coroutine,
        Iterator,
        Mapping,
        Sequence,
    )

    from faults.proxy import FaultProxy
    from pytest_resilience.backends.base import Backend, TextStream
    from pytest_resilience.backends.daemon import DaemonBackend, DaemonProcess
    from pytest_resilience.backends.resilient import ResilientClient
    from pytest_resilience.core.clock import Clock
    from pytest_resilience.core.leaks import Leak
    from pytest_resilience.core.recovery import CheckpointStore

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_DEPTH",
    "MAX_PARTS",
    "MAX_REPEAT",
    "MAX_SEED",
    "USAGE_ERROR",
    "Outcome",
    "Scenario",
    "ScenarioError",
    "ScenarioOp",
    "ScenarioStep",
    "Stats",
    "Step",
    "Target",
    "TargetContext",
    "format_failure",
    "format_report",
    "key_lines",
    "load",
    "loads",
    "main",
    "replay_command",
    "run",
    "seed_override",
    "spec_of",
]

T = TypeVar("T")

MODEL_OPS: Final = ("generate", "stream", "embed", "chat", "job")
DAEMON_OPS: Final = ("kill_daemon", "pause_daemon", "resume_daemon", "restart_daemon")
#: The op of a ``callable`` target: call the function with the step's arguments.
CALL_OP: Final = "call"
OPS: Final = (*MODEL_OPS, CALL_OP, *DAEMON_OPS, "advance")
#: The ops that count towards ``success_rate``: model ops and calls.
COUNTED_OPS: Final = (*MODEL_OPS, CALL_OP)
CLIENTS: Final = ("llama", "daemon", "resilient")
#: The keyword arguments a callable target is given when its signature names them.
CONTEXT_ARGS: Final = ("clock", "journal")
LEVELS: Final = tuple(level.label for level in Level)
#: What a failed model op raises; anything else is a bug and ends the steps.
FAILURES: Final[tuple[type[Exception], ...]] = (
    ResilienceError,
    OSError,
    TimeoutError,
    MemoryError,
)
_DEFAULT_ON: Final = ("BackendError", "ConnectionError", "TimeoutError")
_RATE_TOLERANCE: Final = 0.005


class ScenarioError(ValueError):
    """A scenario file that cannot be used: ``path``, ``line`` (1-based), ``key`` (dotted,
    ``steps[2].op`` for the second step; empty for a problem with the whole file) and
    ``message``. ``str()``: ``"scenarios/x.toml:12: expect.sucess_rate: unknown key (did you
    mean 'success_rate'?)"``."""

    def __init__(self, path: str, line: int, key: str, message: str) -> None:
        super().__init__(message)
        self.path, self.line, self.key, self.message = path, line, key, message

    def __str__(self) -> str:
        # what the file holds is shown escaped: an ANSI escape in a key must not reach
        # the terminal (the message's own line breaks stay: a spec's caret is under it)
        where = f"{_safe(self.path)}:{self.line}: "
        message = _safe_lines(self.message)
        return where + (f"{_safe(self.key)}: {message}" if self.key else message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.line, self.key, self.message))


# ================================================================================ lines

_BARE = r"[A-Za-z0-9_-]+"
_PART = rf"(?:{_BARE}|\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*')"
_DOTTED = rf"{_PART}(?:[ \t]*\.[ \t]*{_PART})*"
_HEADER = re.compile(rf"(\[\[?)[ \t]*({_DOTTED})[ \t]*\]\]?[ \t\r]*(?:#[^\n]*)?$")
_KEY = re.compile(rf"[ \t]*({_DOTTED})[ \t]*=")
_SPLIT = re.compile(_PART)
# Strings, as TOML has them: a multi-line string may end in up to five quotes.
_STRINGS: Final = (
    ('"""', re.compile(r'"""(?:[^"\\]|\\.|"(?!""))*"{3,5}', re.DOTALL)),
    ("'''", re.compile(r"'''(?:[^']|'(?!''))*'{3,5}")),
    ('"', re.compile(r'"(?:[^"\\\n]|\\.)*"')),
    ("'", re.compile(r"'[^'\n]*'")),
)
_TOKEN = re.compile(r"[^\s,\[\]{}#]+")

Path_ = tuple[str | int, ...]

#: Arrays and tables nest at most this deep in a scenario (``steps[1].kwargs`` is 3 deep).
MAX_DEPTH: Final = 32


def _split_key(text: str) -> list[str]:
    return [_unquote(p) for p in _SPLIT.findall(text)][: MAX_DEPTH + 2]


def _unquote(part: str) -> str:
    if part[0] == "'":
        return part[1:-1]
    if part[0] != '"':
        return part
    if "\\" in part:  # escapes: let tomllib read them, as it read the document
        with contextlib.suppress(ValueError):
            key: str = tomllib.loads(f"k = {part}")["k"]
            return key
    return part[1:-1]


@dataclass(slots=True)
class _Frame:
    """An array or inline table being read by :class:`_Scan`: its path, the next index."""

    array: bool
    path: Path_
    index: int = 0


class _Scan:
    """Where the keys of a TOML text are: one pass over the text, without recursion, that
    never raises (a malformed text gives what could be found).

    ``lines``: the line (1-based) of every table, key and array element by path (``[a.b]``
    headers; ``[[steps]]`` counts its entries, so ``("steps", 0)`` is the first; ``key =``
    lines, dotted keys registering each prefix; keys of inline tables; the elements of
    arrays, ``("on", 1)`` being the second). Strings (multi-line ones too, and a ``\"\"\"``
    inside a one-line string) and comments are skipped. ``owner``: for each line that a
    ``key = value`` statement or a header covers, its path. ``depth``: the deepest nesting
    of arrays and inline tables; ``too_deep``: where it first went past :data:`MAX_DEPTH`
    (the line, and the key of the statement).
    """

    def __init__(self, source: str) -> None:
        self.src = source
        self.pos = 0
        self.line = 1
        self.lines: dict[Path_, int] = {}
        self.owner: dict[int, Path_] = {}
        self.depth = 0
        #: where the nesting first went past MAX_DEPTH: the line and the path there
        self.too_deep: tuple[int, Path_] | None = None
        self.statement: Path_ = ()  # the key whose value is being read
        self._document()

    def _found(self, path: Path_) -> None:
        if len(path) <= MAX_DEPTH + 2:
            self.lines.setdefault(path, self.line)

    def _to_eol(self) -> None:
        end = self.src.find("\n", self.pos)
        self.pos = len(self.src) if end < 0 else end

    def _document(self) -> None:
        src, size = self.src, len(self.src)
        arrays: dict[tuple[str, ...], int] = {}  # array-of-tables path -> current index
        table: Path_ = ()
        while self.pos < size:
            char = src[self.pos]
            if char == "\n":
                self.line += 1
                self.pos += 1
            elif char in " \t\r":
                self.pos += 1
            elif char == "#":
                self._to_eol()
            elif char == "[":
                end = src.find("\n", self.pos)
                end = size if end < 0 else end
                header = _HEADER.match(src, self.pos, end)
                if header is not None:
                    names = _split_key(header.group(2))
                    if header.group(1) == "[[":
                        key = tuple(names)
                        arrays[key] = arrays.get(key, -1) + 1
                        for nested in [k for k in arrays if k[: len(key)] == key != k]:
                            del arrays[nested]  # a new entry starts its own sub-arrays afresh
                    table = _resolve(names, arrays)
                    self._found(table)
                    self.owner[self.line] = table
                self.pos = end
            else:
                found = _KEY.match(src, self.pos)
                if found is None:
                    self._to_eol()
                    continue
                names = _split_key(found.group(1))
                for i in range(1, len(names) + 1):
                    self._found((*table, *names[:i]))
                path = (*table, *names)
                first = self.line
                self.pos = found.end()
                self._value(path)
                for number in range(first, self.line + 1):
                    self.owner.setdefault(number, path)
                self._to_eol()

    def _value(self, path: Path_) -> None:
        """Skip the value of ``path``, registering what is in it; stops after the value, or
        at the end of its line if it is malformed."""
        src, size = self.src, len(self.src)
        self.statement = path
        frames: list[_Frame] = []
        want: str | None = "value"  # or "key" (in an inline table), "after" (in a frame)
        while want is not None and self.pos < size:
            char = src[self.pos]
            if char == "\n":
                if not frames:
                    return
                self.line += 1
                self.pos += 1
            elif char in " \t\r":
                self.pos += 1
            elif char == "#":
                if not frames:
                    return
                self._to_eol()
            elif want == "key":
                want, path = self._key(frames, char, path)
            elif want == "value":
                want, path = self._element(frames, char, path)
            else:
                want = self._after(frames, char)

    def _key(self, frames: list[_Frame], char: str, path: Path_) -> tuple[str | None, Path_]:
        """In an inline table: its end, or a key (registered)."""
        if char == "}":
            frames.pop()
            self.pos += 1
            return ("after" if frames else None), path
        found = _KEY.match(self.src, self.pos)
        if found is None:
            return None, path
        names = _split_key(found.group(1))
        base = frames[-1].path
        for i in range(1, len(names) + 1):
            self._found((*base, *names[:i]))
        self.pos = found.end()
        return "value", (*base, *names)

    def _element(self, frames: list[_Frame], char: str, path: Path_) -> tuple[str | None, Path_]:
        """A value: an array or inline table opens a frame; an array's element is
        registered by its index."""
        top = frames[-1] if frames else None
        if top is not None and top.array:
            if char == "]":  # an empty array, or a trailing comma
                frames.pop()
                self.pos += 1
                return ("after" if frames else None), path
            path = (*top.path, top.index)
            self._found(path)
        if char in "[{":
            frames.append(_Frame(char == "[", path))
            self.depth = max(self.depth, len(frames))
            if len(frames) > MAX_DEPTH and self.too_deep is None:
                self.too_deep = (self.line, self.statement)
            self.pos += 1
            return ("value" if char == "[" else "key"), path
        self._scalar()
        return ("after" if frames else None), path

    def _after(self, frames: list[_Frame], char: str) -> str | None:
        """After a value in an array or inline table: a comma, or the frame's end."""
        top = frames[-1]
        if char == ",":
            self.pos += 1
            top.index += 1
            return "value" if top.array else "key"
        if char == ("]" if top.array else "}"):
            frames.pop()
            self.pos += 1
            return "after" if frames else None
        self._scalar()  # malformed (or a date with a space): skip it
        return "after"

    def _scalar(self) -> None:
        src = self.src
        for opening, pattern in _STRINGS:
            if src.startswith(opening, self.pos):
                found = pattern.match(src, self.pos)
                if found is None:  # unterminated: give up on the rest of the line
                    self._to_eol()
                    return
                self.line += found.group().count("\n")
                self.pos = found.end()
                return
        token = _TOKEN.match(src, self.pos)
        self.pos = token.end() if token is not None else self.pos + 1


def key_lines(source: str) -> dict[Path_, int]:
    """The line (1-based) of every table, key and array element of a TOML text, by path.

    tomllib gives no positions, so they are found by scanning the text (:class:`_Scan`):
    table headers (``[a.b]``; ``[[steps]]`` counts its entries: ``("steps", 0)`` is the
    first), ``key =`` lines (dotted keys register each prefix), the keys of inline tables
    and the elements of arrays (``("on", 1)`` is the second). Strings and comments are
    skipped, multi-line ones included. A path that is not located (inside a multi-line
    string) falls back to its nearest enclosing path (:func:`_line_of` does).
    """
    return _Scan(source).lines


def _resolve(names: list[str], arrays: Mapping[tuple[str, ...], int]) -> Path_:
    path: list[str | int] = []
    for i, name in enumerate(names):
        path.append(name)
        index = arrays.get(tuple(names[: i + 1]))
        if index is not None:
            path.append(index)
    return tuple(path)


def _line_of(lines: Mapping[Path_, int], path: Path_) -> int:
    """The line of ``path``, else of its nearest located ancestor, else 1."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return 1


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part + 1}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _safe(text: str) -> str:
    """``text`` with every character a terminal would act on (ANSI escapes, other control
    characters, line breaks) shown as its escape: ``\\x1b[31m`` stays ``\\x1b[31m``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _safe_lines(text: str) -> str:
    """:func:`_safe` for each line of ``text``: the line breaks stay."""
    return "\n".join(_safe(line) for line in text.split("\n"))


# =============================================================================== schema


@dataclass(frozen=True, slots=True)
class _Leaf:
    """A value: what it must be (``desc``), how to check it, the allowed choices, and the
    cap of an integer (``cap``, ``capped``: what it counts, for the message)."""

    desc: str
    check: Callable[[Any], bool]
    choices: tuple[str, ...] = ()
    cap: int | None = None
    capped: str = ""


@dataclass(frozen=True, slots=True)
class _Table:
    fields: Mapping[str, _Leaf | _Table | _Tables | _Map]
    required: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Tables:
    """An array of tables (``[[steps]]``)."""

    table: _Table


@dataclass(frozen=True, slots=True)
class _Map:
    """A table with free keys, each holding a ``leaf`` (``transitions.<breaker>``)."""

    leaf: _Leaf


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _capped(cap: int, what: str) -> _Leaf:
    """An integer from 1 to ``cap``: a higher one would run for hours, or for ever."""
    return _Leaf(
        f"an integer from 1 to {cap}", lambda v: _is_int(v) and 1 <= v <= cap, cap=cap, capped=what
    )


def _is_line(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != "" and v.isprintable()


#: The caps on what repeats: no scenario needs more, and a typo of a few zeros would hang.
MAX_REPEAT: Final = 10_000
MAX_ATTEMPTS: Final = 100
MAX_PARTS: Final = 1_000
#: A seed is what ``--fault-seed`` and ``--seed`` take back: a 64-bit unsigned integer.
MAX_SEED: Final = 2**64 - 1

INT = _Leaf("an integer", _is_int)
POSINT = _Leaf("an integer >= 1", lambda v: _is_int(v) and v >= 1)
SEED = _Leaf("an integer from 0 to 2**64 - 1", lambda v: _is_int(v) and 0 <= v <= MAX_SEED)
LINE = _Leaf("one line of printable text", _is_line)
NAMES = _Leaf(
    "a list of names (printable text)",
    lambda v: isinstance(v, list) and all(_is_line(x) for x in v),
)
NUM = _Leaf("a number >= 0", lambda v: _is_num(v) and v >= 0)
RATE = _Leaf("a number from 0 to 1", lambda v: _is_num(v) and 0 <= v <= 1)
STR = _Leaf("a string", lambda v: isinstance(v, str))
BOOL = _Leaf("true or false", lambda v: isinstance(v, bool))
STRS = _Leaf(
    "a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)
)
ARRAY = _Leaf("an array", lambda v: isinstance(v, list))
KWARGS = _Leaf("a table of keyword arguments", lambda v: isinstance(v, dict))


def _choice(*choices: str) -> _Leaf:
    return _Leaf("one of " + ", ".join(repr(c) for c in choices), lambda v: v in choices, choices)


_RETRY = _Table(
    {
        "attempts": _capped(MAX_ATTEMPTS, "attempts of one call"),
        "base": NUM,
        "factor": _Leaf("a number >= 1", lambda v: _is_num(v) and v >= 1),
        "cap": NUM,
        "jitter": _choice("none", "full", "equal", "decorrelated", "proportional"),
        "budget": _Leaf("a number > 0", lambda v: _is_num(v) and v > 0),
        "on": STRS,
        "on_result": _choice("none", "empty"),
    }
)
_BREAKER = _Table(
    {
        "name": LINE,
        "failures": POSINT,
        "recovery": NUM,
        "probes": POSINT,
        "successes": POSINT,
        "on": STRS,
    }
)
_STREAM = _Table(
    {"first_token": NUM, "idle": NUM, "total": NUM, "on_stall": _choice("return", "raise")}
)
_RESILIENCE = _Table(
    {
        "retry": _RETRY,
        "breaker": _BREAKER,
        "stream": _STREAM,
        "fallback": _Table({"models": NAMES, "static": STR}),
        "degrade": _Table({"models": NAMES, "lowest": _choice(*LEVELS[1:])}),
        "checkpoint": _Table(
            {"key": LINE, "parts": _capped(MAX_PARTS, "parts of a job"), "killed_after": POSINT}
        ),
    }
)
_STEP_RESILIENCE = _Table({"retry": _RETRY, "stream": _STREAM})
_STEP = _Table(
    {
        "op": _choice(*OPS),
        "prompt": STR,
        "repeat": _capped(MAX_REPEAT, "repeats of a step"),
        "seconds": NUM,
        "max_tokens": POSINT,
        "args": ARRAY,
        "kwargs": KWARGS,
        "resilience": _STEP_RESILIENCE,
    },
    required=frozenset({"op"}),
)
_PROBE = _Table(
    {
        "op": _choice("generate", "stream", "embed", "chat", CALL_OP),
        "prompt": STR,
        "max_tokens": POSINT,
        "args": ARRAY,
        "kwargs": KWARGS,
    },
    required=frozenset({"op"}),
)
_EXPECT = _Table(
    {
        "success_rate": RATE,
        "fallbacks": STRS,
        "transitions": _Map(STRS),
        "max_attempts": POSINT,
        "retries": _Leaf("an integer >= 0", lambda v: _is_int(v) and v >= 0),
        "rejected": _Leaf("an integer >= 0", lambda v: _is_int(v) and v >= 0),
        "min_retry_delay": NUM,
        "degraded_to": _choice(*LEVELS),
        "partial_kept": BOOL,
        "source_closed": BOOL,
        "resumed_from_checkpoint": BOOL,
        "faults_injected": _Leaf("an integer >= 0", lambda v: _is_int(v) and v >= 0),
        "leaks": _choice("none"),
    }
)
_SCHEMA = _Table(
    {
        "version": INT,
        "title": LINE,
        "seed": SEED,
        "clock": _choice("virtual", "real"),
        "target": _Table(
            {
                "client": _choice(*CLIENTS),
                "factory": STR,
                "callable": STR,
                "model": LINE,
                "max_tokens": POSINT,
                "timeout": NUM,
                "policy": _choice("raise", "never_fail"),
                "daemon_url": STR,
                "errors": STRS,
                "route": _choice("hooks", "wire"),
            }
        ),
        "faults": _Table({"spec": STR}),
        "resilience": _RESILIENCE,
        "steady_state": _PROBE,
        "steps": _Tables(_STEP),
        "expect": _EXPECT,
    },
    required=frozenset({"version", "title", "steps"}),
)


# Unknown keys a user may write for a known one, and the key they meant.
_ALIASES: Final[Mapping[tuple[Path_, str], str]] = {
    (("target",), name): "callable" for name in ("target", "call", "function", "func", "fn")
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    name = {int: "an integer", float: "a float", str: "a string"}.get(type(value))
    return f"{name or type(value).__name__} ({_shown(value)})"


def _shown(value: Any) -> str:
    """``repr(value)``, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Checker:
    """Checks a parsed document against the schema; the first problem raises."""

    def __init__(self, path: str, lines: Mapping[Path_, int]) -> None:
        self.path, self.lines = path, lines

    def error(self, at: Path_, message: str) -> ScenarioError:
        return ScenarioError(self.path, _line_of(self.lines, at), _dotted(at), message)

    def table(self, data: Mapping[str, Any], schema: _Table, at: Path_) -> None:
        for key, value in data.items():
            spec = schema.fields.get(key)
            if spec is None:
                known = sorted(schema.fields)
                near = [_ALIASES[at, key]] if (at, key) in _ALIASES else []
                near = near or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = (
                    f"did you mean {near[0]!r}?" if near else "expected one of: " + ", ".join(known)
                )
                raise self.error((*at, key), f"unknown key ({hint})")
            self.value(value, spec, (*at, key))
        for key in sorted(schema.required - data.keys()):
            where = "the file" if not at else f"[{_dotted(at)}]"
            raise ScenarioError(
                self.path,
                _line_of(self.lines, at) if at else 1,
                _dotted((*at, key)),
                f"required key missing in {where}",
            )

    def value(self, value: Any, spec: _Leaf | _Table | _Tables | _Map, at: Path_) -> None:
        if isinstance(spec, _Table | _Map):
            if not isinstance(value, dict):
                raise self.error(at, f"expected a table, got {_kind(value)}")
            if isinstance(spec, _Table):
                self.table(value, spec, at)
            else:
                for key, item in value.items():
                    self.value(item, spec.leaf, (*at, key))
        elif isinstance(spec, _Tables):
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise self.error(
                    at, f"expected an array of tables ([[{at[-1]}]]), got {_kind(value)}"
                )
            if not value:
                raise self.error(at, "needs at least one entry")
            for i, item in enumerate(value):
                self.table(item, spec.table, (*at, i))
        elif not spec.check(value):
            if spec.cap is not None and _is_int(value) and value > spec.cap:
                raise self.error(
                    at,
                    f"{_shown(value)} is over the cap of {spec.cap} {spec.capped} (no scenario "
                    "needs more; the cap keeps a typo from running for hours)",
                )
            if spec.choices and isinstance(value, str):
                near = difflib.get_close_matches(value, spec.choices, n=1, cutoff=0.6)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise self.error(at, f"expected {spec.desc}, got {value!r}{hint}")
            raise self.error(at, f"expected {spec.desc}, got {_kind(value)}")


# ================================================================================ model


@dataclass(frozen=True, slots=True)
class Target:
    """What the steps call (``[target]``)."""

    client: str = "llama"  # llama | daemon | resilient | factory | callable
    model: str = "tiny"
    factory: str | None = None
    max_tokens: int = 32
    timeout: float = 10.0
    policy: str = "raise"
    callable: str | None = None  # "module:function", called by the "call" op
    daemon_url: str | None = None  # the app's own server, for daemon.* faults
    errors: tuple[str, ...] = ()  # more exception names that count as a failed op
    route: str = "hooks"  # hooks | wire: how daemon.* faults reach the scenario's daemon

    @property
    def has_daemon(self) -> bool:
        """The scenario starts a model daemon of its own."""
        return self.client in ("daemon", "resilient")

    @property
    def label(self) -> str:
        """A short name of a callable target (its last attribute): ``answer``."""
        return (self.callable or "").rpartition(":")[2].rpartition(".")[2]


@dataclass(frozen=True, slots=True)
class Step:
    """One ``[[steps]]`` entry (or the steady-state probe); ``line`` is its ``op =`` line."""

    op: str
    prompt: str = "Once upon a time"
    repeat: int = 1
    seconds: float = 0.0
    max_tokens: int | None = None
    resilience: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    line: int = 0
    args: tuple[Any, ...] = ()  # "call": the positional arguments (args, or the prompt)
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # "call": keyword arguments


@dataclass(frozen=True, slots=True)
class Scenario:
    """A loaded, validated scenario (see the module docstring for the file).

    ``resilience`` and ``expect`` hold the checked tables as read; ``faults`` is the parsed
    spec; ``source`` the file's text.
    """

    path: Path
    title: str
    seed: int
    clock: str
    target: Target
    faults: Spec
    steps: tuple[Step, ...]
    expect: Mapping[str, Any]
    resilience: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    steady_state: Step | None = None
    version: int = 1
    source: str = field(default="", repr=False)
    #: the line of each table, key and array element of the file (:func:`key_lines`)
    lines: Mapping[Path_, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.stem


def load(path: str | os.PathLike[str]) -> Scenario:
    """Read and validate a scenario file. Raises :class:`ScenarioError` for any problem:
    an unreadable file, one that is not UTF-8, bad TOML, nesting deeper than
    :data:`MAX_DEPTH`, an unknown key, a wrong type, a value over its cap, a missing
    required key, an unknown version, a malformed fault spec (its caret included), a
    malformed exception name, or a step the target cannot do.

    A ``callable`` or ``factory`` target is imported now (a wrong path is an error of the
    file); the modules of dotted exception names (``on``, ``errors``) are not: they are
    imported when the scenario runs."""
    return _parse(_read(path), Path(path), str(path))


def spec_of(path: str | os.PathLike[str]) -> Spec:
    """The ``[faults] spec`` of a scenario file, for ``--inject-faults FILE.toml``: the file
    is read as :func:`load` reads it (UTF-8, TOML, nesting) but only its ``[faults]`` table
    is checked, and nothing is imported; an empty spec when it has none. Any problem is a
    :class:`ScenarioError` naming the file, the line and the key."""
    where = str(path)
    data, scan = _toml(_decode(_read(path), where), where)
    checker = _Checker(where, scan.lines)
    faults = data.get("faults", {})
    checker.value(faults, _SCHEMA.fields["faults"], ("faults",))
    try:
        return parse(faults.get("spec", ""))
    except SpecError as exc:
        raise checker.error(("faults", "spec"), f"bad fault spec: {exc}") from None


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ScenarioError(str(path), 1, "", f"cannot read the scenario: {exc}") from None


def loads(source: str | bytes, path: str | os.PathLike[str] = "scenario.toml") -> Scenario:
    """:func:`load` for a scenario's text: ``path`` names it in messages, and is where a
    relative model path is found and what scopes its seeds (its file name), as a file's."""
    data = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
    return _parse(data, Path(path), str(path))


def _decode(data: bytes, where: str) -> str:
    """The text of a scenario file: UTF-8 (a byte-order mark is skipped), or an error at the
    first byte that is not, naming the key whose line it is on."""
    bom = b"\xef\xbb\xbf"
    body = data.removeprefix(bom)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start + len(data) - len(body)
    before = data[:start]
    line = before.count(b"\n") + 1
    column = start - (before.rfind(b"\n") + 1) + 1
    scan = _Scan(data.decode("utf-8", "replace"))
    key = _dotted(scan.owner.get(line, ()))
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        hint = "it looks like UTF-16 or UTF-32: save it as UTF-8"
    else:
        hint = "save it as UTF-8"
    raise ScenarioError(
        where,
        line,
        key,
        f"the file is not UTF-8: byte 0x{data[start]:02x} at column {column} ({hint})",
    )


def _toml(source: str, where: str) -> tuple[dict[str, Any], _Scan]:
    """The parsed document and where its keys are; nesting is checked before tomllib reads
    it (tomllib recurses once a level) and after (dotted keys nest without brackets)."""
    scan = _Scan(source)

    def too_deep(line: int, path: Path_) -> ScenarioError:
        # the key where the nesting starts (steps[2].kwargs), not the whole of it: the
        # shortest prefix written on the line
        start = next(
            (path[:n] for n in range(1, len(path)) if scan.lines.get(path[:n]) == line), path
        )
        message = f"nested too deep: more than {MAX_DEPTH} levels of tables and arrays"
        return ScenarioError(where, line, _dotted(start), message)

    if scan.too_deep is not None:
        raise too_deep(*scan.too_deep)
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        line = int(found.group(1)) if found else source.count("\n") + 1
        key = _dotted(scan.owner.get(line, ()))
        raise ScenarioError(where, line, key, f"invalid TOML: {exc}") from None
    except ValueError:  # an integer too long for int(): tomllib lets the error through
        limit = sys.get_int_max_str_digits()
        digits = re.search(rf"[0-9_]{{{limit},}}", source)
        line = source.count("\n", 0, digits.start()) + 1 if digits else 1
        key = _dotted(scan.owner.get(line, ()))
        message = f"invalid TOML: an integer of more than {limit} digits"
        raise ScenarioError(where, line, key, message) from None
    except RecursionError:  # not reached after the check above; a last guard
        raise ScenarioError(where, 1, "", "invalid TOML: nested too deep") from None
    deepest = _too_deep(data)
    if deepest is not None:
        raise too_deep(_line_of(scan.lines, deepest), deepest)
    return data, scan


def _too_deep(data: Mapping[str, Any]) -> Path_ | None:
    """The path of a table or array nested deeper than :data:`MAX_DEPTH`, if any."""
    stack: list[tuple[Path_, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(item, dict | list):
                if len(path) >= MAX_DEPTH:
                    return (*path, key)
                stack.append(((*path, key), item))
    return None


def _parse(content: bytes, file: Path, where: str) -> Scenario:
    source = _decode(content, where)
    data, scan = _toml(source, where)
    lines = scan.lines
    checker = _Checker(where, lines)
    shorthand = isinstance(data.get("target"), str)
    if shorthand:  # target = "myapp.chat:answer": a callable target in one line
        data["target"] = {"callable": data["target"]}
    checker.table(data, _SCHEMA, ())
    if data["version"] != 1:
        raise checker.error(
            ("version",), f"unknown version {data['version']} (this reader knows 1)"
        )

    target, function = _target(checker, data.get("target", {}), shorthand=shorthand)

    spec = _faults(checker, data.get("faults", {}).get("spec", ""), target)

    resilience = data.get("resilience", {})
    _check_names(checker, resilience, ("resilience",))
    expect = data.get("expect", {})
    if target.callable is not None:
        _check_callable_tables(checker, resilience, expect)
    checkpoint = resilience.get("checkpoint", {})
    if checkpoint.get("killed_after", 0) >= checkpoint.get("parts", _PARTS):
        raise checker.error(
            ("resilience", "checkpoint", "killed_after"),
            f"killed_after must be less than parts ({checkpoint.get('parts', _PARTS)}): "
            "a job killed after its last checkpoint has nothing left to resume",
        )
    steps = tuple(_step(checker, raw, ("steps", i)) for i, raw in enumerate(data["steps"]))
    for i, step in enumerate(steps):
        _check_step(checker, target, resilience, step, ("steps", i))
        if function is not None and step.op == CALL_OP:
            raw = data["steps"][i]
            _check_arguments(checker, step, ("steps", i), target=target, function=function, raw=raw)
    probe = None
    if "steady_state" in data:
        probe = _step(checker, data["steady_state"], ("steady_state",))
        _check_step(checker, target, resilience, probe, ("steady_state",))
        if function is not None and probe.op == CALL_OP:
            raw = data["steady_state"]
            _check_arguments(
                checker, probe, ("steady_state",), target=target, function=function, raw=raw
            )
    return Scenario(
        path=file,
        title=data["title"],
        seed=data.get("seed", 0),
        clock=data.get("clock", "virtual"),
        target=target,
        faults=spec,
        steps=steps,
        expect=expect,
        resilience=resilience,
        steady_state=probe,
        version=data["version"],
        source=source,
        lines=lines,
    )


def _faults(checker: _Checker, spec_text: str, target: Target) -> Spec:
    """The ``[faults] spec``, parsed; its daemon sites need a daemon to act on."""
    try:
        spec = parse(spec_text)
    except SpecError as exc:
        raise checker.error(("faults", "spec"), f"bad fault spec: {exc}") from None
    daemon_sites = {e.site.target for e in spec if e.site.family == "daemon"}
    if daemon_sites and not target.has_daemon and target.daemon_url is None:
        own = target.client in ("callable", "factory")
        raise checker.error(
            ("faults", "spec"),
            f"daemon sites need a daemon target, not {target.client!r}"
            + ("; name your own server with [target] daemon_url" if own else ""),
        )
    if "process" in daemon_sites and not target.has_daemon:
        raise checker.error(
            ("faults", "spec"),
            "daemon.process acts on a daemon the scenario starts (client = 'daemon' or "
            "'resilient'); daemon_url gives only an address",
        )
    return spec


class _Deferred(Exception):
    """Stands for an exception class named by a dotted path while a file is loaded: the
    module is imported only when the scenario runs (:func:`_resolve_names`)."""


def _name_problem(name: str) -> str | None:
    """What is wrong with an exception name, found without importing anything: a bare name
    must be a builtin exception or a pytest_resilience error; a dotted path
    (``pkg.module.Name``) must be Python identifiers joined by dots."""
    if "." not in name:
        try:
            resolve_exception_type(name)  # a bare name imports nothing
        except SpecError as exc:
            hint = f" (did you mean {exc.suggestion!r}?)" if exc.suggestion else ""
            return f"{exc.message}{hint}"
        return None
    parts = name.split(".")
    bad = next((p for p in parts if not p.isidentifier() or keyword.iskeyword(p)), None)
    if bad is None:
        return None
    why = "an empty part" if not bad else f"{bad!r} is not a Python identifier"
    return (
        f"{name!r} is not an exception name: a dotted path (pkg.module.Name) has Python "
        f"identifiers between its dots, and this one has {why}"
    )


def _check_exception_names(checker: _Checker, names: Sequence[str], at: Path_) -> None:
    for i, name in enumerate(names):
        problem = _name_problem(name)
        if problem is not None:
            line = _line_of(checker.lines, (*at, i))
            raise ScenarioError(checker.path, line, _dotted(at), problem)


def _placeholder(name: str) -> type[BaseException]:
    return _Deferred if "." in name else resolve_exception_type(name)


def _check_names(checker: _Checker, resilience: Mapping[str, Any], at: Path_) -> None:
    """Exception names must be well formed, and the policies must build, now rather than
    halfway through a run: each problem is a ScenarioError at its line. The modules of
    dotted names are not imported (:func:`_resolve_names` does it when the scenario runs)."""
    for section in ("retry", "breaker"):
        names = resilience.get(section, {}).get("on", ())
        _check_exception_names(checker, names, (*at, section, "on"))
    policies = _Policies(Target(), VirtualClock(), Journal(), 0, "", resolve=_placeholder)
    builders: dict[str, Callable[[Mapping[str, Any]], object]] = {
        "retry": policies.retry,
        "breaker": policies.breaker,
        "stream": policies.guard,
        "degrade": policies.degrader,
    }
    for section, build in builders.items():
        if section in resilience:
            try:
                build(resilience[section])
            except ValueError as exc:
                raise checker.error((*at, section), str(exc)) from None


def _step(checker: _Checker, raw: Mapping[str, Any], at: Path_) -> Step:
    resilience = raw.get("resilience", {})
    _check_names(checker, resilience, (*at, "resilience"))
    op = raw["op"]
    args: tuple[Any, ...] = ()
    if op == CALL_OP:
        if "args" in raw and "prompt" in raw:
            raise checker.error(
                (*at, "prompt"), "give args or prompt, not both (prompt is the first argument)"
            )
        if "max_tokens" in raw:
            raise checker.error((*at, "max_tokens"), "max_tokens is for model ops, not call")
        args = tuple(raw["args"]) if "args" in raw else (raw["prompt"],) if "prompt" in raw else ()
    else:
        for key in ("args", "kwargs"):
            if key in raw:
                raise checker.error(
                    (*at, key), f"{key} is for op = 'call' (a callable target), not {op!r}"
                )
    return Step(
        op=op,
        prompt=raw.get("prompt", "Once upon a time"),
        repeat=raw.get("repeat", 1),
        seconds=float(raw.get("seconds", 0.0)),
        max_tokens=raw.get("max_tokens"),
        resilience=resilience,
        line=_line_of(checker.lines, (*at, "op")),
        args=args,
        kwargs=raw.get("kwargs", {}),
    )


def _check_step(
    checker: _Checker, target: Target, resilience: Mapping[str, Any], step: Step, at: Path_
) -> None:
    op_at = (*at, "op")
    if step.op == CALL_OP and target.callable is None:
        raise checker.error(
            op_at, "call needs a callable target ([target] callable = 'module:function')"
        )
    if target.callable is not None and step.op in MODEL_OPS:
        raise checker.error(
            op_at, f"{step.op} needs a model target; the steps of a callable target use op = 'call'"
        )
    if target.callable is not None and "stream" in step.resilience:
        raise checker.error(
            (*at, "resilience", "stream"), "a callable target takes a per-step retry only"
        )
    if step.op in DAEMON_OPS and not target.has_daemon:
        raise checker.error(
            op_at, f"{step.op} needs a daemon target (client = 'daemon' or 'resilient')"
        )
    if step.op == "chat" and target.client in ("daemon", "resilient"):
        raise checker.error(op_at, f"chat is not supported by a {target.client!r} target")
    if step.op == "job" and "checkpoint" not in resilience:
        raise checker.error(op_at, "job needs a [resilience.checkpoint] table")
    if step.op == "advance" and step.seconds <= 0:
        raise checker.error(op_at, "advance needs seconds > 0")


# ====================================================================== callable targets


class _NotFound(LookupError):
    """A ``module:attribute`` path that does not lead to an object; the message says why."""


_MISSING: Final = object()


def _lookup(path: str) -> Any:
    """The object ``module:attr.attr`` names, imported now; :class:`_NotFound` says what is
    wrong (no colon, a module that cannot be imported or raises, a missing attribute)."""
    module_name, colon, qualname = path.partition(":")
    if not colon or not module_name or not qualname:
        module_guess, _, name_guess = path.rpartition(".")
        hint = f" (did you mean {module_guess + ':' + name_guess!r}?)" if module_guess else ""
        raise _NotFound(
            f"expected 'module:callable' (e.g. 'myapp.chat:answer'), got {path!r}{hint}"
        )
    for part in (*module_name.split("."), *qualname.split(".")):
        if not part.isidentifier() or keyword.iskeyword(part):
            shown = "an empty part" if not part else f"{part!r}, which is not a Python identifier"
            raise _NotFound(
                f"expected 'module:callable' (dotted Python identifiers on each side of the "
                f"colon), got {path!r}: it has {shown}"
            )
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        where = " (is it installed, or on pytest's pythonpath?)" if exc.name == module_name else ""
        raise _NotFound(f"cannot import {module_name!r}: {exc}{where}") from None
    except Exception as exc:  # noqa: BLE001 - the module's own error, reported with file and line
        raise _NotFound(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    walked: list[str] = []
    for part in qualname.split("."):
        value = getattr(found, part, _MISSING)
        if value is _MISSING:
            owner = f"{module_name}:{'.'.join(walked)}" if walked else f"module {module_name!r}"
            public = [n for n in dir(found) if not n.startswith("_")]
            near = difflib.get_close_matches(part, public, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise _NotFound(f"{owner} has no attribute {part!r}{hint}")
        found = value
        walked.append(part)
    return found


def _target(
    checker: _Checker, raw: Mapping[str, Any], *, shorthand: bool
) -> tuple[Target, Callable[..., Any] | None]:
    """The ``[target]`` table as a :class:`Target`, and a callable target's function (its
    path checked now: importable, present, callable)."""
    at: Path_ = ("target",)
    kinds = [k for k in ("client", "factory", "callable") if k in raw]
    if len(kinds) > 1:
        raise checker.error(
            (*at, kinds[1]), f"give one of client, factory or callable, not {' and '.join(kinds)}"
        )
    if "callable" in raw:
        for key in ("model", "max_tokens", "timeout", "policy"):
            if key in raw:
                raise checker.error(
                    (*at, key), f"{key} is for a model target (client or factory), not a callable"
                )
    if "daemon_url" in raw:
        if "factory" not in raw and "callable" not in raw:
            raise checker.error(
                (*at, "daemon_url"),
                "daemon_url names your own server, for a callable or factory target (a client "
                "target has the scenario's daemon, or none)",
            )
        try:
            address_of(raw["daemon_url"])
        except ValueError as exc:
            raise checker.error((*at, "daemon_url"), str(exc)) from None
    if raw.get("route", "hooks") == "wire" and raw.get("client") not in ("daemon", "resilient"):
        raise checker.error(
            (*at, "route"),
            "route = 'wire' puts a fault proxy in front of the scenario's own daemon: it needs "
            "client = 'daemon' or 'resilient'",
        )
    _check_exception_names(checker, raw.get("errors", ()), (*at, "errors"))
    function: Callable[..., Any] | None = None
    for key in ("factory", "callable"):
        if key in raw:
            key_at = at if shorthand else (*at, key)
            try:
                found = _lookup(raw[key])
            except _NotFound as exc:
                raise checker.error(key_at, str(exc)) from None
            if not callable(found):
                raise checker.error(key_at, f"{raw[key]!r} is not callable: it is {_kind(found)}")
            function = found if key == "callable" else None
    target = Target(
        client=kinds[0] if kinds and kinds[0] != "client" else raw.get("client", "llama"),
        model=raw.get("model", "tiny"),
        factory=raw.get("factory"),
        max_tokens=raw.get("max_tokens", 32),
        timeout=float(raw.get("timeout", 10.0)),
        policy=raw.get("policy", "raise"),
        callable=raw.get("callable"),
        daemon_url=raw.get("daemon_url"),
        errors=tuple(raw.get("errors", ())),
        route=raw.get("route", "hooks"),
    )
    return target, function


#: Tables that belong to the model ops the scenario runs itself, not to a callable target.
_MODEL_ONLY_RESILIENCE: Final = ("stream", "fallback", "degrade", "checkpoint")
_MODEL_ONLY_EXPECT: Final = ("partial_kept", "source_closed")


def _check_callable_tables(
    checker: _Checker, resilience: Mapping[str, Any], expect: Mapping[str, Any]
) -> None:
    for section in _MODEL_ONLY_RESILIENCE:
        if section in resilience:
            raise checker.error(
                ("resilience", section),
                f"[resilience.{section}] acts on model ops; around a callable target the "
                "scenario can put [resilience.retry] and [resilience.breaker]",
            )
    for key in _MODEL_ONLY_EXPECT:
        if key in expect:
            raise checker.error(
                ("expect", key), f"{key} is about the scenario's own streams: not for a callable"
            )


def _context_args(signature: inspect.Signature) -> list[str]:
    """The :data:`CONTEXT_ARGS` a callable takes by name."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = signature.parameters
    return [n for n in CONTEXT_ARGS if n in params and params[n].kind in kinds]


def _signature(function: Callable[..., Any]) -> inspect.Signature | None:
    """The signature, its annotations evaluated when they can be (for messages)."""
    with contextlib.suppress(Exception):
        return inspect.signature(function, eval_str=True)
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none: the call itself will tell
        return None


def _hints(function: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations of a function's parameters ({} when they cannot be read)."""
    source: Any = typing.cast("Any", function).__init__ if inspect.isclass(function) else function
    if not inspect.isroutine(source):
        return {}
    try:
        return typing.get_type_hints(source)
    except Exception:  # noqa: BLE001 - one annotation names what is not importable at run time
        pass  # (a TYPE_CHECKING import): read the others one by one
    namespace = getattr(inspect.unwrap(source), "__globals__", {})
    hints: dict[str, Any] = {}
    for name, annotation in getattr(source, "__annotations__", {}).items():
        with contextlib.suppress(Exception):
            hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
    return hints


def _accepts(hint: Any, value: Any) -> bool | None:
    """Whether ``value`` (a TOML value) fits the annotation ``hint``; None: cannot tell."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        fits = [_accepts(arg, value) for arg in typing.get_args(hint)]
        return True if True in fits else None if None in fits else False
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin is typing.Annotated:
        return _accepts(typing.get_args(hint)[0], value)
    if origin is not None:
        hint = origin  # list[str] -> list: the items are not checked
    if not isinstance(hint, type) or hint is object:
        return None
    if isinstance(value, bool) and hint in (int, float):
        return False  # true and false are ints to Python, not to whoever wrote them
    if hint is float:
        return isinstance(value, int | float)
    try:
        return isinstance(value, hint)
    except TypeError:  # a protocol that is not runtime-checkable
        return None


class _Shown:
    """An annotation that could not be evaluated, shown as written (not quoted)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _signature_text(signature: inspect.Signature) -> str:
    """``(prompt: str, *, clock: Clock | None = None)``, string annotations unquoted."""

    def shown(annotation: Any) -> Any:
        return _Shown(annotation) if isinstance(annotation, str) else annotation

    params = [p.replace(annotation=shown(p.annotation)) for p in signature.parameters.values()]
    return str(
        signature.replace(parameters=params, return_annotation=shown(signature.return_annotation))
    )


def _hint_text(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _call_text(step: Step) -> str:
    """The arguments of a call step, as Python would show them: ``'Hello', n=2``."""
    shown = ", ".join([*map(repr, step.args), *(f"{k}={v!r}" for k, v in step.kwargs.items())])
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _check_arguments(
    checker: _Checker,
    step: Step,
    at: Path_,
    *,
    target: Target,
    function: Callable[..., Any],
    raw: Mapping[str, Any],
) -> None:
    """A call step's arguments must bind to the function's signature, and each must fit its
    parameter's annotation when that is a plain type (``str``, ``int | None``, ``list``)."""
    signature = _signature(function)
    if signature is None:
        return
    args_key = "args" if "args" in raw else "prompt" if "prompt" in raw else "op"
    context = [n for n in _context_args(signature) if n not in step.kwargs]
    try:
        bound = signature.bind(*step.args, **dict.fromkeys(context), **step.kwargs)
    except TypeError as exc:
        key = "kwargs" if "kwargs" in raw and "keyword" in str(exc) else args_key
        raise checker.error(
            (*at, key),
            f"cannot call {target.callable}({_call_text(step)}): {exc}; "
            f"it takes {_signature_text(signature)}",
        ) from None
    hints = _hints(function)
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    for name, value in bound.arguments.items():
        if name in context or signature.parameters[name].kind in variadic or name not in hints:
            continue
        if _accepts(hints[name], value) is False:
            key = "kwargs" if name in step.kwargs else args_key
            raise checker.error(
                (*at, key),
                f"{target.callable}: parameter {name!r} takes {_hint_text(hints[name])}, "
                f"got {_kind(value)}",
            )


# ============================================================================== events


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioStep(Event):
    """A step began (``index`` from 1), or a phase: ``steady_state``, ``rollback``."""

    kind: ClassVar[str] = "scenario.step"
    index: int
    op: str
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioOp(Event):
    """A model op ended: ``outcome`` is ``ok``, ``partial`` or ``failed``."""

    kind: ClassVar[str] = "scenario.op"
    op: str
    outcome: str
    detail: str = ""


# ============================================================================== outcome


@dataclass(slots=True)
class Stats:
    """Counts and durations of one run: model ops by op name ``(ok, failed)``, wall-clock
    seconds, and seconds on the scenario's clock (virtual under a virtual clock)."""

    ops: dict[str, list[int]] = field(default_factory=dict)
    wall: float = 0.0
    elapsed: float = 0.0

    @property
    def total(self) -> int:
        return sum(ok + failed for ok, failed in self.ops.values())

    @property
    def ok(self) -> int:
        return sum(ok for ok, _ in self.ops.values())

    @property
    def success_rate(self) -> float | None:
        return self.ok / self.total if self.total else None

    def count(self, op: str, ok: bool) -> None:
        counts = self.ops.setdefault(op, [0, 0])
        counts[0 if ok else 1] += 1


@dataclass(frozen=True, slots=True)
class Check:
    """One expectation: what was expected, what happened, and whether it held."""

    key: str
    expected: Any
    actual: Any
    held: bool

    def __str__(self) -> str:
        return f"expect.{self.key} = {self.expected!r}: got {self.actual!r}"


@dataclass(slots=True)
class Outcome:
    """What :func:`run` found: ``passed``, the ``failures`` (readable lines), the
    ``journal`` of the run, ``stats``, each expectation's ``checks``, the journal's
    ``summary`` over the steps, the ``seed`` used, and ``error`` when a step raised."""

    scenario: Scenario
    seed: int
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    journal: Journal = field(default_factory=Journal)
    stats: Stats = field(default_factory=Stats)
    checks: list[Check] = field(default_factory=list)
    summary: Summary = field(default_factory=Summary)
    error: str | None = None


def replay_command(scenario: Scenario, seed: int) -> str:
    """The command that replays ``scenario`` with ``seed``:
    ``pytest scenarios/daemon_lost.toml --fault-seed 1234``."""
    path = scenario.path
    with contextlib.suppress(ValueError):
        path = path.resolve().relative_to(Path.cwd())
    return f"pytest {shlex.quote(str(path))} --fault-seed {seed}"


def format_failure(outcome: Outcome) -> str:
    """The failures, the journal as a timeline, the summary and the replay command."""
    scenario = outcome.scenario
    lines = [f"scenario {scenario.path} failed: {scenario.title}", "", "failures:"]
    lines += [f"  - {f}" for f in outcome.failures] or ["  (none)"]
    lines += ["", f"timeline ({scenario.clock} clock, seconds):"]
    timeline = outcome.journal.timeline()
    lines += [f"  {t}" for t in timeline.splitlines()] or ["  (no events)"]
    lines += ["", *str(outcome.summary).splitlines()]
    lines += ["", f"replay: {replay_command(scenario, outcome.seed)}"]
    return _safe_lines("\n".join(lines))


# ============================================================================ the world


@dataclass(frozen=True, slots=True)
class TargetContext:
    """What a ``factory`` target receives: the model's path, the clock, the journal."""

    model_path: Path
    clock: Clock
    journal: Journal


def _model_path(name: str, base: Path) -> Path:
    from pytest_resilience.backends.tiny import TinyModelSpec, tiny_model_path  # noqa: PLC0415

    if name == "tiny":
        return tiny_model_path()
    if name == "tiny-small":
        return tiny_model_path(spec=TinyModelSpec(n_embd=32, n_layer=1, n_head=4, n_ff=64))
    if name == "gemma3-270m":
        from pytest_resilience.backends.gemma import gemma_model_path  # noqa: PLC0415

        return gemma_model_path()
    path = Path(name)
    return path if path.is_absolute() else base / path


class _Policies:
    """Builds the core objects a ``[resilience]`` table describes, on one clock and journal;
    ``resolve`` gives the exception class of a name."""

    def __init__(
        self,
        target: Target,
        clock: Clock,
        journal: Journal,
        seed: int,
        scope: str,
        *,
        resolve: Callable[[str], type[BaseException]] = resolve_exception_type,
    ) -> None:
        self.target, self.clock, self.journal = target, clock, journal
        self.seed, self.scope, self.resolve = seed, scope, resolve

    def _exceptions(self, names: Sequence[str]) -> tuple[type[BaseException], ...]:
        return tuple(self.resolve(n) for n in names)

    def retry(self, conf: Mapping[str, Any] | None) -> Retry | None:
        if conf is None:
            return None
        on_result = {"none": result_is_none, "empty": result_is_empty}.get(
            conf.get("on_result", "")
        )
        return Retry(
            on=self._exceptions(conf.get("on", _DEFAULT_ON)),
            attempts=conf.get("attempts", 3),
            backoff=Backoff(
                base=conf.get("base", 0.5),
                factor=conf.get("factor", 2.0),
                cap=conf.get("cap", 30.0),
                jitter=conf.get("jitter", "full"),
            ),
            budget=conf.get("budget"),
            on_result=on_result,
            clock=self.clock,
            rng=derive_rng(self.seed, self.scope, "retry"),
            journal=self.journal,
            name="retry",
        )

    def breaker(self, conf: Mapping[str, Any]) -> CircuitBreaker:
        default = "daemon" if self.target.has_daemon else self.target.label or "model"
        return CircuitBreaker(
            conf.get("name", default),
            on=self._exceptions(conf.get("on", _DEFAULT_ON)),
            trip=ConsecutiveFailures(conf.get("failures", 3)),
            recovery=Recovery(
                after=conf.get("recovery", 30.0),
                probes=conf.get("probes", 1),
                successes=conf.get("successes", 1),
            ),
            clock=self.clock,
            journal=self.journal,
        )

    def guard(self, conf: Mapping[str, Any]) -> StreamGuard:
        return StreamGuard(
            first_token=conf.get("first_token"),
            idle=conf.get("idle"),
            total=conf.get("total"),
            on_stall="return" if conf.get("on_stall", "raise") == "return" else "raise",
            clock=self.clock,
            journal=self.journal,
            name="stream",
        )

    def degrader(self, conf: Mapping[str, Any]) -> Degrader:
        lowest = Level[conf.get("lowest", "minimal").upper()]
        models = conf.get("models", [self.target.model])
        return Degrader(
            "degrade", models=models, lowest=lowest, clock=self.clock, journal=self.journal
        )


class _World:
    """Everything a run builds, and the rollbacks that take it all down again."""

    def __init__(
        self,
        scenario: Scenario,
        clock: Clock,
        journal: Journal,
        seed: int,
        names: Mapping[str, type[BaseException]],
    ) -> None:
        self.scenario, self.clock, self.journal, self.seed = scenario, clock, journal, seed

        def resolve(name: str) -> type[BaseException]:
            found = names.get(name)
            return found if found is not None else resolve_exception_type(name)

        self.policies = _Policies(
            scenario.target, clock, journal, seed, scenario.path.name, resolve=resolve
        )
        self.target = scenario.target
        self.base = scenario.path.parent
        self.backends: dict[str, Backend] = {}
        self.daemon: DaemonProcess | None = None
        self.proxy: FaultProxy | None = None  # in front of the daemon, on the wire route
        self.daemon_backend: DaemonBackend | None = None
        self.client: ResilientClient | None = None
        self.factory_backend: Backend | None = None
        self.watched: list[_Watched] = []
        self.streams: list[_StreamRecord] = []
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        self.resumed = False
        self.job_killed = False  # a job's first run is killed once per scenario run
        self.context: dict[str, object] = {}  # a callable target's clock and journal
        # what a failed op raises: the defaults and the target's own errors
        extra = tuple(resolve(n) for n in scenario.target.errors)
        self.failures: tuple[type[BaseException], ...] = (*FAILURES, *extra)
        res, policies = scenario.resilience, self.policies
        self.breaker = policies.breaker(res["breaker"]) if "breaker" in res else None
        self.degrader = policies.degrader(res["degrade"]) if "degrade" in res else None
        self.fallback = self._fallback(res["fallback"]) if "fallback" in res else None

    # ----------------------------------------------------------------------- building

    def start(self) -> None:
        """Start the daemon and build the client; models load on first use."""
        target = self.target
        if target.has_daemon:
            from pytest_resilience.backends.daemon import (  # noqa: PLC0415
                DaemonBackend,
                DaemonProcess,
                ServerOptions,
            )

            embeds = any(s.op == "embed" for s in self.scenario.steps)
            options = ServerOptions(
                n_ctx=1024,
                n_threads=1,
                embedding=embeds,
                kv_overrides=("llama.pooling_type=int:1",) if embeds else (),
            )
            # The child runs in real time: its readiness polls must not jump a virtual clock.
            self.daemon = DaemonProcess(
                _model_path(target.model, self.base), options, clock=SystemClock()
            )
            self.daemon.start()
            if target.route == "wire":
                from faults.proxy import FaultProxy  # noqa: PLC0415

                assert self.daemon.port is not None  # started
                self.proxy = FaultProxy(upstream=(self.daemon.host, self.daemon.port)).start()
                self.daemon.front = self.proxy.url
            self.daemon_backend = DaemonBackend(self.daemon.base_url, clock=self.clock)
        if target.client == "resilient":
            self.client = self._resilient()
        if target.factory is not None:
            build = _lookup(target.factory)
            context = TargetContext(_model_path(target.model, self.base), self.clock, self.journal)
            self.factory_backend = self._checked_backend(build(context))
        if target.callable is not None:
            signature = _signature(_lookup(target.callable))
            given = {"clock": self.clock, "journal": self.journal}
            names = _context_args(signature) if signature is not None else []
            self.context = {n: given[n] for n in names}

    def _checked_backend(self, built: object) -> Backend:
        """What the factory built, if it is a backend for the scenario's steps: a ``name``,
        ``close()`` and the methods the steps call; else a :class:`ScenarioError` at the
        ``factory`` line, naming the factory (what it built is closed if it can be)."""
        scenario = self.scenario
        ops = {s.op for s in (*scenario.steps, scenario.steady_state) if s is not None}
        needed = ["close"]
        needed += [m for m in ("generate", "stream", "embed") if m in ops]
        if "job" in ops and "generate" not in needed:
            needed.append("generate")  # a job generates its parts
        missing = [f"{m}()" for m in needed if not callable(getattr(built, m, None))]
        if not isinstance(getattr(built, "name", None), str):
            missing.insert(0, "name (a string)")
        if not missing:
            return typing.cast("Backend", built)
        close = getattr(built, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()
        plain = isinstance(built, bool | int | float | str | list | dict)
        what = _kind(built) if plain else f"a {type(built).__qualname__} object"
        what = "None" if built is None else what
        raise ScenarioError(
            str(scenario.path),
            _line_of(scenario.lines, ("target", "factory")),
            "target.factory",
            f"the factory {self.target.factory} returned {what}, which is not a backend: it "
            f"lacks {', '.join(missing)} (a Backend has a name, close(), and the generate(), "
            "stream() or embed() its steps call)",
        )

    def invoke(self, step: Step) -> object:
        """One call of the callable target with the step's arguments (copied: a call that
        changes them does not change the next); a coroutine is run to its end on an event
        loop of its own (under a virtual clock, one on the clock), a generator is read to
        its end: the answer is the list of its items."""
        assert self.target.callable is not None
        function = _lookup(self.target.callable)  # now: a py: fault on it is in place
        kwargs = {**self.context, **copy.deepcopy(dict(step.kwargs))}
        result = function(*copy.deepcopy(step.args), **kwargs)
        if inspect.isawaitable(result):
            return self._run_async(_awaited(result))
        if inspect.isasyncgen(result):
            return self._run_async(_collected(result))
        if inspect.isgenerator(result):
            return list(result)
        return result

    def _run_async(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if isinstance(self.clock, VirtualClock):
            return self.clock.run(coroutine)
        return asyncio.run(coroutine)

    def _resilient(self) -> ResilientClient:
        from pytest_resilience.backends.resilient import ResilientClient  # noqa: PLC0415

        assert self.daemon_backend is not None
        res = self.scenario.resilience
        return ResilientClient(
            self.daemon_backend,
            lambda: self.model(self.target.model, daemon=False),
            breaker=self.breaker,
            retry=self.policies.retry(res.get("retry")),
            guard=self.policies.guard(res["stream"]) if "stream" in res else None,
            timeout=self.target.timeout,
            policy="never_fail" if self.target.policy == "never_fail" else "raise",
            process=self.daemon,
            clock=self.clock,
            journal=self.journal,
        )

    def model(self, name: str, *, daemon: bool = True) -> Backend:
        """The backend of model ``name``: the target's own for its model, else a
        llama-cpp-python backend loaded on first use (a failed load is tried again)."""
        if name == self.target.model and daemon:
            if self.factory_backend is not None:
                return self.factory_backend
            if self.daemon_backend is not None:
                return self.daemon_backend
        backend = self.backends.get(name)
        if backend is None:
            from pytest_resilience.backends.llama import LlamaBackend  # noqa: PLC0415

            backend = LlamaBackend(_model_path(name, self.base), n_ctx=1024, n_threads=1, name=name)
            self.backends[name] = backend
        return backend

    def _fallback(self, conf: Mapping[str, Any]) -> Fallback:
        names = [self.target.model, *conf.get("models", ())]
        steps: list[tuple[str, Callable[..., Any]]] = [
            (n, lambda call, params, n=n: call(self.model(n), params)) for n in names
        ]
        static = conf.get("static")
        if static is not None:
            steps.append(("static", lambda call, params: static))
        return Fallback("fallback", steps, on=FAILURES, clock=self.clock, journal=self.journal)

    # ---------------------------------------------------------------------- rollbacks

    def close(self) -> None:
        """Close every stream, backend and client; stop the daemon; remove temporary
        files. Each rollback runs even when one before it fails; the first error is
        raised at the end."""
        rollbacks: list[Callable[[], object]] = [w.close for w in self.watched]
        if self.client is not None:
            rollbacks.append(self.client.close)
        if self.factory_backend is not None:
            rollbacks.append(self.factory_backend.close)
        rollbacks += [b.close for b in self.backends.values()]
        if self.daemon_backend is not None:
            rollbacks.append(self.daemon_backend.close)
        if self.proxy is not None:
            rollbacks.append(self.proxy.stop)
        if self.daemon is not None:
            rollbacks.append(self.daemon.close)
        if self.tmp is not None:
            rollbacks.append(self.tmp.cleanup)
        with contextlib.ExitStack() as stack:  # runs them all, last registered first
            for rollback in reversed(rollbacks):
                stack.callback(rollback)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def _collected(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]


class _Watched:
    """A stream source that remembers whether it was closed (``expect.source_closed``)."""

    def __init__(self, source: TextStream) -> None:
        self.source, self.closed = source, False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self.source)

    def close(self) -> None:
        self.closed = True
        self.source.close()


@dataclass(frozen=True, slots=True)
class _StreamRecord:
    delivered: str
    complete: bool
    kept: str  # the partial text the guard or the error kept ("" when complete)


# ================================================================================= ops


class _Runner:
    """Runs steps against a :class:`_World`, journaling each op and counting outcomes."""

    def __init__(self, world: _World, stats: Stats) -> None:
        self.world, self.stats = world, stats
        self.clock, self.journal = world.clock, world.journal
        self.ops: dict[str, Callable[[Step], object]] = {
            "generate": self.generate,
            "stream": self.stream,
            "embed": self.embed,
            "chat": self.chat,
            "job": self.job,
            CALL_OP: self.call_target,
        }

    def record(self, event: type[Event], **fields: Any) -> None:
        self.journal.append(event(time=self.clock.now(), source="scenario", **fields))

    def step(self, index: int, step: Step, *, count: bool = True) -> bool:
        """Run ``step`` (all its repeats); False if a model op failed."""
        detail = _describe_step(step, self.world.target)
        self.record(ScenarioStep, index=index, op=step.op, detail=detail)
        if step.op not in COUNTED_OPS:
            self.act(step)
            return True
        all_ok = True
        for _ in range(step.repeat):
            try:
                answer = self.ops[step.op](step)
            except self.world.failures as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            else:
                ok, detail = answer is not None, "" if answer is not None else "answered None"
                if isinstance(answer, _StreamRecord) and not answer.complete:
                    detail = f"partial answer kept ({len(answer.kept)} chars)"
            outcome = ("partial" if "partial" in detail else "ok") if ok else "failed"
            self.record(ScenarioOp, op=step.op, outcome=outcome, detail=detail[:200])
            if count:
                self.stats.count(step.op, ok)
            all_ok = all_ok and ok
        return all_ok

    def act(self, step: Step) -> None:
        daemon = self.world.daemon
        if step.op == "advance":
            if isinstance(self.clock, VirtualClock):
                self.clock.advance(step.seconds)
            else:
                self.clock.sleep(step.seconds)
            return
        assert daemon is not None  # load() refuses daemon ops without a daemon target
        {
            "kill_daemon": daemon.kill,
            "pause_daemon": daemon.pause,
            "resume_daemon": daemon.resume,
            "restart_daemon": daemon.restart,
        }[step.op]()

    # ------------------------------------------------------------------ model ops

    def params(self, step: Step) -> GenerationParams:
        return GenerationParams(max_tokens=step.max_tokens or self.world.target.max_tokens)

    def call(self, step: Step, fn: Callable[[Backend, GenerationParams], T]) -> T | None:
        """``fn(backend, params)`` through the scenario's retry, breaker, degradation and
        fallback (outermost first), or through the resilient client."""
        world = self.world
        params = self.params(step)
        res = {**world.scenario.resilience, **step.resilience}
        retry = world.policies.retry(res.get("retry"))

        def once() -> T:
            if world.breaker is not None:
                return world.breaker.call(self.through, fn, params)
            return self.through(fn, params)

        return retry.call(once) if retry is not None else once()

    def through(self, fn: Callable[[Backend, GenerationParams], T], params: GenerationParams) -> T:
        world = self.world
        degrader = world.degrader
        if degrader is not None:
            model = degrader.model or world.target.model
            started = self.clock.now()
            try:
                answer = fn(world.model(model), degrader.adjust(params))
            except FAILURES as exc:
                degrader.record(False, self.clock.now() - started, error=exc)
                raise
            degrader.record(True, self.clock.now() - started)
            return answer
        if world.fallback is not None:
            result: T = world.fallback(fn, params)
            return result
        return fn(world.model(world.target.model), params)

    def call_target(self, step: Step) -> object:
        """The callable target, through the scenario's retry and breaker (outermost first)."""
        world = self.world
        res = {**world.scenario.resilience, **step.resilience}
        retry = world.policies.retry(res.get("retry"))

        def once() -> object:
            if world.breaker is not None:
                return world.breaker.call(world.invoke, step)
            return world.invoke(step)

        return retry.call(once) if retry is not None else once()

    def generate(self, step: Step) -> str | None:
        client = self.world.client
        if client is not None:
            return client.generate(step.prompt, self.params(step))
        return self.call(step, lambda b, p: b.generate(step.prompt, p))

    def embed(self, step: Step) -> list[float] | None:
        client = self.world.client
        if client is not None:
            return client.embed(step.prompt)
        return self.call(step, lambda b, p: list(b.embed(step.prompt)))

    def chat(self, step: Step) -> str | None:
        def ask(backend: Backend, params: GenerationParams) -> str:
            chat = getattr(backend, "chat", None)
            if chat is None:
                raise BackendError(f"{backend.name} has no chat")
            text: str = chat([{"role": "user", "content": step.prompt}], params)
            return text

        return self.call(step, ask)

    def stream(self, step: Step) -> _StreamRecord | None:
        world = self.world
        params = self.params(step)
        if world.client is not None:
            resilient = world.client.stream(step.prompt, params)
            if resilient is None:
                return None
            with resilient:
                text = "".join(resilient)
            return _StreamRecord(text, resilient.complete, "" if resilient.complete else text)
        conf = {**world.scenario.resilience, **step.resilience}.get("stream", {})
        model = world.degrader.model if world.degrader is not None else None
        source = _Watched(world.model(model or world.target.model).stream(step.prompt, params))
        world.watched.append(source)
        delivered: list[str] = []
        guarded = world.policies.guard(conf).wrap(source)
        try:
            with guarded:
                delivered.extend(guarded)
        except (StreamStalled, StreamInterrupted) as exc:
            text = "".join(delivered)
            world.streams.append(
                _StreamRecord(text, False, exc.partial if exc.partial == text else "")
            )
            raise
        text = "".join(delivered)
        result = guarded.result
        complete = result is not None and result.complete
        kept = result.text if result is not None and not complete and result.text == text else ""
        record = _StreamRecord(text, complete, kept)
        world.streams.append(record)
        return record

    def job(self, step: Step) -> str:
        from pytest_resilience.core.recovery import (  # noqa: PLC0415
            CheckpointStore,
            RecoveryContext,
            execute_with_recovery,
        )

        world = self.world
        conf = world.scenario.resilience["checkpoint"]
        if world.tmp is None:
            world.tmp = tempfile.TemporaryDirectory(prefix="scenario-checkpoints-")
        store = CheckpointStore(Path(world.tmp.name), clock=self.clock, journal=self.journal)
        parts = conf.get("parts", _PARTS)
        if "killed_after" in conf and not world.job_killed:
            world.job_killed = True
            self.kill_job(step, store, conf["killed_after"], parts)

        def work(rec: RecoveryContext) -> str:
            done: dict[str, Any] = rec.state or {"next": 0, "parts": []}
            for i in range(done["next"], parts):
                text = self.generate(
                    Step("generate", f"{step.prompt} (part {i + 1})", max_tokens=step.max_tokens)
                )
                if text is None:
                    raise InvalidOutput(f"part {i + 1}: the model answered None")
                done["parts"].append(text)
                done["next"] = i + 1
                rec.save(done, step=i + 1)
            return "".join(done["parts"])

        return execute_with_recovery(
            work,
            on=FAILURES,
            checkpoint_key=conf.get("key", "job"),
            store=store,
            clock=self.clock,
            journal=self.journal,
        )

    def kill_job(self, step: Step, store: CheckpointStore, after: int, parts: int) -> None:
        """Run the job's first attempt in a child process on the target's model file, and
        SIGKILL it as soon as it has saved ``after`` checkpoints into ``store``: a real kill,
        at whatever the child is doing next (generating the next part, or writing it)."""
        world = self.world
        key = world.scenario.resilience["checkpoint"].get("key", "job")
        model = _model_path(world.target.model, world.base)
        max_tokens = step.max_tokens or world.target.max_tokens
        argv = [str(model), str(store.directory), key, step.prompt, str(parts), str(max_tokens)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([_PACKAGE_ROOT, *sys.path])}
        with tempfile.TemporaryFile() as errors:
            child = subprocess.Popen(
                [sys.executable, "-c", _JOB_CHILD, *argv],
                stdout=subprocess.PIPE,
                stderr=errors,
                env=env,
                bufsize=0,  # raw reads: select() must see every line the child wrote
            )
            assert child.stdout is not None
            try:
                saved = _count_lines(child.stdout.fileno(), after)
            finally:
                child.kill()  # SIGKILL: no handler, no cleanup, no last write
                child.wait()
                child.stdout.close()
            if saved < after:
                errors.seek(0)
                tail = errors.read().decode("utf-8", "replace").strip().splitlines()[-5:]
                raise BackendError(
                    f"the job's child process ended after {saved} of {after} checkpoints "
                    f"(exit status {child.returncode}): {' | '.join(tail) or 'no output'}"
                )
        self.journal.append(
            FaultInjected(
                time=self.clock.now(),
                source="scenario",
                site="job.process",
                fault=f"lost(after={after})",
                call=1,
            )
        )


# The first run of a "job" step, as a separate process: argv is model, checkpoint folder,
# key, prompt, parts, max_tokens. It writes one checkpoint a part, as the in-process job does
# (the same state), and prints a line after each, for the parent to count before it kills.
_JOB_CHILD: Final = """
import sys
from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.backends.llama import LlamaBackend
from pytest_resilience.core.recovery import CheckpointStore

model, folder, key, prompt, parts, max_tokens = sys.argv[1:]
store = CheckpointStore(folder)
done = {"next": 0, "parts": []}
with LlamaBackend(model, n_ctx=1024, n_threads=1) as llm:
    for i in range(int(parts)):
        params = GenerationParams(max_tokens=int(max_tokens))
        done["parts"].append(llm.generate(f"{prompt} (part {i + 1})", params))
        done["next"] = i + 1
        store.save(key, done, step=i + 1)
        print(i + 1, flush=True)
"""
_JOB_CHILD_LIMIT: Final = 60.0  # real seconds the parent waits for each checkpoint


def _count_lines(fd: int, wanted: int) -> int:
    """Read ``fd`` until ``wanted`` lines have come, it ends, or a line takes longer than
    ``_JOB_CHILD_LIMIT`` real seconds (the child runs in real time: a wedged one must fail
    the step, not the run). Returns the lines seen."""
    seen = 0
    while seen < wanted:
        ready, _, _ = select.select([fd], [], [], _JOB_CHILD_LIMIT)
        data = os.read(fd, 4096) if ready else b""
        if not data:
            break
        seen += data.count(b"\n")
    return seen


_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parents[1])
_PARTS: Final = 3  # a job's parts when [resilience.checkpoint] does not say


def _describe_step(step: Step, target: Target) -> str:
    if step.op == "advance":
        return f"{step.seconds:g}s"
    times = f" x{step.repeat}" if step.repeat > 1 else ""
    if step.op == CALL_OP:
        return f"{target.label}({_call_text(step)}){times}"
    if step.op in MODEL_OPS:
        return f"{step.prompt!r}{times}"
    return ""


# ================================================================================= run


def seed_override(fault_seed: object) -> int | None:
    """The seed that replaces the scenarios' own when pytest runs them: the value of
    ``--fault-seed`` *given on the command line* (``config.getoption``, the same on
    pytest-xdist workers), when it is a number; ``None`` (each file's own ``seed``) when it
    is not given or is ``last``. The run's other seeds (random, from the environment or the
    ini file, the last run's, an xdist controller's) never replace a file's own: a scenario
    with ``seed = 1`` injects the same faults in every run unless asked otherwise."""
    if fault_seed is None or isinstance(fault_seed, bool):
        return None
    if isinstance(fault_seed, int):
        return fault_seed
    text = str(fault_seed).strip()
    if text == "last":
        return None
    try:
        return int(text)
    except ValueError:
        return None  # the plugin refuses it as a usage error before any test


def run(scenario: Scenario, *, seed: int | None = None, journal: Journal | None = None) -> Outcome:
    """Run ``scenario``: the steady-state probe, the steps under the faults (seeded by
    ``seed``, default the file's: pass one only when the user asked for it, see
    :func:`seed_override`), the probe again once the faults are removed, and the
    rollbacks, which always run. Then evaluate ``[expect]`` over the journal of the steps.

    The modules of dotted exception names (``on``, ``[target] errors``) are imported first;
    one that cannot be fails the outcome with the file, the line and the key, and nothing
    runs. Returns an :class:`Outcome`; a step that raises something other than a failure
    ends the steps and fails the outcome (``Outcome.error``). ``KeyboardInterrupt``
    propagates, after the rollbacks.
    """
    used_seed = scenario.seed if seed is None else seed
    journal = journal if journal is not None else Journal()
    clock: Clock = VirtualClock() if scenario.clock == "virtual" else SystemClock()
    wall = SystemClock()
    outcome = Outcome(scenario, used_seed, journal=journal)
    try:
        names = _resolve_names(scenario)
    except ScenarioError as exc:
        outcome.error = str(exc)
        outcome.failures.append(outcome.error)
        return outcome
    if scenario.target.callable is None or any(e.site.family == "llama" for e in scenario.faults):
        with contextlib.suppress(ImportError):
            importlib.import_module("llama_cpp")  # before the leak snapshot: not a leak
    before = _leak_snapshot() if scenario.expect.get("leaks") == "none" else None
    started_wall, started = wall.now(), clock.now()
    world = _World(scenario, clock, journal, used_seed, names)
    try:
        first, last = _method(world, _Runner(world, outcome.stats), outcome)
    finally:
        world.close()
    outcome.stats.wall = wall.now() - started_wall
    outcome.stats.elapsed = clock.now() - started
    if outcome.error is not None:
        outcome.failures.insert(0, outcome.error)
    events = journal.events()[first:last]
    outcome.summary = summarize(events)
    outcome.checks = _evaluate(scenario.expect, events, outcome.summary, world, outcome.stats)
    if before is not None:
        leaks = _leaks_since(before)
        outcome.checks.append(Check("leaks", "none", [str(x) for x in leaks], not leaks))
    outcome.failures += [str(c) for c in outcome.checks if not c.held]
    outcome.passed = not outcome.failures
    return outcome


def _method(world: _World, runner: _Runner, outcome: Outcome) -> tuple[int, int]:
    """Set up, probe, run the steps under the faults, probe again; the journal slice
    ``(first, last)`` of the steps. A step's error is recorded in ``outcome.error``."""
    scenario, journal = world.scenario, world.journal
    first = last = len(journal)
    phase = "setting up"
    try:
        world.start()
        probe = scenario.steady_state
        phase = "steady state before the steps"
        if probe is not None and not runner.step(0, probe, count=False):
            outcome.failures.append(f"{phase}: the probe failed")
            return first, last
        first = len(journal)
        injector = Injector(
            scenario.faults,
            seed=outcome.seed,
            scope=scenario.path.name,
            clock=world.clock,
            journal=journal,
            daemon=world.daemon if world.daemon is not None else scenario.target.daemon_url,
            proxy=world.proxy,
            route="wire" if world.proxy is not None else "hooks",
        )
        phase = "a step"
        try:
            with injector:
                for index, step in enumerate(scenario.steps, 1):
                    phase = f"step {index} ({step.op}, line {step.line})"
                    runner.step(index, step)
        finally:
            last = len(journal)
        phase = "steady state after the steps"
        if probe is not None and not runner.step(0, probe, count=False):
            outcome.failures.append(f"{phase}: the probe failed")
    except ScenarioError as exc:  # the file's fault, found only now (a factory's backend)
        outcome.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - isolation boundary: reported in the outcome; the rollbacks run
        outcome.error = f"{phase} raised {type(exc).__name__}: {exc}"
    return first, last


def _name_lists(scenario: Scenario) -> Iterator[tuple[Path_, Sequence[str]]]:
    """Every list of exception names in a scenario, with its path in the file."""
    yield ("target", "errors"), scenario.target.errors
    for section in ("retry", "breaker"):
        yield ("resilience", section, "on"), scenario.resilience.get(section, {}).get("on", ())
    for i, step in enumerate(scenario.steps):
        yield (
            ("steps", i, "resilience", "retry", "on"),
            step.resilience.get("retry", {}).get("on", ()),
        )


def _resolve_names(scenario: Scenario) -> dict[str, type[BaseException]]:
    """The exception class of every name in the scenario, dotted paths imported now; a
    :class:`ScenarioError` at the name's line for one that is not an exception class."""
    found: dict[str, type[BaseException]] = {}
    for at, names in _name_lists(scenario):
        for i, name in enumerate(names):
            try:
                found[name] = _exception_class(name)
            except _NotFound as exc:
                line = _line_of(scenario.lines, (*at, i))
                raise ScenarioError(str(scenario.path), line, _dotted(at), str(exc)) from None
    return found


def _exception_class(name: str) -> type[BaseException]:
    """The class a name means: a builtin or pytest_resilience error, or ``pkg.module.Name``
    (imported here). :class:`_NotFound` says what is wrong."""
    problem = _name_problem(name)
    if problem is not None:
        raise _NotFound(problem)
    if "." not in name:
        return resolve_exception_type(name)
    module_name, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        where = " (is it installed, or on pytest's pythonpath?)" if exc.name == module_name else ""
        raise _NotFound(f"cannot import {module_name!r} for {name!r}: {exc}{where}") from None
    except Exception as exc:  # noqa: BLE001 - the module's own error, reported with file and line
        raise _NotFound(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    value = getattr(module, attr, _MISSING)
    if value is _MISSING:
        public = [n for n in dir(module) if not n.startswith("_")]
        near = difflib.get_close_matches(attr, public, n=1, cutoff=0.6)
        hint = f" (did you mean {module_name + '.' + near[0]!r}?)" if near else ""
        raise _NotFound(f"module {module_name!r} has no attribute {attr!r}{hint}")
    if not (isinstance(value, type) and issubclass(value, BaseException)):
        raise _NotFound(f"{name!r} is not an exception class: it is {_kind(value)}")
    return value


def _leak_snapshot() -> object:
    from pytest_resilience.core.leaks import snapshot  # noqa: PLC0415

    return snapshot()


def _leaks_since(before: object) -> list[Leak]:
    from pytest_resilience.core.leaks import Snapshot, check  # noqa: PLC0415

    assert isinstance(before, Snapshot)
    return check(before)


def _evaluate(
    expect: Mapping[str, Any], events: list[Event], summary: Summary, world: _World, stats: Stats
) -> list[Check]:
    checks: list[Check] = []

    def add(key: str, expected: Any, actual: Any, held: bool) -> None:
        checks.append(Check(key, expected, actual, held))

    for key, expected in expect.items():
        if key == "success_rate":
            rate = stats.success_rate
            shown = None if rate is None else round(rate, 4)
            add(key, expected, shown, rate is not None and abs(rate - expected) <= _RATE_TOLERANCE)
        elif key == "fallbacks":
            used = list(dict.fromkeys(e.step for e in events if isinstance(e, FallbackUsed)))
            add(key, expected, used, used == expected)
        elif key == "transitions":
            for name, wanted in expected.items():
                actual = list(summary.transitions.get(name, ()))
                add(f"transitions.{name}", wanted, actual, actual == wanted)
        elif key == "max_attempts":
            attempts = [e.attempt for e in events if isinstance(e, AttemptStarted | AttemptFailed)]
            most = max(attempts, default=1)
            add(key, expected, most, most <= expected)
        elif key == "retries":
            add(key, expected, summary.retries, summary.retries == expected)
        elif key == "rejected":
            add(key, expected, summary.rejected, summary.rejected == expected)
        elif key == "min_retry_delay":
            delays = [e.delay for e in events if isinstance(e, RetryScheduled)]
            least = min(delays, default=None)
            add(key, expected, least, least is not None and least >= expected)
        elif key == "degraded_to":
            levels = [e.to_level for e in events if isinstance(e, DegradationChanged)]
            level = levels[-1] if levels else Level.FULL.label
            add(key, expected, level, level == expected)
        elif key == "partial_kept":
            kept = any(r.kept for r in world.streams)
            add(key, expected, kept, kept == expected)
        elif key == "source_closed":
            closed = bool(world.watched) and all(w.closed for w in world.watched)
            add(key, expected, closed, closed == expected)
        elif key == "resumed_from_checkpoint":
            resumed = any(isinstance(e, Recovered) and e.how == "checkpoint" for e in events)
            add(key, expected, resumed, resumed == expected)
        elif key == "faults_injected":
            fired = sum(isinstance(e, FaultInjected) for e in events)
            add(key, expected, fired, fired == expected)
        # "leaks" is checked by run() after the rollbacks
    return checks


# ============================================================================ the report


def format_report(outcome: Outcome) -> str:
    """A few lines on one run: what was injected, how the code reacted, whether it held."""
    scenario, summary, stats = outcome.scenario, outcome.summary, outcome.stats
    mark = "PASS" if outcome.passed else "FAIL"
    lines = [
        f"{mark}  {scenario.path.name}: {scenario.title}",
        f"      {stats.wall:.2f}s wall, {stats.elapsed:.3g}s on the {scenario.clock} clock,"
        f" {stats.ok}/{stats.total} {'calls' if scenario.target.callable else 'model ops'}"
        " answered",
    ]
    injected = _injected(outcome.journal)
    lines.append(f"      injected: {injected or 'nothing'}")
    reaction: list[str] = []
    if summary.retries:
        reaction.append(f"{summary.retries} retr{'ies' if summary.retries > 1 else 'y'}")
    reaction += [f"breaker {n}: {', '.join(t)}" for n, t in summary.transitions.items()]
    if summary.rejected:
        reaction.append(f"{summary.rejected} call{'s' if summary.rejected > 1 else ''} rejected")
    for name, steps in summary.fallbacks.items():
        reaction.append(f"fell back ({name}) to {', '.join(dict.fromkeys(steps))} x{len(steps)}")
    reaction += [f"degraded ({n}): {', '.join(t)}" for n, t in summary.degradations.items()]
    kinds = {e.kind for e in outcome.journal.events()}
    if "stream.stalled" in kinds:
        reaction.append("stream stall detected")
    if any(isinstance(e, Recovered) for e in outcome.journal.events()):
        reaction.append(
            "recovered: " + ", ".join(sorted({e.how for e in outcome.journal.events(Recovered)}))
        )
    lines.append(f"      reaction: {'; '.join(reaction) or 'none'}")
    held = ", ".join(c.key for c in outcome.checks if c.held)
    lines.append(f"      held: {held or '(no expectations)'}")
    lines += [f"      FAILED: {f}" for f in outcome.failures]
    return _safe_lines("\n".join(lines))


def _injected(journal: Journal) -> str:
    calls: dict[tuple[str, str], list[int]] = {}
    for e in journal.events(FaultInjected):
        calls.setdefault((e.site, e.fault), []).append(e.call)
    return "; ".join(
        f"{site} {fault} at call{'s' if len(n) > 1 else ''} {', '.join(map(str, n))}"
        for (site, fault), n in calls.items()
    )


#: The exit status of :func:`main` when it cannot run what it was given: a usage error (as
#: argparse's), or a scenario file that cannot be loaded (as pytest's collection errors).
USAGE_ERROR: Final = 2


def _seed_arg(text: str) -> int:
    import argparse  # noqa: PLC0415

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is from 0 to 2**64 - 1, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m faults.scenario [PATH ...] [--seed N]``: run scenario files (a folder
    means its ``*.toml``, sorted) and print a report. Every file is loaded before any runs:
    one that cannot be is reported on stderr (file, line, key) and nothing runs. Exit
    status 0 if all held, 1 if any failed, 2 for a usage error or a file that cannot be
    loaded."""
    import argparse  # noqa: PLC0415
    import textwrap  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m faults.scenario", description=main.__doc__)
    parser.add_argument("paths", nargs="*", default=["scenarios"], help="files or folders")
    parser.add_argument(
        "--seed", type=_seed_arg, default=None, help="replace every file's own seed"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every timeline")
    args = parser.parse_args(argv)
    files: list[Path] = []
    for given in map(Path, args.paths):
        files += sorted(given.glob("*.toml")) if given.is_dir() else [given]
    if not files:
        print("no scenario files found", file=sys.stderr)
        return USAGE_ERROR
    scenarios: list[Scenario] = []
    errors: list[ScenarioError] = []
    for file in files:
        try:
            scenarios.append(load(file))
        except ScenarioError as exc:
            errors.append(exc)
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    if errors:
        count = f"{len(errors)} of {len(files)} scenario files" if len(files) > 1 else "it"
        print(f"{count} could not be loaded: nothing was run", file=sys.stderr)
        return USAGE_ERROR
    intro = (
        f"Replaying {len(files)} scenario file{'s' if len(files) > 1 else ''}. Each builds the"
        " code under test (the model in process, or a real model daemon), injects the failures"
        " of its [faults] spec, runs its steps, and checks its [expect] table against what"
        " happened."
    )
    print(textwrap.fill(intro, width=92) + "\n")
    wall = SystemClock()
    started = wall.now()
    failed = 0
    for scenario in scenarios:
        outcome = run(scenario, seed=args.seed)
        print(format_report(outcome))
        if not outcome.passed:
            failed += 1
            print("\n" + format_failure(outcome))
        elif args.verbose:
            print("\n".join(f"        {t}" for t in outcome.journal.timeline().splitlines()))
        print()
    total = len(files)
    print(f"{total - failed} of {total} scenarios held ({wall.now() - started:.1f}s)")
    if not args.verbose:
        print(
            f"Every event of one: python -m faults.scenario -v {files[0]}\n"
            f"The same as a pytest test: pytest {files[0]}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
