"""The run's error and recovery rates in the plugin's summary and in each test's figures
(pytester)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

import pytest

import faults  # noqa: F401 - loaded once here, so that pytester's runs do not reload it

if TYPE_CHECKING:
    from pathlib import Path

pytest_plugins = ["pytester"]

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
TARGET = "def answer():\n    return 'ok'\n"
SUITE = """
import pytest
import target
from pytest_resilience.core.errors import RetryError
from pytest_resilience.core.retry import Backoff, Retry

def retry(clock, journal, **options):
    return Retry(on=ConnectionError, attempts=2, backoff=Backoff(base=1.0), clock=clock,
                 journal=journal, name="ask", **options)

def test_recovers(journal, clock):  # its first call fails: the retry answers
    assert retry(clock, journal, outcomes=True).call(target.answer) == "ok"

@pytest.mark.faults("py:target:answer=raise(ConnectionError)")
def test_gives_up(journal, clock):  # every call fails: the call fails for good
    with pytest.raises(RetryError):
        retry(clock, journal, outcomes=True).call(target.answer)

def test_recovers_without_outcomes(journal, clock):  # known from its retry events only
    assert retry(clock, journal).call(target.answer) == "ok"
    assert retry(clock, journal).call(target.answer) == "ok"  # answered at once: unseen
"""
SPEC = "py:target:answer=1*raise(ConnectionError)"


@pytest.fixture
def ptr(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(target=TARGET, test_rates=SUITE)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:randomly", *args)


def figures(xml: Path) -> dict[str, tuple[dict[str, str], dict[str, object]]]:
    """Each test's JUnit properties, and its figures as the JSON property holds them."""
    found = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        found[case.get("name", "")] = (props, json.loads(props["resilience.figures"]))
    return found


def test_the_summary_shows_the_error_and_recovery_rates_of_the_run(
    ptr: pytest.Pytester, tmp_path: Path
) -> None:
    xml = tmp_path / "junit.xml"
    result = run(ptr, "--inject-faults", SPEC, "--fault-seed", "1", f"--junitxml={xml}")
    result.assert_outcomes(passed=3)
    # two calls recorded their outcome, one failed; three failed at least once (the third
    # seen from its retry events), two of them recovered
    result.stdout.fnmatch_lines(
        [
            "*= resilience =*",
            "fallbacks used * none",
            "error rate * 50% (1 of 2 calls failed)",
            "recovery rate * 67% (2 of 3 calls that failed recovered)",
            "verdicts broken *",
        ]
    )
    tests = figures(xml)
    props, data = tests["test_gives_up"]
    assert (data["calls"], data["calls_failed"], data["error_rate"]) == (1, 1, 1.0)
    assert (data["calls_with_failure"], data["calls_recovered"], data["recovery_rate"]) == (
        1,
        0,
        0.0,
    )
    assert props["resilience.error_rate"] == "1.0"
    props, data = tests["test_recovers_without_outcomes"]
    assert (data["calls"], data["error_rate"]) == (0, None)  # the calls are unknown
    assert (data["calls_with_failure"], data["calls_recovered"], data["recovery_rate"]) == (
        1,
        1,
        1.0,
    )
    assert "resilience.error_rate" not in props  # no rate, no property
    assert props["resilience.recovery_rate"] == "1.0"


def test_no_rates_without_calls_to_count(ptr: pytest.Pytester, tmp_path: Path) -> None:
    ptr.makepyfile(
        test_rates="import target\n\ndef test_plain():\n    assert target.answer() is None\n"
    )
    xml = tmp_path / "junit.xml"
    result = run(ptr, "--inject-faults", "py:target:answer=none", f"--junitxml={xml}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*= resilience =*", "faults injected * 1"])
    assert "error rate" not in result.stdout.str()
    assert "recovery rate" not in result.stdout.str()
    props, data = figures(xml)["test_plain"]
    assert data["calls"] == data["calls_with_failure"] == 0
    assert data["error_rate"] is None
    assert data["recovery_rate"] is None
    assert "resilience.error_rate" not in props
    assert "resilience.recovery_rate" not in props


def test_no_summary_and_no_rates_in_a_run_without_faults(ptr: pytest.Pytester) -> None:
    result = run(ptr, "-k", "recovers and not without")
    result.assert_outcomes(passed=1, deselected=2)
    assert "= resilience =" not in result.stdout.str()
    assert "error rate" not in result.stdout.str()
