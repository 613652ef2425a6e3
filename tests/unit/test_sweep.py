"""The fault sweep's pure parts (faults.sweep, faults.sweep_html): fault sets, cells and their
order, the budget, results as JSON, the baseline comparison, the matrix and the HTML page."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

from faults.kinds import KINDS
from faults.parser import parse
from faults.spec import Site, SpecError
from faults.sweep import (
    DEFAULT_FAULTS,
    Budget,
    Cell,
    Result,
    Sweep,
    choose,
    compare,
    faults_for,
    matrix,
    parse_budget,
    parse_faults,
    plan,
)
from faults.sweep_html import COLOURS, render

GENERATE = Site.parse("llama.generate")


def test_every_default_fault_is_admitted_by_its_site_and_parses() -> None:
    for site, faults in DEFAULT_FAULTS.items():
        name = "py:mod:func" if site == "py" else site
        for fault in faults:
            entry = parse(f"{name}={fault}").entries[0]
            assert KINDS[entry.chain[0].kind].admits(site)
            assert entry.chain[0].action == fault  # kept in canonical text


def test_a_fault_set_replaces_or_extends_the_defaults() -> None:
    given = parse_faults("llama.generate=oom, raise(ValueError);daemon.request+=latency(2s)")
    assert faults_for(GENERATE, given) == ("oom", "raise(ValueError)")
    request = faults_for(Site.parse("daemon.request"), given)
    assert request == (*DEFAULT_FAULTS["daemon.request"], "latency(2s)")
    assert faults_for(Site.parse("llama.stream"), given) == DEFAULT_FAULTS["llama.stream"]
    assert faults_for(Site.parse("py:a.b:c"), {}) == DEFAULT_FAULTS["py"]


@pytest.mark.parametrize(
    ("text", "column", "says"),
    [
        ("llama.generate=oom, raize(ValueError)", 20, "unknown fault kind 'raize'"),
        ("llama.generate=oom;llama.strem=stall", 19, "unknown site 'llama.strem'"),
        ("llama.stream=oom", 13, "does not admit 'oom'"),
        ("llama.generate=2*oom", 15, "no count, @n or pct%"),
        ("llama.generate=oom->none", 15, "one fault per cell"),
        ("llama.generate oom", 15, "expected '=' or '+='"),
        ("llama.generate=raise(ValueError, 'a,b'), crash", 41, "crash aborts the process"),
    ],
)
def test_a_malformed_fault_set_points_at_its_column(text: str, column: int, says: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_faults(text)
    assert says in caught.value.message
    assert caught.value.column == column


def test_the_cells_are_each_reached_site_times_its_faults_times_two_variants() -> None:
    given = parse_faults("llama.generate=oom,none;llama.stream=stall(after=1)")
    cells = plan({"t1": ["llama.generate"], "t2": ["llama.stream", "llama.generate"]}, given)
    assert [(c.test, c.spec) for c in cells] == [
        ("t1", "llama.generate=1*oom"),
        ("t1", "llama.generate=oom"),
        ("t1", "llama.generate=1*none"),
        ("t1", "llama.generate=none"),
        ("t2", "llama.stream=1*stall(after=1)"),
        ("t2", "llama.stream=stall(after=1)"),
        ("t2", "llama.generate=1*oom"),
        ("t2", "llama.generate=oom"),
        ("t2", "llama.generate=1*none"),
        ("t2", "llama.generate=none"),
    ]
    for cell in cells:  # each is the one --inject-faults text that reproduces it
        assert str(parse(cell.spec)) == cell.spec


def test_a_budget_keeps_first_occurrences_and_likely_faults_first() -> None:
    given = parse_faults("llama.generate=corrupt,timeout,oom")
    cells = plan({"t1": ["llama.generate"], "t2": ["llama.generate"]}, given)
    kept, left = choose(cells, Budget(cells=4), {})
    # exceptions (oom) before hangs (timeout) before corruption; 1* before every occurrence
    assert [(c.test, c.spec) for c in kept] == [
        ("t1", "llama.generate=1*timeout"),
        ("t1", "llama.generate=1*oom"),
        ("t2", "llama.generate=1*timeout"),
        ("t2", "llama.generate=1*oom"),
    ]
    assert len(left) == len(cells) - 4
    assert choose(cells, None, {}) == (cells, [])


def test_a_duration_budget_keeps_the_cells_whose_estimate_fits() -> None:
    cells = plan({"t1": ["llama.generate"], "t2": ["llama.generate"]})
    kept, _ = choose(cells, parse_budget("10s"), {"t1": 1.0, "t2": 3.0})
    assert sum({"t1": 1.0, "t2": 3.0}[c.test] for c in kept) <= 10.0
    # raise: t1, t2; oom: t1, t2; overflow: t1 (1+3+1+3+1 = 9 s); overflow at t2 makes 12 s
    assert [c.test for c in kept] == ["t1", "t1", "t1", "t2", "t2"]  # kept in run order


@pytest.mark.parametrize(
    ("text", "budget"),
    [("200", Budget(cells=200)), ("90s", Budget(seconds=90)), ("5m", Budget(seconds=300)),
     ("500ms", Budget(seconds=0.5)), ("1h", Budget(seconds=3600))],
)  # fmt: skip
def test_budgets(text: str, budget: Budget) -> None:
    assert parse_budget(text) == budget


@pytest.mark.parametrize("text", ["", "ten", "0s", "-5s", "5 parsecs", "1.5"])
def test_bad_budgets(text: str) -> None:
    with pytest.raises(ValueError, match="expected a number of cells"):
        parse_budget(text)


def _result(test: str, spec: str, outcome: str, error: str = "") -> Result:
    site, _, fault = spec.partition("=")
    first = fault.startswith("1*")
    return Result(test, site, fault.removeprefix("1*"), first, outcome, f"pytest {test}", error)


def _sweep(*results: Result) -> Sweep:
    return Sweep(seed=7, tests=list(dict.fromkeys(r.test for r in results)), results=list(results))


def test_a_sweep_round_trips_through_json() -> None:
    sweep = _sweep(
        _result("a.py::t", "llama.generate=1*oom", "failed", "RuntimeError: x"),
        _result("a.py::t", "llama.generate=oom", "survived"),
    )
    sweep.left_out = [Cell("a.py::t", "llama.generate", "none", True)]
    sweep.excluded = {"a.py::u": "marked no_faults"}
    sweep.plain = {"a.py::t": 0.25}
    text = sweep.to_json()
    data = json.loads(text)
    assert data["counts"]["failed"] == 1
    assert data["cells"][0]["spec"] == "llama.generate=1*oom"
    assert data["cells"][0]["command"] == "pytest a.py::t"
    again = Sweep.from_json(text)
    assert again.results == sweep.results
    assert again.left_out == sweep.left_out
    assert again.excluded == sweep.excluded
    assert again.plain == {"a.py::t": 0.25}
    with pytest.raises(ValueError, match="not a fault sweep"):
        Sweep.from_json('{"cells": []}')


def test_the_baseline_fails_only_cells_that_got_worse() -> None:
    before = _sweep(
        _result("t", "llama.generate=1*oom", "survived"),
        _result("t", "llama.generate=oom", "failed"),
        _result("t", "llama.generate=1*none", "failed"),
        _result("t", "llama.generate=none", "survived"),
        _result("t", "llama.generate=1*timeout", "failed"),
    )
    now = _sweep(
        _result("t", "llama.generate=1*oom", "failed"),  # worse: it survived
        _result("t", "llama.generate=oom", "survived"),  # better
        _result("t", "llama.generate=1*none", "failed"),  # the same
        _result("t", "llama.generate=none", "survived"),  # the same
        _result("t", "llama.generate=1*timeout", "hung"),  # worse: a new hang
        _result("t", "llama.generate=timeout", "failed"),  # new: not in the baseline
    )
    found = compare(before, now)
    assert [(r.spec, was) for r, was in found.worse] == [
        ("llama.generate=1*oom", "survived"),
        ("llama.generate=1*timeout", "failed"),
    ]
    assert [(r.spec, was) for r, was in found.better] == [("llama.generate=oom", "failed")]
    assert [r.spec for r in found.new] == ["llama.generate=timeout"]
    same = compare(before, before)
    assert (same.worse, same.better, same.new) == ([], [], [])


def test_the_matrix_has_a_character_a_cell_a_legend_and_totals() -> None:
    sweep = _sweep(
        _result("tests/a.py::t1", "llama.generate=1*oom", "survived"),
        _result("tests/a.py::t1", "llama.generate=oom", "failed", "RuntimeError: boom"),
        _result("tests/a.py::t2", "llama.stream=1*stall(after=1)", "hung"),
        _result("tests/a.py::t2", "llama.stream=stall(after=1)", "not reached"),
        _result("tests/a.py::t2", "llama.generate=oom", "leaked"),
    )
    sweep.left_out = [Cell("tests/a.py::t2", "llama.generate", "oom", True)]
    lines = matrix(sweep).splitlines()
    assert lines[0].endswith("1234")
    # the columns: llama.generate=1*oom, =oom, llama.stream=1*stall(after=1), =stall(after=1)
    assert lines[1] == "a.py::t1  .F"
    assert lines[2] == "a.py::t2  ~LHo"
    assert "  1 llama.generate=1*oom" in lines
    assert "  4 llama.stream=stall(after=1)" in lines
    assert any(line.startswith("legend: . survived  F failed  H hung  L leaked") for line in lines)
    assert "totals: 5 cells: 1 survived, 1 failed, 1 hung, 1 leaked, 1 not reached, " \
        "1 left out by the budget" in lines  # fmt: skip
    assert "      RuntimeError: boom" in lines
    assert "      pytest tests/a.py::t1" in lines


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str | None]] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "td" and found.get("class") == "cell":
            self.cells.append(found)
        if found.get("src") or (tag == "link" and found.get("href")):
            self.external.append(tag)


def test_the_html_page_is_self_contained_with_a_colour_an_outcome() -> None:
    sweep = _sweep(
        _result("a.py::t", "llama.generate=1*oom", "survived"),
        _result("a.py::t", "llama.generate=oom", "failed", "RuntimeError: </script> boom"),
    )
    page = render(sweep)
    found = _Cells()
    found.feed(page)
    assert found.external == []
    assert [c["data-outcome"] for c in found.cells] == ["survived", "failed"]
    assert COLOURS["failed"] in str(found.cells[1]["style"])
    assert "RuntimeError: </script> boom" in str(found.cells[1]["title"])
    assert page.count("</script>") == 2  # the error text cannot close the data's element
