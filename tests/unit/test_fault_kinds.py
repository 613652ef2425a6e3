"""The kind table (faults.kinds): each kind's sites and arguments, and the messages that
tell a user why a ``raise()`` type or a ``status()`` code is refused."""

from __future__ import annotations

import asyncio
import builtins
import math

import pytest

from faults import kinds
from faults.kinds import (
    INTERRUPTS,
    KINDS,
    PY,
    SITES,
    ArgType,
    Param,
    check_exception_name,
    exception_class,
    exception_names,
    kinds_for,
    raisable,
    refusal,
)
from faults.parser import parse
from faults.spec import SpecError
from pytest_resilience.core import errors

# ------------------------------------------------------------------------ the table itself

# Each kind's signature as the docs and error messages write it, and its sites, written out
# again on purpose: a change to the table must show up here.
SIGNATURES = {
    "off": "off",
    "none": "none",
    "raise": "raise(type[, message])",
    "timeout": "timeout([duration])",
    "latency": "latency(duration[, jitter])",
    "oom": "oom",
    "crash": "crash([after=n])",
    "stall": "stall([after=n][, for=d])",
    "truncate": "truncate(after=n)",
    "corrupt": "corrupt",
    "nan": "nan",
    "lost": "lost([after=n])",
    "refuse": "refuse",
    "pause": "pause(duration)",
    "ratelimit": "ratelimit([retry_after=d])",
    "status": "status(code[, retry_after=d])",
    "restart": "restart",
    "overflow": "overflow",
    "error": "error([after=n])",
}


def test_the_kinds_are_listed_in_the_documented_order_with_their_signatures() -> None:
    assert {name: info.signature for name, info in KINDS.items()} == SIGNATURES
    assert list(KINDS) == list(SIGNATURES)


# (name, type, default, required, keyword, forever) of every parameter of every kind.
INF = math.inf
PARAMS = {
    "raise": [
        ("type", ArgType.NAME, None, True, False, False),
        ("message", ArgType.STRING, None, False, False, False),
    ],
    "timeout": [("duration", ArgType.DURATION, INF, False, False, True)],
    "latency": [
        ("duration", ArgType.DURATION, None, True, False, False),
        ("jitter", ArgType.DURATION, 0.0, False, False, False),
    ],
    "stall": [
        ("after", ArgType.INT, 0, False, True, False),
        ("for", ArgType.DURATION, INF, False, True, True),
    ],
    "truncate": [("after", ArgType.INT, None, True, True, False)],
    "lost": [("after", ArgType.INT, 0, False, True, False)],
    "crash": [("after", ArgType.INT, 0, False, True, False)],
    "error": [("after", ArgType.INT, 0, False, True, False)],
    "pause": [("duration", ArgType.DURATION, None, True, False, True)],
    "ratelimit": [("retry_after", ArgType.DURATION, None, False, True, False)],
    "status": [
        ("code", ArgType.INT, None, True, False, False),
        ("retry_after", ArgType.DURATION, None, False, True, False),
    ],
}


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_each_kinds_parameters_defaults_and_flags(name: str) -> None:
    got = [
        (p.name, p.type, p.default, p.required, p.keyword, p.forever) for p in KINDS[name].params
    ]
    assert got == PARAMS.get(name, [])
    checked = {p.name for p in KINDS[name].params if p.check is not None}
    assert checked == {"raise": {"type"}, "status": {"code"}}.get(name, set())


def test_the_after_parameter_is_one_helper_optional_or_required() -> None:
    assert kinds._after() == Param("after", ArgType.INT, 0, False, keyword=True)
    assert kinds._after(required=True) == Param("after", ArgType.INT, None, True, keyword=True)
    # the table holds what the helper builds
    assert KINDS["stall"].params[0] == kinds._after()
    assert KINDS["lost"].params[0] == kinds._after()
    assert KINDS["truncate"].params[0] == kinds._after(required=True)


def test_placeholders_name_the_parameter_and_a_keyword_shows_its_type() -> None:
    assert [p.placeholder for p in KINDS["stall"].params] == ["after=n", "for=d"]
    assert [p.placeholder for p in KINDS["raise"].params] == ["type", "message"]
    assert KINDS["ratelimit"].params[0].placeholder == "retry_after=d"


def test_a_kind_finds_its_parameter_by_name() -> None:
    stall = KINDS["stall"]
    assert stall.param("for") is stall.params[1]
    assert stall.param("after") is stall.params[0]
    assert stall.param("duration") is None
    assert KINDS["off"].param("after") is None


def test_a_kind_admits_exactly_its_sites() -> None:
    assert KINDS["nan"].admits("llama.embed")
    assert not KINDS["nan"].admits("llama.generate")
    assert not KINDS["nan"].admits(PY)
    assert KINDS["none"].admits(PY)
    assert all(KINDS["off"].admits(site) for site in (*SITES, PY))
    assert not KINDS["off"].admits("py:m:f")  # a py: site is asked about as PY


def test_kinds_for_lists_a_sites_kinds_in_the_table_order() -> None:
    # the order error messages list them in ("llama.generate admits: off, none, ...")
    assert kinds_for("llama.generate") == (
        "off",
        "none",
        "raise",
        "timeout",
        "latency",
        "oom",
        "crash",
        "corrupt",
        "overflow",
    )
    assert kinds_for("daemon.process") == ("off", "lost", "pause", "restart")
    assert kinds_for(PY) == (
        "off",
        "none",
        "raise",
        "timeout",
        "latency",
        "oom",
        "stall",
        "truncate",
        "corrupt",
    )
    assert kinds_for("no.such.site") == ()


# ------------------------------------------------------------------------ status() codes

STATUS = "status() needs an HTTP error status from 400 to 599, not "


@pytest.mark.parametrize(
    ("code", "problem"),
    [
        (400, None),
        (429, None),
        (599, None),
        (399, (STATUS + "399", None)),
        (600, (STATUS + "600", None)),
        (200, (STATUS + "200", None)),
        (503.0, (STATUS + "503.0", None)),  # a whole number only
        ("503", (STATUS + "'503'", None)),
        (None, (STATUS + "None", None)),
    ],
)
def test_status_takes_an_http_error_status_only(
    code: int | float | str | None, problem: tuple[str, None] | None
) -> None:
    check = KINDS["status"].params[0].check
    assert check is not None
    assert check(code) == problem


@pytest.mark.parametrize("code", ["200", "399", "600", "999"])
def test_a_status_out_of_range_is_refused_at_its_code(code: str) -> None:
    text = f"daemon.request=status({code})"
    with pytest.raises(SpecError) as info:
        parse(text)
    assert (info.value.message, info.value.column) == (STATUS + code, text.index(code))


@pytest.mark.parametrize("code", ["400", "500", "503", "599"])
def test_a_status_in_range_is_taken(code: str) -> None:
    (entry,) = parse(f"daemon.request=status({code})").entries
    assert entry.chain[0].arg("code") == int(code)


# ------------------------------------------------------------------- exception type names


class Interrupted(KeyboardInterrupt):
    pass


class Leaving(SystemExit):
    pass


class MyCancel(asyncio.CancelledError):
    pass


def test_the_exception_table_has_every_exception_class_of_builtins_and_the_core_errors() -> None:
    found = kinds._exception_classes()
    assert found == kinds._EXCEPTIONS  # the table the module reads is this function's
    assert found["ValueError"] is ValueError
    assert found["KeyboardInterrupt"] is KeyboardInterrupt  # raisable or not
    assert found["BaseException"] is BaseException
    assert found["DaemonLost"] is errors.DaemonLost
    assert found["Cancelled"] is errors.Cancelled
    assert found["ResilienceInterrupt"] is errors.ResilienceInterrupt
    assert found["EnvironmentError"] is OSError  # a builtin alias means its class
    assert found["UserWarning"] is UserWarning
    for name in dir(builtins):  # every builtin exception, and nothing else of builtins
        value = getattr(builtins, name)
        is_exception = isinstance(value, type) and issubclass(value, BaseException)
        assert (name in found) is is_exception, name
    for not_an_exception in ("int", "print", "object", "reprlib", "ExceptionFilter"):
        assert not_an_exception not in found
    assert all(isinstance(k, str) and issubclass(v, BaseException) for k, v in found.items())


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (ValueError, True),
        (Exception, True),
        (errors.DaemonLost, True),
        (errors.Cancelled, True),
        (errors.HangDetected, True),
        (asyncio.CancelledError, True),
        (MyCancel, True),
        (KeyboardInterrupt, False),
        (Interrupted, False),
        (SystemExit, False),
        (GeneratorExit, False),
        (BaseException, False),
        (errors.ResilienceInterrupt, False),
    ],
)
def test_raisable_is_an_exception_or_an_interrupt_the_policies_let_through(
    cls: type[BaseException], expected: bool
) -> None:
    assert raisable(cls) is expected


def test_the_interrupts_raise_takes() -> None:
    assert (errors.Cancelled, errors.HangDetected, asyncio.CancelledError) == INTERRUPTS


ALLOWED = "raise() takes an Exception, or Cancelled, HangDetected or asyncio.CancelledError"


@pytest.mark.parametrize(
    ("name", "cls", "why"),
    [
        (
            "KeyboardInterrupt",
            KeyboardInterrupt,
            "pytest would stop the whole run, not fail the test",
        ),
        ("my.Interrupted", Interrupted, "pytest would stop the whole run, not fail the test"),
        (
            "SystemExit",
            SystemExit,
            "it asks the process to exit, and a worker or thread it reaches would end",
        ),
        (
            "my.Leaving",
            Leaving,
            "it asks the process to exit, and a worker or thread it reaches would end",
        ),
        ("GeneratorExit", GeneratorExit, "Python raises it only to close a generator"),
        (
            "BaseException",
            BaseException,
            "it would interrupt the run rather than fail the call, and no code should catch it",
        ),
        (
            "ResilienceInterrupt",
            errors.ResilienceInterrupt,
            "it would interrupt the run rather than fail the call, and no code should catch it",
        ),
    ],
)
def test_the_refusal_names_the_type_says_why_and_what_raise_takes(
    name: str, cls: type[BaseException], why: str
) -> None:
    assert refusal(name, cls) == (
        f"raise() refuses {name}: it is a BaseException but not an Exception ({why}); {ALLOWED}"
    )


UNKNOWN = (
    "unknown exception type {!r} (a builtin exception, a pytest_resilience error, "
    "or a dotted path pkg.mod.Name)"
)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ValueError", None),
        ("Cancelled", None),
        ("HangDetected", None),
        ("DaemonLost", None),
        ("pkg.mod.Name", None),  # a dotted path is checked when the fault is installed
        ("no_such_module.Boom", None),
        ("builtins.KeyboardInterrupt", None),
        ("ConectionError", (UNKNOWN.format("ConectionError"), "ConnectionError")),
        ("DaemonLots", (UNKNOWN.format("DaemonLots"), "DaemonLost")),
        ("Zzzzzzzz", (UNKNOWN.format("Zzzzzzzz"), None)),
        ("", (UNKNOWN.format(""), None)),
        ("KeyboardInterrupt", (refusal("KeyboardInterrupt", KeyboardInterrupt), None)),
        ("SystemExit", (refusal("SystemExit", SystemExit), None)),
        ("BaseException", (refusal("BaseException", BaseException), None)),
        (3, ("raise() needs an exception type name", None)),
        (None, ("raise() needs an exception type name", None)),
    ],
)
def test_check_exception_name(value: str | int | None, problem: tuple[str, str | None]) -> None:
    assert check_exception_name(value) == problem


def test_a_refused_type_is_explained_in_full() -> None:
    assert check_exception_name("GeneratorExit") == (
        "raise() refuses GeneratorExit: it is a BaseException but not an Exception (Python "
        f"raises it only to close a generator); {ALLOWED}",
        None,
    )


def test_a_typo_is_corrected_to_the_closest_raisable_name_only() -> None:
    assert check_exception_name("TimeotError") == (UNKNOWN.format("TimeotError"), "TimeoutError")
    # KeyboardInterrupt is a name raise() refuses, so it is never suggested
    assert check_exception_name("KeyboardInterupt") == (UNKNOWN.format("KeyboardInterupt"), None)


def test_exception_class_looks_up_a_bare_name_raisable_or_not() -> None:
    assert exception_class("ValueError") is ValueError
    assert exception_class("KeyboardInterrupt") is KeyboardInterrupt
    assert exception_class("StreamStalled") is errors.StreamStalled
    assert exception_class("json.JSONDecodeError") is None  # dotted paths are not imported
    assert exception_class("print") is None
    assert exception_class("NoSuchError") is None


def test_exception_names_are_the_raisable_bare_names_sorted() -> None:
    names = exception_names()
    assert list(names) == sorted(names)
    assert {"ValueError", "ConnectionError", "Cancelled", "HangDetected", "ServerError"} <= set(
        names
    )
    assert not {"KeyboardInterrupt", "SystemExit", "GeneratorExit", "BaseException"} & set(names)
    assert "CancelledError" not in names  # asyncio's is written asyncio.CancelledError
