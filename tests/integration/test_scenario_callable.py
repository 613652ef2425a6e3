"""Scenario files whose target is an app's own function (``[target] callable``): sync and
async, through the runner API and as pytest items; what counts as a failed call; a failed
expectation says what was expected. Needs no model: the targets are in
``tests/unit/scenario_targets.py``."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from typing import TYPE_CHECKING

import pytest

from faults.scenario import ScenarioOp, ScenarioStep, format_failure, format_report, load, run
from pytest_resilience.core.clock import VirtualClock
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


# ---------------------------------------------------------------- names, when it runs

LATE = f"""\
version = 1
title = "a retry on an error class of the app's, imported when the scenario runs"
[target]
callable = "{M}:down"
errors = ["late_errors.Unused"]
[resilience.retry]
attempts = 3
on = [
  "ConnectionError",
  "late_errors.ModelDown",
]
[[steps]]
op = "call"
prompt = "x"
"""


def test_exception_names_are_imported_when_the_scenario_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "late_errors.py").write_text(
        f"from {M} import ModelDown\n\n\nclass Unused(Exception):\n    pass\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, "late_errors", raising=False)
    path = tmp_path / "late.toml"
    path.write_text(LATE)
    loaded = load(path)
    assert "late_errors" not in sys.modules  # loading the file imported nothing of it
    outcome = run(loaded)
    assert "late_errors" in sys.modules
    assert outcome.error is None
    # down() raises ModelDown, which the retry now knows: three attempts, each failed
    assert [s[0] for s in targets.SEEN] == ["down"] * 3
    assert outcome.stats.ops == {"call": [0, 1]}


@pytest.mark.parametrize(
    ("module", "name", "line", "message"),
    [
        (
            "",
            "no_such_errors_module.Boom",
            10,
            "cannot import 'no_such_errors_module' for 'no_such_errors_module.Boom': "
            "No module named 'no_such_errors_module' (is it installed, or on pytest's "
            "pythonpath?)",
        ),
        (
            "class ModelDwn(Exception):\n    pass\n",
            "late_errors.ModelDown",
            10,
            "module 'late_errors' has no attribute 'ModelDown' "
            "(did you mean 'late_errors.ModelDwn'?)",
        ),
        (
            "ModelDown = 'not a class'\n",
            "late_errors.ModelDown",
            10,
            "'late_errors.ModelDown' is not an exception class: it is a string ('not a class')",
        ),
        (
            "raise RuntimeError('no config file')\n",
            "late_errors.ModelDown",
            10,
            "importing 'late_errors' raised RuntimeError: no config file",
        ),
    ],
    ids=["no module", "no class", "not a class", "module raises"],
)
def test_a_name_that_cannot_be_imported_fails_the_run_at_its_line_before_any_step(  # noqa: PLR0917
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    name: str,
    line: int,
    message: str,
) -> None:
    if module:
        (tmp_path / "late_errors.py").write_text(module)
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, "late_errors", raising=False)
    path = tmp_path / "late.toml"
    text = LATE.replace("late_errors.ModelDown", name).replace("late_errors.Unused", "OSError")
    path.write_text(text)
    outcome = run(load(path))
    assert not outcome.passed
    assert outcome.error == f"{path}:{line}: resilience.retry.on: {message}"
    assert outcome.failures == [outcome.error]
    assert targets.SEEN == []  # nothing ran
    assert outcome.stats.total == 0


# ---------------------------------------------------------------- a factory's backend

FACTORY = """\
version = 1
title = "a factory that does not build a backend"
[target]
factory = "not_backends:{name}"
model = "tiny"
[[steps]]
op = "{op}"
prompt = "Hello"
"""
NOT_BACKENDS = """\
CLOSED = []


class NoGenerate:
    name = "no-generate"

    def stream(self, prompt, params=None):
        yield "a"

    def close(self):
        CLOSED.append(self.name)


class Nameless:
    def generate(self, prompt, params=None):
        return "a"

    def close(self):
        CLOSED.append("nameless")


def text(context):
    return "a backend"


def nothing(context):
    return None


def no_generate(context):
    return NoGenerate()


def nameless(context):
    return Nameless()


def the_class(context):
    return NoGenerate
"""


@pytest.mark.parametrize(
    ("name", "op", "returned", "lacks", "closed"),
    [
        ("text", "generate", "a string ('a backend')", "name (a string), close(), generate()", []),
        ("nothing", "generate", "None", "name (a string), close(), generate()", []),
        ("no_generate", "generate", "a NoGenerate object", "generate()", ["no-generate"]),
        ("no_generate", "job", "a NoGenerate object", "generate()", ["no-generate"]),
        ("nameless", "stream", "a Nameless object", "name (a string), stream()", ["nameless"]),
        ("the_class", "generate", "a type object", "generate()", []),
    ],
)
def test_a_factory_that_returns_no_backend_fails_with_its_name(  # noqa: PLR0917
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    op: str,
    returned: str,
    lacks: str,
    closed: list[str],
) -> None:
    (tmp_path / "not_backends.py").write_text(NOT_BACKENDS)
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, "not_backends", raising=False)
    path = tmp_path / "factory.toml"
    text = FACTORY.format(name=name, op=op)
    if op == "job":
        text += "[resilience.checkpoint]\nparts = 2\n"
    path.write_text(text)
    outcome = run(load(path))
    assert not outcome.passed
    assert outcome.error == (
        f"{path}:4: target.factory: the factory not_backends:{name} returned {returned}, which "
        f"is not a backend: it lacks {lacks} (a Backend has a name, close(), and the "
        "generate(), stream() or embed() its steps call)"
    )
    assert outcome.stats.total == 0
    assert closed == sys.modules["not_backends"].CLOSED  # what it built was closed


def test_a_factory_backend_with_only_what_the_steps_need_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "not_backends.py").write_text(NOT_BACKENDS)
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, "not_backends", raising=False)
    path = tmp_path / "factory.toml"
    path.write_text(FACTORY.format(name="no_generate", op="stream"))
    outcome = run(load(path))
    assert outcome.error is None, outcome.error
    assert outcome.stats.ops == {"stream": [1, 0]}


# ---------------------------------------------------------------- what reaches a terminal


def test_reports_show_control_characters_escaped(scenario: Callable[..., Outcome]) -> None:
    outcome = scenario(
        f"""\
version = 1
title = "a breaker named with an escape"
[target]
callable = "{M}:answer"
[faults]
spec = "py:{M}:answer=1*raise(ConnectionError)"
[resilience.breaker]
failures = 1
[[steps]]
op = "call"
prompt = "one"
"""
    )
    # a Scenario made in code (not loaded) can hold anything: the reports still escape it
    evil = dataclasses.replace(outcome.scenario, title="red \x1b[31m title\x07")
    outcome.scenario = evil
    outcome.failures.append("a failure with \x1b[2J in it")
    for text in (format_report(outcome), format_failure(outcome)):
        assert "\x1b" not in text
        assert "\x07" not in text
        assert all(line.isprintable() for line in text.splitlines()), text
        assert "red \\x1b[31m title\\x07" in text
        assert "a failure with \\x1b[2J in it" in text
