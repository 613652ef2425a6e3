"""The plugin's report: header, summary table, reproduction lines, JUnit properties, xdist,
pytest-timeout (pytester)."""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

import pytest

import faults  # loaded once here, so that pytester's runs do not reload it
import faults.observe
from pytest_resilience.core.events import BreakerTransition, FallbackUsed, RetryScheduled
from pytest_resilience.core.journal import Journal
from pytest_resilience.core.leaks import Leak, snapshot
from pytest_resilience.plugin.assertions import (
    assert_fell_back,
    assert_no_leaks,
    assert_retried,
    assert_transitions,
)

if TYPE_CHECKING:
    from pathlib import Path

pytest_plugins = ["pytester"]

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
TARGET = "def answer():\n    return 'ok'\n"
SUITE = """
import pytest
import target
from pytest_resilience.core.breaker import CircuitBreaker, ConsecutiveFailures
from pytest_resilience.core.fallback import Fallback
from pytest_resilience.core.retry import Backoff, Retry

def test_retry(journal, clock):
    retry = Retry(on=ConnectionError, attempts=3, backoff=Backoff(base=1.0), clock=clock,
                  journal=journal, name="ask")
    assert retry.call(target.answer) == "ok"

def test_breaker_and_fallback(journal, clock):
    breaker = CircuitBreaker("db", on=ConnectionError, trip=ConsecutiveFailures(1), clock=clock,
                             journal=journal)
    chain = Fallback("chain", [("primary", lambda: breaker.call(target.answer)),
                               ("cache", lambda: "cached")], on=ConnectionError, journal=journal)
    assert chain() == "cached"

def test_fails(journal):
    assert target.answer() == "ok"
"""


@pytest.fixture
def ptr(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(target=TARGET, test_suite=SUITE)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:randomly", *args)


SPEC = "py:target:answer=1*raise(ConnectionError)"


def test_summary_table_sums_faults_retries_transitions_fallbacks(ptr: pytest.Pytester) -> None:
    result = run(ptr, "--inject-faults", SPEC, "--fault-seed", "7", "--leak-check")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "resilience: --fault-seed=7 (--fault-seed)",
            f"resilience: --inject-faults='{SPEC}'",
            "*= resilience =*",
            "fault seed * 7 (rerun with --fault-seed 7)",
            "tests under faults * 3",
            "faults injected * 3",
            "  py:target:answer raise * 3",
            "retries scheduled * 1",
            "breaker transitions * db: closed->open x1",
            "fallbacks used * cache x1",
            "leaks found * 0",
            "reproduce the failures under faults with:",
            f"  pytest 'test_suite.py::test_fails' --inject-faults '{SPEC}' --fault-seed 7",
        ]
    )


def test_the_summary_says_nothing_of_leaks_without_the_leak_check(ptr: pytest.Pytester) -> None:
    result = run(ptr, "--inject-faults", SPEC, "--no-leak-check")
    result.stdout.fnmatch_lines(["*= resilience =*", "fallbacks used * cache x1"])
    assert "leaks found" not in result.stdout.str()


def test_the_summary_is_quiet_under_qq(ptr: pytest.Pytester) -> None:
    assert "= resilience =" in run(ptr, "--inject-faults", SPEC, "-q").stdout.str()
    quiet = run(ptr, "--inject-faults", SPEC, "-qq")
    assert quiet.ret == pytest.ExitCode.TESTS_FAILED
    assert "= resilience =" not in quiet.stdout.str()
    assert "faults injected" not in quiet.stdout.str()


def test_a_failure_shows_its_timeline_and_a_command_that_reproduces_it(
    ptr: pytest.Pytester,
) -> None:
    spec = "py:target:answer=30%raise(ConnectionError)"
    entry = faults.parse(spec).entries[0]
    scope = "test_suite.py::test_fails"
    # a seed whose first call of the site fails for that test (its one call)
    seed = next(
        s
        for s in range(1000)
        if faults.Schedule.for_entry(entry, seed=s, scope=scope).decide() is not None
    )
    first = run(ptr, "--inject-faults", spec, "--fault-seed", str(seed))
    assert first.ret == pytest.ExitCode.TESTS_FAILED
    first.stdout.fnmatch_lines(
        [
            "*- resilience: journal -*",
            "*fault.injected [[]faults[]] site='py:target:answer' "
            "fault='raise(ConnectionError)' call=1",
            "*- resilience: reproduce with -*",
        ]
    )
    command = re.search(r"^pytest 'test_suite.py::test_fails' .*$", first.stdout.str(), re.M)
    assert command is not None
    again = run(ptr, *shlex.split(command.group(0))[1:])
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines([f"*{command.group(0)}"])


def test_no_summary_without_faults(ptr: pytest.Pytester) -> None:
    result = run(ptr)
    result.assert_outcomes(passed=2, failed=1)  # without the fault, the fallback is not used
    assert "= resilience =" not in result.stdout.str()
    result.stdout.fnmatch_lines(["resilience: --fault-seed=* (random)"])


def test_per_test_figures_are_junit_user_properties(ptr: pytest.Pytester, tmp_path: Path) -> None:
    xml = tmp_path / "junit.xml"
    run(ptr, "--inject-faults", SPEC, "--fault-seed", "3", f"--junitxml={xml}")
    cases = {c.get("name"): c for c in ET.parse(xml).getroot().iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_retry"].iter("property")}
    assert props["resilience.faults_injected"] == "1"
    assert props["resilience.retries"] == "1"
    assert props["resilience.seed"] == "3"
    assert props["resilience.reproduce"] == (
        f"pytest 'test_suite.py::test_retry' --inject-faults '{SPEC}' --fault-seed 3"
    )


@pytest.mark.slow
def test_xdist_workers_share_the_seed_and_the_controller_sums_real_time(
    ptr: pytest.Pytester,
) -> None:
    ptr.makepyfile(
        test_suite="""
        import target

        def test_one():
            print("PATTERN", [target.answer() for _ in range(8)])

        def test_two():
            print("PATTERN", [target.answer() for _ in range(8)])
        """
    )
    spec = "py:target:answer=50%none"
    serial = run(ptr, "--inject-faults", spec, "--fault-seed", "5", "-s")
    parallel = run(ptr, "--inject-faults", spec, "--fault-seed", "5", "-n", "2", "-v")
    parallel.assert_outcomes(passed=2)
    injected = re.search(r"faults injected\s+(\d+)", serial.stdout.str())
    assert injected is not None
    assert int(injected.group(1)) > 0
    parallel.stdout.fnmatch_lines(
        [
            "resilience: --fault-seed=5 *",
            "tests under faults * 2",
            f"faults injected * {injected.group(1)}",
        ]
    )


def test_a_timeout_names_the_hanging_site_real_time(ptr: pytest.Pytester) -> None:
    pytest.importorskip("pytest_timeout")
    ptr.makepyfile(test_hang="import target\n\ndef test_hangs():\n    target.answer()\n")
    # The fault hangs until pytest-timeout fires, which must land in the hang, not in the
    # setup: open a watch once first, so that the libraries it hooks (openai's client among
    # them, a second or more to import on a busy machine) are imported already, and give
    # the setup 5 s.
    with faults.observe.watch(Journal()):
        pass
    result = run(
        ptr, "test_hang.py", "--inject-faults", "py:target:answer=timeout", "--timeout", "5"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*Failed: Timeout*",
            "*- resilience: hanging when the timeout fired -*",
            "  py:target:answer (timeout)",
        ]
    )


# ----------------------------------------------------------------------- assertions


def journal_of(*events: object) -> Journal:
    journal = Journal()
    for event in events:
        journal.append(event)  # type: ignore[arg-type]
    return journal


def test_assert_retried() -> None:
    journal = journal_of(
        RetryScheduled(time=1.0, source="ask", attempt=2, delay=1.0),
        RetryScheduled(time=2.0, source="other", attempt=2, delay=1.0),
    )
    assert_retried(journal)
    assert_retried(journal, 1, source="ask")
    with pytest.raises(
        AssertionError,
        match=r"expected 2 retries by 'ask', got 1\ntimeline:\n.*retry.scheduled \[ask\]",
    ):
        assert_retried(journal, 2, source="ask")
    with pytest.raises(AssertionError, match="expected at least 1 retries, got 0"):
        assert_retried(Journal())


def test_assert_transitions() -> None:
    journal = journal_of(
        BreakerTransition(time=1.0, source="db", from_state="closed", to_state="open", reason="x"),
        BreakerTransition(
            time=9.0, source="db", from_state="open", to_state="half_open", reason="y"
        ),
    )
    assert_transitions(journal, "db", ["closed->open", "open -> half_open"])
    with pytest.raises(
        AssertionError, match=r"expected transitions \['closed->open'\], got .*\nbreaker"
    ):
        assert_transitions(journal, "db", ["closed->open"])
    with pytest.raises(AssertionError, match=r"recorded for \['db'\]"):
        assert_transitions(journal, "api", ["closed->open"])


def test_assert_fell_back() -> None:
    journal = journal_of(
        FallbackUsed(time=1.0, source="client", step="direct", index=1, after=("down",))
    )
    assert_fell_back(journal, to="direct")
    assert_fell_back(journal, times=1, source="client")
    with pytest.raises(
        AssertionError,
        match=r"to 'cache', got 0 \(steps that answered: \['direct'\]\)",
    ):
        assert_fell_back(journal, to="cache")


def test_assert_no_leaks() -> None:
    assert_no_leaks(snapshot())
    assert_no_leaks([])
    with pytest.raises(AssertionError, match="1 thing leaked:\n  - fd: 9 -> pipe"):
        assert_no_leaks([Leak("fd", "9 -> pipe")])


def _printed_command(result: pytest.RunResult) -> list[str]:
    """The arguments of the one command the report printed under "reproduce with"."""
    lines = result.stdout.lines
    at = next(i for i, line in enumerate(lines) if "resilience: reproduce with" in line)
    return shlex.split(lines[at + 1])[1:]


def test_the_printed_command_keeps_virtual_time(ptr: pytest.Pytester) -> None:
    # In real time this fault hangs for an hour: the command must keep --virtual-time.
    spec = "py:target:answer=timeout(1h)"
    first = run(ptr, "--virtual-time", "--inject-faults", spec, "--fault-seed", "5")
    first.assert_outcomes(failed=3)
    args = _printed_command(first)
    assert "--virtual-time" in args
    again = run(ptr, *args)
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*TimeoutError: fault injected at py:target:answer*"])


def test_the_printed_command_under_replay_replays(ptr: pytest.Pytester) -> None:
    spec = "py:target:answer=1*raise(ConnectionError)"
    run(ptr, "test_suite.py::test_fails", "--inject-faults", spec, "--fault-journal", "saved")
    [saved] = (ptr.path / "saved").iterdir()
    journal = f"saved/{saved.name}"
    first = run(ptr, "test_suite.py::test_fails", "--replay-journal", journal)
    first.assert_outcomes(failed=1)
    args = _printed_command(first)
    assert args == ["test_suite.py::test_fails", "--replay-journal", journal]
    again = run(ptr, *args)
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*ConnectionError: fault injected at py:target:answer*"])


def test_the_printed_command_works_from_a_subdirectory(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(INI)
    sub = pytester.mkdir("suite")
    (sub / "target.py").write_text(TARGET)
    (sub / "test_it.py").write_text("import target\n\ndef test_it():\n    assert target.answer()\n")
    monkeypatch.chdir(sub)
    first = run(pytester, "test_it.py", "--inject-faults", "py:target:answer=none")
    first.assert_outcomes(failed=1)
    args = _printed_command(first)
    assert args[0] == "test_it.py::test_it"  # not suite/test_it.py: we are in suite/
    run(pytester, *args).assert_outcomes(failed=1)


def test_the_journal_of_a_failure_shows_times_since_the_test_began(ptr: pytest.Pytester) -> None:
    spec = "py:target:answer=raise(ConnectionError)"
    real = run(ptr, "test_suite.py::test_fails", "--inject-faults", spec)
    # real time: relative to the test's start, never the monotonic clock's raw reading
    real.stdout.re_match_lines([r"^ +\+\d+\.\d{3}s fault\.injected \[faults\] .*call=1$"])
    virtual = run(ptr, "test_suite.py::test_fails", "--inject-faults", spec, "--virtual-time")
    virtual.stdout.re_match_lines([r"^ +\+0\.000s fault\.injected \[faults\] .*call=1$"])
