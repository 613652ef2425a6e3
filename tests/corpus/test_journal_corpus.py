"""The corpus of malformed fault journals (``journals/``, written by ``make_journals.py``):
each one, given to ``pytest --replay-journal``, is a usage error (exit 4) with one message
naming the file and the line, and no traceback."""

from __future__ import annotations

import json

import pytest

# imported here, so that the in-process runs below do not import it each time again
from faults.journal import JournalFileError, load
from tests.corpus import make_journals

EXPECTED: dict[str, dict[str, object]] = json.loads(
    make_journals.EXPECTED.read_text(encoding="utf-8")
)
NAMES = sorted(EXPECTED)
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


def test_the_corpus_is_what_the_generator_writes() -> None:
    cases = make_journals.corpus()
    assert len(cases) >= 200
    on_disk = sorted(p.name for p in make_journals.FOLDER.glob("*.jsonl"))
    assert on_disk == sorted(c.name for c in cases) == NAMES
    for case in cases:
        assert (make_journals.FOLDER / case.name).read_bytes() == case.data, case.name
    assert make_journals.EXPECTED.read_text(encoding="utf-8") == make_journals.expected(cases)


@pytest.mark.parametrize("name", NAMES)
def test_load_names_the_line(name: str) -> None:
    path = make_journals.FOLDER / name
    with pytest.raises(JournalFileError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line {EXPECTED[name]['line']}: ")
    assert str(EXPECTED[name]["says"]) in message
    assert message.isprintable()


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(test_trivial="def test_trivial():\n    pass\n")
    return pytester


@pytest.mark.parametrize("name", NAMES)
def test_replaying_it_is_a_usage_error_naming_the_line(suite: pytest.Pytester, name: str) -> None:
    path = make_journals.FOLDER / name
    # hypothesis' plugin would import all of hypothesis at the end of every in-process run
    result = suite.runpytest("-p", "no:hypothesispytest", "--replay-journal", str(path))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = [*result.outlines, *result.errlines]
    errors = [line for line in output if line.startswith("ERROR:")]
    assert len(errors) == 1, output
    assert errors[0].startswith(
        f"ERROR: --replay-journal: cannot replay: {path}: line {EXPECTED[name]['line']}: "
    )
    assert not any("Traceback" in line or "INTERNALERROR" in line for line in output), output
