"""Scenario files whose target is an app's own function (``[target] callable``): sync and
async, through the runner API and as pytest items; what counts as a failed call; a failed
expectation says what was expected. Needs no model: the targets are in
``tests/unit/scenario_targets.py``."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest

from faults.scenario import ScenarioOp, ScenarioStep, format_failure, format_report, load, run
from pytest_resilience.clock import VirtualClock
from tests.unit import scenario_targets as targets

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from faults.scenario import Outcome

M = "tests.unit.scenario_targets"


@pytest.fixture(autouse=True)
def _fresh_record() -> Iterator[None]:
    targets.SEEN.clear()
    yield
    targets.SEEN.clear()


@pytest.fixture
def scenario(tmp_path: Path) -> Callable[..., Outcome]:
    """Write a scenario file and run it: the outcome."""

    def make(text: str, name: str = "callable.toml") -> Outcome:
        path = tmp_path / name
        path.write_text(text)
        return run(load(path))

    return make


SYNC = f"""\
version = 1
title = "the model drops two connections; answer() retries"
seed = 3

[target]
callable = "{M}:answer"

[faults]
spec = "py:{M}:complete=2*raise(ConnectionError)"

[steady_state]
op = "call"
prompt = "Hello"

[[steps]]
op = "call"
args = ["Tell me a story"]
repeat = 3

[expect]
success_rate = 1.0
retries = 2
max_attempts = 3
faults_injected = 2
leaks = "none"
"""


def test_a_sync_callable_holds_with_its_own_retry_on_the_scenarios_clock(
    scenario: Callable[..., Outcome],
) -> None:
    outcome = scenario(SYNC)
    assert outcome.passed, format_failure(outcome)
    assert {c.key for c in outcome.checks} == set(outcome.scenario.expect)
    assert outcome.stats.ops == {"call": [3, 0]}  # the probe is not counted
    assert outcome.stats.elapsed == 3.0  # answer()'s backoff, 1 + 2 virtual seconds
    prompts = [seen[1] for seen in targets.SEEN]
    assert prompts == ["Hello", "Tell me a story", "Tell me a story", "Tell me a story", "Hello"]
    # it was given the scenario's clock and journal: its retries are in the journal
    clocks, journals = {id(s[2]) for s in targets.SEEN}, {id(s[3]) for s in targets.SEEN}
    assert isinstance(targets.SEEN[0][2], VirtualClock)
    assert (len(clocks), journals) == (1, {id(outcome.journal)})
    steps = [e.detail for e in outcome.journal.events(ScenarioStep)]
    assert steps == ["answer('Hello')", "answer('Tell me a story') x3", "answer('Hello')"]
    report = format_report(outcome)
    assert "3/3 calls answered" in report
    assert f"injected: py:{M}:complete raise(ConnectionError) at calls 1, 2" in report
    assert "reaction: 2 retries" in report


ASYNC = f"""\
version = 1
title = "aanswer() loses its first call; the scenario's retry covers it"
target = "{M}:aanswer"

[faults]
spec = "py:{M}:aanswer=1*raise(ConnectionError)"

[resilience.retry]
attempts = 2
base = 0.5
jitter = "none"

[[steps]]
op = "call"
prompt = "a cat"
kwargs = {{ times = 2 }}
repeat = 2

[expect]
success_rate = 1.0
retries = 1
faults_injected = 1
leaks = "none"
"""


def test_an_async_callable_runs_on_the_virtual_clock(scenario: Callable[..., Outcome]) -> None:
    outcome = scenario(ASYNC)
    assert outcome.passed, format_failure(outcome)
    assert outcome.stats.ops == {"call": [2, 0]}
    # the faulted call never ran the body; the others slept 30 virtual seconds each
    assert [s[:3] for s in targets.SEEN] == [("aanswer", "a cat", 2)] * 2
    assert outcome.stats.elapsed == 0.5 + 30 + 30
    assert all(isinstance(s[3], VirtualClock) for s in targets.SEEN)


def test_a_failed_expectation_on_an_async_callable_names_what_was_expected(
    scenario: Callable[..., Outcome],
) -> None:
    text = ASYNC.replace('[resilience.retry]\nattempts = 2\nbase = 0.5\njitter = "none"\n', "")
    outcome = scenario(text, "no_retry.toml")
    assert not outcome.passed
    assert outcome.error is None  # a failed call, not a bug
    assert outcome.failures == ["expect.success_rate = 1.0: got 0.5", "expect.retries = 1: got 0"]
    report = format_failure(outcome)
    assert "  - expect.success_rate = 1.0: got 0.5" in report
    assert "  - expect.retries = 1: got 0" in report
    assert (
        "scenario.op [scenario] op='call' outcome='failed' "
        f"detail='ConnectionError: fault injected at py:{M}:aanswer'"
    ) in report
    assert report.rstrip().endswith("no_retry.toml --fault-seed 0")


def test_callable_scenarios_are_pytest_items_that_fail_readably(
    pytester: pytest.Pytester,
) -> None:
    shutil.copy(targets.__file__, pytester.path / "chatapp.py")
    sync = SYNC.replace(M, "chatapp")
    (pytester.path / "holds.toml").write_text(sync)
    unprotected = sync.replace("py:chatapp:complete=2*", "py:chatapp:answer=1*")
    (pytester.path / "unprotected.toml").write_text(unprotected)
    result = pytester.runpytest_subprocess("holds.toml", "unprotected.toml", "-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "expect.success_rate = 1.0: got 0.6667" in out
    assert "expect.retries = 2: got 0" in out
    assert "expect.faults_injected = 2: got 1" in out
    assert "replay: pytest unprotected.toml --fault-seed" in out


@pytest.mark.parametrize(
    ("function", "ok", "detail", "elapsed"),
    [
        ("nothing", False, "answered None", 0.0),
        ("down", False, "ModelDown: no model to answer 'a b c'", 0.0),
        ("words", True, "", 0.0),
        ("awords", True, "", 3.0),
    ],
)
def test_what_a_call_answers(
    scenario: Callable[..., Outcome], function: str, ok: bool, detail: str, elapsed: float
) -> None:
    outcome = scenario(
        f"""\
version = 1
title = "{function}"
[target]
callable = "{M}:{function}"
errors = ["{M}.ModelDown"]
[[steps]]
op = "call"
prompt = "a b c"
"""
    )
    assert outcome.error is None
    assert outcome.passed  # no expectations
    assert outcome.stats.ops == {"call": [1, 0] if ok else [0, 1]}
    [op] = outcome.journal.events(ScenarioOp)
    assert (op.outcome, op.detail) == ("ok" if ok else "failed", detail)
    assert outcome.stats.elapsed == elapsed


def test_an_exception_that_is_not_a_failure_ends_the_steps(
    scenario: Callable[..., Outcome],
) -> None:
    outcome = scenario(
        f"""\
version = 1
title = "a bug"
target = "{M}:buggy"
[[steps]]
op = "call"
prompt = "x"
[[steps]]
op = "call"
prompt = "y"
[expect]
leaks = "none"
"""
    )
    assert not outcome.passed
    assert outcome.error == "step 1 (call, line 5) raised KeyError: 'x'"
    assert outcome.failures[0] == outcome.error
    assert targets.SEEN == [("buggy", "x")]  # the second step never ran
    assert {c.key: c.held for c in outcome.checks} == {"leaks": True}


def test_a_breaker_around_the_callable_is_journaled_under_its_name(
    scenario: Callable[..., Outcome],
) -> None:
    outcome = scenario(
        f"""\
version = 1
title = "the first call fails; the breaker opens, waits, and closes again"
[target]
callable = "{M}:answer"
[faults]
spec = "py:{M}:answer=1*raise(ConnectionError)"
[resilience.breaker]
failures = 1
recovery = 10.0
[[steps]]
op = "call"
prompt = "one"
repeat = 2
[[steps]]
op = "advance"
seconds = 10
[[steps]]
op = "call"
prompt = "two"
[expect]
success_rate = 0.3333
rejected = 1
transitions.answer = ["closed->open", "open->half_open", "half_open->closed"]
faults_injected = 1
"""
    )
    assert outcome.passed, format_failure(outcome)
    assert [s[1] for s in targets.SEEN] == ["two"]


def test_each_call_gets_its_own_copy_of_the_arguments(scenario: Callable[..., Outcome]) -> None:
    outcome = scenario(
        f"""\
version = 1
title = "appends"
target = "{M}:appends"
[[steps]]
op = "call"
args = [["a"]]
kwargs = {{ extra = "b" }}
repeat = 2
"""
    )
    assert outcome.stats.ops == {"call": [2, 0]}
    assert targets.SEEN == [("appends", ["a", "b"])] * 2


def test_daemon_faults_reach_the_apps_own_server(scenario: Callable[..., Outcome]) -> None:
    pytest.importorskip("httpx")
    outcome = scenario(
        f"""\
version = 1
title = "the app's server answers 503 twice"
[target]
callable = "{M}:status_of"
daemon_url = "http://127.0.0.1:9"
errors = ["httpx.HTTPStatusError"]
[faults]
spec = "daemon.request=2*status(503)"
[[steps]]
op = "call"
args = ["http://127.0.0.1:9/v1/models"]
repeat = 2
[expect]
success_rate = 0.0
faults_injected = 2
leaks = "none"
"""
    )
    assert outcome.passed, format_failure(outcome)
    details = [e.detail for e in outcome.journal.events(ScenarioOp)]
    assert all(d.startswith("HTTPStatusError: Server error '503") for d in details), details
