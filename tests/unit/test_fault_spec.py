"""The fault grammar (faults.parser, faults.spec), the kind table (faults.kinds) and what the
kinds do (faults.effects)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import pickle
import subprocess
import sys

import pytest

import faults
import faults.sites.base
from faults.effects import (
    corrupt_json,
    corrupt_text,
    corrupt_vector,
    make_exception,
    nan_vector,
    resolve_exception_type,
    resolve_raise_type,
)
from faults.kinds import KINDS, PY, SITES, exception_names, kinds_for, raisable
from faults.parser import parse
from faults.spec import Entry, Site, Spec, SpecError, Term, format_duration, merge
from pytest_resilience.core import errors
from tests.unit import fault_targets

GENERATE = Site("llama", "generate")
NO_MESSAGE = ("message", None)


def one(text: str) -> Entry:
    spec = parse(text)
    assert len(spec) == 1
    return spec.entries[0]


# ------------------------------------------------------------------ the documented examples


def test_design_examples_parse_to_the_terms_they_describe() -> None:
    assert one("llama.generate=2*none") == Entry(GENERATE, (Term("none", count=2),))
    assert one("llama.generate=30%timeout(30s)") == Entry(
        GENERATE, (Term("timeout", (("duration", 30.0),), pct=30.0),)
    )
    assert one("llama.stream=@1stall(after=5)") == Entry(
        Site("llama", "stream"), (Term("stall", (("after", 5), ("for", math.inf)), at=1),)
    )
    assert one("llama.load=1*oom") == Entry(Site("llama", "load"), (Term("oom", count=1),))
    assert one("daemon.stream=@2lost(after=3)") == Entry(
        Site("daemon", "stream"), (Term("lost", (("after", 3),), at=2),)
    )
    entry = one("py:myapp.llm:Client.ask=3*raise(ConnectionError)->off")
    assert entry.site == Site("py", "myapp.llm:Client.ask")
    assert (entry.site.module, entry.site.qualname, entry.site.key) == (
        "myapp.llm",
        "Client.ask",
        PY,
    )
    assert entry.chain == (
        Term("raise", (("type", "ConnectionError"), NO_MESSAGE), count=3),
        Term("off"),
    )


@pytest.mark.parametrize(
    "text",
    [
        "llama.generate=2*none",
        "llama.generate=30%timeout(30s)",
        "llama.stream=@1stall(after=5)",
        "llama.load=1*oom",
        "daemon.stream=@2lost(after=3)",
        "py:myapp.llm:Client.ask=3*raise(ConnectionError)->off",
    ],
)
def test_design_examples_are_already_canonical(text: str) -> None:
    assert str(parse(text)) == text


# ------------------------------------------------------------------------ canonical form


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        (" llama.generate = 2 * none ; llama.load=oom ", "llama.generate=2*none;llama.load=oom"),
        ("llama.generate=50 % 2 * @ 3 + none", "llama.generate=50%2*@3+none"),
        ("llama.generate=timeout(forever)", "llama.generate=timeout"),
        ("llama.generate=timeout()", "llama.generate=timeout"),
        ("llama.generate=timeout(duration=2m)", "llama.generate=timeout(2m)"),
        ("llama.generate=timeout(120s)", "llama.generate=timeout(2m)"),
        ("llama.generate=latency(0.5s)", "llama.generate=latency(500ms)"),
        ("llama.generate=latency(1.5s, 0s)", "llama.generate=latency(1500ms)"),
        ("llama.generate=latency(jitter=10ms, duration=1h)", "llama.generate=latency(1h,10ms)"),
        ("llama.stream=stall(5)", "llama.stream=stall(after=5)"),
        ("llama.stream=stall(after=0)", "llama.stream=stall"),
        ("llama.stream=stall(for=2m, after=1)", "llama.stream=stall(after=1,for=2m)"),
        ("llama.generate=raise(ValueError, boom)", 'llama.generate=raise(ValueError,"boom")'),
        (
            "llama.generate=raise(ValueError, 'say \"hi\" \\\\ o\\'k')",
            'llama.generate=raise(ValueError,"say \\"hi\\" \\\\ o\'k")',
        ),
        ("llama.generate=raise(type=myapp.errors.Boom)", "llama.generate=raise(myapp.errors.Boom)"),
        ("daemon.request=ratelimit(retry_after=30s)", "daemon.request=ratelimit(retry_after=30s)"),
        ("daemon.request=ratelimit", "daemon.request=ratelimit"),
        ("daemon.process=pause(forever)", "daemon.process=pause(forever)"),
        ("llama.generate=100%none", "llama.generate=100%none"),
        ("llama.generate=12.50%none", "llama.generate=12.5%none"),
        ("llama.generate=none->\n  oom", "llama.generate=none->oom"),
        ("", ""),
        (" \n\t", ""),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    spec = parse(text)
    assert str(spec) == canonical
    assert parse(canonical) == spec


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.5, "500ms"),
        (0.0005, "0.5ms"),
        (1.0, "1s"),
        (1.5, "1500ms"),
        (30.0, "30s"),
        (90.0, "90s"),
        (120.0, "2m"),
        (3600.0, "1h"),
        (5400.0, "90m"),
        (math.inf, "forever"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), ("2.5m", 150.0), ("0s", 0.0)],
)
def test_duration_units(written: str, seconds: float) -> None:
    assert one(f"llama.generate=latency({written})").chain[0].arg("duration") == seconds


def test_term_accessors() -> None:
    term = one("llama.stream=25%2*@3+stall(after=4, for=1m)").chain[0]
    assert (term.pct, term.count, term.at, term.at_and_after) == (25.0, 2, 3, True)
    assert term.arg("after") == 4
    assert term.arg("for") == 60.0
    assert term.action == "stall(after=4,for=1m)"
    assert term.info is KINDS["stall"]
    with pytest.raises(KeyError, match="no argument 'jitter'"):
        term.arg("jitter")


def test_a_site_may_be_looked_up_by_its_text() -> None:
    spec = parse("llama.load=oom;py:a.b:C.d=none")
    assert spec.get("py:a.b:C.d") == spec.entries[1]
    assert spec.get(Site("llama", "load")) == spec.entries[0]
    assert spec.get("llama.chat") is None
    assert [str(e.site) for e in spec] == ["llama.load", "py:a.b:C.d"]


def test_site_parse() -> None:
    assert Site.parse(" daemon.process ") == Site("daemon", "process")
    assert str(Site.parse("py:pkg.mod:f")) == "py:pkg.mod:f"
    assert Site("llama", "load").module == ""
    with pytest.raises(SpecError, match="after the site"):
        Site.parse("llama.load=oom")


# ------------------------------------------------------------------------------- merging


def test_merge_later_wins_in_place_and_new_sites_are_appended() -> None:
    env = parse("llama.generate=2*none;llama.load=oom")
    cli = parse("llama.stream=stall;llama.generate=raise(ValueError)")
    merged = merge(env, cli)
    assert str(merged) == "llama.generate=raise(ValueError);llama.load=oom;llama.stream=stall"
    assert env.merged(cli) == merged
    assert merge() == Spec()
    assert merge(env) == env


def test_a_spec_built_with_a_site_twice_is_refused() -> None:
    entry = one("llama.load=oom")
    with pytest.raises(ValueError, match="at most once"):
        Spec((entry, entry))


# -------------------------------------------------------------------------------- errors

# (text, column, message, suggestion): the exact message for the typical mistakes.
MISTAKES = [
    ("llama.generat=2*none", 0, "unknown site 'llama.generat'", "llama.generate"),
    ("llama.generate=2*timout(30s)", 17, "unknown fault kind 'timout'", "timeout"),
    ("llama.generate 2*none", 14, "expected '=' after the site 'llama.generate'", None),
    (
        "llama.generate=timeout(30x)",
        25,
        "bad duration '30x': the unit must be ms, s, m or h",
        None,
    ),
    ("llama.generate=150%none", 15, "probability 150% is over 100%", None),
    ("llama.generate=@0none", 16, "call numbers start at 1: @1 is the first call", None),
    (
        "llama.generate=timeout(after=3)",
        23,
        "timeout() has no argument 'after' (it takes: timeout([duration]))",
        None,
    ),
    (
        "llama.stream=stall(aftr=3)",
        19,
        "stall() has no argument 'aftr' (it takes: stall([after=n][, for=d]))",
        "after",
    ),
    (
        "llama.generate=latency",
        22,
        "latency() needs the argument 'duration': latency(duration[, jitter])",
        None,
    ),
    (
        "llama.generate=raise()",
        21,
        "raise() needs the argument 'type': raise(type[, message])",
        None,
    ),
    ("llama.generate=crsh", 15, "unknown fault kind 'crsh'", "crash"),
    (
        "llama.stream=crash(after=x)",
        25,
        "the argument 'after' of crash() takes a whole number, not 'x'",
        None,
    ),
    (
        "llama.stream=crash(aftr=2)",
        19,
        "crash() has no argument 'aftr' (it takes: crash([after=n]))",
        "after",
    ),
    (
        "llama.generate=none->",
        21,
        "expected a fault kind after '->', not end of text (llama.generate admits: "
        "off, none, raise, timeout, latency, oom, crash, corrupt, overflow)",
        None,
    ),
    ("llama.generate=timeout(30s", 26, "unclosed '(' (opened at column 22)", None),
    ("llama.generate=timeout(30s))", 27, "unbalanced ')': no '(' is open", None),
    (
        "llama.generate=timeout(30s;llama.load=oom",
        26,
        "expected ',' or ')' in the arguments of timeout(), not ';' "
        "(the '(' at column 22 is still open)",
        None,
    ),
    (
        "llama.generate=timeout(30)",
        25,
        "the argument 'duration' of timeout() is a duration and needs a unit: 30s, 30ms, ...",
        None,
    ),
    (
        "llama.generate=@3 50%none",
        18,
        "pct% and count* come before @n: the order is pct% count* @n kind",
        None,
    ),
    ("llama.generate=0*none", 15, "a count must be at least 1", None),
    ("llama.generate=2.5*none", 15, "a count must be a whole number, not '2.5'", None),
    ("llama.generate=3none", 16, "expected '%' or '*' after '3', not 'n'", None),
    (
        "llama.load=timeout",
        11,
        "llama.load does not admit 'timeout' (it admits: off, raise, oom, crash)",
        None,
    ),
    (
        "llama.generate=raise(ConectionError)",
        21,
        "unknown exception type 'ConectionError' (a builtin exception, a pytest_resilience "
        "error, or a dotted path pkg.mod.Name)",
        "ConnectionError",
    ),
    (
        "llama.generate=2*none;llama.generate=oom",
        22,
        "site 'llama.generate' is given twice (also at column 0): "
        "join its terms into one chain with '->'",
        None,
    ),
    (
        "llama.generate=none;",
        20,
        "expected a site (such as llama.generate or py:module:function), not end of text",
        None,
    ),
    (
        "py:myapp.llm",
        12,
        "a py: site is py:MODULE:QUALNAME, such as py:myapp.llm:Client.ask",
        None,
    ),
    (
        "py:myapp.1llm:f=none",
        9,
        "bad module path in 'py:myapp.1llm:f': a py: site is py:MODULE:QUALNAME, "
        "such as py:myapp.llm:Client.ask",
        None,
    ),
    (
        "llama.generate=raise(ValueError, 'oops)",
        33,
        "unterminated string (the quote at column 33 is never closed)",
        None,
    ),
    (
        "llama.stream=stall(after=5s)",
        25,
        "the argument 'after' of stall() takes a whole number, not '5s'",
        None,
    ),
    ("llama.generate=oom(1)", 19, "oom takes no arguments", None),
    (
        "llama.generate=latency(1s, 2s, 3s)",
        31,
        "latency takes at most 2 arguments: latency(duration[, jitter])",
        None,
    ),
    (
        "llama.generate=latency(duration=1s, 2s)",
        36,
        "a positional argument after a keyword argument",
        None,
    ),
    ("llama.generate=latency(1s, duration=2s)", 27, "argument 'duration' is given twice", None),
    (
        "llama.generate=latency(forever)",
        23,
        "the argument 'duration' of latency() takes a duration such as 30s or 500ms, not 'forever'",
        None,
    ),
    (
        "llama.generate=@2000000000none",
        16,
        "a call number must be at most 1000000000, not 2000000000",
        None,
    ),
    (
        "llama.generate=latency(99999999999h)",
        23,
        "duration 99999999999h is too long (at most 1000000000s; or forever)",
        None,
    ),
    (
        "llama.generate=raise(ValueError, 3)",
        33,
        "the argument 'message' of raise() takes a quoted string, not '3'",
        None,
    ),
    (
        "llama.generate=raise('ValueError')",
        21,
        "the argument 'type' of raise() takes a name, not \"'ValueError'\"",
        None,
    ),
]


@pytest.mark.parametrize(("text", "column", "message", "suggestion"), MISTAKES)
def test_typical_mistakes(text: str, column: int, message: str, suggestion: str | None) -> None:
    with pytest.raises(SpecError) as info:
        parse(text)
    err = info.value
    assert (err.message, err.column, err.suggestion) == (message, column, suggestion)
    assert err.text == text
    assert isinstance(err, ValueError)


def test_unknown_site_far_from_any_lists_them_all() -> None:
    with pytest.raises(SpecError) as info:
        parse("zzz=none")
    assert info.value.suggestion is None
    for site in SITES:
        assert site in info.value.message


def test_error_text_shows_the_line_and_a_caret() -> None:
    with pytest.raises(SpecError) as info:
        parse("llama.generate=none;\n\tllama.strem=stall")
    assert str(info.value) == (
        "unknown site 'llama.strem'; did you mean 'llama.stream'?\n   llama.strem=stall\n   ^"
    )
    assert info.value.column == 22


def test_error_at_the_end_of_the_text() -> None:
    with pytest.raises(SpecError) as info:
        parse("llama.generate=")
    assert info.value.column == len("llama.generate=")
    assert str(info.value).endswith("\n  llama.generate=\n                 ^")


def test_spec_error_survives_pickling() -> None:
    with pytest.raises(SpecError) as info:
        parse("llama.generat=none")
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.text, copy.column, copy.suggestion, str(copy)) == (
        info.value.text,
        info.value.column,
        info.value.suggestion,
        str(info.value),
    )


def test_spec_error_clamps_its_column_into_the_text() -> None:
    assert SpecError("x", "abc", 99).column == 3
    assert SpecError("x", "abc", -5).column == 0


# -------------------------------------------------------------- which site admits which kind

# The sites-and-kinds table of docs/faults.md, written out again on purpose; "off" fits all.
DOCUMENTED_TABLE = {
    "llama.load": {"oom", "raise", "crash"},
    "llama.generate": {
        "none",
        "raise",
        "timeout",
        "latency",
        "oom",
        "corrupt",
        "overflow",
        "crash",
    },
    "llama.chat": {"none", "raise", "timeout", "latency", "oom", "corrupt", "overflow", "crash"},
    "llama.stream": {
        *("stall", "truncate", "raise", "latency", "corrupt", "lost", "overflow", "crash"),
    },
    "llama.embed": {"none", "raise", "nan", "corrupt", "crash"},
    "daemon.request": {
        *("lost", "refuse", "timeout", "latency", "ratelimit", "status", "raise", "overflow"),
    },
    "daemon.stream": {"stall", "lost", "truncate", "corrupt", "overflow", "error"},
    "daemon.process": {"lost", "pause", "restart"},
    PY: {"none", "raise", "timeout", "latency", "oom", "corrupt", "stall", "truncate"},
}

MINIMAL_ARGS = {
    "raise": "(ValueError)",
    "latency": "(1s)",
    "truncate": "(after=2)",
    "pause": "(5s)",
    "status": "(503)",
}


def test_the_kind_table_matches_the_design() -> None:
    assert set(SITES) | {PY} == set(DOCUMENTED_TABLE)
    for site, kinds in DOCUMENTED_TABLE.items():
        assert set(kinds_for(site)) == kinds | {"off"}, site


@pytest.mark.parametrize("site", [*SITES, "py:m:f"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_the_parser_admits_exactly_the_table(site: str, kind: str) -> None:
    text = f"{site}={kind}{MINIMAL_ARGS.get(kind, '')}"
    key = PY if site.startswith("py:") else site
    if kind == "off" or kind in DOCUMENTED_TABLE[key]:
        assert one(text).chain[0].kind == kind
    else:
        with pytest.raises(SpecError, match="does not admit"):
            parse(text)


def test_every_kind_is_documented() -> None:
    for name, info in KINDS.items():
        assert info.name == name
        assert info.doc
        assert info.signature.startswith(name)


def test_canonical_argument_order_can_be_read_back() -> None:
    # The renderer writes positional parameters first, so none may follow a keyword one,
    # and only the last positional one may lack a value (None) to stand in its place.
    for info in KINDS.values():
        flags = [p.keyword for p in info.params]
        assert flags == sorted(flags), info.name
        positional = [p for p in info.params if not p.keyword]
        assert all(p.default is not None or p.required for p in positional[:-1]), info.name


def test_the_package_exports_documented_names() -> None:
    import faults  # noqa: PLC0415 - the package object itself is under test

    assert sorted(faults.__all__) == sorted(
        name
        for name in vars(faults)
        if not name.startswith("_")
        and name != "annotations"
        and not isinstance(getattr(faults, name), type(faults))
    )
    for name in faults.__all__:
        obj = getattr(faults, name)
        if callable(obj):
            assert obj.__doc__, name


# --------------------------------------------------------------------------- raise helper


class MyError(Exception):
    pass


class NeedsFields(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)


def test_make_exception_for_builtins_with_message_and_default() -> None:
    exc = make_exception("ConnectionError", "boom", site="llama.generate")
    assert type(exc) is ConnectionError
    assert str(exc) == "boom"
    assert str(make_exception("TimeoutError", site="daemon.request")) == (
        "fault injected at daemon.request"
    )


@pytest.mark.parametrize("name", [n for n in errors.__all__ if n in exception_names()])
def test_make_exception_builds_every_core_error(name: str) -> None:
    exc = make_exception(name, "injected", site="llama.generate")
    assert type(exc) is getattr(errors, name)
    assert str(exc)


def test_core_errors_get_plausible_fields() -> None:
    server = make_exception("ServerError", "down")
    assert isinstance(server, errors.ServerError)
    assert server.status == 500
    circuit = make_exception("CircuitOpenError", site="daemon.request")
    assert isinstance(circuit, errors.CircuitOpenError)
    assert circuit.breaker == "daemon.request"


def test_make_exception_imports_dotted_paths() -> None:
    exc = make_exception(f"{__name__}.MyError", "mine")
    assert type(exc) is MyError
    assert exc.args == ("mine",)
    odd = make_exception(f"{__name__}.NeedsFields", "odd")
    assert type(odd) is NeedsFields
    assert odd.args == ("odd",)
    assert type(make_exception("json.JSONDecodeError", "bad")) is json.JSONDecodeError


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ConectionError", "unknown exception type 'ConectionError'"),
        ("no_such_module_xyz.Error", "cannot import 'no_such_module_xyz'"),
        ("json.dumps", "'json.dumps' is not an exception class"),
        ("json.NoSuchThing", "'json.NoSuchThing' is not an exception class"),
    ],
)
def test_resolve_exception_type_errors(name: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        resolve_exception_type(name)
    assert info.value.message.startswith(message)
    assert 0 <= info.value.column <= len(name)


# ---------------------------------------------------------------------- corrupt and nan


def test_corrupt_text_is_empty() -> None:
    assert corrupt_text("Once upon a time") == ""


@pytest.mark.parametrize("text", ['{"answer": 42}', "[1, 2]", "1", '"s"', "", "{}"])
def test_corrupt_json_is_never_json(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(corrupt_json(text))


def test_corrupt_vector_has_the_wrong_shape() -> None:
    assert corrupt_vector([1.0, 2.0, 3.0]) == [1.0, 2.0]
    assert corrupt_vector([]) == [0.0]
    assert corrupt_vector([[1.0, 2.0], [3.0, 4.0]]) == [[1.0], [3.0]]


def test_nan_vector_keeps_the_shape_and_is_not_finite() -> None:
    out = nan_vector([1.0, 2.0, 3.0])
    assert isinstance(out[0], float)
    assert math.isnan(out[0])
    assert out[1] == 2.0
    assert out[2] == math.inf
    assert all(len(row) == 2 for row in nan_vector([[1.0, 2.0], [3.0, 4.0]]))  # type: ignore[arg-type]
    single = nan_vector([5.0])
    assert len(single) == 1
    assert math.isnan(single[0])  # type: ignore[arg-type]
    assert math.isnan(nan_vector([])[0])  # type: ignore[arg-type]


def test_importing_faults_pulls_in_no_test_or_model_dependency() -> None:
    code = "import sys, faults; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    heavy = {"pytest", "hypothesis", "llama_cpp", "httpx", "numpy", "_pytest"}
    assert sorted(m for m in loaded if m.split(".")[0] in heavy) == []


# ------------------------------------------------------ raise() and BaseException kinds

# What raise() refuses: a BaseException that is not an Exception, other than the interrupts
# every resilience policy lets through (Cancelled, HangDetected, asyncio.CancelledError).
REFUSED = [
    "KeyboardInterrupt",
    "SystemExit",
    "GeneratorExit",
    "BaseException",
    "BaseExceptionGroup",
    "ResilienceInterrupt",
]
ALLOWED = "raise() takes an Exception, or Cancelled, HangDetected or asyncio.CancelledError"


@pytest.mark.parametrize("name", REFUSED)
def test_raise_refuses_a_base_exception_that_is_not_an_exception(name: str) -> None:
    text = f"py:m:f=off->@2raise({name}, 'stop')"
    with pytest.raises(SpecError) as info:
        parse(text)
    err = info.value
    assert err.column == text.index(name)
    assert err.message.startswith(
        f"raise() refuses {name}: it is a BaseException but not an Exception ("
    )
    assert err.message.endswith(ALLOWED)
    assert str(err).endswith(f"  {text}\n  {' ' * text.index(name)}^")
    assert name not in exception_names()
    with pytest.raises(SpecError, match=r"raise\(\) refuses"):
        make_exception(name)
    assert resolve_exception_type(name).__name__ == name  # what a policy catches: any type


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("KeyboardInterrupt", "pytest would stop the whole run, not fail the test"),
        ("SystemExit", "it asks the process to exit"),
        ("GeneratorExit", "Python raises it only to close a generator"),
        ("BaseException", "it would interrupt the run rather than fail the call"),
    ],
)
def test_the_refusal_says_why(name: str, why: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(f"llama.generate=raise({name})")
    assert f"({why}" in info.value.message


def test_a_typo_is_never_corrected_to_a_refused_type() -> None:
    with pytest.raises(SpecError) as info:
        parse("llama.generate=raise(KeyboardInterupt)")
    assert info.value.suggestion is None
    assert info.value.message.startswith("unknown exception type 'KeyboardInterupt'")


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("Cancelled", errors.Cancelled),
        ("HangDetected", errors.HangDetected),
        ("asyncio.CancelledError", asyncio.CancelledError),
        ("asyncio.exceptions.CancelledError", asyncio.CancelledError),
        ("ValueError", ValueError),
        ("Exception", Exception),
    ],
)
def test_raise_takes_exceptions_and_the_interrupts_the_policies_let_through(
    name: str, cls: type[BaseException]
) -> None:
    assert one(f"py:m:f=raise({name})").chain[0].arg("type") == name
    assert resolve_raise_type(name) is cls
    exc = make_exception(name, "stop", site="py:m:f")
    assert type(exc) is cls
    assert exc.args == ("stop",)


def test_every_name_raise_takes_is_raisable() -> None:
    assert {"Cancelled", "HangDetected", "ValueError", "DaemonLost"} <= set(exception_names())
    assert all(raisable(resolve_exception_type(n)) for n in exception_names())


class Stop(BaseException):
    pass


class Interrupted(KeyboardInterrupt):
    pass


class MyCancel(asyncio.CancelledError):
    pass


TARGET = "py:tests.unit.fault_targets:answer"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (f"{__name__}.Stop", "it would interrupt the run"),
        (f"{__name__}.Interrupted", "pytest would stop the whole run"),
        ("builtins.SystemExit", "it asks the process to exit"),
    ],
)
def test_a_dotted_path_to_a_refused_type_is_a_spec_error_at_install(name: str, why: str) -> None:
    injector = faults.inject(f"{TARGET}=2*off->raise({name})")  # parsed: not imported yet
    with pytest.raises(SpecError) as info:
        injector.install()
    err = info.value
    assert err.message.startswith(f"raise() refuses {name}: it is a BaseException but not")
    assert why in err.message
    assert err.text[err.column :].startswith(f"{name})")  # the caret under the type
    assert fault_targets.answer("q") == "yes, q"  # nothing stays patched


def test_a_dotted_path_to_an_interrupt_installs_and_raises_it() -> None:
    with faults.inject(f"{TARGET}=raise({__name__}.MyCancel)"), pytest.raises(MyCancel):
        fault_targets.answer("q")


def test_a_bad_dotted_path_still_points_at_its_name() -> None:
    spec = f"{TARGET}=2*off->raise(tests.unit.fault_targets.Client)"
    with pytest.raises(SpecError, match="is not an exception class") as info:
        faults.inject(spec).install()
    err = info.value
    assert err.text[err.column :].startswith("Client)")


# ------------------------------------------------------------------- pytest --inject-faults

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
APP = """
class Stop(BaseException):
    pass

def answer():
    return "ok"

def words():
    yield "ok"

async def aanswer():
    return "ok"
"""
SUITE = """
import target

def test_calls_it():
    assert target.answer() == "ok"

def test_does_not():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(target=APP, test_suite=SUITE)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # hypothesis' plugin would import all of hypothesis at the end of every in-process run.
    # An interrupted run (exit 2) is reported, not raised again: it would stop this run too.
    return pytester.runpytest("-p", "no:hypothesispytest", *args, no_reraise_ctrlc=True)


def output_of(result: pytest.RunResult) -> list[str]:
    return [*result.outlines, *result.errlines]


@pytest.mark.parametrize("name", ["KeyboardInterrupt", "SystemExit", "GeneratorExit"])
def test_inject_faults_refuses_an_interrupt_before_any_test_runs(
    suite: pytest.Pytester, name: str
) -> None:
    spec = f"py:target:answer=raise({name})"
    result = run(suite, "--inject-faults", spec)
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # not INTERRUPTED, not a failed test
    output = output_of(result)
    assert [line for line in output if line.startswith("ERROR:")] == [
        f"ERROR: --inject-faults: malformed fault spec: raise() refuses {name}: it is a "
        f"BaseException but not an Exception ({_why(name)}); {ALLOWED}"
    ]
    result.stderr.fnmatch_lines([f"  {spec}", " " * (2 + spec.index(name)) + "^"])
    assert not any("Traceback" in line or "!!!" in line for line in output), output
    assert not any("passed" in line or "failed" in line for line in output), output


def _why(name: str) -> str:
    with pytest.raises(SpecError) as info:
        parse(f"llama.generate=raise({name})")
    return info.value.message.partition(" (")[2].partition(");")[0]


def test_inject_faults_refuses_a_dotted_path_to_an_interrupt_at_start_up(
    suite: pytest.Pytester,
) -> None:
    result = run(suite, "--inject-faults", "py:target:answer=raise(target.Stop)")
    # refused once, at start-up, before any test
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = "\n".join(output_of(result))
    assert "raise() refuses target.Stop: it is a BaseException but not an Exception" in text
    assert "Traceback" not in text
    assert "INTERNALERROR" not in text
    assert "!!!" not in text


@pytest.mark.parametrize("name", ["Cancelled", "HangDetected", "asyncio.CancelledError"])
def test_an_injected_interrupt_fails_only_the_test_it_reaches(
    suite: pytest.Pytester, name: str
) -> None:
    result = run(suite, "--inject-faults", f"py:target:answer=raise({name})")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["FAILED test_suite.py::test_calls_it - *"])


# ------------------------------------------------- injected faults in pytest's tracebacks

SITES_FOLDER = os.path.dirname(faults.sites.base.__file__)


@pytest.mark.parametrize(
    ("spec", "body", "error"),
    [
        (
            "py:target:answer=raise(ValueError)",
            'assert target.answer() == "ok"',
            "ValueError: fault injected at py:target:answer",
        ),
        (
            "py:target:answer=2*off->raise(ConnectionError, 'gone')",
            'assert (target.answer(), target.answer(), target.answer()) == ("ok",) * 3',
            "ConnectionError: gone",
        ),
        (
            "py:target:words=raise(KeyError)",
            'assert list(target.words()) == ["ok"]',
            "KeyError: 'fault injected at py:target:words'",
        ),
        (
            "py:target:answer=oom",
            "target.answer()",
            "MemoryError",
        ),
    ],
)
def test_an_injected_fault_shows_the_users_line_not_the_injector(
    pytester: pytest.Pytester, spec: str, body: str, error: str
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(target=APP, test_traced=f"import target\n\ndef test_it():\n    {body}\n")
    long = run(pytester, "--tb=long", "--inject-faults", spec)
    long.assert_outcomes(failed=1)
    output = long.outlines
    assert not any(SITES_FOLDER in line for line in output), output
    # one frame: the user's line, the exception under it
    assert [line for line in output if line.startswith(">")] == [f">       {body}"]
    marker = output.index(f">       {body}")
    rest = [line for line in output[marker + 1 :] if line.strip().strip("^")]
    assert rest[0] == f"E       {error}", output
    assert rest[1].startswith("test_traced.py:4: ")
    for full in ("--tb=native", "--fulltrace"):  # the frames are hidden, not gone
        shown = run(pytester, full, "--inject-faults", spec)
        assert any(SITES_FOLDER in line for line in shown.outlines), (full, shown.outlines)


def test_an_injected_fault_in_async_code_shows_the_users_line(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    body = 'assert await target.aanswer() == "ok"'
    pytester.makepyfile(
        target=APP,
        test_traced=(
            "import pytest\nimport target\n\n@pytest.mark.asyncio\n"
            f"async def test_it():\n    {body}\n"
        ),
    )
    result = run(pytester, "--tb=long", "--inject-faults", "py:target:aanswer=raise(OSError)")
    result.assert_outcomes(failed=1)
    assert not any(SITES_FOLDER in line for line in result.outlines), result.outlines
    assert [line for line in result.outlines if line.startswith(">")] == [f">       {body}"]
    result.stdout.fnmatch_lines(["E       OSError: fault injected at py:target:aanswer"])


@pytest.fixture(scope="module")
def llama_cpp_loaded() -> None:
    """llama_cpp imported before the test (and its leak check): its import opens two file
    descriptors for good, and an in-process run would import it afresh each time."""
    pytest.importorskip("llama_cpp")


@pytest.mark.usefixtures("llama_cpp_loaded")
def test_an_injected_llama_fault_shows_the_users_line(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    body = 'llama_cpp.Llama(model_path="no-such-model.gguf")'
    pytester.makepyfile(test_traced=f"import llama_cpp\n\ndef test_it():\n    {body}\n")
    result = run(pytester, "--tb=long", "--inject-faults", "llama.load=raise(ValueError)")
    result.assert_outcomes(failed=1)
    assert not any(SITES_FOLDER in line for line in result.outlines), result.outlines
    assert [line for line in result.outlines if line.startswith(">")] == [f">       {body}"]
    result.stdout.fnmatch_lines(["E       ValueError: fault injected at llama.load"])


def test_an_injected_httpx_fault_shows_no_frame_of_the_hooks(pytester: pytest.Pytester) -> None:
    pytest.importorskip("httpx")
    pytester.makeini(INI)
    body = 'client.get("http://127.0.0.1:9/v1/models")'
    test = f"def test_it():\n    with httpx.Client() as client:\n        {body}\n"
    pytester.makepyfile(test_traced=f"import httpx\n\n{test}")
    result = run(
        pytester,
        "--tb=long",
        "--daemon-url",
        "http://127.0.0.1:9",
        "--inject-faults",
        "daemon.request=raise(ValueError)",
    )
    result.assert_outcomes(failed=1)
    assert not any(SITES_FOLDER in line for line in result.outlines), result.outlines
    assert f">           {body}" in result.outlines  # then httpx's frames, as for a real error
    result.stdout.fnmatch_lines(["E       ValueError: fault injected at daemon.request"])
