"""``pytest --fault-sweep`` end to end: fresh pytest processes over a suite (tests/sweep_app,
an app with three bugs found in real apps on llama-cpp-python, and small suites written
here), on the real tiny model, with the leak check on and warnings as errors."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from faults.sweep import CHARS

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


def _rgb(colour: str) -> str:
    """``#2e9e44`` as a browser's computed style says it: ``rgb(46, 158, 68)``."""
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({red}, {green}, {blue})"


def test_the_html_report_opens_in_a_browser(app: pytest.Pytester) -> None:
    """The heat map in a real browser (the system's chromium, driven by playwright): a row
    per test, a colour per outcome, and a click on a cell shows its error, traceback and
    the command that reproduces it."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    found = ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
    browser_path = next((p for p in found if p and Path(p).exists()), None)
    if browser_path is None:
        pytest.skip("no chromium on this machine (/usr/bin/chromium, chromium-browser)")
    from faults.sweep_html import COLOURS  # noqa: PLC0415

    sweep(app, "--fault-sweep-html", "sweep.html", "--fault-sweep-json", "sweep.json")
    data = json.loads((app.path / "sweep.json").read_text(encoding="utf-8"))
    ids = {(c["test"], c["spec"]): i for i, c in enumerate(data["cells"])}
    failing = ("tests/test_assistant.py::test_answers", "llama.generate=1*raise(RuntimeError)")
    cell = data["cells"][ids[failing]]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True)
        try:
            view = browser.new_page()
            view.goto((app.path / "sweep.html").as_uri())
            rows = view.locator("th.row").all_inner_texts()
            assert rows == data["tests"]
            shown = view.eval_on_selector_all(
                "td.cell", "tds => tds.map(td => [td.dataset.outcome, "
                "getComputedStyle(td).backgroundColor, td.textContent])",
            )  # fmt: skip
            assert len(shown) == len(data["cells"]) == 28
            by_outcome = {o: sum(c["outcome"] == o for c in data["cells"]) for o in COLOURS}
            assert {o: sum(s[0] == o for s in shown) for o in COLOURS} == by_outcome
            assert all(by_outcome[o] for o in ("failed", "hung", "survived"))
            for outcome, colour, char in shown:
                assert (colour, char) == (_rgb(COLOURS[outcome]), CHARS[outcome]), outcome
            detail = view.locator("#detail")
            assert not detail.is_visible()  # until a cell is clicked
            target = view.locator(f'td.cell[data-id="{ids[failing]}"]')
            assert cell["error"] in str(target.get_attribute("title"))  # the hover text
            target.click()
            assert detail.is_visible()
            assert detail.locator("h2").text_content() == f"failed: {failing[0]}  {failing[1]}"
            assert detail.locator(".error").text_content() == cell["error"]
            assert detail.locator(".command").text_content() == cell["command"]
            assert "--inject-faults 'llama.generate=1*raise(RuntimeError)'" in cell["command"]
            traceback = detail.locator(".traceback").inner_text()
            assert "RuntimeError: fault injected at llama.generate" in traceback
            # another cell replaces it: the hung stream
            hung = ("tests/test_assistant.py::test_streams", "llama.stream=1*stall(after=1)")
            view.locator(f'td.cell[data-id="{ids[hung]}"]').click()
            assert detail.locator("h2").text_content() == f"hung: {hung[0]}  {hung[1]}"
            assert "HangDetected" in detail.locator(".error").inner_text()
        finally:
            browser.close()


DAEMON_APP = """
import json

import httpx

from pytest_resilience import Backoff, Retry


def ask(base_url, model):
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": 4}
    answer = httpx.post(f"{base_url}/v1/completions", json=body, timeout=120)
    answer.raise_for_status()
    return answer.json()["choices"][0]["text"]


def ask_with_retry(base_url, model, clock):
    retry = Retry(
        on=(httpx.HTTPStatusError, httpx.TransportError),
        attempts=3,
        backoff=Backoff(base=0.5, jitter="none"),
        clock=clock,
    )
    return retry.call(ask, base_url, model)


def stream(base_url, model):
    # what arrived, complete or not (the bug: a cut answer passes for a whole one)
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": 4, "stream": True}
    parts = []
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=120) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                parts.append(json.loads(line[6:])["choices"][0]["text"])
    return "".join(parts)
"""

DAEMON_TESTS = """
import os

import app


def _noted(daemon):
    assert daemon.base_url.startswith("http://127.0.0.1:")
    with open("daemon.pids", "a", encoding="utf-8") as pids:
        pids.write(f"{daemon.pid}\\n")


def test_asks(daemon):
    _noted(daemon)
    assert isinstance(app.ask(daemon.base_url, daemon.alias), str)


def test_asks_with_retry(daemon, clock):
    _noted(daemon)
    assert isinstance(app.ask_with_retry(daemon.base_url, daemon.alias, clock), str)


def test_streams(daemon):
    _noted(daemon)
    assert isinstance(app.stream(daemon.base_url, daemon.alias), str)
"""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_daemon_family_over_httpx_real_time(pytester: pytest.Pytester) -> None:
    """The suite's tests talk to the real daemon (the `daemon` fixture, one for the session)
    through httpx; the sweep tries daemon.request and daemon.stream faults on each."""
    # looked up, not imported: importing llama_cpp here leaves a file open for the leak check
    if any(importlib.util.find_spec(name) is None for name in ("llama_cpp", "uvicorn", "httpx")):
        pytest.skip("llama-cpp-python's server is not installed (the daemon extra)")
    pytester.makepyfile(app=DAEMON_APP, test_daemon_app=DAEMON_TESTS)
    pytester.makeini(
        "[pytest]\nresilience_leak_check = true\nfilterwarnings = error\n"
        "resilience_daemon_scope = session\n"
    )
    result = sweep(
        pytester,
        "--fault-sweep-faults",
        "daemon.request=status(503);daemon.stream=lost(after=1),truncate(after=1)",
        "--fault-sweep-json", "sweep.json",
    )  # fmt: skip
    result.assert_outcomes(passed=3)
    found = cells(pytester.path / "sweep.json")
    outcomes = {(test.partition("::")[2], spec): c["outcome"] for (test, spec), c in found.items()}
    assert outcomes == {
        # no retry: one 503 reaches the test
        ("test_asks", "daemon.request=1*status(503)"): "failed",
        ("test_asks", "daemon.request=status(503)"): "failed",
        # the retry absorbs one 503, not a server that keeps answering 503
        ("test_asks_with_retry", "daemon.request=1*status(503)"): "survived",
        ("test_asks_with_retry", "daemon.request=status(503)"): "failed",
        ("test_streams", "daemon.request=1*status(503)"): "failed",
        ("test_streams", "daemon.request=status(503)"): "failed",
        # the server is lost after the first event, and nothing retries the stream
        ("test_streams", "daemon.stream=1*lost(after=1)"): "failed",
        ("test_streams", "daemon.stream=lost(after=1)"): "failed",
        # a stream cut short is taken as complete: the cut-stream verdict fails the test
        ("test_streams", "daemon.stream=1*truncate(after=1)"): "failed",
        ("test_streams", "daemon.stream=truncate(after=1)"): "failed",
    }
    plain = found["test_daemon_app.py::test_asks", "daemon.request=1*status(503)"]
    assert "503" in plain["error"]
    assert plain["injected"] == 1
    # Python's own traceback, from the test function down (not pytest's or pluggy's frames)
    first_frame = plain["traceback"].splitlines()[1]
    assert first_frame.endswith(", in test_asks")
    assert "pluggy" not in plain["traceback"]
    retried = found["test_daemon_app.py::test_asks_with_retry", "daemon.request=status(503)"]
    assert retried["injected"] == 3  # each of the three attempts met it
    lost = found["test_daemon_app.py::test_streams", "daemon.stream=1*lost(after=1)"]
    assert "RemoteProtocolError: peer closed connection" in lost["error"]
    cut = found["test_daemon_app.py::test_streams", "daemon.stream=1*truncate(after=1)"]
    assert "VerdictBroken: cut-stream" in cut["error"]
    # the sites the tests never reached have no cells, and llama.* ran in the daemon only
    assert {spec.partition("=")[0] for _, spec in found} == {"daemon.request", "daemon.stream"}
    # One daemon, on loopback, for the fault-free pass and the cells (3 tests and 7 cells),
    # until `lost` killed it; revived for each test after that (the last cell's, 2 tests),
    # and stopped at the session's end though cells failed.
    pids = [int(p) for p in (pytester.path / "daemon.pids").read_text().split()]
    assert pids == [pids[0]] * 10 + [pids[10]] + [pids[11]] * 2
    assert len(set(pids)) == 3
    assert all(_gone(pid) for pid in pids)
    assert result.ret == pytest.ExitCode.TESTS_FAILED


QUIET_SUITE = """
import pytest


def work():
    return 1


def test_plain():
    assert work() == 1


@pytest.mark.faults("py:test_quiet:work=1*raise(RuntimeError)")
def test_own_faults():
    with pytest.raises(RuntimeError):
        work()
"""


def test_the_fault_free_pass_is_no_fault_in_the_summary(pytester: pytest.Pytester) -> None:
    """The sweep's recording pass (every site off) is neither a run-wide spec in the header
    and the resilience summary, nor a fault that was never reached."""
    pytester.makepyfile(test_quiet=QUIET_SUITE)
    pytester.makeini(
        "[pytest]\nfilterwarnings = error\nresilience_sweep_sites = py:test_quiet:work\n"
    )
    faults = ("--fault-sweep-faults", "py:test_quiet:work=raise(RuntimeError)")
    result = sweep(pytester, *faults)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "resilience: fault sweep over *, py:test_quiet:work",
            "fault sweep: 2 cells over 2 tests; *",
            "test_quiet.py::test_plain  FF",
            "*= resilience =*",
            "tests under faults  *1",  # the marker's test, not the recording pass's
            "faults injected  *1",
            "  py:test_quiet:work raise  1",
        ]
    )
    text = result.stdout.str()
    for noise in ("--inject-faults=", "run-wide sites", "never reached", "FaultNotReached",
                  "llama.generate  ", "daemon.process  ", "warnings summary"):  # fmt: skip
        assert noise not in text, noise
    # quiet: the sweep's first line starts a line of its own, after the progress dots
    quiet = sweep(pytester, "-q", *faults)
    lines = quiet.stdout.lines
    first = next(i for i, line in enumerate(lines) if line.startswith("fault sweep: 2 cells"))
    assert lines[first - 1].endswith("[100%]")


def test_a_cell_that_waits_in_real_time_under_xdist_ends_as_hung(
    pytester: pytest.Pytester,
) -> None:
    """pytest-xdist's workers run their tests in their main thread, so the real-time limit
    (a SIGALRM) ends a cell stuck in real time there too."""
    pytester.makepyfile(test_suite="import pytest\n" + SUITE)
    pytester.makeini(
        "[pytest]\nresilience_leak_check = true\nfilterwarnings = error\n"
        "resilience_sweep_sites =\n    py:test_suite:work\n"
    )
    result = sweep(
        pytester,
        "-n", "2",
        "--fault-sweep-faults", "py:test_suite:work=timeout",
        "--fault-sweep-cell-timeout", "2s",
        "--fault-sweep-json", "sweep.json",
    )  # fmt: skip
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["2 workers swept the tests each ran*"])
    found = cells(pytester.path / "sweep.json")
    real = [found["test_suite.py::test_waits_in_real_time", f"py:test_suite:work={s}timeout"]
            for s in ("1*", "")]  # fmt: skip
    for cell in real:
        assert cell["outcome"] == "hung"
        assert "CellTimedOut: the cell waited 2 s of real time" in cell["error"]
        assert cell["seconds"] >= 2.0  # timed from before the cell began
    virtual = found["test_suite.py::test_leaks_a_thread_on_error", "py:test_suite:work=timeout"]
    assert virtual["outcome"] == "hung"
    assert "HangDetected" in virtual["error"]
    assert result.ret == pytest.ExitCode.TESTS_FAILED
