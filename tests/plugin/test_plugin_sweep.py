"""``pytest --fault-sweep`` end to end: fresh pytest processes over a suite (tests/sweep_app,
an app with three bugs found in real apps on llama-cpp-python, and small suites written
here), on the real tiny model, with the leak check on and warnings as errors."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

APP = Path(__file__).parents[1] / "sweep_app"
#: The cells that show the app's three bugs, and what each becomes with the bugs.
BUGS = {
    # (a) a RuntimeError from llama-cpp-python is not retried
    ("tests/test_assistant.py::test_answers", "llama.generate=1*raise(RuntimeError)"): (
        "failed",
        "RuntimeError: fault injected at llama.generate",
    ),
    # (b) llama-cpp-python's out-of-memory errors are not classified
    ("tests/test_assistant.py::test_answers", "llama.load=1*oom"): (
        "failed",
        "ValueError: Failed to create llama_context",
    ),
    ("tests/test_assistant.py::test_answers", "llama.generate=oom"): (
        "failed",
        "RuntimeError: llama_decode returned 1",
    ),
    # (c) an idle timeout checked after the stream ended hangs on a stalled stream
    ("tests/test_assistant.py::test_streams", "llama.stream=1*stall(after=1)"): (
        "hung",
        "HangDetected",
    ),
}


@pytest.fixture
def app(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    shutil.copytree(APP, pytester.path, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))  # fmt: skip
    monkeypatch.delenv("CHAT_FIXED", raising=False)
    return pytester


def sweep(where: pytest.Pytester, *args: str) -> pytest.RunResult:
    # pytest-asyncio (ours, not the app's) warns about its unset loop scope; warnings are errors
    return where.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:asyncio", "--fault-sweep", "--fault-seed", "3",
        *args, timeout=600,
    )  # fmt: skip


def cells(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {(c["test"], c["spec"]): c for c in data["cells"]}


def run_command(where: pytest.Pytester, command: str) -> subprocess.CompletedProcess[str]:
    """Run a printed reproduce command (``pytest ...``) as a user would, in ``where``."""
    words = shlex.split(command)
    assert words[0] == "pytest"
    return subprocess.run(
        [sys.executable, "-m", "pytest", *words[1:], "-p", "no:cacheprovider", "-p", "no:asyncio"],
        cwd=where.path, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONPATH": str(where.path)},
    )  # fmt: skip


def test_the_sweep_finds_the_three_bugs_and_each_command_reproduces_its_cell(
    app: pytest.Pytester,
) -> None:
    result = sweep(app, "--fault-sweep-json", "sweep.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # cells failed, though every test passed
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "fault sweep: 28 cells over 2 tests; estimated * for 28 cells of 2 tests*",
            "*= fault sweep =*",
            "legend: . survived  F failed  H hung  L leaked  o not reached*",
            "totals: 28 cells: * survived, * failed, 2 hung, 0 leaked*",
            "fault sweep: * cells failed, hung or leaked",
        ]
    )
    found = cells(app.path / "sweep.json")
    assert len(found) == 28
    for key, (outcome, error) in BUGS.items():
        cell = found[key]
        assert (cell["outcome"], cell["injected"] > 0) == (outcome, True), key
        assert error in cell["error"]
        assert cell["command"] == (
            f"pytest '{key[0]}' --inject-faults '{key[1]}' --fault-seed 3 --virtual-time"
        )
        assert cell["command"] in result.stdout.str()
    for key, (_, error) in BUGS.items():
        rerun = run_command(app, found[key]["command"])
        assert rerun.returncode == pytest.ExitCode.TESTS_FAILED, rerun.stdout
        assert error in rerun.stdout
        assert "1 failed" in rerun.stdout


def test_the_fixed_app_survives_every_cell(
    app: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_FIXED", "1")
    result = sweep(app, "--fault-sweep-json", "sweep.json")
    result.stdout.fnmatch_lines(["totals: 28 cells: 28 survived, 0 failed, 0 hung, 0 leaked"])
    assert result.ret == pytest.ExitCode.OK
    found = cells(app.path / "sweep.json")
    for key in BUGS:
        assert found[key]["outcome"] == "survived"
        assert found[key]["injected"] > 0


def test_a_baseline_fails_only_the_cells_that_got_worse(
    app: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    buggy = sweep(app, "--fault-sweep-json", "buggy.json")
    assert buggy.ret == pytest.ExitCode.TESTS_FAILED
    # the same cells fail again: nothing got worse, and the run passes
    same = sweep(app, "--fault-sweep-baseline", "buggy.json")
    same.stdout.fnmatch_lines(["fault sweep: no cell got worse than the baseline"])
    assert same.ret == pytest.ExitCode.OK
    # the fixes: better, and the run passes
    monkeypatch.setenv("CHAT_FIXED", "1")
    fixed = sweep(app, "--fault-sweep-baseline", "buggy.json", "--fault-sweep-json", "fixed.json")
    fixed.stdout.fnmatch_lines(
        [
            "better than the baseline: tests/test_assistant.py::test_answers "
            "llama.generate=1*raise(RuntimeError): failed -> survived",
            "fault sweep: no cell got worse than the baseline",
        ]
    )
    assert fixed.ret == pytest.ExitCode.OK
    # the bugs come back: worse, and the run fails naming the cells
    monkeypatch.delenv("CHAT_FIXED")
    worse = sweep(app, "--fault-sweep-baseline", "fixed.json")
    worse.stdout.fnmatch_lines(
        [
            "worse than the baseline: tests/test_assistant.py::test_answers "
            "llama.generate=1*raise(RuntimeError): survived -> failed",
            "worse than the baseline: tests/test_assistant.py::test_streams "
            "llama.stream=1*stall(after=1): survived -> hung",
            "fault sweep: 22 cells got worse than the baseline",
        ]
    )
    assert worse.ret == pytest.ExitCode.TESTS_FAILED


def test_xdist_workers_sweep_the_tests_they_ran(app: pytest.Pytester) -> None:
    result = sweep(app, "-n", "2", "--fault-sweep-json", "sweep.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["2 workers swept the tests each ran*"])
    found = cells(app.path / "sweep.json")
    assert len(found) == 28
    for key, (outcome, _) in BUGS.items():
        assert found[key]["outcome"] == outcome


def test_a_budget_keeps_the_likeliest_cells_and_the_faults_option_narrows(
    app: pytest.Pytester,
) -> None:
    result = sweep(
        app,
        "--fault-sweep-budget", "3",
        "--fault-sweep-faults", "llama.generate=corrupt, raise(RuntimeError); llama.load=oom",
        "--fault-sweep-faults", "llama.stream=stall(after=1)",
        "--fault-sweep-json", "sweep.json",
    )  # fmt: skip
    result.stdout.fnmatch_lines(
        ["fault sweep: 10 cells over 2 tests; the budget (3 cells) keeps 3; estimated *"]
    )
    found = cells(app.path / "sweep.json")
    assert sorted(found) == [  # first occurrences of exceptions, before the stall
        ("tests/test_assistant.py::test_answers", "llama.generate=1*raise(RuntimeError)"),
        ("tests/test_assistant.py::test_answers", "llama.load=1*oom"),
        ("tests/test_assistant.py::test_streams", "llama.load=1*oom"),
    ]
    data = json.loads((app.path / "sweep.json").read_text(encoding="utf-8"))
    assert len(data["left_out"]) == 7
    result.stdout.fnmatch_lines(["totals: 3 cells: *, 7 left out by the budget"])


def test_a_malformed_fault_set_is_a_usage_error_with_a_caret(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = sweep(pytester, "--fault-sweep-faults", "llama.generate=oom,raize(ValueError)")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*--fault-sweep-faults: malformed fault set: unknown fault kind 'raize'; "
            "did you mean 'raise'?",
            "*  llama.generate=oom,raize(ValueError)",
            "*                     ^",
        ]
    )


SUITE = """
import threading, time
from pytest_resilience.plugin.fixtures import TestClock

_cache = {}

def lookup(key):
    return key.upper()

def get(key):
    if key not in _cache:  # only the first run of the test calls lookup
        _cache[key] = lookup(key)
    return _cache[key]

def work():
    return 1

_stop = threading.Event()

def test_cached():
    assert get("a") == "A"

def test_leaks_a_thread_on_error():
    worker = threading.Thread(target=_stop.wait, daemon=True)
    worker.start()
    try:
        work()
    except RuntimeError:
        return  # the bug: the worker is left running
    _stop.set()
    worker.join()
    _stop.clear()

@pytest.mark.real_time
def test_waits_in_real_time():
    assert work() == 1
"""


def test_not_reached_leaked_and_hung_in_real_time_cells(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite="import pytest\n" + SUITE)
    pytester.makeini(
        "[pytest]\nresilience_leak_check = true\nfilterwarnings = error\n"
        "resilience_sweep_sites =\n    py:test_suite:lookup\n    py:test_suite:work\n"
    )
    result = sweep(
        pytester,
        "--fault-sweep-faults", "py:test_suite:work=raise(RuntimeError),timeout",
        "--fault-sweep-faults", "py:test_suite:lookup=raise(RuntimeError)",
        "--fault-sweep-cell-timeout", "3s",
        "--fault-sweep-json", "sweep.json",
    )  # fmt: skip
    result.assert_outcomes(passed=3)
    found = cells(pytester.path / "sweep.json")
    outcomes = {(test.partition("::")[2], spec): c["outcome"] for (test, spec), c in found.items()}
    assert outcomes == {
        # lookup was reached in the fault-free pass, and never again: the cache answers
        ("test_cached", "py:test_suite:lookup=1*raise(RuntimeError)"): "not reached",
        ("test_cached", "py:test_suite:lookup=raise(RuntimeError)"): "not reached",
        ("test_leaks_a_thread_on_error", "py:test_suite:work=1*raise(RuntimeError)"): "leaked",
        ("test_leaks_a_thread_on_error", "py:test_suite:work=raise(RuntimeError)"): "leaked",
        # virtual time: the injected timeout can never end, and the clock says so
        ("test_leaks_a_thread_on_error", "py:test_suite:work=1*timeout"): "hung",
        ("test_leaks_a_thread_on_error", "py:test_suite:work=timeout"): "hung",
        ("test_waits_in_real_time", "py:test_suite:work=1*raise(RuntimeError)"): "failed",
        ("test_waits_in_real_time", "py:test_suite:work=raise(RuntimeError)"): "failed",
        # real time: the cell's real-time limit ends it
        ("test_waits_in_real_time", "py:test_suite:work=1*timeout"): "hung",
        ("test_waits_in_real_time", "py:test_suite:work=timeout"): "hung",
    }
    real = found["test_suite.py::test_waits_in_real_time", "py:test_suite:work=timeout"]
    assert "CellTimedOut: the cell waited 3 s of real time" in real["error"]
    leaked = found[
        "test_suite.py::test_leaks_a_thread_on_error", "py:test_suite:work=raise(RuntimeError)"
    ]
    assert leaked["error"].startswith("teardown: ")
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_the_html_report_opens_in_a_browser(app: pytest.Pytester) -> None:
    sweep(app, "--fault-sweep-html", "sweep.html", "--fault-sweep-json", "sweep.json")
    page = app.path / "sweep.html"
    assert page.exists()
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        pytest.skip("no chromium on this machine (chromium, chromium-browser)")
    found = cells(app.path / "sweep.json")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True)
        try:
            view = browser.new_page()
            view.goto(page.as_uri())
            assert view.locator("td.cell[data-outcome=failed]").count() == sum(
                c["outcome"] == "failed" for c in found.values()
            )
            assert view.locator("td.cell[data-outcome=hung]").count() == 2
            view.locator("td.cell[data-outcome=hung]").first.click()
            detail = view.locator("#detail")
            assert detail.is_visible()
            assert "llama.stream=1*stall(after=1)" in detail.inner_text()
            assert "--inject-faults 'llama.stream=1*stall(after=1)'" in detail.inner_text()
        finally:
            browser.close()
