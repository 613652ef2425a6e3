"""The corpus of malformed fault specs (``malformed.txt``, written by ``make_specs.py``): each
one is a ``SpecError`` from ``faults.parse`` at the column its mutation put the mistake in,
and, given to ``pytest --inject-faults``, a usage error (exit 4) with one message, its caret
under that column, and no traceback."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

# imported here, so that the in-process runs below do not import them each time again
import faults  # noqa: F401
from faults import SpecError, parse
from tests.corpus import make_specs

if TYPE_CHECKING:
    from tests.corpus.make_specs import Case

CASES = make_specs.read(make_specs.CORPUS.read_text(encoding="utf-8"))
BY_NAME = {case.name: case for case in CASES}
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
BATCH = 23  # specs per pytester test: a few dozen in-process runs each
BATCHES = [CASES[i : i + BATCH] for i in range(0, len(CASES), BATCH)]
PREFIX = "ERROR: --inject-faults: malformed fault spec: "


def test_the_corpus_is_what_the_generator_writes() -> None:
    cases = make_specs.corpus()
    assert len(cases) >= 200
    assert cases == CASES
    assert make_specs.CORPUS.read_text(encoding="utf-8") == make_specs.write(cases)
    assert len({c.text for c in cases}) == len(cases)  # no spec twice
    assert {c.name.rsplit("-", 1)[0] for c in cases} == set(make_specs.MUTATIONS)


@pytest.mark.parametrize(
    "text",
    ["a\\b", "tab\there", "two\nlines\r\n", "\x00\x1b\x7f", "\u200b\ufeff", "\U0001f525é→", ""],
)
def test_the_escapes_of_the_file_round_trip(text: str) -> None:
    line = make_specs.escape(text)
    assert line.isprintable()
    assert "\t" not in line
    assert make_specs.unescape(line) == text


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_parse_points_at_the_mistake(name: str) -> None:
    case = BY_NAME[name]
    with pytest.raises(SpecError) as info:
        parse(case.text)
    error = info.value
    assert (error.text, error.column) == (case.text, case.column), error.message
    assert case.says in error.message
    shown = str(error).splitlines()
    assert all(line.isprintable() for line in shown), shown
    assert shown[-1] == "  " + " " * (case.column - _line_start(case)) + "^"


def _line_start(case: Case) -> int:
    """Where the line that holds the column starts (the caret is under that line)."""
    return case.text.rfind("\n", 0, case.column) + 1


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(test_trivial="def test_trivial():\n    pass\n")
    return pytester


def _problem(case: Case, result: pytest.RunResult) -> str | None:
    """What is wrong with the outcome of ``pytest --inject-faults`` for ``case``, if anything."""
    output = [*result.outlines, *result.errlines]
    if result.ret != pytest.ExitCode.USAGE_ERROR:
        return f"exit {result.ret}, not 4: {output}"
    if any("Traceback" in line or "INTERNALERROR" in line for line in output):
        return f"a traceback: {output}"
    errors = [i for i, line in enumerate(output) if line.startswith("ERROR:")]
    if len(errors) != 1 or not output[errors[0]].startswith(PREFIX):
        return f"not one ERROR line naming --inject-faults: {output}"
    carets = [i for i, line in enumerate(output) if line.strip() == "^"]
    if carets != [errors[0] + 2]:
        return f"not one caret line, under the spec's line: {output}"
    start = _line_start(case)
    end = case.text.find("\n", case.column)
    line = case.text[start : len(case.text) if end < 0 else end]
    if len(output[carets[0] - 1]) != 2 + len(line):
        return f"the spec's line is not shown whole: {output[carets[0] - 1]!r}"
    if output[carets[0]].index("^") != 2 + case.column - start:
        return f"the caret is not under column {case.column}: {output[carets[0]]!r}"
    return None


@pytest.mark.parametrize(
    "batch", range(len(BATCHES)), ids=[f"{b[0].name}..{b[-1].name}" for b in BATCHES]
)
def test_the_command_line_refuses_it_with_one_positioned_message(
    suite: pytest.Pytester, batch: int
) -> None:
    problems = []
    for case in BATCHES[batch]:
        # hypothesis' plugin would import all of hypothesis at the end of every in-process
        # run; ``--inject-faults=SPEC`` keeps a spec that starts with '-' or '@' a value; an
        # interrupted run is reported as such, not raised again (it would stop this one)
        result = suite.runpytest(
            "-p", "no:hypothesispytest", f"--inject-faults={case.text}", no_reraise_ctrlc=True
        )
        problem = _problem(case, result)
        if problem is not None:
            problems.append(f"{case.name} {case.text!r}: {problem}")
    assert not problems, "\n".join(problems)
