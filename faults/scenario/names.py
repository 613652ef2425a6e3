"""Exception names in a scenario (``on`` of a retry or breaker, ``[target] errors``): at load
each is checked without importing anything (a builtin or pytest_resilience error, or a
well-formed dotted path); when the scenario runs, :func:`_resolve_names` imports the modules
of dotted paths and gives each name its class, or a :class:`ScenarioError` at its line.
"""

from __future__ import annotations

import difflib
import importlib
import keyword
from typing import TYPE_CHECKING

from faults.effects import resolve_exception_type
from faults.scenario.callables import _MISSING, _NotFound
from faults.scenario.reading import ScenarioError, _dotted, _line_of
from faults.scenario.schema import _kind
from faults.spec import SpecError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from faults.scenario.model import Scenario
    from faults.scenario.reading import Path_
    from faults.scenario.schema import _Checker


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
