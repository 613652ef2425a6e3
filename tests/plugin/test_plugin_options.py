"""The plugin's options, ini keys, environment variables, markers and their precedence, as
users run them (pytester, in process)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

import faults  # noqa: F401 - loaded once here, so that pytester's runs do not reload it

if TYPE_CHECKING:
    from pathlib import Path

pytest_plugins = ["pytester"]

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"

# A downstream module and a suite that knows nothing of faults: it prints which of five
# calls returned None ("N") and which answered (".").
TARGET = """
def answer():
    return "ok"

def unused():
    return "ok"
"""
SUITE = """
import target

def test_pattern():
    got = [target.answer() for _ in range(5)]
    print("PATTERN", "".join("N" if g is None else "." for g in got))
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(target=TARGET, test_suite=SUITE)
    return pytester


def patterns(result: pytest.RunResult) -> list[str]:
    return re.findall(r"PATTERN (\S+)", result.stdout.str())


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # hypothesis' plugin imports all of hypothesis at the end of every in-process run (about a
    # second, as pytester unloads what a run imported): these runs do not need it.
    return pytester.runpytest("-s", "-p", "no:hypothesispytest", *args)


def test_inject_faults_runs_an_unchanged_suite_under_faults(suite: pytest.Pytester) -> None:
    result = run(suite, "--inject-faults", "py:target:answer=2*none")
    result.assert_outcomes(passed=1)
    assert patterns(result) == ["NN..."]


def test_without_faults_nothing_changes(suite: pytest.Pytester) -> None:
    result = run(suite)
    assert patterns(result) == ["....."]
    assert "resilience summary" not in result.stdout.str()


def test_repeated_option_specs_are_merged(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        other="def hello():\n    return 'hi'\n",
        test_other="import other\n\ndef test_hi():\n    assert other.hello() is None\n",
    )
    result = run(
        suite,
        "--inject-faults",
        "py:target:answer=1*none",
        "--inject-faults",
        "py:other:hello=none",
    )
    result.assert_outcomes(passed=2)
    assert patterns(result) == ["N...."]


def test_one_site_in_two_values_of_one_place_is_a_usage_error(suite: pytest.Pytester) -> None:
    result = run(
        suite,
        "--inject-faults",
        "py:target:answer=1*none",
        "--inject-faults",
        "py:target:answer=off",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --inject-faults: site py:target:answer is given twice (*): join its terms*"]
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "--inject-faults: the fault spec is empty: it would inject nothing"),
        ("plain.toml", "--inject-faults: *plain.toml has no [[]faults[]] spec*inject nothing"),
    ],
)
def test_a_spec_that_injects_nothing_is_a_usage_error(
    suite: pytest.Pytester, value: str, problem: str
) -> None:
    (suite.path / "plain.toml").write_text('version = 1\ntitle = "no faults"\n')
    result = run(suite, "--inject-faults", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {problem}"])


@pytest.mark.parametrize(
    ("env", "ini", "cli", "marker", "expected"),
    [
        ("3*none", None, None, None, "NNN.."),
        (None, "2*none", None, None, "NN..."),
        ("3*none", "2*none", None, None, "NNN.."),  # the environment beats the ini file
        ("3*none", "2*none", "1*none", None, "N...."),
        ("3*none", "2*none", "1*none", "4*none", "NNNN."),
        (None, None, "1*none", "off", "....."),
    ],
)
def test_precedence_marker_cli_ini_env(  # noqa: PLR0917 - parametrized: one argument a column
    suite: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    env: str | None,
    ini: str | None,
    cli: str | None,
    marker: str | None,
    expected: str,
) -> None:
    site = "py:target:answer="
    if env is not None:
        monkeypatch.setenv("PYTEST_INJECT_FAULTS", site + env)
    if ini is not None:
        suite.makeini(INI + f"resilience_inject_faults = {site}{ini}\n")
    if marker is not None:
        suite.makepyfile(
            test_suite=SUITE.replace(
                "def test_pattern",
                f"import pytest\n\n@pytest.mark.faults({site + marker!r})\ndef test_pattern",
            )
        )
    args = ["--inject-faults", site + cli] if cli is not None else []
    assert patterns(run(suite, *args)) == [expected]


def test_no_faults_marker_beats_the_command_line(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_suite=SUITE.replace(
            "def test_pattern", "import pytest\n\n@pytest.mark.no_faults\ndef test_pattern"
        )
    )
    assert patterns(run(suite, "--inject-faults", "py:target:answer=none")) == ["....."]


def test_scenario_file_as_the_spec(suite: pytest.Pytester) -> None:
    suite.makefile(".toml", chaos='version = 1\n[faults]\nspec = "py:target:answer=@2none"\n')
    assert patterns(run(suite, "--inject-faults", "chaos.toml")) == [".N..."]


# ----------------------------------------------------------------------- the seed


SEEDED = "py:target:answer=50%none"


def test_the_seed_decides_the_faults_and_is_in_the_header(suite: pytest.Pytester) -> None:
    first = run(suite, "--inject-faults", SEEDED, "--fault-seed", "11")
    again = run(suite, "--inject-faults", SEEDED, "--fault-seed", "11")
    first.stdout.fnmatch_lines(["resilience: --fault-seed=11 (--fault-seed)"])
    assert patterns(first) == patterns(again)
    others = {
        tuple(patterns(run(suite, "--inject-faults", SEEDED, "--fault-seed", str(s))))
        for s in range(6)
    }
    assert len(others) > 1  # 5 fair coins: six seeds giving one pattern is a 1 in 2^25 chance


def test_seed_sources_and_precedence(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite.makeini(INI + "resilience_fault_seed = 4\n")
    run(suite).stdout.fnmatch_lines(
        ["resilience: --fault-seed=4 (ini option resilience_fault_seed *)"]
    )
    monkeypatch.setenv("PYTEST_FAULT_SEED", "3")  # the environment beats the ini file
    run(suite).stdout.fnmatch_lines(
        ["resilience: --fault-seed=3 (environment variable PYTEST_FAULT_SEED)"]
    )
    run(suite, "--fault-seed", "5").stdout.fnmatch_lines(
        ["resilience: --fault-seed=5 (--fault-seed)"]
    )


SEED = re.compile(r"resilience: --fault-seed=(\d+) \((.*)\)")


def _seed_of(result: pytest.RunResult) -> tuple[str, str]:
    found = SEED.search(result.stdout.str())
    assert found is not None
    return found.group(1), found.group(2)


def test_default_seed_is_random_and_last_reuses_it(suite: pytest.Pytester) -> None:
    seed, source = _seed_of(run(suite, "--inject-faults", "py:target:answer=1*none"))
    assert source == "random"
    assert _seed_of(run(suite, "--fault-seed", "last")) == (seed, "the last run's")


def test_last_is_the_seed_of_the_last_run_that_injected_a_fault(suite: pytest.Pytester) -> None:
    run(suite, "--inject-faults", "py:target:answer=1*none", "--fault-seed", "41")
    run(suite, "--collect-only", "--fault-seed", "42")  # collects, injects nothing
    run(suite, "--fault-seed", "43")  # no faults asked for
    run(suite, "--inject-faults", "py:target:unused=1*none", "--fault-seed", "44")  # unreached
    assert _seed_of(run(suite, "--fault-seed", "last")) == ("41", "the last run's")


# ----------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("how", "where"),
    [
        ("cli", "--inject-faults: malformed fault spec: *"),
        ("ini", "ini option resilience_inject_faults (*tox.ini): malformed fault spec: *"),
        ("env", "environment variable PYTEST_INJECT_FAULTS: malformed fault spec: *"),
        ("marker", "@pytest.mark.faults on test_suite.py::test_pattern (test_suite.py:4): *"),
    ],
)
def test_a_malformed_spec_is_a_usage_error_naming_its_source(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, how: str, where: str
) -> None:
    bad = "py:target:answer=2*nope"
    args: list[str] = []
    if how == "cli":
        args = ["--inject-faults", bad]
    elif how == "ini":
        suite.makeini(INI + f"resilience_inject_faults = {bad}\n")
    elif how == "env":
        monkeypatch.setenv("PYTEST_INJECT_FAULTS", bad)
    else:
        suite.makepyfile(
            test_suite=SUITE.replace(
                "def test_pattern", f"import pytest\n@pytest.mark.faults({bad!r})\ndef test_pattern"
            )
        )
    result = run(suite, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: {where}", f"  {bad}", "  " + " " * bad.index("nope") + "^"]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(
    ("args", "env", "ini", "message"),
    [
        (
            ["--fault-seed", "abc"],
            {},
            "",
            "ERROR: --fault-seed: the fault seed must be an integer or 'last', not 'abc'",
        ),
        (
            [],
            {"PYTEST_FAULT_SEED": "1.5"},
            "",
            "ERROR: environment variable PYTEST_FAULT_SEED: the fault seed must be*",
        ),
        (
            [],
            {},
            "resilience_fault_seed = x\n",
            "ERROR: ini option resilience_fault_seed (*): the fault seed must be*",
        ),
        (
            ["--fault-seed", "last", "-p", "no:cacheprovider"],
            {},
            "",
            "ERROR: --fault-seed: 'last' reuses the seed kept in the pytest cache*",
        ),
        (
            [],
            {"PYTEST_LEAK_CHECK": "maybe"},
            "",
            "ERROR: environment variable PYTEST_LEAK_CHECK: expected true or false, not 'maybe'",
        ),
        (
            [],
            {},
            "resilience_leak_check = sometimes\n",
            "ERROR: ini option resilience_leak_check (*): expected true or false*",
        ),
        (
            [],
            {"PYTEST_VIRTUAL_TIME": "soon"},
            "",
            "ERROR: environment variable PYTEST_VIRTUAL_TIME: expected true or false, not 'soon'",
        ),
        (
            ["--inject-faults", "missing.toml"],
            {},
            "",
            "ERROR: --inject-faults: cannot read scenario *missing.toml*",
        ),
        (
            ["--replay-journal", "missing.jsonl"],
            {},
            "",
            "ERROR: --replay-journal: cannot replay: *missing.jsonl*",
        ),
    ],
)
def test_bad_values_are_usage_errors_naming_their_source(  # noqa: PLR0917 - parametrized: one argument a column
    suite: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    ini: str,
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    suite.makeini(INI + ini)
    result = run(suite, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_a_spec_error_inside_a_scenario_file_names_the_file(suite: pytest.Pytester) -> None:
    suite.makefile(".toml", bad='version = 1\n[faults]\nspec = "llama.generat=none"\n')
    result = run(suite, "--inject-faults", "bad.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --inject-faults: *bad.toml:3: faults.spec: *did you mean 'llama.generate'?"]
    )


# ----------------------------------------------------------------------- markers


def test_all_markers_pass_strict_markers(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_marked="""
        import pytest

        import target

        @pytest.mark.faults("py:target:answer=none")
        def test_a():
            assert target.answer() is None

        @pytest.mark.no_faults
        def test_b():
            pass

        @pytest.mark.virtual_time(wall=False, sleeps=False)
        def test_c(clock):
            pass

        @pytest.mark.no_leak_check
        def test_d():
            pass
        """
    )
    run(suite, "--strict-markers", "test_marked.py").assert_outcomes(passed=4)


def test_class_and_function_markers_merge_closest_wins(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        other="def hello():\n    return 'hi'\n",
        test_marked="""
        import pytest, target, other

        @pytest.mark.faults("py:target:answer=none;py:other:hello=none")
        class TestBoth:
            @pytest.mark.faults("py:target:answer=off")
            def test_closest(self):
                assert target.answer() == "ok"
                assert other.hello() is None
        """,
    )
    run(suite, "test_marked.py").assert_outcomes(passed=1)


# ----------------------------------------------------------------------- journals


def test_fault_journal_writes_one_file_per_test_and_replay_repeats_it(
    suite: pytest.Pytester, tmp_path: Path
) -> None:
    suite.makepyfile(
        test_suite=SUITE + "\n\nimport pytest\n\n@pytest.mark.parametrize('x', ['a/b', 'c d'])\n"
        "def test_param(x):\n    target.answer()\n"
    )
    folder = tmp_path / "journals"
    first = run(
        suite, "--inject-faults", SEEDED, "--fault-seed", "21", "--fault-journal", str(folder)
    )
    first.assert_outcomes(passed=3)
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 3
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+\.jsonl", name) for name in files)
    pattern = [f for f in files if f.startswith("test_suite.py_test_pattern")]
    assert pattern
    replayed = run(
        suite,
        "test_suite.py::test_pattern",
        "--replay-journal",
        str(folder / pattern[0]),
        "--fault-seed",
        "999",
    )
    assert patterns(replayed) == patterns(first)


def _saved_journal(suite: pytest.Pytester, tmp_path: Path) -> Path:
    """The journal of test_pattern under a fault on its 2nd and 4th calls."""
    folder = tmp_path / "saved"
    run(suite, "--inject-faults", "py:target:answer=@2none->@4none", "--fault-journal", str(folder))
    [saved] = folder.iterdir()
    return saved


def test_replay_precedence_no_faults_marker_and_inject_faults(
    suite: pytest.Pytester, tmp_path: Path
) -> None:
    saved = _saved_journal(suite, tmp_path)
    suite.makepyfile(
        test_suite=SUITE
        + """
import pytest

@pytest.mark.no_faults
def test_quiet():
    got = [target.answer() for _ in range(5)]
    print("PATTERN", "".join("N" if g is None else "." for g in got))

@pytest.mark.faults("py:target:answer=@1none")
def test_marked():
    got = [target.answer() for _ in range(5)]
    print("PATTERN", "".join("N" if g is None else "." for g in got))
"""
    )
    # --inject-faults beside the replay is replaced by it, and the header says so. The
    # journal is given as --replay-journal=FILE: pytest looks for its rootdir and ini file
    # before it knows the plugin's options, so a separate FILE outside the suite would be
    # taken for a test path, and the run would miss the suite's ini file.
    result = run(suite, f"--replay-journal={saved}", "--inject-faults", "py:target:answer=none")
    result.stdout.fnmatch_lines(
        ["resilience: replaying the faults of *(it replaces --inject-faults)"]
    )
    # in file order: the replayed journal; no_faults: nothing; the marker's site wins
    assert patterns(result) == [".N.N.", ".....", "N...."]


def test_fault_journal_from_ini_and_env(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    suite.makeini(INI + f"resilience_fault_journal = {tmp_path / 'ini'}\n")
    run(suite, "--inject-faults", "py:target:answer=none")
    assert len(list((tmp_path / "ini").iterdir())) == 1
    monkeypatch.setenv("PYTEST_FAULT_JOURNAL", str(tmp_path / "env"))  # beats the ini file
    run(suite, "--inject-faults", "py:target:answer=none")
    assert len(list((tmp_path / "env").iterdir())) == 1


# ----------------------------------------------------------------------- leak check


# Every source of a true/false switch, lowest precedence first: ini < env < command line.
# "{}" stands for the switch's name in its flags.
SWITCH_SOURCES = pytest.mark.parametrize(
    ("args", "env", "ini", "on"),
    [
        ([], None, None, False),
        (["--{}"], None, None, True),
        ([], "1", None, True),
        ([], None, "true", True),
        (["--no-{}"], "1", "true", False),
        ([], "yes", "false", True),  # the environment beats the ini file
        ([], "no", "true", False),
    ],
)


def run_switch(  # noqa: PLR0917 - one argument a column of SWITCH_SOURCES
    suite: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    args: list[str],
    env: str | None,
    ini: str | None,
) -> pytest.RunResult:
    """Run the suite with switch ``name`` (say ``leak-check``) given by these sources."""
    key = name.replace("-", "_")
    if env is not None:
        monkeypatch.setenv(f"PYTEST_{key.upper()}", env)
    if ini is not None:
        suite.makeini(INI + f"resilience_{key} = {ini}\n")
    return run(suite, *(arg.format(name) for arg in args))


@SWITCH_SOURCES
def test_leak_check_switch_sources(  # noqa: PLR0917 - parametrized: one argument a column
    suite: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: str | None,
    ini: str | None,
    on: bool,
) -> None:
    result = run_switch(suite, monkeypatch, "leak-check", args, env, ini)
    result.assert_outcomes(passed=1)
    assert ("resilience: leak check on" in result.stdout.str()) is on


LEAKY = """
import os
import pytest

kept = []

def test_leaks_a_pipe():
    kept.extend(os.pipe())

@pytest.mark.no_leak_check
def test_leaks_on_purpose():
    kept.extend(os.pipe())

def test_clean():
    pass

@pytest.fixture(scope="session", autouse=True)
def _close_at_the_end():
    yield
    for fd in kept:
        os.close(fd)
"""


def test_leak_check_fails_the_leaking_test_with_what_leaked_real_time(
    suite: pytest.Pytester,
) -> None:
    suite.makepyfile(test_leaky=LEAKY)
    result = run(suite, "--leak-check", "test_leaky.py")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_leaks_a_pipe*", "*2 things leaked:", "*- fd: * -> pipe:*"]
    )
    result.stdout.fnmatch_lines(["leaks found*2"])


# ----------------------------------------------------------------------- virtual time


@SWITCH_SOURCES
def test_virtual_time_switch_sources(  # noqa: PLR0917 - parametrized: one argument a column
    suite: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: str | None,
    ini: str | None,
    on: bool,
) -> None:
    suite.makepyfile(
        test_suite="""
        def test_clock(request):
            print("CLOCK", "clock" in request.fixturenames)
        """
    )
    result = run_switch(suite, monkeypatch, "virtual-time", args, env, ini)
    result.assert_outcomes(passed=1)
    assert ("resilience: virtual time on" in result.stdout.str()) is on
    result.stdout.fnmatch_lines([f"*CLOCK {on}*"])


def test_virtual_time_makes_an_unchanged_suites_waits_instant(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_suite="""
        import threading
        import time
        import pytest
        import tenacity.nap
        import target

        def test_an_injected_ten_minutes(request):
            started = time.perf_counter()
            assert target.answer() == "ok"
            assert time.perf_counter() - started < 30  # 10 real minutes would not pass
            assert request.getfixturevalue("clock").now() == 600.0

        def test_a_library_sleep(request, monkeypatch):
            # tenacity's own sleep goes through the test's clock: the clock moves by what it
            # slept, and time.sleep, which any real sleep of it goes through, is never called
            clock = request.getfixturevalue("clock")
            real_sleep, here, slept = time.sleep, threading.get_ident(), []

            def sleep(seconds):
                if threading.get_ident() == here:
                    slept.append(seconds)  # a real sleep: noted, not waited for
                else:
                    real_sleep(seconds)

            monkeypatch.setattr(time, "sleep", sleep)
            before = clock.now()
            tenacity.nap.sleep(30)
            assert slept == []
            assert clock.now() == before + 30

        @pytest.mark.real_time
        def test_kept_in_real_time(request):
            assert "clock" not in request.fixturenames
            assert tenacity.nap.time is time
        """
    )
    result = run(suite, "--virtual-time", "--inject-faults", "py:target:answer=latency(10m)")
    result.assert_outcomes(passed=3)


def test_the_closer_of_virtual_time_and_real_time_wins(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_suite="""
        import pytest

        pytestmark = pytest.mark.virtual_time

        def test_from_the_module(request):
            assert "clock" in request.fixturenames

        @pytest.mark.real_time
        def test_real_beats_the_module(request):
            assert "clock" not in request.fixturenames

        @pytest.mark.real_time
        class TestReal:
            def test_from_the_class(self, request):
                assert "clock" not in request.fixturenames

            @pytest.mark.virtual_time
            def test_virtual_beats_the_class(self, request):
                assert "clock" in request.fixturenames
        """
    )
    run(suite).assert_outcomes(passed=4)
    run(suite, "--virtual-time").assert_outcomes(passed=4)


def test_each_hypothesis_example_meets_the_faults_afresh(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_given="""
        import pytest
        from hypothesis import given, settings, strategies as st

        import target

        @pytest.mark.faults("py:target:answer=1*none")
        @settings(max_examples=20, database=None)
        @given(st.integers())
        def test_first_call_of_each_example(n):
            assert target.answer() is None
            assert target.answer() == "ok"
        """
    )
    result = run(suite, "test_given.py")
    result.assert_outcomes(passed=1)
    # the count goes on across examples: 20 examples, 20 faults
    result.stdout.fnmatch_lines(["*py:target:answer none * 20*"])


def test_the_journal_bound_is_an_ini_option_and_its_warning_names_it(
    suite: pytest.Pytester,
) -> None:
    suite.makeini(INI + "resilience_journal_maxlen = 3\n")
    suite.makepyfile(
        test_full="""
        import pytest
        from pytest_resilience.core.journal import JournalFull

        def test_full(journal, faults):
            assert journal.maxlen == 3
            faults("py:target:answer=none")
            import target
            with pytest.warns(JournalFull, match="resilience_journal_maxlen"):
                for _ in range(4):
                    target.answer()
        """
    )
    run(suite, "test_full.py").assert_outcomes(passed=1)
    suite.makeini(INI + "resilience_journal_maxlen = lots\n")
    bad = run(suite, "test_full.py")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["ERROR: ini option resilience_journal_maxlen (*): expected a whole*"])


def test_the_fault_seed_seeds_the_jitter_of_a_retry_too(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_jitter="""
        from pytest_resilience import Backoff, Retry

        def flaky(calls=[]):
            calls.append(1)
            if len(calls) % 4:
                raise ConnectionError("down")
            return "ok"

        def test_waits(clock):
            retry = Retry(on=ConnectionError, attempts=4, clock=clock, name="ask",
                          backoff=Backoff(base=1.0, jitter="full"))
            assert retry.call(flaky) == "ok"
            print("WAITED", repr(clock.now()))
        """
    )

    def waited(*args: str) -> str:
        result = run(suite, "test_jitter.py", "-s", *args)
        result.assert_outcomes(passed=1)
        found = re.search(r"WAITED (\S+)", result.stdout.str())
        assert found is not None
        return found.group(1)

    assert waited("--fault-seed", "5") == waited("--fault-seed", "5")
    assert len({waited("--fault-seed", str(seed)) for seed in range(5)}) > 1


def test_a_journal_folder_that_cannot_be_written_is_a_usage_error(suite: pytest.Pytester) -> None:
    (suite.path / "a_file").write_text("not a folder")
    result = run(suite, "--inject-faults", "py:target:answer=none", "--fault-journal", "a_file/j")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --fault-journal: cannot write journals to *a_file/j: *"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
