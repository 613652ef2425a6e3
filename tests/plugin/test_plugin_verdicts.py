"""Verdicts in the plugin: small apps run under ``--inject-faults`` break (or keep) each
verdict with no assertion written for it, and the report shows it: a VerdictBroken warning
(a failure under ``-W error``), the failure section with the faults next to the reactions,
the summary's counts, the JUnit figures; ``assert_resilient`` fails with the evidence; the
``resilience_verdicts`` option and the ``verdicts`` marker (pytester, in process)."""

from __future__ import annotations

import importlib
import importlib.util
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

import pytest

import faults.verdicts  # noqa: F401 - loaded once here, so that pytester's runs do not reload it
import pytest_resilience.plugin.fixtures  # noqa: F401 - ditto
from pytest_resilience.core.leaks import use_registry

if TYPE_CHECKING:
    from pathlib import Path

pytest_plugins = ["pytester"]

# pytester unloads what its runs import; a library imported afresh would no longer be the
# one the observer hooked, nor know its own exceptions. Load them here, once.
for _name in ("tenacity", "httpcore", "httpx"):
    if importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name)

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\nasyncio_mode = strict\n"
WARN = ("-W", "default::faults.VerdictBroken")  # shown, whatever the outer filters
ERROR = ("-W", "error::faults.VerdictBroken")

LOOPS = """
import tenacity

from pytest_resilience.core.app import fell_back

on_refusal = tenacity.retry_if_exception_type(ConnectionError)


def _request(prompt):
    return f"answer to {prompt}"


@tenacity.retry(retry=on_refusal, stop=tenacity.stop_after_attempt(5), reraise=True)
def hot(prompt):  # no wait: a hot loop
    return _request(prompt)


@tenacity.retry(
    retry=on_refusal, stop=tenacity.stop_after_attempt(30), wait=tenacity.wait_fixed(2),
    reraise=True,
)
def stubborn(prompt):  # waits, but gives up only after 29 retries
    return _request(prompt)


@tenacity.retry(
    retry=on_refusal, stop=tenacity.stop_after_attempt(4),
    wait=tenacity.wait_exponential(multiplier=1), reraise=True,
)
def polite(prompt):
    return _request(prompt)


def answer(ask, prompt):
    try:
        return ask(prompt)
    except ConnectionError:
        fell_back("canned")
        return "canned"
"""
LOOP_TESTS = """
import loop


def test_hot():
    assert loop.answer(loop.hot, "hi") == "canned"


def test_stubborn():
    assert loop.answer(loop.stubborn, "hi") == "canned"


def test_polite():
    assert loop.answer(loop.polite, "hi") == "canned"
"""
ALWAYS = "py:loop:_request=raise(ConnectionError)"


@pytest.fixture
def ptr(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(loop=LOOPS)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(
        "-p", "no:hypothesispytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args
    )


def properties(xml: Path) -> dict[str, dict[str, str]]:
    return {
        str(case.get("name")): {
            str(p.get("name")): str(p.get("value")) for p in case.iter("property")
        }
        for case in ET.parse(xml).getroot().iter("testcase")
    }


HOT = (
    "backoff: loop.hot (tenacity) retried 4 times in a row without backing off (waited 0 s, "
    "0 s, 0 s, 0 s) after py:loop:_request=raise(ConnectionError) (calls 1-4)"
)
STUBBORN = (
    "bounded: loop.stubborn (tenacity) retried one call 29 times under "
    "py:loop:_request=raise(ConnectionError), which fires on every call: nothing stopped it "
    "within 10 retries"
)


def test_a_hot_loop_and_an_unbounded_retry_are_warned_of_and_counted(
    ptr: pytest.Pytester, tmp_path: Path
) -> None:
    pytest.importorskip("tenacity")
    ptr.makepyfile(test_loop=LOOP_TESTS)
    xml = tmp_path / "junit.xml"
    result = run(ptr, *WARN, "--inject-faults", ALWAYS, "--virtual-time", f"--junitxml={xml}")
    result.assert_outcomes(passed=3, warnings=2)
    result.stdout.fnmatch_lines(
        [
            "*= warnings summary =*",
            f"*VerdictBroken: {HOT}",
            f"*VerdictBroken: {STUBBORN}",
            "*= resilience =*",
            "faults injected * 39",
            "retries scheduled * 36",
            "  by tenacity * 36",
            "fallbacks used * canned x3",
            "time * 65 s of retry delays, 65 s of virtual time, in * of wall time",
            "verdicts broken * 2 (backoff x1, bounded x1) in 3 tests judged",
        ]
    )
    assert "VerdictBroken: backoff: loop.polite" not in result.stdout.str()
    props = properties(xml)
    assert (props["test_hot"]["resilience.verdicts"], props["test_hot"]["resilience.judged"]) == (
        "1",
        "1",
    )
    assert props["test_polite"]["resilience.verdicts"] == "0"
    assert float(props["test_polite"]["resilience.delays"]) == 7.0  # 1 s, 2 s, 4 s
    assert float(props["test_polite"]["resilience.virtual"]) == 7.0
    assert float(props["test_polite"]["resilience.wall"]) > 0.0


def test_under_w_error_the_test_fails_and_its_report_shows_faults_reactions_verdicts(
    ptr: pytest.Pytester,
) -> None:
    pytest.importorskip("tenacity")
    ptr.makepyfile(test_loop=LOOP_TESTS)
    result = run(
        ptr, *ERROR, "--inject-faults", ALWAYS, "--virtual-time", "--fault-seed", "3", "-k", "hot"
    )
    result.assert_outcomes(failed=1, deselected=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_hot _*",
            f"VerdictBroken: {HOT}",
            "*- resilience: faults and reactions -*",
            "5 faults (py:loop:_request raise x5) -> 4 retries (tenacity x4), "
            "1 fallback (canned x1)",
            "0 s of retry delays, 0 s of virtual time, in * of wall time",
            "*- resilience: verdicts broken -*",
            f"  backoff (backed off instead of retrying in a hot loop): {HOT[9:]}",
            "*- resilience: journal -*",
            "*app.retry [[]loop.hot[]] library='tenacity' attempt=4 delay=0.0*",
            "*- resilience: reproduce with -*",
            "*= resilience =*",
            "verdicts broken * 1 (backoff x1) in 1 test judged",
        ]
    )


def test_fail_mode_fails_the_test_and_off_judges_nothing(ptr: pytest.Pytester) -> None:
    pytest.importorskip("tenacity")
    ptr.makepyfile(test_loop=LOOP_TESTS)
    ptr.makeini(INI + "resilience_verdicts = fail\n")
    failing = run(ptr, *WARN, "--inject-faults", ALWAYS, "--virtual-time")
    failing.assert_outcomes(failed=2, passed=1)
    failing.stdout.fnmatch_lines(
        [
            "the app broke 1 verdict under faults (resilience_verdicts = fail):",
            f"  backoff (backed off instead of retrying in a hot loop): {HOT[9:]}",
        ]
    )
    ptr.makeini(INI + "resilience_verdicts = off\n")
    off = run(ptr, *ERROR, "--inject-faults", ALWAYS, "--virtual-time")
    off.assert_outcomes(passed=3)
    off.stdout.fnmatch_lines(["verdicts broken * not judged (resilience_verdicts = off)"])
    ptr.makeini(INI + "resilience_verdicts = loud\n")
    bad = run(ptr)
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*resilience_verdicts *: expected warn, fail, off, not 'loud'"])


def test_the_verdicts_marker_ignores_verdicts_or_changes_the_mode(ptr: pytest.Pytester) -> None:
    pytest.importorskip("tenacity")
    ptr.makepyfile(
        test_loop=LOOP_TESTS.replace(
            "def test_hot", '@pytest.mark.verdicts(ignore=["backoff"])\ndef test_hot'
        )
        .replace("def test_stubborn", '@pytest.mark.verdicts("off")\ndef test_stubborn')
        .replace("import loop", "import pytest\n\nimport loop")
    )
    result = run(ptr, *ERROR, "--inject-faults", ALWAYS, "--virtual-time")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["verdicts broken * 0 in 2 tests judged"])
    ptr.makepyfile(
        test_bad="import pytest\n\n@pytest.mark.verdicts(ignore=['hot-loop'])\n"
        "def test_bad():\n    pass\n"
    )
    bad = run(ptr, "test_bad.py")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*@pytest.mark.verdicts on *: unknown verdict 'hot-loop'; known:*"])


def test_assert_resilient_fails_with_the_evidence_and_passes_a_polite_app(
    ptr: pytest.Pytester,
) -> None:
    pytest.importorskip("tenacity")
    ptr.makepyfile(
        test_assert="""
        import pytest

        from pytest_resilience.plugin.assertions import assert_resilient

        import loop


        @pytest.mark.virtual_time
        @pytest.mark.parametrize("ask", [loop.hot, loop.stubborn, loop.polite])
        def test_resilient(ask, faults, journal):
            faults("py:loop:_request=raise(ConnectionError)")
            assert loop.answer(ask, "hi") == "canned"
            assert_resilient(journal)
        """
    )
    result = run(ptr, *ERROR)
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_resilient?hot? _*",
            "E * AssertionError: the app broke 1 verdict under faults:",
            f"E *   backoff (backed off instead of retrying in a hot loop): {HOT[9:]}",
            "E * timeline:",
            "E * app.retry [[]loop.hot[]] library='tenacity' attempt=1 delay=0.0*",
            "*- resilience: verdicts broken -*",
            "*_ test_resilient?stubborn? _*",
            f"E *   bounded (stopped after a bounded number of attempts): {STUBBORN[9:]}",
        ]
    )


STORY = """
from pytest_resilience.core.app import fell_back


def tokens(prompt):
    yield from ["Once", " upon", " a", " time", "<end>"]


def careless(prompt):
    return "".join(t for t in tokens(prompt) if t != "<end>")


def careful(prompt):
    parts = list(tokens(prompt))
    if parts[-1:] != ["<end>"]:
        fell_back("canned", after="the story stopped short")
        return "canned"
    return "".join(parts[:-1])
"""
STORY_TESTS = """
import pytest

import story


def test_careless():
    assert story.careless("x")


def test_careful():
    assert story.careful("x")


@pytest.mark.faults("py:story:tokens=truncate(after=2)")
def test_asks_for_the_cut_itself():
    assert story.careless("x") == "Once upon"
"""


def test_a_cut_stream_taken_as_complete_is_warned_of(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(story=STORY, test_story=STORY_TESTS)
    result = run(ptr, *WARN, "--inject-faults", "py:story:tokens=truncate(after=2)")
    result.assert_outcomes(passed=3, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "test_story.py::test_careless",
            "*VerdictBroken: cut-stream: py:story:tokens=truncate(after=2) (call 1) cut the "
            "stream, and the test passed with no retry, fallback, stall or error recorded "
            "after it: the cut answer was taken as complete",
            "verdicts broken * 1 (cut-stream x1) in 3 tests judged",
        ]
    )


HTTP_APP = """
import httpx
import tenacity

from pytest_resilience.core.app import fell_back

URL = "http://127.0.0.1:9/v1/completions"
on_status = tenacity.retry_if_exception_type(httpx.HTTPStatusError)


def _post(prompt):
    answer = httpx.post(URL, json={"prompt": prompt}, timeout=5)
    answer.raise_for_status()
    return answer.json()["choices"][0]["text"]


def _as_the_server_says(state):
    return float(state.outcome.exception().response.headers.get("retry-after", 1))


@tenacity.retry(
    retry=on_status, stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(1),
    reraise=True,
)
def impatient(prompt):
    return _post(prompt)


@tenacity.retry(
    retry=on_status, stop=tenacity.stop_after_attempt(3), wait=_as_the_server_says,
    reraise=True,
)
def patient(prompt):
    return _post(prompt)


def answer(ask, prompt):
    try:
        return ask(prompt)
    except httpx.HTTPStatusError as exc:
        fell_back("canned", after=exc)
        return "canned"
"""


def test_a_retry_sooner_than_the_servers_retry_after_is_warned_of(ptr: pytest.Pytester) -> None:
    pytest.importorskip("tenacity")
    pytest.importorskip("httpx")
    ptr.makepyfile(
        chat=HTTP_APP,
        test_chat="""
        import chat

        def test_impatient():
            assert chat.answer(chat.impatient, "hi") == "canned"

        def test_patient():
            assert chat.answer(chat.patient, "hi") == "canned"
        """,
    )
    result = run(
        ptr,
        *WARN,
        "--inject-faults",
        "daemon.request=status(503,retry_after=20s)",
        "--daemon-url",
        "http://127.0.0.1:9",
        "--virtual-time",
    )
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "test_chat.py::test_impatient",
            "*VerdictBroken: retry-after: chat.impatient (tenacity) retried 2 times sooner "
            "than Retry-After: waited 1 s, 1 s after daemon.request=status(503,retry_after=20s)"
            " (calls 1-2), which asked for 20 s",
            "time * 42 s of retry delays, 42 s of virtual time, in * of wall time",
            "verdicts broken * 1 (retry-after x1) in 2 tests judged",
        ]
    )


STREAMS = """
from pytest_resilience.core.leaks import track

KEPT = []


def lookup(word):
    return word


def tokens():
    yield from ["Once", " upon", " a", " time"]


def first_word():
    lookup("once")
    stream = track(tokens(), "stream")
    KEPT.append(stream)  # read once, never closed
    return next(stream)
"""


def test_a_stream_left_open_is_judged_after_teardown_once(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        streams=STREAMS,
        test_streams="""
        import streams

        def test_first_word():
            assert streams.first_word() == "Once"
        """,
    )
    spec = ("--inject-faults", "py:streams:lookup=none")
    # the runs register into a registry of their own: what they leave open on purpose is
    # not this test's leak
    with use_registry():
        warned = run(ptr, *WARN, *spec)
    warned.assert_outcomes(passed=1, warnings=1)
    warned.stdout.fnmatch_lines(
        [
            "*VerdictBroken: closed: stream: <generator object tokens at *> (created at "
            "*streams.py:16 in first_word) was still open when the test ended, after "
            "py:streams:lookup=none (call 1)",
            "verdicts broken * 1 (closed x1) in 1 test judged",
        ]
    )
    # with the leak check, the leak check fails the test for it; the verdict is counted once
    with use_registry():
        checked = run(ptr, *ERROR, *spec, "--leak-check")
    checked.assert_outcomes(passed=1, errors=1)
    checked.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_first_word _*",
            "1 thing leaked:",
            "  - stream: <generator object tokens at *",
            "verdicts broken * 1 (closed x1) in 1 test judged",
        ]
    )
    assert "VerdictBroken" not in checked.stdout.str()


def test_a_run_where_no_fault_fired_judges_nothing(ptr: pytest.Pytester) -> None:
    pytest.importorskip("tenacity")
    ptr.makepyfile(test_loop=LOOP_TESTS.replace('== "canned"', ""))
    quiet = run(ptr, *ERROR, "--inject-faults", "py:loop:_request=@99raise(ConnectionError)")
    quiet.assert_outcomes(passed=3)
    quiet.stdout.fnmatch_lines(
        [
            "faults injected * 0",
            "retries scheduled * 0",
            "verdicts broken * none judged: no fault fired",
        ]
    )
    assert "  by tenacity" not in quiet.stdout.str()
    # -q keeps the summary; -qq drops it, and pytest's warnings summary still lists them
    brief = run(ptr, *WARN, "--inject-faults", ALWAYS, "--virtual-time", "-q")
    brief.stdout.fnmatch_lines(["verdicts broken * 2 (backoff x1, bounded x1) in 3 tests judged"])
    silent = run(ptr, *WARN, "--inject-faults", ALWAYS, "--virtual-time", "-qq")
    assert "verdicts broken" not in silent.stdout.str()
    silent.stdout.fnmatch_lines(
        ["*VerdictBroken: backoff: loop.hot*", "*VerdictBroken: bounded: loop.stubborn*"]
    )
