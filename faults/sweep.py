"""The fault sweep, without pytest: which cells to try, in which order, and what came of them.

A **cell** is one test, one site it reaches, and one fault there, in one of two variants:
the first occurrence only (``1*fault``) or every occurrence (``fault``). Its spec is the
one ``--inject-faults`` text that reproduces it (``llama.generate=1*raise(RuntimeError)``).

- :data:`DEFAULT_FAULTS`: the faults tried at each site family, most likely first.
- :func:`parse_faults`: the user's narrowing or extension of them, in the spec grammar
  (``llama.generate=oom,raise(ValueError);daemon.request+=latency(2s)``), read with the
  project's parser so that an error points at its column.
- :func:`plan`: the cells of the sites each test reached; :func:`priority` orders them
  (see its docstring), :func:`choose` keeps what a :class:`Budget` allows.
- :class:`Result` and :class:`Sweep`: each cell's outcome (:data:`OUTCOMES`), JSON both
  ways, :func:`compare` with a baseline, :func:`matrix` for a terminal.
  :mod:`faults.sweep_html` renders the same as one HTML page.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final

from faults.parser import parse
from faults.spec import UNITS, Site, SpecError, read_site

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "CHARS",
    "DEFAULT_FAULTS",
    "OUTCOMES",
    "Budget",
    "Cell",
    "Comparison",
    "Result",
    "Sweep",
    "choose",
    "compare",
    "faults_for",
    "matrix",
    "parse_budget",
    "parse_faults",
    "plan",
    "priority",
]

#: The faults tried at each site (``py`` for every ``py:`` site), most likely first: what a
#: model runtime or server does most often (an exception, a refusal, an error status) before
#: what it does less often (a hang, a stall), before a missing or short answer, before a
#: corrupt one. ``crash`` is left out (it aborts the process), and so is ``daemon.process``
#: (killing the server is what ``daemon.request`` and ``daemon.stream`` faults look like to
#: the app); name them with ``--fault-sweep-faults`` to try them.
DEFAULT_FAULTS: Final[Mapping[str, tuple[str, ...]]] = {
    "llama.load": ("raise(RuntimeError)", "oom"),
    "llama.generate": ("raise(RuntimeError)", "oom", "overflow", "timeout", "none", "corrupt"),
    "llama.chat": ("raise(RuntimeError)", "oom", "overflow", "timeout", "none", "corrupt"),
    "llama.stream": ("raise(RuntimeError)", "stall(after=1)", "truncate(after=1)", "corrupt"),
    "llama.embed": ("raise(RuntimeError)", "none", "corrupt", "nan"),
    "daemon.request": (
        "refuse",
        "status(500)",
        "status(503)",
        "ratelimit",
        "overflow",
        "timeout",
    ),
    "daemon.stream": ("lost(after=1)", "error(after=1)", "stall(after=1)", "truncate(after=1)"),
    "daemon.process": (),
    "py": ("raise(RuntimeError)", "timeout", "none"),
}

#: How likely a kind is, lower first (see :func:`priority`).
_LIKELY: Final[Mapping[str, int]] = {
    **dict.fromkeys(
        ("raise", "oom", "refuse", "status", "ratelimit", "lost", "error", "overflow", "crash"), 0
    ),
    **dict.fromkeys(("timeout", "stall", "pause", "restart"), 1),
    **dict.fromkeys(("none", "truncate", "latency"), 2),
    **dict.fromkeys(("corrupt", "nan"), 3),
}

#: Every outcome a cell can end with, and its character in the matrix.
CHARS: Final[Mapping[str, str]] = {
    "survived": ".",
    "failed": "F",
    "hung": "H",
    "leaked": "L",
    "not reached": "o",
    "skipped": "s",
}
OUTCOMES: Final = tuple(CHARS)
#: The matrix's character for a pair that is no cell (the test never reached the site) and
#: for a cell the budget left out.
NO_CELL: Final = " "
LEFT_OUT: Final = "~"
#: The outcomes that fail a sweep run (without a baseline) and that a baseline compares.
BAD: Final = frozenset({"failed", "hung", "leaked"})


# ------------------------------------------------------------------------------ fault sets


def parse_faults(text: str) -> dict[Site, tuple[bool, tuple[str, ...]]]:
    """Read a narrowing or extension of :data:`DEFAULT_FAULTS`::

        entry (";" entry)*      entry := site ("=" | "+=") fault ("," fault)*

    ``site=...`` replaces the faults tried at that site, ``site+=...`` adds to them. Each
    fault is one term of the spec grammar without a count, ``@n`` or ``pct%`` (the sweep adds
    ``1*`` itself). Returns, per site, (extends, the faults in canonical text). Raises
    :class:`SpecError` with the column of the problem in ``text``.
    """
    found: dict[Site, tuple[bool, tuple[str, ...]]] = {}
    for start, part in _split(text, ";", 0):
        pos = _skip(text, start)
        if pos >= start + len(part):
            continue
        site, end = read_site(text, pos)
        end = _skip(text, end)
        extend = text.startswith("+=", end)
        if not extend and not text.startswith("=", end):
            raise SpecError(f"expected '=' or '+=' after the site {str(site)!r}", text, end)
        if site in found:
            raise SpecError(f"site {str(site)!r} is given twice", text, pos)
        body_start = end + (2 if extend else 1)
        body = text[body_start : start + len(part)]
        actions = [_one_fault(text, site, s + body_start, p) for s, p in _split(body, ",", 0)]
        found[site] = (extend, tuple(actions))
    return found


def _one_fault(text: str, site: Site, start: int, part: str) -> str:
    if not part.strip():
        raise SpecError("expected a fault kind, not nothing", text, start)
    prefix = f"{site}="
    try:
        spec = parse(prefix + part)
    except SpecError as exc:
        column = start + max(0, exc.column - len(prefix))
        raise SpecError(exc.message, text, column, suggestion=exc.suggestion) from None
    (entry,) = spec.entries
    if len(entry.chain) != 1:
        raise SpecError("one fault per cell: list faults with ',' not '->'", text, start)
    term = entry.chain[0]
    if term.count is not None or term.at is not None or term.pct is not None:
        raise SpecError(
            "a swept fault takes no count, @n or pct%: the sweep tries the first occurrence "
            "(1*) and every occurrence itself",
            text,
            _skip(text, start),
        )
    if term.kind == "off":
        raise SpecError("'off' is no fault: it would try nothing", text, _skip(text, start))
    if term.kind == "crash":
        raise SpecError(
            "crash aborts the process, and the sweep runs its cells in the pytest process",
            text,
            _skip(text, start),
        )
    return term.action


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _split(text: str, sep: str, offset: int) -> list[tuple[int, str]]:
    """``text`` cut at each ``sep`` outside parentheses and quotes: (start, part) pairs."""
    parts: list[tuple[int, str]] = []
    depth, quote, start, i = 0, "", 0, 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        elif c == sep and depth == 0:
            parts.append((offset + start, text[start:i]))
            start = i + 1
        i += 1
    parts.append((offset + start, text[start:]))
    return parts


def faults_for(site: Site, given: Mapping[Site, tuple[bool, tuple[str, ...]]]) -> tuple[str, ...]:
    """The faults tried at ``site``: the defaults, replaced or extended as ``given`` says."""
    defaults = DEFAULT_FAULTS.get(site.key, ())
    extend, named = given.get(site, (True, ()))
    return tuple(dict.fromkeys((*defaults, *named) if extend else named))


# ----------------------------------------------------------------------------------- cells


@dataclass(frozen=True, slots=True)
class Cell:
    """One test under one fault at one site: the first occurrence only, or every one."""

    test: str
    site: str
    fault: str  # the kind and its arguments: raise(RuntimeError)
    first: bool  # 1*fault: the first occurrence only

    @property
    def column(self) -> str:
        """The matrix column: ``llama.generate=1*raise(RuntimeError)``."""
        return f"{self.site}={'1*' if self.first else ''}{self.fault}"

    @property
    def spec(self) -> str:
        """The ``--inject-faults`` text of this cell (its column, as it happens)."""
        return self.column


def plan(
    reached: Mapping[str, Sequence[str]],
    given: Mapping[Site, tuple[bool, tuple[str, ...]]] | None = None,
) -> list[Cell]:
    """Every cell of the sites each test reached (``test -> sites``, in run order), in
    run order: test by test, site by site, each fault first-occurrence then every one."""
    cells: list[Cell] = []
    for test, sites in reached.items():
        for site in sites:
            for fault in faults_for(Site.parse(site), given or {}):
                cells += [Cell(test, site, fault, True), Cell(test, site, fault, False)]
    return cells


def priority(cell: Cell, order: Sequence[Cell]) -> tuple[int, int, int, int]:
    """The order in which a budget keeps cells: first occurrences before every occurrence;
    then the likelier kind first (exceptions and error answers, then hangs and stalls, then
    missing or short output, then corruption); then the fault's place in its site's list;
    then the cell's place in the run (so every test gets its likeliest faults first)."""
    kind = cell.fault.partition("(")[0]
    position = order.index(cell)
    return (int(not cell.first), _LIKELY.get(kind, 4), _fault_index(cell, order), position)


def _fault_index(cell: Cell, order: Sequence[Cell]) -> int:
    seen = list(
        dict.fromkeys(c.fault for c in order if c.test == cell.test and c.site == cell.site)
    )
    return seen.index(cell.fault)


@dataclass(frozen=True, slots=True)
class Budget:
    """At most ``cells`` cells, or cells whose estimated cost fits in ``seconds``."""

    cells: int | None = None
    seconds: float | None = None

    def __str__(self) -> str:
        return f"{self.cells} cells" if self.cells is not None else f"{self.seconds:g} s"


def parse_budget(text: str) -> Budget:
    """``200`` (cells) or a duration (``90s``, ``5m``, ``1h``, ``500ms``); ``ValueError``
    saying what is expected otherwise."""
    value = text.strip()
    if value.isdigit():
        return Budget(cells=int(value))
    for unit in sorted(UNITS, key=len, reverse=True):
        number = value.removesuffix(unit)
        if number != value:
            try:
                seconds = float(number) * UNITS[unit]
            except ValueError:
                break
            if seconds > 0:
                return Budget(seconds=seconds)
            break
    raise ValueError(f"expected a number of cells (200) or a duration (90s, 5m), not {text!r}")


def choose(
    cells: Sequence[Cell], budget: Budget | None, cost: Mapping[str, float]
) -> tuple[list[Cell], list[Cell]]:
    """The cells ``budget`` keeps (by :func:`priority`, ``cost`` the estimated seconds of
    each test's cell), in run order, and those it leaves out."""
    if budget is None:
        return list(cells), []
    ranked = sorted(cells, key=lambda c: priority(c, cells))
    kept: set[Cell] = set()
    spent = 0.0
    for cell in ranked:
        if budget.cells is not None and len(kept) >= budget.cells:
            break
        if budget.seconds is not None:
            spent += cost.get(cell.test, 0.0)
            if spent > budget.seconds and kept:
                break
        kept.add(cell)
    return [c for c in cells if c in kept], [c for c in cells if c not in kept]


# --------------------------------------------------------------------------------- results


@dataclass(slots=True)
class Result:
    """What one cell came to: ``outcome`` (:data:`OUTCOMES`), the first line of the error
    and the traceback of a cell that did not survive, the command that reproduces it, its
    wall time and the number of faults that fired."""

    test: str
    site: str
    fault: str
    first: bool
    outcome: str
    command: str = ""
    error: str = ""
    traceback: str = ""
    seconds: float = 0.0
    injected: int = 0

    @property
    def cell(self) -> Cell:
        return Cell(self.test, self.site, self.fault, self.first)

    @property
    def spec(self) -> str:
        return self.cell.spec


@dataclass(slots=True)
class Sweep:
    """A sweep's results: every cell run, the cells the budget left out, the run's seed,
    the tests in run order and the estimate made before the cells ran."""

    seed: int
    tests: list[str] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    left_out: list[Cell] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # test -> why it is not swept
    plain: dict[str, float] = field(default_factory=dict)  # test -> its fault-free run's s
    estimate: float = 0.0
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTCOMES, 0)
        for r in self.results:
            counts[r.outcome] += 1
        return counts

    def columns(self) -> list[str]:
        """The matrix columns that have a cell, grouped by site in order of appearance."""
        cells = [r.cell for r in self.results] + self.left_out
        sites = list(dict.fromkeys(c.site for c in cells))
        return list(
            dict.fromkeys(
                c.column for site in sites for c in self._ordered(cells) if c.site == site
            )
        )

    @staticmethod
    def _ordered(cells: list[Cell]) -> list[Cell]:
        faults: dict[str, list[str]] = {}
        for c in cells:
            faults.setdefault(c.site, [])
            if c.fault not in faults[c.site]:
                faults[c.site].append(c.fault)
        return sorted(cells, key=lambda c: (faults[c.site].index(c.fault), not c.first))

    def merge(self, other: Sweep) -> None:
        """Add the cells of another worker's sweep."""
        self.tests += [t for t in other.tests if t not in self.tests]
        self.results += other.results
        self.left_out += other.left_out
        self.excluded.update(other.excluded)
        self.plain.update(other.plain)
        self.estimate += other.estimate
        self.seconds = max(self.seconds, other.seconds)

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "version": 1,
            "seed": self.seed,
            "tests": self.tests,
            "counts": self.counts(),
            "estimate_seconds": round(self.estimate, 3),
            "seconds": round(self.seconds, 3),
            "cells": [{"spec": r.spec, **asdict(r)} for r in self.results],
            "left_out": [{"spec": c.spec, **asdict(c)} for c in self.left_out],
            "excluded": self.excluded,
            "plain_seconds": self.plain,
        }
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Sweep:
        """Read :meth:`to_json`'s text; ``ValueError`` saying what is wrong otherwise."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != 1:
                raise ValueError("not a fault sweep's JSON (version 1)")
            names = set(Result.__dataclass_fields__)
            results = [Result(**{k: v for k, v in c.items() if k in names}) for c in data["cells"]]
            cell_names = set(Cell.__dataclass_fields__)
            left = [
                Cell(**{k: v for k, v in c.items() if k in cell_names}) for c in data["left_out"]
            ]
            return cls(
                seed=int(data["seed"]),
                tests=list(data["tests"]),
                results=results,
                left_out=left,
                excluded=dict(data.get("excluded", {})),
                plain=dict(data.get("plain_seconds", {})),
                estimate=float(data.get("estimate_seconds", 0.0)),
                seconds=float(data.get("seconds", 0.0)),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a fault sweep's JSON: {exc}") from None


@dataclass(slots=True)
class Comparison:
    """A sweep against a baseline: cells that got worse, better, and cells new to it."""

    worse: list[tuple[Result, str]] = field(default_factory=list)  # (now, before)
    better: list[tuple[Result, str]] = field(default_factory=list)
    new: list[Result] = field(default_factory=list)


def compare(baseline: Sweep, current: Sweep) -> Comparison:
    """Which cells got worse since ``baseline``: a cell that survived and now does not, or
    that is now hung or leaked and was not. Better: a cell that did not survive and now
    does. A cell the baseline lacks is new (it fails nothing: adopt it with a new baseline)."""
    before = {(r.test, r.spec): r.outcome for r in baseline.results}
    found = Comparison()
    for r in current.results:
        was = before.get((r.test, r.spec))
        if was is None:
            found.new.append(r)
        elif (was == "survived" and r.outcome != "survived") or (
            r.outcome in ("hung", "leaked") and was != r.outcome
        ):
            found.worse.append((r, was))
        elif was != "survived" and r.outcome == "survived":
            found.better.append((r, was))
    return found


# ---------------------------------------------------------------------------------- matrix


def matrix(sweep: Sweep, *, width: int = 100) -> str:
    """The sweep as text: tests x faults, one character a cell, then the columns' keys, the
    legend and the totals, then each cell that did not survive with its error and command."""
    columns = sweep.columns()
    by = {(r.test, r.cell.column): CHARS[r.outcome] for r in sweep.results}
    by.update({(c.test, c.column): LEFT_OUT for c in sweep.left_out})
    tests = [t for t in sweep.tests if any(t == test for test, _ in by)]
    names = _short_names(tests)
    label = min(max((len(n) for n in names.values()), default=0), width - len(columns) - 2)
    lines: list[str] = []
    if columns:
        numbers = [str(i) for i in range(1, len(columns) + 1)]
        for place in range(len(numbers[-1])):
            digits = "".join(n.rjust(len(numbers[-1]))[place] for n in numbers)
            lines.append(f"{'':<{label}}  {digits}".rstrip())
    for test in tests:
        row = "".join(by.get((test, column), NO_CELL) for column in columns)
        lines.append(f"{_fit(names[test], label):<{label}}  {row}".rstrip())
    if columns:
        lines.append("columns:")
        lines += [f"  {i:>{len(str(len(columns)))}} {c}" for i, c in enumerate(columns, 1)]
    legend = "  ".join(f"{ch} {name}" for name, ch in CHARS.items())
    lines.append(f"legend: {legend}  {LEFT_OUT} left out (budget)  blank: site not reached")
    counts = sweep.counts()
    total = ", ".join(f"{n} {name}" for name, n in counts.items() if n or name in BAD)
    extra = f", {len(sweep.left_out)} left out by the budget" if sweep.left_out else ""
    lines.append(f"totals: {len(sweep.results)} cells: {total or 'none'}{extra}")
    bad = [r for r in sweep.results if r.outcome in BAD]
    if bad:
        lines.append("cells that did not survive:")
        for r in bad:
            lines.append(f"  {CHARS[r.outcome]} {names[r.test]}  {r.spec}")
            lines.append(f"      {r.error}" if r.error else f"      {r.outcome}")
            lines.append(f"      {r.command}")
    return "\n".join(lines)


def _short_names(tests: Iterable[str]) -> dict[str, str]:
    """Node ids without the folder part they all share."""
    tests = list(tests)
    paths = [t.partition("::")[0].split("/")[:-1] for t in tests]
    common = 0
    if paths:
        while all(len(p) > common and p[common] == paths[0][common] for p in paths):
            common += 1
    return {t: "/".join(t.split("/")[common:]) for t in tests}


def _fit(name: str, width: int) -> str:
    return name if len(name) <= width else "…" + name[len(name) - width + 1 :]
