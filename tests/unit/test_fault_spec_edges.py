"""How a malformed fault spec is shown: the one line the mistake is on, whatever lines come
before and after it, and a caret under the mistake."""

from __future__ import annotations

import pytest

from faults.parser import parse
from faults.spec import Site, SpecError, format_duration


def shown(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse(text)
    return str(info.value)


def test_a_mistake_on_a_middle_line_shows_that_line_alone() -> None:
    text = (
        "llama.generate=none;\nllama.load=oom;\nllama.strem=stall;\nllama.chat=none;\n"
        "llama.embed=nan"
    )
    assert shown(text) == (
        "unknown site 'llama.strem'; did you mean 'llama.stream'?\n  llama.strem=stall;\n  ^"
    )


def test_a_mistake_after_a_leading_newline_shows_its_line() -> None:
    assert shown("\nllama.strem=stall") == (
        "unknown site 'llama.strem'; did you mean 'llama.stream'?\n  llama.strem=stall\n  ^"
    )


def test_a_mistake_inside_a_line_puts_the_caret_under_it() -> None:
    text = "llama.generate=none;\n  llama.load=timout(1s)\nllama.chat=none"
    assert shown(text).splitlines()[1:] == ["    llama.load=timout(1s)", "               ^"]


def test_a_mistake_at_the_start_of_an_empty_first_line_shows_that_empty_line() -> None:
    assert str(SpecError("expected a site", "\nllama.load=oom", 0)) == ("expected a site\n  \n  ^")


def test_characters_that_would_garble_a_terminal_are_shown_as_question_marks() -> None:
    text = "llama.generate=none;\nllama.lo\x1bad=oom\x00;\nllama.chat=none"
    message = str(SpecError("unknown site", text, 21))
    assert message == "unknown site\n  llama.lo?ad=oom?;\n  ^"


def test_text_after_a_site_is_named_in_the_error() -> None:
    with pytest.raises(SpecError) as info:
        Site.parse("llama.load=oom")
    assert info.value.message == "unexpected '=' after the site"
    assert info.value.column == len("llama.load")


def test_a_site_that_starts_with_a_character_no_site_has_is_named_in_the_error() -> None:
    with pytest.raises(SpecError) as info:
        parse("llama.load=oom;=none")
    assert info.value.message == (
        "expected a site (such as llama.generate or py:module:function), not '='"
    )
    assert info.value.column == len("llama.load=oom;")


def test_a_spec_error_carries_its_message_as_a_value_error_does() -> None:
    # Code that handles any ValueError reads the message from args[0].
    with pytest.raises(ValueError, match="unknown site") as info:
        parse("llama.strem=stall")
    assert info.value.args == ("unknown site 'llama.strem'",)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.7, "700ms"), (0.07, "70ms"), (2.7, "2700ms"), (0.0007, "0.7ms")]
)
def test_a_duration_in_milliseconds_is_exact_where_dividing_by_a_thousandth_is_not(
    seconds: float, text: str
) -> None:
    # 0.7 / 0.001 is 699.9999999999999: milliseconds are counted by multiplying by 1000.
    assert format_duration(seconds) == text
    assert parse(f"llama.generate=latency({text})").entries[0].chain[0].arg("duration") == seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.015, "15ms"),  # in hours it has no exact short form: the later units are still tried
        (0.06, "60ms"),
        (0.1234567, "0.1234567s"),  # as short as 123.4567ms: the seconds form is kept
    ],
)
def test_the_shortest_exact_form_wins_and_seconds_win_a_tie(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# A name is a Python identifier: str.isidentifier() takes characters that are neither letters
# nor digits, and the parser reads every one of them bare.
PYTHON_NAMES = [
    "A·",  # a middle dot, Other_ID_Continue
    "cafe\u0301",  # a combining accent (decomposed "café"), Mn
    "x\u203f",  # a connector punctuation, Pc
    "℘",  # Other_ID_Start
    "Ⅻ",  # a letter number, Nl
]


@pytest.mark.parametrize("name", PYTHON_NAMES)
def test_any_python_identifier_is_a_bare_string(name: str) -> None:
    text = f"py:A:A=off->raise(ArithmeticError,message={name})"
    term = parse(text).entries[0].chain[1]
    assert term.arg("message") == name
    assert parse(str(parse(text))) == parse(text)


@pytest.mark.parametrize("name", PYTHON_NAMES)
def test_any_python_identifier_is_a_part_of_an_exception_path_or_a_py_site(name: str) -> None:
    spec = parse(f"py:{name}.m:C.{name}=raise(myapp.{name}.Err)")
    assert spec.entries[0].site == Site("py", f"{name}.m:C.{name}")
    assert spec.entries[0].chain[0].arg("type") == f"myapp.{name}.Err"
    assert parse(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        # letters and digits Python refuses in a name refuse the name, not the character
        ("llama.generate=raise(ValueError,x²)", 32, "not a valid name"),
        ("llama.generate=raise(ValueError,a.ͺ)", 34, "not a valid name"),
        ("py:m:f²=off", 5, "bad qualified name in 'py:m:f²'"),
        # an identifier character that cannot start one starts no value
        ("llama.generate=raise(ValueError,·A)", 32, "expected a value"),
    ],
)
def test_a_name_python_refuses_is_refused_where_it_is(text: str, column: int, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(text)
    assert info.value.column == column
    assert info.value.message.startswith(message)
