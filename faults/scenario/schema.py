"""The schema of a scenario file: the ops, clients and degradation levels it can name, the
caps that keep a typo from running for hours, every table and key with what its value must
be (:data:`_SCHEMA`), and :class:`_Checker`, which walks a parsed document against it and
raises the first problem as a :class:`ScenarioError` at its line (an unknown key, with a
suggestion for a misspelt one; a wrong type; a value over its cap; a missing required key).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from faults.scenario.reading import Path_, ScenarioError, _dotted, _line_of
from pytest_resilience.core.degrade import Level

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


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
#: What a resilient client's ``status()`` says, which ``status`` keys expect.
STATUSES: Final = ("healthy", "degraded", "unhealthy")


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
        "degrade": _Table(
            {
                "models": NAMES,
                "lowest": _choice(*LEVELS[1:]),
                "window": NUM,
                "min_calls": POSINT,
                "dwell": NUM,
                "cache": BOOL,
                "static": STR,
            }
        ),
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
        "status": _choice(*STATUSES),
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
        "status": _choice(*STATUSES),
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
        "degradations": STRS,
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
