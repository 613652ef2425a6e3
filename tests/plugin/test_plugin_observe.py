"""The plugin records the app's own retries and fallbacks in each test's journal, with no
code in the test: tenacity's retries count in assert_retried and in the summary, a marked
fallback in assert_fell_back (pytester, in process)."""

from __future__ import annotations

import importlib
import importlib.util

import pytest

import faults  # noqa: F401 - loaded once here, so that pytester's runs do not reload it
import pytest_resilience.plugin.fixtures  # noqa: F401 - ditto

pytest_plugins = ["pytester"]

for _name in ("tenacity", "stamina", "backoff"):
    if importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name)

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\nasyncio_mode = strict\n"

APP = """
import tenacity

from pytest_resilience.core.app import fell_back


def _complete(prompt):
    return "an answer"


@tenacity.retry(
    retry=tenacity.retry_if_exception_type(ConnectionError),
    stop=tenacity.stop_after_attempt(3),
    wait=tenacity.wait_fixed(30),
)
def ask(prompt):
    return _complete(prompt)


def answer(prompt):
    try:
        return ask(prompt)
    except tenacity.RetryError as exc:
        fell_back("canned", after=exc)
        return "a canned answer"
"""


@pytest.fixture
def ptr(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(app=APP)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider", *args)


def test_the_apps_retries_and_fallback_are_in_the_journal_without_setup(
    ptr: pytest.Pytester,
) -> None:
    pytest.importorskip("tenacity")
    ptr.makepyfile(
        test_app="""
        import pytest
        from pytest_resilience.plugin.assertions import assert_fell_back, assert_retried

        import app


        @pytest.mark.virtual_time
        @pytest.mark.faults("py:app:_complete=2*raise(ConnectionError)")
        def test_retried_twice_then_answered(journal, clock):
            assert app.answer("Hi") == "an answer"
            assert_retried(journal, times=2, name="ask", library="tenacity",
                           error=ConnectionError)
            assert clock.now() == 60.0  # tenacity's two 30 s waits, in virtual time


        @pytest.mark.virtual_time
        @pytest.mark.faults("py:app:_complete=raise(ConnectionError)")
        def test_gave_up_and_fell_back(journal):
            assert app.answer("Hi") == "a canned answer"
            assert_retried(journal, times=2, library="tenacity")
            assert_fell_back(journal, to="canned", times=1)
        """
    )
    result = run(ptr, "-W", "error")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["retries scheduled * 4", "fallbacks used * canned x1"])


def test_only_tests_with_faults_or_a_journal_are_watched(ptr: pytest.Pytester) -> None:
    pytest.importorskip("tenacity")
    ptr.makepyfile(
        test_plain="""
        import tenacity

        ITER = vars(tenacity.BaseRetrying)["iter"]  # at collection: nothing is watched

        def test_plain():  # nothing to read a journal with: tenacity is left alone
            assert vars(tenacity.BaseRetrying)["iter"] is ITER

        def test_with_a_journal(journal):
            assert vars(tenacity.BaseRetrying)["iter"] is not ITER

        def test_after():
            assert vars(tenacity.BaseRetrying)["iter"] is ITER  # restored
        """
    )
    run(ptr, "-W", "error", "-p", "no:randomly").assert_outcomes(passed=3)
