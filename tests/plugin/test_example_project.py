"""The example downstream project (docs/example) passes its own tests, and each of those
tests fails, the way a user would need it to, when the resilience code it guards is removed.

The project runs in a fresh pytest process, as its developers would run it: the plugin is
found through its entry point, with the project's own configuration (leak check on).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[2] / "docs" / "example"
SERVICE = Path("tales") / "service.py"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    shutil.copytree(
        EXAMPLE,
        pytester.path,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"),
    )
    return pytester


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    # pytest-asyncio (ours, not the example's) warns about its unset loop scope, and the
    # example turns warnings into errors
    return project.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:asyncio", *args, timeout=120
    )


def remove(project: pytest.Pytester, code: str, instead: str) -> None:
    """Replace ``code`` in the service by ``instead``; the code must be there, once."""
    path = project.path / SERVICE
    text = path.read_text(encoding="utf-8")
    assert text.count(code) == 1, f"{code!r} is no longer in {SERVICE}: update this test"
    path.write_text(text.replace(code, instead), encoding="utf-8")


def test_the_example_project_passes_its_own_tests(project: pytest.Pytester) -> None:
    result = run(project, "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["resilience: leak check on"])


def test_the_example_holds_under_run_wide_faults_its_retry_absorbs(
    project: pytest.Pytester,
) -> None:
    # Only test_tells_a_story meets the run-wide faults: the others replace them with their
    # own (a faults marker at llama.generate, no_faults), or never call llama.generate. Its
    # Retry makes 3 attempts, so at most 2 missing answers are absorbed whatever the draws:
    # half the calls, at most twice; with this seed, both draws fire.
    result = run(project, "--inject-faults", "llama.generate=50%2*none", "--fault-seed", "1")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["run-wide sites * reached in / faults fired", "  llama.generate * 1 of 4 tests, 2 faults"]
    )

    # the same run with every answer missing: the retry gives up, the story is the resting
    # message, and the one test that meets the faults says so
    result = run(project, "--inject-faults", "llama.generate=100%none", "--fault-seed", "1")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_tells_a_story _*",
            "E   *AssertionError: assert 'The storyteller is resting;*'"
            " != 'The storyteller is resting;*'",
            "3 faults (llama.generate none x3) -> 2 retries (pytest_resilience x2),"
            " 1 fallback (resting x1)",
            "  llama.generate * 1 of 4 tests, 3 faults",
            "FAILED tests/test_tales.py::test_tells_a_story - *",
        ]
    )


@pytest.mark.parametrize(
    ("code", "instead", "failing", "why"),
    [
        pytest.param(
            "attempts=3,",
            "attempts=1,",
            "test_empty_answers_are_retried",
            "E   *AssertionError: assert 'The storyteller is resting*",
            id="a missing retry",
        ),
        pytest.param(
            "trip=ConsecutiveFailures(3),",
            "trip=ConsecutiveFailures(1_000_000),",
            "test_a_failing_model_opens_the_breaker_and_recovers",
            "E   *AssertionError: assert [[]'The storyte*",
            id="a breaker that never opens",
        ),
        pytest.param(
            "idle=5.0,",
            "idle=None,",
            "test_a_stalled_stream_keeps_its_partial_story",
            "E   *HangDetected: the injected stall at llama.stream, which no timeout*",
            id="a stream without an idle timeout",
        ),
    ],
)
def test_the_tests_catch_resilience_code_removed(
    project: pytest.Pytester, code: str, instead: str, failing: str, why: str
) -> None:
    remove(project, code, instead)
    result = run(project)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [f"*_ {failing} _*", why, f"FAILED tests/test_tales.py::{failing}*"]
    )
    # the failure shows what the faults did, and how to run it again
    result.stdout.fnmatch_lines(["*resilience: journal*", "*fault.injected*"])
