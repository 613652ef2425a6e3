"""What a kind does when it fires (faults.effects): the exception ``raise()`` builds, the
errors a bad type name gets, and the exact shape of ``corrupt`` and ``nan`` outputs."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from faults.effects import (
    corrupt_json,
    corrupt_text,
    corrupt_vector,
    make_exception,
    nan_vector,
    resolve_exception_type,
    resolve_raise_type,
)
from faults.kinds import refusal
from faults.spec import SpecError
from pytest_resilience.core import errors

# ------------------------------------------------------------------ resolving a type name


def test_a_bare_name_is_the_builtin_or_core_class() -> None:
    assert resolve_exception_type("ValueError") is ValueError
    assert resolve_exception_type("DaemonLost") is errors.DaemonLost
    assert resolve_exception_type("KeyboardInterrupt") is KeyboardInterrupt  # to catch: any


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("json.JSONDecodeError", json.JSONDecodeError),
        ("json.decoder.JSONDecodeError", json.JSONDecodeError),  # the module is all but the last
        ("concurrent.futures.TimeoutError", TimeoutError),
        ("pytest_resilience.core.errors.ServerError", errors.ServerError),
        ("builtins.SystemExit", SystemExit),
    ],
)
def test_a_dotted_path_is_imported(name: str, cls: type[BaseException]) -> None:
    assert resolve_exception_type(name) is cls


def spec_error(name: str, *, raising: bool = False) -> SpecError:
    with pytest.raises(SpecError) as info:
        (resolve_raise_type if raising else resolve_exception_type)(name)
    return info.value


def test_an_unknown_bare_name_says_what_a_name_may_be_and_suggests_the_nearest() -> None:
    err = spec_error("ConectionError")
    assert err.message == (
        "unknown exception type 'ConectionError' (a builtin exception, a pytest_resilience "
        "error, or a dotted path pkg.mod.Name)"
    )
    assert (err.text, err.column, err.suggestion) == ("ConectionError", 0, "ConnectionError")
    assert str(err) == (f"{err.message}; did you mean 'ConnectionError'?\n  ConectionError\n  ^")


def test_an_unknown_bare_name_far_from_any_has_no_suggestion() -> None:
    err = spec_error("Zzzzzzzz")
    assert err.message.startswith("unknown exception type 'Zzzzzzzz' (a builtin exception")
    assert (err.text, err.column, err.suggestion) == ("Zzzzzzzz", 0, None)


def test_a_module_that_cannot_be_imported_is_named_with_the_import_error() -> None:
    err = spec_error("no_such_module_xyz.Boom")
    assert err.message == (
        "cannot import 'no_such_module_xyz' for raise(no_such_module_xyz.Boom): "
        "No module named 'no_such_module_xyz'"
    )
    assert (err.text, err.column, err.suggestion) == ("no_such_module_xyz.Boom", 0, None)
    assert isinstance(err.__cause__, ModuleNotFoundError)
    assert err.__cause__.name == "no_such_module_xyz"


@pytest.mark.parametrize(
    ("name", "column"),
    [
        ("json.dumps", 5),  # a function
        ("json.NoSuchThing", 5),  # missing
        ("json.decoder.JSONDecoder", 13),  # a class, not an exception
        ("math.pi", 5),  # a value
    ],
)
def test_what_is_not_an_exception_class_is_refused_at_its_name(name: str, column: int) -> None:
    err = spec_error(name)
    assert err.message == f"{name!r} is not an exception class"
    assert (err.text, err.column, err.suggestion) == (name, column, None)
    assert err.text[err.column :] == name.rpartition(".")[2]  # the caret is under the name


# ------------------------------------------------------------------- the type raise() takes


@pytest.mark.parametrize(
    "name", ["KeyboardInterrupt", "SystemExit", "GeneratorExit", "builtins.SystemExit"]
)
def test_raise_refuses_what_would_stop_the_run(name: str) -> None:
    err = spec_error(name, raising=True)
    cls = resolve_exception_type(name)
    assert err.message == refusal(name, cls)
    assert err.message.startswith(f"raise() refuses {name}: it is a BaseException but not an")
    assert (err.text, err.column, err.suggestion) == (name, 0, None)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("ValueError", ValueError),
        ("Cancelled", errors.Cancelled),
        ("HangDetected", errors.HangDetected),
        ("asyncio.CancelledError", asyncio.CancelledError),
        ("json.decoder.JSONDecodeError", json.JSONDecodeError),
    ],
)
def test_raise_takes_exceptions_and_the_interrupts(name: str, cls: type[BaseException]) -> None:
    assert resolve_raise_type(name) is cls


def test_raise_reports_an_unknown_name_as_resolving_does() -> None:
    err = spec_error("ConectionError", raising=True)
    assert (err.message, err.suggestion) == (
        spec_error("ConectionError").message,
        "ConnectionError",
    )


# ------------------------------------------------------------------- the exception raised


def test_the_message_is_the_given_one() -> None:
    exc = make_exception("ConnectionError", "boom", site="llama.generate")
    assert type(exc) is ConnectionError
    assert exc.args == ("boom",)
    assert make_exception("ValueError", "").args == ("",)  # an empty message is a message


def test_the_default_message_names_the_site() -> None:
    exc = make_exception("TimeoutError", site="daemon.request")
    assert type(exc) is TimeoutError
    assert exc.args == ("fault injected at daemon.request",)


def test_without_a_site_the_default_message_says_a_site() -> None:
    assert make_exception("ValueError").args == ("fault injected at a site",)
    assert make_exception("ValueError", site="").args == ("fault injected at a site",)


def test_each_call_builds_a_new_exception() -> None:
    assert make_exception("ValueError") is not make_exception("ValueError")


def test_make_exception_refuses_what_raise_refuses() -> None:
    with pytest.raises(SpecError) as info:
        make_exception("SystemExit", "bye", site="py:m:f")
    assert info.value.message == refusal("SystemExit", SystemExit)


# The core errors whose constructor does not take one message, and what each is built as.
CORE = [
    ("ServerError", "server error 500: down", {"status": 500}),
    ("CircuitOpenError", "circuit 'py:m:f' is open", {"breaker": "py:m:f", "state": "open"}),
    ("FallbackError", "every step of fallback chain 'py:m:f' failed ()", {"chain": "py:m:f"}),
    (
        "RetryError",
        "gave up after 1 attempt (down): result rejected: None",
        {"attempts": 1, "last": None, "reason": "down"},
    ),
    (
        "StreamStalled",
        "stream stalled: no chunk for 0s (idle deadline), 0 characters received",
        {"which": "idle", "waited": 0.0, "partial": ""},
    ),
    ("StreamInterrupted", "stream interrupted (down) after 0 characters", {"reason": "down"}),
    ("ModelNotFound", "model not found or invalid: py:m:f (down)", {"path": "py:m:f"}),
]


@pytest.mark.parametrize(("name", "text", "fields"), CORE)
def test_core_errors_are_built_with_plausible_fields(
    name: str, text: str, fields: dict[str, object]
) -> None:
    exc = make_exception(name, "down", site="py:m:f")
    assert type(exc) is getattr(errors, name)
    assert str(exc) == text
    for field, value in fields.items():
        assert getattr(exc, field) == value, field


def test_a_core_error_without_a_message_gets_the_default_one() -> None:
    exc = make_exception("ServerError", site="daemon.request")
    assert str(exc) == "server error 500: fault injected at daemon.request"


class NeedsFields(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)


def test_a_class_that_needs_more_than_a_message_gets_the_message_alone() -> None:
    exc = make_exception(f"{__name__}.NeedsFields", "odd")
    assert type(exc) is NeedsFields
    assert exc.args == ("odd",)
    unicode = make_exception("UnicodeDecodeError", site="llama.generate")
    assert type(unicode) is UnicodeDecodeError
    assert unicode.args == ("fault injected at llama.generate",)


# ---------------------------------------------------------------------- corrupt and nan


@pytest.mark.parametrize("text", ["Once upon a time", "", "{}"])
def test_corrupt_text_is_always_empty(text: str) -> None:
    assert corrupt_text(text) == ""


@pytest.mark.parametrize(
    ("text", "corrupted"),
    [
        ('{"answer": 42}', '{"answe\ufffd'),
        ("[1, 2]", "[1,\ufffd"),
        ("abc", "a\ufffd"),
        ("1", "\ufffd"),
        ("", "\ufffd"),
    ],
)
def test_corrupt_json_is_the_first_half_and_a_replacement_character(
    text: str, corrupted: str
) -> None:
    assert corrupt_json(text) == corrupted
    with pytest.raises(json.JSONDecodeError):
        json.loads(corrupted)


@pytest.mark.parametrize(
    ("vector", "corrupted"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0]),
        ([1, 2, 3], [1.0, 2.0]),
        ([7.5], []),
        ([], [0.0]),
        ([[1.0, 2.0], [3.0, 4.0]], [[1.0], [3.0]]),
        ([[1.0, 2.0, 3.0], []], [[1.0, 2.0], [0.0]]),
        ([[], [1.0]], [[0.0], []]),
    ],
)
def test_corrupt_vector_is_one_element_short(
    vector: list[float] | list[list[float]], corrupted: list[float] | list[list[float]]
) -> None:
    copy = json.loads(json.dumps(vector))
    out = corrupt_vector(vector)
    assert out == corrupted
    assert all(type(x) is float for x in _flat(out))
    assert vector == copy  # the model's own output is left alone


def _flat(out: list[float] | list[list[float]]) -> list[object]:
    return [x for row in out for x in (row if isinstance(row, list) else [row])]


def _shown(out: list[float] | list[list[float]]) -> list[object]:
    """NaN compares unequal to itself: show it as a string."""
    return [[_one(x) for x in row] if isinstance(row, list) else _one(row) for row in out]


def _one(x: float) -> object:
    return "nan" if math.isnan(x) else x


@pytest.mark.parametrize(
    ("vector", "expected"),
    [
        ([1.0, 2.0, 3.0], ["nan", 2.0, math.inf]),
        ([1, 2, 3, 4], ["nan", 2.0, 3.0, math.inf]),
        ([1.0, 2.0], ["nan", math.inf]),
        ([5.0], ["nan"]),
        ([], ["nan"]),
        ([[1.0, 2.0, 3.0], [4.0, 5.0]], [["nan", 2.0, math.inf], ["nan", math.inf]]),
        ([[], [1.0]], [["nan"], ["nan"]]),
    ],
)
def test_nan_vector_is_nan_first_and_inf_last(
    vector: list[float] | list[list[float]], expected: list[object]
) -> None:
    copy = json.loads(json.dumps(vector))
    out = nan_vector(vector)
    assert _shown(out) == expected
    assert all(type(x) is float for x in _flat(out))
    assert vector == copy
