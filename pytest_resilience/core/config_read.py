"""Reading a policy file's values, each at its line: :class:`PolicyError` (the file, the
line, the dotted key, what was wrong), and :class:`Reader`, which checks a table's keys
(an unknown one gets a "did you mean") and turns each value into what a policy takes:
durations (seconds, or ``"250ms"``, ``"2s"``, ``"1m"``, ``"1h"``), bounded numbers,
choices, exception names.

Exception names are checked without importing anything: a bare name must be a builtin
exception or one of :mod:`pytest_resilience.core.errors`; a dotted name
(``"httpx.ConnectError"``) is matched against the names of an exception's classes when
one is raised (``module.qualname`` of each class in its MRO, as the classifier's rules
match), so the module is never imported by the policy.
"""

from __future__ import annotations

import builtins
import contextlib
import difflib
import keyword
import math
import re
from typing import TYPE_CHECKING, Any, Final

from . import errors as _errors
from .durations import UNITS, seconds_of
from .toml_lines import FileError, Path_, dotted, line_of, safe, safe_lines

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

__all__ = ["DURATION", "NamedExceptions", "PolicyError", "Reader", "kind_of", "to_seconds"]

# a duration written as text: the number and the unit of the fault spec grammar
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(" + "|".join(sorted(UNITS, key=len)[::-1]) + ")")
DURATION: Final = 'a duration (seconds, or text such as "250ms", "2s", "1m")'


class PolicyError(FileError):
    """A policy file that cannot be used: ``path``, ``line`` (1-based; 0 when the policy
    came from a mapping without lines), ``key`` (dotted: ``breakers.daemon.failures``,
    ``fallback.steps[2].call`` for the second step) and ``message``. ``str()``:
    ``"policy.toml:7: retry.atempts: unknown key (did you mean 'attempts'?)"``."""

    def __str__(self) -> str:
        if self.line:
            return super().__str__()
        message = safe_lines(self.message)
        return f"{safe(self.path)}: " + (f"{safe(self.key)}: {message}" if self.key else message)


def to_seconds(text: str) -> float | None:
    """The seconds a duration written as text stands for (``"250ms"``: 0.25), or None when
    ``text`` is not one."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        return None
    number, unit = found.groups()
    return seconds_of(number, unit)


# --------------------------------------------------------------------------- the values


def kind_of(value: Any) -> str:
    """What ``value`` is, for a message: ``"a string ('2x')"``, ``"a table"``."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "nothing (null)"
    name = {int: "an integer", float: "a number", str: "a string"}.get(type(value))
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{name or type(value).__name__} ({text})"


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _exception_classes() -> dict[str, type[BaseException]]:
    """The bare exception names a policy knows: builtins, then the core's errors."""
    known = {
        name: value
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    for name in _errors.__all__:
        value = getattr(_errors, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            known[name] = value
    return known


_EXCEPTIONS: Final = _exception_classes()


class NamedExceptions:
    """An ``on=`` predicate: the exception is one of ``classes``, or one of its classes
    (its MRO) is named ``module.qualname`` in ``names``. Nothing is imported."""

    __slots__ = ("classes", "names")

    def __init__(self, classes: tuple[type[BaseException], ...], names: frozenset[str]) -> None:
        self.classes, self.names = classes, names

    def __call__(self, exc: BaseException) -> bool:
        if isinstance(exc, self.classes):
            return True
        return any(f"{c.__module__}.{c.__qualname__}" in self.names for c in type(exc).__mro__)

    def __repr__(self) -> str:
        shown = [c.__name__ for c in self.classes] + sorted(self.names)
        return f"NamedExceptions({', '.join(shown)})"


class Reader:
    """Reads the tables of one document; each problem is a :class:`PolicyError` at the
    line of the key it is about (``lines``: the line of each path; None: no lines, 0)."""

    def __init__(self, where: str, lines: Mapping[Path_, int] | None) -> None:
        self.where, self.lines = where, lines

    def error(self, at: Path_, message: str) -> PolicyError:
        line = line_of(self.lines, at) if self.lines is not None else 0
        return PolicyError(self.where, line, dotted(at), message)

    @contextlib.contextmanager
    def refusals(self, at: Path_) -> Iterator[None]:
        """A ``ValueError`` or ``TypeError`` the core raises while building the component
        at ``at`` (settings that are wrong together) becomes an error of the file there."""
        try:
            yield
        except (ValueError, TypeError) as exc:
            if isinstance(exc, PolicyError):
                raise
            raise self.error(at, str(exc)) from None

    # ------------------------------------------------------------------------ tables

    def table(self, value: Any, at: Path_, known: Sequence[str]) -> dict[str, Any]:
        """``value`` as a table whose keys are all ``known``."""
        if not isinstance(value, dict):
            raise self.error(at, f"expected a table, got {kind_of(value)}")
        for key in value:
            if key not in known:
                raise self.error((*at, key), f"unknown key ({_hint(str(key), known)})")
        return value

    def tables(self, value: Any, at: Path_) -> list[dict[str, Any]]:
        """``value`` as an array of tables (``[[fallback.steps]]``), not empty."""
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(
                at, f"expected an array of tables ([[{dotted(at)}]]), got {kind_of(value)}"
            )
        if not value:
            raise self.error(at, "needs at least one entry")
        return value

    def required(self, table: Mapping[str, Any], at: Path_, key: str, why: str = "") -> Any:
        if key not in table:
            where = f"[{dotted(at)}]" if at else "the file"
            raise self.error(at, f"required key {key!r} missing in {where}{why}")
        return table[key]

    def wrong(self, at: Path_, expected: str, value: Any) -> PolicyError:
        return self.error(at, f"expected {expected}, got {kind_of(value)}")

    # ------------------------------------------------------------------------ values

    def duration(self, value: Any, at: Path_, *, none: bool = False) -> float | None:
        """Seconds: a number >= 0, or text such as ``"250ms"``; ``"none"`` too if ``none``."""
        expected = DURATION + (', or "none"' if none else "")
        if _is_num(value):
            if value < 0:
                raise self.error(at, f"expected {expected}, got {value!r}, which is negative")
            return float(value)
        if isinstance(value, str):
            if none and value == "none":
                return None
            seconds = to_seconds(value)
            if seconds is not None and math.isfinite(seconds):
                return seconds
        raise self.wrong(at, expected, value)

    def positive(self, value: Any, at: Path_) -> float:
        """Seconds, more than none."""
        seconds = self.duration(value, at)
        if not seconds:
            raise self.error(at, f"expected {DURATION} > 0, got {kind_of(value)}")
        return seconds

    def integer(self, value: Any, at: Path_, low: int) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= low:
            return value
        raise self.wrong(at, f"an integer >= {low}", value)

    def number(
        self, value: Any, at: Path_, low: float, high: float | None = None, *, above: bool = False
    ) -> float:
        """A finite number ``>= low`` (``> low`` if ``above``), ``<= high`` if given."""
        fits = _is_num(value) and (value > low if above else value >= low)
        if fits and (high is None or value <= high):
            return float(value)
        if high is not None:
            lower = f"> {low:g} and <=" if above else f"from {low:g} to"
            expected = f"a number {lower} {high:g}"
        else:
            expected = f"a number {'>' if above else '>='} {low:g}"
        raise self.wrong(at, expected, value)

    def boolean(self, value: Any, at: Path_) -> bool:
        if isinstance(value, bool):
            return value
        raise self.wrong(at, "true or false", value)

    def text(self, value: Any, at: Path_, *, line: bool = True) -> str:
        """A string; with ``line``, one line of printable text, not blank."""
        if isinstance(value, str) and (not line or (value.strip() and value.isprintable())):
            return value
        raise self.wrong(at, "one line of printable text" if line else "a string", value)

    def texts(self, value: Any, at: Path_) -> tuple[str, ...]:
        if isinstance(value, list) and all(
            isinstance(v, str) and v.isprintable() and v.strip() for v in value
        ):
            return tuple(value)
        raise self.wrong(at, "a list of names (printable text)", value)

    def choice(self, value: Any, at: Path_, choices: Sequence[str]) -> str:
        if isinstance(value, str) and value in choices:
            return value
        expected = "one of " + ", ".join(repr(c) for c in choices)
        if isinstance(value, str):
            near = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise self.error(at, f"expected {expected}, got {value!r}{hint}")
        raise self.wrong(at, expected, value)

    def exceptions(
        self, value: Any, at: Path_
    ) -> tuple[type[BaseException], ...] | NamedExceptions:
        """A list of exception names: a tuple of classes when every name is bare, else a
        :class:`NamedExceptions` predicate (see the module docs)."""
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.wrong(at, "a list of exception names", value)
        if not value:
            raise self.error(at, "needs at least one exception name")
        classes: list[type[BaseException]] = []
        names: set[str] = set()
        for index, name in enumerate(value):
            problem = _name_problem(name)
            if problem is not None:
                raise self.error((*at, index), problem)
            if "." in name:
                names.add(name)
            else:
                classes.append(_EXCEPTIONS[name])
        if not names:
            return tuple(classes)
        return NamedExceptions(tuple(classes), frozenset(names))


def _hint(key: str, known: Sequence[str]) -> str:
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if near:
        return f"did you mean {near[0]!r}?"
    return "expected one of: " + ", ".join(sorted(known))


def _name_problem(name: str) -> str | None:
    """What is wrong with an exception name, found without importing anything."""
    if "." not in name:
        if name in _EXCEPTIONS:
            return None
        near = difflib.get_close_matches(name, list(_EXCEPTIONS), n=1, cutoff=0.7)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return (
            f"unknown exception {name!r}: a builtin exception, a pytest_resilience error, or "
            f"a dotted name such as 'httpx.ConnectError'{hint}"
        )
    bad = next((p for p in name.split(".") if not p.isidentifier() or keyword.iskeyword(p)), None)
    if bad is None:
        return None
    why = "an empty part" if not bad else f"{bad!r}, which is not a Python identifier"
    return f"{name!r} is not an exception name: a dotted name (pkg.module.Name) has {why}"


def check_import_path(text: str) -> str | None:
    """What is wrong with a ``"module:qualname"`` path, found without importing it."""
    module, colon, qualname = text.partition(":")
    parts = [*module.split("."), *qualname.split(".")]
    if (
        colon
        and module
        and qualname
        and all(p.isidentifier() and not keyword.iskeyword(p) for p in parts)
    ):
        return None
    return (
        f"{text!r} is not an import path: expected 'package.module:function' (or "
        "'module:Class.method')"
    )


def names_near(name: str, known: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest of ``known``, or nothing."""
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""
