"""Scenario files are collected and replayed as test items."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

QUIET = ("-p", "no:hypothesispytest", "-p", "no:asyncio")  # as the other plugin tests
# llama.cpp keeps two /dev/null descriptors open after the first model load in a process,
# which the in-process pytester runs here would report as a leak of this test.
pytestmark = pytest.mark.no_leak_check  # harmless now that runs are subprocesses; kept for safety
SHIPPED = Path(__file__).resolve().parents[2] / "scenarios"


def test_a_named_scenario_file_is_collected_and_passes(pytester: pytest.Pytester) -> None:
    shutil.copy(SHIPPED / "none_retried.toml", pytester.path / "none_retried.toml")
    result = pytester.runpytest_subprocess(
        "none_retried.toml", "-p", "no:hypothesispytest", "-p", "no:asyncio"
    )
    result.assert_outcomes(passed=1)


def test_a_failing_scenario_shows_its_timeline_and_replay_command(
    pytester: pytest.Pytester,
) -> None:
    text = (SHIPPED / "none_retried.toml").read_text()
    assert "retries = 2" in text
    (pytester.path / "wrong.toml").write_text(text.replace("retries = 2", "retries = 5"))
    result = pytester.runpytest_subprocess("wrong.toml", *QUIET)
    result.assert_outcomes(failed=1)
    out = result.stdout.str() + result.stderr.str()
    assert "expect.retries = 5: got 2" in out
    assert "pytest wrong.toml --fault-seed" in out


def test_a_malformed_scenario_fails_with_file_line_and_key(pytester: pytest.Pytester) -> None:
    (pytester.path / "bad.toml").write_text('version = 1\ntitle = "x"\nsede = 3\n')
    result = pytester.runpytest_subprocess("bad.toml", *QUIET)
    result.assert_outcomes(failed=1)
    out = result.stdout.str() + result.stderr.str()
    assert "bad.toml:3" in out
    assert "sede" in out


def test_toml_files_outside_scenario_folders_are_not_collected(pytester: pytest.Pytester) -> None:
    (pytester.path / "settings.toml").write_text("a = 1\n")
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest_subprocess(*QUIET)
    result.assert_outcomes(passed=1)
