"""Scenario files: what load() accepts, and the errors it gives (file, line, key, message)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from faults.scenario import (
    ScenarioError,
    key_lines,
    load,
    loads,
    main,
    replay_command,
    seed_override,
    spec_of,
)
from tests.corpus import make_scenarios

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.corpus.make_scenarios import Case

SHIPPED = sorted((Path(__file__).parents[2] / "scenarios").glob("*.toml"))

GOOD = """\
version = 1
title = "daemon dies mid-stream"
seed = 1234
clock = "virtual"

[target]
client = "resilient"
model = "tiny"

[faults]
spec = "daemon.stream=@2lost(after=3)"

[resilience.breaker]
failures = 3
recovery = 10.0

[[steps]]
op = "stream"
prompt = "Tell me a story"
repeat = 5

[[steps]]
op = "advance"
seconds = 10

[expect]
success_rate = 1.0
fallbacks = ["direct"]
transitions.daemon = ["closed->open", "open->half_open", "half_open->closed"]
max_attempts = 3
leaks = "none"
"""


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str], Path]:
    def make(text: str) -> Path:
        path = tmp_path / "x.toml"
        path.write_text(text)
        return path

    return make


def test_a_good_file_loads_with_every_field(write: Callable[[str], Path]) -> None:
    scenario = load(write(GOOD))
    assert scenario.title == "daemon dies mid-stream"
    assert (scenario.seed, scenario.clock, scenario.version) == (1234, "virtual", 1)
    assert (scenario.target.client, scenario.target.model) == ("resilient", "tiny")
    assert str(scenario.faults) == "daemon.stream=@2lost(after=3)"
    assert [(s.op, s.repeat, s.line) for s in scenario.steps] == [
        ("stream", 5, 18),
        ("advance", 1, 23),
    ]
    assert scenario.steps[1].seconds == 10.0
    assert scenario.expect["transitions"] == {
        "daemon": ["closed->open", "open->half_open", "half_open->closed"]
    }
    assert scenario.resilience["breaker"] == {"failures": 3, "recovery": 10.0}
    assert scenario.target.route == "hooks"
    wire = load(write(_edit('client = "resilient"', 'client = "resilient"\nroute = "wire"')))
    assert wire.target.route == "wire"


def _edit(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


# (what is wrong, the file's text, the line, the key, a piece of the message)
ERRORS = [
    (
        "an unknown route",
        _edit('client = "resilient"', 'client = "resilient"\nroute = "cable"'),
        8,
        "target.route",
        "expected one of",
    ),
    (
        "the wire route without a daemon of the scenario's",
        _edit('client = "resilient"', 'client = "llama"\nroute = "wire"'),
        8,
        "target.route",
        "needs client = 'daemon' or 'resilient'",
    ),
    (
        "misspelt expectation",
        _edit("success_rate = 1.0", "sucess_rate = 1.0"),
        27,
        "expect.sucess_rate",
        "unknown key (did you mean 'success_rate'?)",
    ),
    (
        "unknown top-level key",
        _edit("seed = 1234", "seed = 1234\nflavour = 2"),
        4,
        "flavour",
        "unknown key (expected one of: clock, expect,",
    ),
    (
        "misspelt table",
        _edit("[target]", "[targte]"),
        6,
        "targte",
        "did you mean 'target'?",
    ),
    (
        "misspelt key in the second step",
        _edit("seconds = 10", "secnds = 10"),
        24,
        "steps[2].secnds",
        "did you mean 'seconds'?",
    ),
    (
        "wrong type",
        _edit("repeat = 5", 'repeat = "five"'),
        20,
        "steps[1].repeat",
        "expected an integer from 1 to 10000, got a string ('five')",
    ),
    (
        "boolean is not an integer",
        _edit("seed = 1234", "seed = true"),
        3,
        "seed",
        "expected an integer from 0 to 2**64 - 1, got a boolean",
    ),
    (
        "rate out of range",
        _edit("success_rate = 1.0", "success_rate = 1.5"),
        27,
        "expect.success_rate",
        "expected a number from 0 to 1",
    ),
    (
        "bad choice with a suggestion",
        _edit('clock = "virtual"', 'clock = "virtul"'),
        4,
        "clock",
        "expected one of 'virtual', 'real', got 'virtul' (did you mean 'virtual'?)",
    ),
    (
        "unknown op",
        _edit('op = "advance"', 'op = "sleep"'),
        23,
        "steps[2].op",
        "expected one of 'generate'",
    ),
    (
        "dotted key with a wrong type",
        _edit('transitions.daemon = ["closed->open",', 'transitions.daemon = [1, "closed->open",'),
        29,
        "expect.transitions.daemon",
        "expected a list of strings",
    ),
    (
        "missing required key",
        _edit('title = "daemon dies mid-stream"\n', ""),
        1,
        "title",
        "required key missing in the file",
    ),
    (
        "missing op in a step",
        _edit('op = "advance"\n', ""),
        22,
        "steps[2].op",
        "required key missing in [steps[2]]",
    ),
    (
        "bad version",
        _edit("version = 1", "version = 2"),
        1,
        "version",
        "unknown version 2 (this reader knows 1)",
    ),
    (
        "bad fault spec",
        _edit('spec = "daemon.stream=@2lost(after=3)"', 'spec = "daemon.stream=@2lots(after=3)"'),
        11,
        "faults.spec",
        "bad fault spec: unknown fault kind 'lots'",
    ),
    (
        "unknown exception name",
        _edit("failures = 3", 'failures = 3\non = ["DaemonUnavaliable"]'),
        15,
        "resilience.breaker.on",
        "did you mean 'DaemonUnavailable'?",
    ),
    (
        "daemon op without a daemon",
        _edit('client = "resilient"', 'client = "llama"').replace(
            "daemon.stream=@2lost(after=3)", ""
        )
        + '[[steps]]\nop = "kill_daemon"\n',
        33,
        "steps[3].op",
        "kill_daemon needs a daemon target",
    ),
    (
        "daemon fault without a daemon",
        _edit('client = "resilient"', 'client = "llama"'),
        11,
        "faults.spec",
        "daemon sites need a daemon target",
    ),
    (
        "inline table in a step",
        _edit("repeat = 5", "repeat = 5\nresilience = { retry = { attemps = 2 } }"),
        21,
        "steps[1].resilience.retry.attemps",
        "did you mean 'attempts'?",
    ),
    (
        "stateful policy per step",
        _edit("repeat = 5", "repeat = 5\nresilience = { breaker = { failures = 2 } }"),
        21,
        "steps[1].resilience.breaker",
        "unknown key (expected one of: retry, stream)",
    ),
    (
        "a job killed after its last checkpoint",
        _edit(
            "recovery = 10.0",
            "recovery = 10.0\n\n[resilience.checkpoint]\nparts = 2\nkilled_after = 2",
        ),
        19,
        "resilience.checkpoint.killed_after",
        "killed_after must be less than parts (2)",
    ),
    (
        "a negative seed",
        _edit("seed = 1234", "seed = -1"),
        3,
        "seed",
        "expected an integer from 0 to 2**64 - 1, got an integer (-1)",
    ),
    (
        "a seed past 64 bits",
        _edit("seed = 1234", f"seed = {2**64}"),
        3,
        "seed",
        "expected an integer from 0 to 2**64 - 1",
    ),
    (
        "repeat over its cap",
        _edit("repeat = 5", "repeat = 10001"),
        20,
        "steps[1].repeat",
        "10001 is over the cap of 10000 repeats of a step (no scenario needs more",
    ),
    (
        "a huge repeat",
        _edit("repeat = 5", f"repeat = {10**30}"),
        20,
        "steps[1].repeat",
        "1000000000000000000000000000000 is over the cap of 10000",
    ),
    (
        "attempts over the cap, in a step's inline table",
        _edit("repeat = 5", "repeat = 5\nresilience = { retry = { attempts = 1000 } }"),
        21,
        "steps[1].resilience.retry.attempts",
        "1000 is over the cap of 100 attempts of one call",
    ),
    (
        "attempts over the cap, in a table",
        _edit("[resilience.breaker]", "[resilience.retry]\nattempts = 101\n\n[resilience.breaker]"),
        14,
        "resilience.retry.attempts",
        "101 is over the cap of 100 attempts of one call",
    ),
    (
        "a job's parts over the cap",
        _edit(
            "recovery = 10.0",
            "recovery = 10.0\n\n[resilience.checkpoint]\nparts = 5000",
        ),
        18,
        "resilience.checkpoint.parts",
        "5000 is over the cap of 1000 parts of a job",
    ),
    (
        "an ANSI escape in the title",
        _edit('title = "daemon dies mid-stream"', 'title = "daemon dies \\u001b[31mmid-stream"'),
        2,
        "title",
        "expected one line of printable text, got a string ('daemon dies \\x1b[31mmid-stream')",
    ),
    (
        "a title of two lines",
        _edit('title = "daemon dies mid-stream"', 'title = """daemon dies\nmid-stream"""'),
        2,
        "title",
        "expected one line of printable text",
    ),
    (
        "an empty title",
        _edit('title = "daemon dies mid-stream"', 'title = ""'),
        2,
        "title",
        "expected one line of printable text, got a string ('')",
    ),
    (
        "a dotted exception name with an empty part (it used to raise TypeError)",
        _edit("failures = 3", 'failures = 3\non = [".x.Err"]'),
        15,
        "resilience.breaker.on",
        "'.x.Err' is not an exception name: a dotted path (pkg.module.Name) has Python "
        "identifiers between its dots, and this one has an empty part",
    ),
    (
        "a keyword in a dotted exception name",
        _edit("failures = 3", 'failures = 3\non = ["myapp.class.Err"]'),
        15,
        "resilience.breaker.on",
        "'class' is not a Python identifier",
    ),
    (
        "a bad name in a multi-line array: the line of the element",
        _edit("failures = 3", 'failures = 3\non = [\n  "BackendError",\n  "x..Err",\n]'),
        17,
        "resilience.breaker.on",
        "'x..Err' is not an exception name",
    ),
    (
        "a one-line string holding triple quotes, then a typo",
        _edit('title = "daemon dies mid-stream"', 'title = \'daemon """ dies\'').replace(
            "success_rate = 1.0", "sucess_rate = 1.0"
        ),
        27,
        "expect.sucess_rate",
        "did you mean 'success_rate'?",
    ),
    (
        "a basic string holding escaped quotes, then a typo",
        _edit("[target]", '[target]\n"model" = "a \\"\\"\\" b"')
        .replace('model = "tiny"\n', "")
        .replace("recovery = 10.0", "recovry = 10.0"),
        15,
        "resilience.breaker.recovry",
        "did you mean 'recovery'?",
    ),
    (
        "a relative module path for a callable (it used to raise TypeError)",
        _edit('client = "resilient"', 'callable = ".app:answer"').replace('model = "tiny"\n', ""),
        7,
        "target.callable",
        "expected 'module:callable' (dotted Python identifiers on each side of the colon), "
        "got '.app:answer': it has an empty part",
    ),
    (
        "invalid TOML",
        _edit("repeat = 5", "repeat = = 5"),
        20,
        "steps[1].repeat",
        "invalid TOML: Invalid value (at line 20, column 10)",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [case[1:] for case in ERRORS],
    ids=[case[0] for case in ERRORS],
)
def test_errors_name_the_file_line_and_key(
    write: Callable[[str], Path], text: str, line: int, key: str, message: str
) -> None:
    path = write(text)
    with pytest.raises(ScenarioError) as raised:
        load(path)
    error = raised.value
    assert (error.line, error.key) == (line, key), str(error)
    assert message in error.message
    prefix = f"{path}:{line}: " + (f"{key}: " if key else "")
    assert str(error).startswith(prefix)
    assert isinstance(error, ValueError)


def test_the_message_reads_as_the_brief_shows(write: Callable[[str], Path]) -> None:
    path = write(_edit("success_rate = 1.0", "sucess_rate = 1.0"))
    with pytest.raises(ScenarioError) as raised:
        load(path)
    assert str(raised.value) == (
        f"{path}:27: expect.sucess_rate: unknown key (did you mean 'success_rate'?)"
    )


def test_a_bad_spec_shows_the_spec_error_with_its_caret(write: Callable[[str], Path]) -> None:
    with pytest.raises(ScenarioError) as raised:
        load(write(_edit("@2lost(after=3)", "@2lost(aftr=3)")))
    shown = str(raised.value).splitlines()
    assert shown[0].startswith(f"{raised.value.path}:11: faults.spec: bad fault spec:")
    assert "did you mean 'after'" in shown[0]
    assert shown[1].strip() == "daemon.stream=@2lost(aftr=3)"
    caret = shown[2].index("^") - shown[1].index("d")
    assert shown[1][shown[1].index("d") + caret :].startswith("aftr")


def test_an_unreadable_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read the scenario") as raised:
        load(tmp_path / "missing.toml")
    assert raised.value.line == 1


def test_key_lines_locates_tables_arrays_dotted_keys_and_skips_multiline_strings() -> None:
    source = """\
title = "t"   # a comment
[target]
"model" = 'tiny'
[[steps]]
op = "a"
note = \"\"\"
fake = 1
\"\"\"
[[steps]]
  op = "b"
[steps.resilience.retry]
attempts = 2
[expect]
transitions.daemon = [
  "closed->open",
]
"""
    lines = key_lines(source)
    assert lines[("title",)] == 1
    assert lines[("target",)] == 2
    assert lines[("target", "model")] == 3
    assert lines[("steps", 0)] == 4
    assert lines[("steps", 0, "op")] == 5
    assert ("steps", 0, "fake") not in lines
    assert lines[("steps", 1, "op")] == 10
    assert lines[("steps", 1, "resilience", "retry")] == 11
    assert lines[("steps", 1, "resilience", "retry", "attempts")] == 12
    assert lines[("expect", "transitions")] == 14
    assert lines[("expect", "transitions", "daemon")] == 14


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_scenario_loads_and_says_what_it_demonstrates(path: Path) -> None:
    scenario = load(path)
    assert scenario.title
    assert path.read_text().startswith("# Demonstrates: ")
    killed = "killed_after" in scenario.resilience.get("checkpoint", {})  # a real SIGKILL
    assert len(scenario.faults) >= 1 or killed
    assert scenario.expect.get("leaks") == "none"
    assert "faults_injected" in scenario.expect


def test_eight_failure_modes_are_shipped() -> None:
    assert len(SHIPPED) >= 8


def test_replay_command_names_the_file_and_the_seed(write: Callable[[str], Path]) -> None:
    scenario = load(write(GOOD))
    command = replay_command(scenario, 99)
    assert command.startswith("pytest ")
    assert command.endswith("x.toml --fault-seed 99")


# ============================================================== callable targets

M = "tests.unit.scenario_targets"
CALLABLE = f"""\
version = 1
title = "answer() meets lost connections"
seed = 7

[target]
callable = "{M}:answer"
errors = ["{M}.ModelDown"]

[faults]
spec = "py:{M}:complete=2*raise(ConnectionError)"

[resilience.retry]
attempts = 2

[steady_state]
op = "call"
prompt = "Hello"

[[steps]]
op = "call"
args = ["Tell me a story"]
repeat = 3

[[steps]]
op = "advance"
seconds = 5

[expect]
success_rate = 1.0
retries = 2
transitions.answer = ["closed->open"]
faults_injected = 2
"""


def _callable(old: str, new: str) -> str:
    assert old in CALLABLE, old
    return CALLABLE.replace(old, new, 1)


def test_a_callable_target_loads_with_its_arguments(write: Callable[[str], Path]) -> None:
    scenario = load(write(CALLABLE))
    target = scenario.target
    assert (target.client, target.callable, target.label) == ("callable", f"{M}:answer", "answer")
    assert target.errors == (f"{M}.ModelDown",)
    assert (target.factory, target.daemon_url, target.has_daemon) == (None, None, False)
    assert [(s.op, s.args, dict(s.kwargs), s.repeat, s.line) for s in scenario.steps] == [
        ("call", ("Tell me a story",), {}, 3, 20),
        ("advance", (), {}, 1, 25),
    ]
    assert scenario.steady_state is not None
    assert scenario.steady_state.args == ("Hello",)  # the prompt is the first argument


def test_the_short_form_and_keyword_arguments(write: Callable[[str], Path]) -> None:
    text = f"""\
version = 1
title = "async"
target = "{M}:aanswer"

[[steps]]
op = "call"
prompt = "a cat"
kwargs = {{ times = 2 }}

[[steps]]
op = "call"
kwargs = {{ prompt = "a dog" }}
"""
    scenario = load(write(text))
    assert (scenario.target.client, scenario.target.callable) == ("callable", f"{M}:aanswer")
    assert [(s.args, dict(s.kwargs)) for s in scenario.steps] == [
        (("a cat",), {"times": 2}),
        ((), {"prompt": "a dog"}),
    ]


def test_a_factory_and_daemon_url_load(write: Callable[[str], Path]) -> None:
    text = f"""\
version = 1
title = "factory"
[target]
factory = "{M}:answer"
daemon_url = "http://localhost:11434"
[faults]
spec = "daemon.request=1*refuse"
[[steps]]
op = "generate"
"""
    scenario = load(write(text))
    assert (scenario.target.client, scenario.target.factory) == ("factory", f"{M}:answer")
    assert scenario.target.daemon_url == "http://localhost:11434"


CALLABLE_ERRORS = [
    (
        "a dotted path without a colon",
        _callable(f'"{M}:answer"', f'"{M}.answer"'),
        6,
        "target.callable",
        f"expected 'module:callable' (e.g. 'myapp.chat:answer'), got '{M}.answer' "
        f"(did you mean '{M}:answer'?)",
    ),
    (
        "a module that does not exist",
        _callable(f'"{M}:answer"', '"tests.unit.no_such_module:answer"'),
        6,
        "target.callable",
        "cannot import 'tests.unit.no_such_module': No module named 'tests.unit.no_such_module'",
    ),
    (
        "a misspelt function",
        _callable(f'"{M}:answer"', f'"{M}:answr"'),
        6,
        "target.callable",
        f"module '{M}' has no attribute 'answr' (did you mean 'answer'?)",
    ),
    (
        "a missing attribute of an attribute",
        _callable(f'"{M}:answer"', f'"{M}:ModelDown.nope"'),
        6,
        "target.callable",
        f"{M}:ModelDown has no attribute 'nope'",
    ),
    (
        "not callable",
        _callable(f'"{M}:answer"', f'"{M}:NOT_CALLABLE"'),
        6,
        "target.callable",
        f"'{M}:NOT_CALLABLE' is not callable: it is a string ('a constant')",
    ),
    (
        "an argument of the wrong type",
        _callable('args = ["Tell me a story"]', "args = [42]"),
        21,
        "steps[1].args",
        f"{M}:answer: parameter 'prompt' takes str, got an integer (42)",
    ),
    (
        "a prompt for a parameter of another type",
        _callable('args = ["Tell me a story"]', 'prompt = "3"').replace(
            f"{M}:answer", f"{M}:appends", 1
        ),
        21,
        "steps[1].prompt",
        f"{M}:appends: parameter 'items' takes list[str], got a string ('3')",
    ),
    (
        "a boolean for an integer",
        _callable('args = ["Tell me a story"]', 'args = ["a", true]').replace(
            f"{M}:answer", f"{M}:aanswer", 1
        ),
        21,
        "steps[1].args",
        f"{M}:aanswer: parameter 'times' takes int, got a boolean",
    ),
    (
        "too many arguments",
        _callable('args = ["Tell me a story"]', 'args = ["a", "b"]'),
        21,
        "steps[1].args",
        f"cannot call {M}:answer('a', 'b'): too many positional arguments; it takes (prompt: str,",
    ),
    (
        "an unknown keyword argument",
        _callable('args = ["Tell me a story"]', 'args = ["a"]\nkwargs = { tone = "warm" }'),
        22,
        "steps[1].kwargs",
        f"cannot call {M}:answer('a', tone='warm'): got an unexpected keyword argument 'tone'",
    ),
    (
        "a missing argument",
        _callable('args = ["Tell me a story"]\n', ""),
        20,
        "steps[1].op",
        "missing a required argument: 'prompt'",
    ),
    (
        "args that are not an array",
        _callable('args = ["Tell me a story"]', 'args = "Tell me a story"'),
        21,
        "steps[1].args",
        "expected an array, got a string ('Tell me a story')",
    ),
    (
        "kwargs that are not a table",
        _callable('args = ["Tell me a story"]', 'args = ["a"]\nkwargs = 3'),
        22,
        "steps[1].kwargs",
        "expected a table of keyword arguments, got an integer (3)",
    ),
    (
        "args and prompt",
        _callable('args = ["Tell me a story"]', 'args = ["a"]\nprompt = "b"'),
        22,
        "steps[1].prompt",
        "give args or prompt, not both (prompt is the first argument)",
    ),
    (
        "max_tokens on a call",
        _callable("repeat = 3", "repeat = 3\nmax_tokens = 8"),
        23,
        "steps[1].max_tokens",
        "max_tokens is for model ops, not call",
    ),
    (
        "a model op against a callable",
        _callable('op = "call"\nargs = ["Tell me a story"]', 'op = "generate"'),
        20,
        "steps[1].op",
        "generate needs a model target; the steps of a callable target use op = 'call'",
    ),
    (
        "arguments on another op",
        _callable("seconds = 5", "seconds = 5\nargs = [1]"),
        27,
        "steps[2].args",
        "args is for op = 'call' (a callable target), not 'advance'",
    ),
    (
        "a call without a callable target",
        _callable(f'callable = "{M}:answer"', 'client = "llama"'),
        20,
        "steps[1].op",
        "call needs a callable target ([target] callable = 'module:function')",
    ),
    (
        "a client and a callable",
        _callable(f'callable = "{M}:answer"', f'client = "llama"\ncallable = "{M}:answer"'),
        7,
        "target.callable",
        "give one of client, factory or callable, not client and callable",
    ),
    (
        "a model for a callable",
        _callable(f'callable = "{M}:answer"', f'callable = "{M}:answer"\nmodel = "tiny"'),
        7,
        "target.model",
        "model is for a model target (client or factory), not a callable",
    ),
    (
        "the key a user may guess",
        _callable(f'callable = "{M}:answer"', f'call = "{M}:answer"'),
        6,
        "target.call",
        "unknown key (did you mean 'callable'?)",
    ),
    (
        "the issue's key inside [target]",
        _callable(f'callable = "{M}:answer"', f'target = "{M}:answer"'),
        6,
        "target.target",
        "unknown key (did you mean 'callable'?)",
    ),
    (
        "an unknown error name",
        _callable(f'errors = ["{M}.ModelDown"]', 'errors = ["ConectionError"]'),
        7,
        "target.errors",
        "did you mean 'ConnectionError'?",
    ),
    (
        "daemon faults without a server",
        _callable(f'"py:{M}:complete=2*raise(ConnectionError)"', '"daemon.request=1*refuse"'),
        10,
        "faults.spec",
        "daemon sites need a daemon target, not 'callable'; name your own server with "
        "[target] daemon_url",
    ),
    (
        "daemon.process for a server of the app's",
        _callable(f'"py:{M}:complete=2*raise(ConnectionError)"', '"daemon.process=1*lost"').replace(
            "errors = [", 'daemon_url = "http://127.0.0.1:9"\nerrors = ['
        ),
        11,
        "faults.spec",
        "daemon.process acts on a daemon the scenario starts",
    ),
    (
        "a daemon_url that is not a URL",
        _callable("errors = [", 'daemon_url = "localhost:11434"\nerrors = ['),
        7,
        "target.daemon_url",
        "not an http(s) URL with a host: 'localhost:11434'",
    ),
    (
        "a daemon_url for a client target",
        GOOD.replace('model = "tiny"', 'model = "tiny"\ndaemon_url = "http://127.0.0.1:9"'),
        9,
        "target.daemon_url",
        "daemon_url names your own server, for a callable or factory target",
    ),
    (
        "a model-op table around a callable",
        _callable("[resilience.retry]", "[resilience.fallback]\nmodels = []\n[resilience.retry]"),
        12,
        "resilience.fallback",
        "[resilience.fallback] acts on model ops; around a callable target the scenario can put "
        "[resilience.retry] and [resilience.breaker]",
    ),
    (
        "a stream guard on a call step",
        _callable("repeat = 3", "repeat = 3\nresilience = { stream = { idle = 1 } }"),
        23,
        "steps[1].resilience.stream",
        "a callable target takes a per-step retry only",
    ),
    (
        "a stream expectation for a callable",
        _callable("faults_injected = 2", "faults_injected = 2\npartial_kept = true"),
        33,
        "expect.partial_kept",
        "partial_kept is about the scenario's own streams: not for a callable",
    ),
    (
        "a bad factory",
        _callable(f'callable = "{M}:answer"', f'factory = "{M}:nope"').replace(
            'op = "call"', 'op = "generate"'
        ),
        6,
        "target.factory",
        f"module '{M}' has no attribute 'nope'",
    ),
    (
        "the short form with a bad path",
        _callable(f'[target]\ncallable = "{M}:answer"\nerrors = ["{M}.ModelDown"]', "").replace(
            "seed = 7", f'seed = 7\ntarget = "{M}:nope"'
        ),
        4,
        "target",
        f"module '{M}' has no attribute 'nope'",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [case[1:] for case in CALLABLE_ERRORS],
    ids=[case[0] for case in CALLABLE_ERRORS],
)
def test_callable_errors_name_the_file_line_and_key(
    write: Callable[[str], Path], text: str, line: int, key: str, message: str
) -> None:
    path = write(text)
    with pytest.raises(ScenarioError) as raised:
        load(path)
    error = raised.value
    assert (error.line, error.key) == (line, key), str(error)
    assert message in error.message, error.message
    assert str(error).startswith(f"{path}:{line}: {key}: ")


def test_a_module_that_raises_on_import_is_a_scenario_error(
    write: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "exploding_app.py").write_text("raise RuntimeError('no config file')\n")
    monkeypatch.syspath_prepend(tmp_path)
    path = write(_callable(f'"{M}:answer"', '"exploding_app:answer"'))
    with pytest.raises(ScenarioError) as raised:
        load(path)
    assert str(raised.value) == (
        f"{path}:6: target.callable: importing 'exploding_app' raised RuntimeError: no config file"
    )


# ============================================================ what a file may hold


def test_a_key_with_an_escape_is_shown_escaped(write: Callable[[str], Path]) -> None:
    path = write(GOOD.replace("[expect]", '[expect]\n"evil\\u001b[2J" = 1'))
    with pytest.raises(ScenarioError) as raised:
        load(path)
    assert raised.value.key == "expect.evil\x1b[2J"  # what the file holds, as data
    shown = str(raised.value)
    assert shown.startswith(f"{path}:27: expect.evil\\x1b[2J: unknown key")
    assert shown.isprintable()


@pytest.mark.parametrize(
    ("bad", "line", "key", "column"),
    [
        (b'title = "daemon dies \xe9"', 2, "title", 22),
        (b'prompt = "Tell me \xff a story"', 19, "steps[1].prompt", 19),
        (b"# a comment in caf\xe9", 1, "", 19),
    ],
)
def test_a_file_that_is_not_utf8_names_the_line_the_key_and_the_byte(
    tmp_path: Path, bad: bytes, line: int, key: str, column: int
) -> None:
    lines = GOOD.encode().split(b"\n")
    if bad.startswith(b"#"):
        lines.insert(0, bad)
    else:
        lines[line - 1] = bad
    path = tmp_path / "x.toml"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ScenarioError) as raised:
        load(path)
    error = raised.value
    assert (error.line, error.key) == (line, key), str(error)
    assert f"the file is not UTF-8: byte 0x{bad[column - 1]:02x} at column {column}" in str(error)


def test_a_utf16_file_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_bytes(GOOD.encode("utf-16"))
    with pytest.raises(ScenarioError, match="it looks like UTF-16 or UTF-32: save it as UTF-8"):
        load(path)


def test_a_byte_order_mark_is_skipped(write: Callable[[str], Path]) -> None:
    assert load(write("\ufeff" + GOOD)).title == "daemon dies mid-stream"


@pytest.mark.parametrize(
    ("value", "line", "key"),
    [
        ("[" * 5_000 + "]" * 5_000, 21, "steps[1].args"),  # tomllib recursed out: a crash
        ("[" * 33 + "]" * 33, 21, "steps[1].args"),
        ("{ a = " * 40 + "1" + " }" * 40, 21, "steps[1].args"),
        ("[" * 3_000, 21, "steps[1].args"),  # unclosed as well
    ],
    ids=["5000 arrays", "33 arrays", "40 inline tables", "3000 unclosed"],
)
def test_nesting_past_the_limit_is_refused_at_its_line(
    write: Callable[[str], Path], value: str, line: int, key: str
) -> None:
    with pytest.raises(ScenarioError) as raised:
        load(write(_edit("repeat = 5", f"repeat = 5\nargs = {value}")))
    assert (raised.value.line, raised.value.key) == (line, key)
    assert raised.value.message == "nested too deep: more than 32 levels of tables and arrays"


def test_nesting_by_dotted_keys_is_refused_too(write: Callable[[str], Path]) -> None:
    deep = "kwargs." + ".".join(["a"] * 3_000)
    with pytest.raises(ScenarioError) as raised:
        load(write(_edit("repeat = 5", f"repeat = 5\n{deep} = 1")))
    assert (raised.value.line, raised.value.key) == (21, "steps[1].kwargs")
    assert "nested too deep" in raised.value.message


def test_nesting_up_to_the_limit_is_fine(write: Callable[[str], Path]) -> None:
    # the steps, a step, then kwargs and 29 inline tables in it: 32 levels under the document
    value = "{ a = " * 30 + "1" + " }" * 30
    text = 'version = 1\ntitle = "deep"\n[[steps]]\nop = "generate"\nmax_tokens = 4\n'
    with pytest.raises(ScenarioError, match="kwargs is for op = 'call'"):
        load(write(text + f"kwargs = {value}\n"))  # past the depth check, refused later
    with pytest.raises(ScenarioError, match="nested too deep"):
        load(write(text + f"kwargs = {{ b = {value} }}\n"))


def test_an_integer_too_long_to_read_is_a_scenario_error(write: Callable[[str], Path]) -> None:
    with pytest.raises(ScenarioError) as raised:
        load(write(_edit("repeat = 5", "repeat = " + "9" * 5_000)))
    assert (raised.value.line, raised.value.key) == (20, "steps[1].repeat")
    assert raised.value.message == "invalid TOML: an integer of more than 4300 digits"


def test_load_does_not_import_the_modules_of_exception_names(
    write: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "errors_not_imported_at_load.py").write_text("class Boom(Exception):\n    pass\n")
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, "errors_not_imported_at_load", raising=False)
    text = _callable(
        f'errors = ["{M}.ModelDown"]', 'errors = ["errors_not_imported_at_load.Boom"]'
    ).replace(
        "attempts = 2", 'attempts = 2\non = ["ConnectionError", "errors_not_imported_at_load.Nope"]'
    )
    scenario = load(write(text))  # a missing class in a module: found only when it runs
    assert "errors_not_imported_at_load" not in sys.modules
    assert scenario.target.errors == ("errors_not_imported_at_load.Boom",)
    assert scenario.resilience["retry"]["on"] == [
        "ConnectionError",
        "errors_not_imported_at_load.Nope",
    ]


def test_key_lines_skip_strings_that_hold_triple_quotes() -> None:
    source = """\
a = 'he said \"\"\" once'
b = "and \\"\\"\\" escaped"
c = '''one line'''
d = \"\"\"two\"\"\"\"
e = 1
"""
    lines = key_lines(source)
    assert [lines[(k,)] for k in "abcde"] == [1, 2, 3, 4, 5]


def test_key_lines_locate_array_elements_and_inline_tables() -> None:
    source = """\
on = [
  "BackendError",  # a comment ] with a bracket
  "x",
]
[[steps]]
resilience = { retry = { attempts = 2,
  on = ["a"] } }
args = [[1, 2], { k = [3,
  4] }]
[[steps]]
\"quoted.key\" = 1
"""
    lines = key_lines(source.replace("\n", "\r\n"))
    assert lines[("on", 0)] == 2
    assert lines[("on", 1)] == 3
    assert lines[("steps", 0, "resilience", "retry", "attempts")] == 6
    assert lines[("steps", 0, "resilience", "retry", "on", 0)] == 7
    assert lines[("steps", 0, "args", 1, "k", 1)] == 9
    assert lines[("steps", 1, "quoted.key")] == 11


# ============================================================ the seed a run uses


@pytest.mark.parametrize(
    ("given", "seed"),
    [(None, None), ("last", None), ("7", 7), (" 42 ", 42), (7, 7), ("nonsense", None)],
)
def test_only_a_number_given_on_the_command_line_replaces_a_files_seed(
    given: object, seed: int | None
) -> None:
    assert seed_override(given) == seed


# ============================================================ the command line


def test_the_cli_runs_nothing_when_a_file_cannot_be_loaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "a_good.toml"
    good.write_text(GOOD)
    bad = tmp_path / "b_bad.toml"
    bad.write_text(_edit("seed = 1234", "seed = -5"))
    assert main([str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # the good one did not run (it would start a daemon)
    assert err.splitlines() == [
        f"ERROR {bad}:3: seed: expected an integer from 0 to 2**64 - 1, got an integer (-5)",
        "1 of 2 scenario files could not be loaded: nothing was run",
    ]


def test_the_cli_refuses_a_negative_seed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["scenarios", "--seed=-1"])
    assert exited.value.code == 2
    assert "a seed is from 0 to 2**64 - 1, not -1" in capsys.readouterr().err


# ============================================================ malformed, by hypothesis

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def malformed_scenarios() -> st.SearchStrategy[Case]:
    """A valid scenario with one thing wrong (the corpus' mutations, hypothesis choosing
    every random decision): the bytes, the line and key to name, words to say."""
    return st.builds(
        make_scenarios.malformed,
        st.randoms(use_true_random=False),
        st.sampled_from(sorted(make_scenarios.MUTATIONS)),
    )


def _bases() -> st.SearchStrategy[bytes]:
    return st.randoms(use_true_random=False).map(
        lambda rng: make_scenarios.encode(make_scenarios.base(rng), rng)
    )


def _loads(data: bytes) -> ScenarioError | None:
    """``loads(data)``: None if it loads, else its ScenarioError (anything else escapes)."""
    try:
        loads(data, "drawn.toml")
    except ScenarioError as exc:
        shown = str(exc)
        error = exc
    else:
        return None
    shown = str(error)
    assert shown.startswith(f"drawn.toml:{error.line}: "), shown
    assert 1 <= error.line <= data.count(b"\n") + 1, shown
    assert all(line.isprintable() for line in shown.splitlines()), shown
    return error


@SETTINGS
@given(malformed_scenarios())
def test_a_malformed_scenario_names_its_line_and_key(case: Case) -> None:
    error = _loads(case.data)
    assert error is not None, case.name
    assert str(error).startswith(
        f"drawn.toml:{case.line}: " + (f"{case.key}: " if case.key else "")
    ), (case.name, str(error))
    assert case.says in error.message, (case.name, error.message)


@SETTINGS
@given(_bases(), st.data())
def test_any_splice_into_a_scenario_loads_or_is_a_scenario_error(
    base: bytes, data: st.DataObject
) -> None:
    """Text, bytes, brackets, quotes or a line's worth of TOML put anywhere, or a piece cut
    out: ``loads`` gives a scenario or a ScenarioError, never anything else."""
    where = data.draw(st.integers(0, len(base)))
    cut = data.draw(st.integers(0, 40))
    piece = data.draw(
        st.one_of(
            st.binary(max_size=20),
            st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
            st.sampled_from(
                [b'"""', b"'''", b"[", b"]", b"{", b"}", b"[[steps]]\n", b"\n[expect]\n",
                 b" = ", b"\\", b"#", b'"', b"'", b"\n", b"\r", b"\x00", b"\x1b[2J",
                 b"x = [" * 50, b"a." * 60 + b"b = 1\n", b"\n\"\xe9\" = 1\n"]
            ),
        )
    )  # fmt: skip
    spliced = base[:where] + piece + base[where + cut :]
    assume(b"callable" not in spliced and b"factory" not in spliced)  # would import
    _loads(spliced)


# ============================================================ the spec alone


def test_spec_of_reads_only_the_faults_table(write: Callable[[str], Path]) -> None:
    # a callable that does not exist: spec_of imports nothing and checks nothing else
    path = write(_callable(f'"{M}:answer"', '"no_such_module_at_all:answer"'))
    assert str(spec_of(path)) == f"py:{M}:complete=2*raise(ConnectionError)"
    assert "no_such_module_at_all" not in sys.modules
    assert len(spec_of(write('version = 1\ntitle = "no faults"\n'))) == 0


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        ("[faults]\nspec = 3\n", 2, "faults.spec", "expected a string, got an integer (3)"),
        ("[faults]\nspce = 'x'\n", 2, "faults.spce", "unknown key (did you mean 'spec'?)"),
        ("faults = 1\n", 1, "faults", "expected a table, got an integer (1)"),
        ('[faults]\nspec = "llama.generat=none"\n', 2, "faults.spec", "bad fault spec: "),
        ("a = " + "[" * 2_000 + "]" * 2_000, 1, "a", "nested too deep"),
        ('title = "caf\udce9"\n', 1, "title", "the file is not UTF-8: byte 0xe9 at column 13"),
    ],
)
def test_spec_of_names_the_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, message: str
) -> None:
    path = tmp_path / "x.toml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ScenarioError) as raised:
        spec_of(path)
    assert (raised.value.line, raised.value.key) == (line, key), str(raised.value)
    assert message in raised.value.message


# ----------------------------------------------------------------------- status checks

PROBED = GOOD.replace(
    '[[steps]]\nop = "stream"',
    '[steady_state]\nop = "generate"\nstatus = "healthy"\n\n[[steps]]\nop = "stream"',
).replace("repeat = 5\n", 'repeat = 5\nstatus = "degraded"\n')


def test_status_keys_load_on_the_probe_and_on_steps(write: Callable[[str], Path]) -> None:
    scenario = load(write(PROBED))
    assert scenario.steady_state is not None
    assert scenario.steady_state.status == "healthy"
    assert [s.status for s in scenario.steps] == ["degraded", None]


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "message"),
    [
        (
            'status = "healthy"',
            'status = "helthy"',
            19,
            "steady_state.status",
            "expected one of 'healthy', 'degraded', 'unhealthy', got 'helthy' "
            "(did you mean 'healthy'?)",
        ),
        (
            'status = "degraded"',
            "status = 1",
            25,
            "steps[1].status",
            "expected one of 'healthy', 'degraded', 'unhealthy', got an integer (1)",
        ),
        (
            'status = "degraded"',
            'stauts = "degraded"',
            25,
            "steps[1].stauts",
            "unknown key (did you mean 'status'?)",
        ),
        (
            'client = "resilient"',
            'client = "daemon"',
            25,
            "steps[1].status",  # the steps are checked first
            "status is what a resilient client's status() says: it needs [target] client = "
            "'resilient', not 'daemon'",
        ),
    ],
)
def test_bad_status_keys_name_the_file_line_and_key(
    write: Callable[[str], Path], *, old: str, new: str, line: int, key: str, message: str
) -> None:
    path = write(PROBED.replace(old, new))
    with pytest.raises(ScenarioError) as raised:
        load(path)
    assert str(raised.value) == f"{path}:{line}: {key}: {message}"
