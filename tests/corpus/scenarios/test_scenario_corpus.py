"""The corpus of malformed scenario files (``scenarios/``, written by ``make_scenarios.py``):
each one, loaded, is a ``ScenarioError`` naming the file, the line and the key; given to
``pytest`` it is reported with that one message and no traceback; given to
``python -m faults.scenario`` it is a usage error (exit 2) with that one message, and
nothing runs. The pytest and CLI runs take the files in batches, to stay fast."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# imported here, so that the in-process runs below do not import it each time again
from faults import scenario
from faults.scenario import ScenarioError, load, loads, main
from tests.corpus import make_scenarios

EXPECTED: dict[str, dict[str, object]] = json.loads(
    make_scenarios.EXPECTED.read_text(encoding="utf-8")
)
NAMES = sorted(EXPECTED)
BATCH = 30
BATCHES = [NAMES[i : i + BATCH] for i in range(0, len(NAMES), BATCH)]
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
QUIET = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider")
#: How pytest reports a scenario file that cannot be loaded: the plugin's scenario item
#: fails with the message (exit 1). A collection error would be ExitCode.INTERRUPTED.
PYTEST_EXIT = pytest.ExitCode.TESTS_FAILED


def prefix(path: Path | str, name: str) -> str:
    """How the error of corpus file ``name``, at ``path``, begins: file, line, key."""
    line, key = EXPECTED[name]["line"], EXPECTED[name]["key"]
    return f"{path}:{line}: " + (f"{key}: " if key else "")


def test_the_corpus_is_what_the_generator_writes() -> None:
    cases = make_scenarios.corpus()
    assert len(cases) >= 200
    on_disk = sorted(p.name for p in make_scenarios.FOLDER.glob("*.toml"))
    assert on_disk == sorted(c.name for c in cases) == NAMES
    for case in cases:
        assert (make_scenarios.FOLDER / case.name).read_bytes() == case.data, case.name
    assert make_scenarios.EXPECTED.read_text(encoding="utf-8") == make_scenarios.expected(cases)


def test_the_generator_knows_the_limits() -> None:
    assert make_scenarios.MAX_REPEAT == scenario.MAX_REPEAT
    assert make_scenarios.MAX_ATTEMPTS == scenario.MAX_ATTEMPTS
    assert make_scenarios.MAX_PARTS == scenario.MAX_PARTS
    assert make_scenarios.MAX_DEPTH == scenario.MAX_DEPTH


@pytest.mark.parametrize("seed", range(40))
def test_each_base_is_a_valid_scenario(seed: int) -> None:
    """What the mutations break is valid to begin with: one thing wrong a file."""
    rng = random.Random(seed)
    loaded = loads(make_scenarios.encode(make_scenarios.base(rng), rng), "base.toml")
    assert loaded.target.client == "llama"
    assert len(loaded.steps) >= 2


@pytest.mark.parametrize("name", NAMES)
def test_load_names_the_file_the_line_and_the_key(name: str) -> None:
    path = make_scenarios.FOLDER / name
    with pytest.raises(ScenarioError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(prefix(path, name)), message
    assert str(EXPECTED[name]["says"]) in message, message
    assert info.value.line == EXPECTED[name]["line"]
    assert all(line.isprintable() for line in message.splitlines()), message


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    return pytester


@pytest.mark.parametrize("batch", range(len(BATCHES)), ids=lambda n: f"batch{n + 1}")
def test_pytest_reports_each_with_one_positioned_message(
    suite: pytest.Pytester, batch: int
) -> None:
    names = BATCHES[batch]
    for name in names:  # in the run's own folder: its ini, not this project's
        shutil.copy(make_scenarios.FOLDER / name, suite.path / name)
    result = suite.runpytest(*names, *QUIET)
    assert result.ret == PYTEST_EXIT
    output = [*result.outlines, *result.errlines]
    for name in names:
        start = prefix(suite.path / name, name)
        shown = [line for line in output if line.startswith(start)]
        assert len(shown) == 1, (name, start, output)
        assert str(EXPECTED[name]["says"]) in "\n".join(output)
    assert not any("Traceback" in line or "INTERNALERROR" in line for line in output), output


@pytest.mark.parametrize("batch", range(len(BATCHES)), ids=lambda n: f"batch{n + 1}")
def test_the_cli_refuses_each_with_one_positioned_message(
    batch: int, capsys: pytest.CaptureFixture[str]
) -> None:
    names = BATCHES[batch]
    paths = [make_scenarios.FOLDER / name for name in names]
    assert main([str(p) for p in paths]) == scenario.USAGE_ERROR == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing ran
    lines = err.splitlines()
    for path, name in zip(paths, names, strict=True):
        assert sum(line.startswith(f"ERROR {prefix(path, name)}") for line in lines) == 1
    assert lines[-1] == f"{len(names)} of {len(names)} scenario files could not be loaded: " + (
        "nothing was run"
    )


def test_the_cli_as_a_process_refuses_the_whole_folder_without_a_traceback() -> None:
    folder = make_scenarios.FOLDER
    done = subprocess.run(
        [sys.executable, "-m", "faults.scenario", str(folder)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR ")]
    assert len(errors) == len(NAMES)
    for name in NAMES:
        assert sum(e.startswith(f"ERROR {prefix(folder / name, name)}") for e in errors) == 1
    assert "Traceback" not in done.stderr
