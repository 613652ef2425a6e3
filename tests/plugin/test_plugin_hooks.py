"""The hooks a suite implements in its conftest.py (pytest_addhooks): figures of its own for
each test, the rows of the summary, the command that reproduces a failure; and the plugin
as pytest sees it: every hook and fixture once, and nothing at all under -p no:resilience
(pytester, in process)."""

from __future__ import annotations

import json
import re
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
import target

def test_passes():
    assert target.answer() is None

def test_fails():
    assert target.answer() == "ok"
"""
SPEC = "py:target:answer=none"


@pytest.fixture
def ptr(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(target=TARGET, test_suite=SUITE)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:randomly", *args)


def properties(xml: Path) -> dict[str, dict[str, str]]:
    """Each test's JUnit user properties, by test name."""
    return {
        str(case.get("name")): {
            str(p.get("name")): str(p.get("value")) for p in case.iter("property")
        }
        for case in ET.parse(xml).getroot().iter("testcase")
    }


FIGURES = """
def pytest_resilience_test_figures(item, state, figures):
    figures["tokens"] = len(item.name)
    figures["by_step"] = {"a": 1, "b": 2}
    figures["retries"] += 40
    figures["spec"] = str(state.spec)
"""
SUMMARY = """
def pytest_resilience_summary(config, totals, rows):
    rows[:] = [row for row in rows if row[0] != "breaker transitions"]
    rows.insert(0, ("tokens used", str(totals.extra.get("tokens", 0))))
    rows.append(("steps", str(totals.extra.get("by_step", 0))))
"""


def test_a_conftest_adds_and_changes_the_figures_of_each_test(
    ptr: pytest.Pytester, tmp_path: Path
) -> None:
    ptr.makeconftest(FIGURES + SUMMARY)
    xml = tmp_path / "junit.xml"
    result = run(ptr, "--inject-faults", SPEC, f"--junitxml={xml}")
    result.assert_outcomes(passed=1, failed=1)
    props = properties(xml)["test_passes"]
    assert props["resilience.tokens"] == str(len("test_passes"))
    assert props["resilience.by_step"] == "3"  # a mapping's figure: the sum of its numbers
    assert props["resilience.retries"] == "40"
    assert props["resilience.spec"] == SPEC
    assert json.loads(props["resilience.figures"])["by_step"] == {"a": 1, "b": 2}
    # summed over the run: a figure of the plugin's in its own row, the others in totals.extra
    tokens = len("test_passes") + len("test_fails")
    result.stdout.fnmatch_lines(
        ["*= resilience =*", f"tokens used * {tokens}", "retries scheduled * 80", "steps * 6"]
    )
    assert "breaker transitions" not in result.stdout.str()


def test_the_per_test_hooks_see_only_the_conftest_files_of_the_test(
    ptr: pytest.Pytester, tmp_path: Path
) -> None:
    sub = ptr.mkpydir("sub")
    (sub / "conftest.py").write_text(FIGURES)
    (sub / "test_sub.py").write_text("import target\n\ndef test_sub():\n    target.answer()\n")
    xml = tmp_path / "junit.xml"
    run(ptr, "--inject-faults", SPEC, f"--junitxml={xml}").assert_outcomes(passed=2, failed=1)
    props = properties(xml)
    assert props["test_sub"]["resilience.tokens"] == str(len("test_sub"))
    assert "resilience.tokens" not in props["test_passes"]
    assert props["test_passes"]["resilience.retries"] == "0"


def test_a_conftest_gives_a_run_without_faults_a_summary(ptr: pytest.Pytester) -> None:
    ptr.makeconftest(
        "def pytest_resilience_summary(rows):\n    rows.append(('checked by', 'our conftest'))\n"
    )
    result = run(ptr)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*= resilience =*", "checked by  our conftest"])
    assert "fault seed " not in result.stdout.str()  # the plugin's own rows: nothing to say
    assert "= resilience =" not in run(ptr, "-qq").stdout.str()


REPRODUCE = """
def pytest_resilience_reproduce_command(item, command):
    if item.name == "test_fails":
        return "tox -e faults -- " + command.removeprefix("pytest ")
    return None
"""


def test_a_conftest_replaces_the_reproduce_command(ptr: pytest.Pytester, tmp_path: Path) -> None:
    ptr.makeconftest(REPRODUCE)
    xml = tmp_path / "junit.xml"
    result = run(ptr, "--inject-faults", SPEC, "--fault-seed", "3", f"--junitxml={xml}")
    result.assert_outcomes(passed=1, failed=1)
    mine = f"tox -e faults -- 'test_suite.py::test_fails' --inject-faults '{SPEC}' --fault-seed 3"
    result.stdout.fnmatch_lines(
        [
            "*- resilience: reproduce with -*",
            mine,
            "*= resilience =*",
            "reproduce the failures under faults with:",
            f"  {mine}",
        ]
    )
    props = properties(xml)
    assert props["test_fails"]["resilience.reproduce"] == mine
    # None keeps the plugin's own command
    assert props["test_passes"]["resilience.reproduce"] == (
        f"pytest 'test_suite.py::test_passes' --inject-faults '{SPEC}' --fault-seed 3"
    )


HOOKS = (
    "pytest_addhooks",
    "pytest_addoption",
    "pytest_collect_file",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_report_header",
    "pytest_runtest_call",
    "pytest_runtest_makereport",
    "pytest_runtest_protocol",
    "pytest_runtest_setup",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
)
#: The hooks of the verdicts' own plugin (registered at configure time, as the reporter is).
VERDICT_HOOKS = (
    "pytest_collection_modifyitems",
    "pytest_runtest_call",
    "pytest_runtest_setup",
    "pytest_runtest_teardown",
)
ISOLATE_HOOKS = ("pytest_runtest_call", "pytest_runtest_protocol")  # a child adds makereport
MODEL_USE_HOOKS = ("pytest_runtest_setup", "pytest_runtest_teardown", "pytest_unconfigure")
FIXTURES = (
    "clock",
    "daemon",
    "faults",
    "journal",
    "leak_check",
    "llama",
    "resilient_client",
    "tiny_model",
)


def test_pytest_sees_each_hook_and_fixture_of_the_plugin_once(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_once=f"""
        def test_once(pytestconfig):
            hook = pytestconfig.pluginmanager.hook
            ours = [
                (name, impl.plugin_name)
                for name in sorted(set({HOOKS + VERDICT_HOOKS + ISOLATE_HOOKS + MODEL_USE_HOOKS!r}))
                for impl in getattr(hook, name).get_hookimpls()
                if impl.function.__module__.startswith("pytest_resilience.")
            ]
            expected = [(name, "resilience") for name in {HOOKS!r}]
            expected += [(name, "resilience-verdicts") for name in {VERDICT_HOOKS!r}]
            expected += [(name, "resilience-isolate") for name in {ISOLATE_HOOKS!r}]
            expected += [(name, "resilience-model-use") for name in {MODEL_USE_HOOKS!r}]
            assert sorted(ours) == sorted(expected)
        """
    )
    run(ptr, "test_once.py").assert_outcomes(passed=1)
    listed = run(ptr, "--fixtures", "test_once.py").stdout.str()
    for name in FIXTURES:
        assert len(re.findall(rf"^{name}( \[\w+ scope\])? -- \S+\.py:\d+$", listed, re.M)) == 1, (
            name
        )


def test_no_resilience_turns_the_whole_plugin_off(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(test_journal="def test_journal(journal):\n    pass\n")
    off = run(ptr, "-p", "no:resilience", "test_journal.py")
    off.assert_outcomes(errors=1)
    off.stdout.fnmatch_lines(["*fixture 'journal' not found*"])
    assert "resilience:" not in off.stdout.str()  # no header line
    usage = run(ptr, "-p", "no:resilience", "--inject-faults", SPEC)
    assert usage.ret == pytest.ExitCode.USAGE_ERROR
    usage.stderr.fnmatch_lines(["*unrecognized arguments: --inject-faults*"])
