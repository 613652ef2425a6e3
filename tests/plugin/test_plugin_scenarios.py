"""Scenario files are collected and replayed as test items."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from faults.scenario import load, run
from pytest_resilience.core.events import FaultInjected

QUIET = ("-p", "no:hypothesispytest", "-p", "no:asyncio")  # as the other plugin tests
# llama.cpp keeps two /dev/null descriptors open after the first model load in a process,
# which the in-process pytester runs here would report as a leak of this test.
pytestmark = pytest.mark.no_leak_check  # harmless now that runs are subprocesses; kept for safety
SHIPPED = Path(__file__).resolve().parents[2] / "scenarios"
#: How pytest reports a scenario file that cannot be loaded: the plugin's scenario item
#: fails with the message (exit 1). A collection error would be ExitCode.INTERRUPTED.
UNLOADABLE_EXIT = pytest.ExitCode.TESTS_FAILED


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
    assert result.ret == UNLOADABLE_EXIT
    out = result.stdout.str() + result.stderr.str()
    assert "bad.toml:3" in out
    assert "sede" in out


def test_toml_files_outside_scenario_folders_are_not_collected(pytester: pytest.Pytester) -> None:
    (pytester.path / "settings.toml").write_text("a = 1\n")
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest_subprocess(*QUIET)
    result.assert_outcomes(passed=1)


# ------------------------------------------------------------------- the file's own seed

SEEDED_APP = """\
from pathlib import Path

LOG = Path(__file__).with_name("calls.log")


def complete(prompt: str) -> str:
    return prompt.upper()


def answer(prompt: str) -> str:
    try:
        text = complete(prompt)
    except ConnectionError:
        with LOG.open("a") as log:
            log.write("x")
        raise
    with LOG.open("a") as log:
        log.write(".")
    return text
"""
COIN = """\
version = 1
title = "half the calls lose their connection, as the file's seed draws them"
seed = 1

[target]
callable = "seeded_app:answer"

[faults]
spec = "py:seeded_app:complete=50%raise(ConnectionError)"

[[steps]]
op = "call"
args = ["hello"]
repeat = 40

[expect]
faults_injected = {fired}
"""


def test_a_scenarios_own_seed_holds_under_xdist_and_fault_seed_last(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue: ``seed = 1`` with a 50% fault passed alone and failed under ``-n 2``
    (the workers' seed, the controller's random one, replaced the file's). Which of 40
    calls failed is logged by the app: every run must draw the same ones, unless
    ``--fault-seed N`` is given on the command line."""
    monkeypatch.delenv("PYTEST_FAULT_SEED", raising=False)
    pytester.makeini("[pytest]\npythonpath = .\n")
    (pytester.path / "seeded_app.py").write_text(SEEDED_APP)
    log = pytester.path / "calls.log"
    path = pytester.path / "coin.toml"
    path.write_text(COIN.format(fired=0))
    monkeypatch.syspath_prepend(pytester.path)
    try:
        reference = run(load(path))  # in this process: what the file's seed draws
    finally:
        sys.modules.pop("seeded_app", None)
    fired = len(reference.journal.events(FaultInjected))
    drawn = log.read_text()
    log.unlink()
    assert 0 < fired < 40
    assert drawn.count("x") == fired
    path.write_text(COIN.format(fired=fired))

    def calls(*args: str) -> tuple[str, pytest.RunResult]:
        result = pytester.runpytest_subprocess("coin.toml", *QUIET, *args)
        text = log.read_text()
        log.unlink()
        return text, result

    # 'last' first: no run has saved a seed yet (the cache is the fresh folder's)
    for args in [("--fault-seed", "last"), (), ("-n", "2")]:
        text, result = calls(*args)
        assert text == drawn, (args, result.stdout.str()[-3000:])
        result.assert_outcomes(passed=1)
    # asked for on the command line, another seed replaces the file's: another draw
    text, _ = calls("--fault-seed", "2")
    assert text != drawn


def test_a_file_that_cannot_be_loaded_is_one_message_without_a_traceback(
    pytester: pytest.Pytester,
) -> None:
    """Once an INTERNALERROR or a traceback (TypeError, RecursionError): each now fails its
    item with the file, the line and the key."""
    text = (SHIPPED / "none_retried.toml").read_text()
    latin1 = text.replace('title = "two None', 'title = "two Nöne')
    (pytester.path / "latin1.toml").write_bytes(latin1.encode("latin-1"))
    deep = "[" * 5_000 + "]" * 5_000
    (pytester.path / "deep.toml").write_text(
        text.replace("[[steps]]\n", f"[[steps]]\nargs = {deep}\n", 1)
    )
    (pytester.path / "relative.toml").write_text(
        text.replace('on = ["InvalidOutput"]', 'on = [".x.Err"]')
    )
    assert '".x.Err"' in (pytester.path / "relative.toml").read_text()
    result = pytester.runpytest_subprocess("latin1.toml", "deep.toml", "relative.toml", *QUIET)
    assert result.ret == UNLOADABLE_EXIT
    output = [*result.outlines, *result.errlines]
    for name, where in [
        ("latin1.toml", ":5: title: the file is not UTF-8: byte 0xf6 at column 15 "),
        ("deep.toml", ": steps[1].args: nested too deep: more than 32 levels"),
        ("relative.toml", ": resilience.retry.on: '.x.Err' is not an exception name"),
    ]:
        start = str(pytester.path / name)
        shown = [line for line in output if line.startswith(start)]
        assert len(shown) == 1, (name, output)
        assert where in shown[0], shown
    assert not any("Traceback" in line or "INTERNALERROR" in line for line in output), output
