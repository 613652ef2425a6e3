"""Property tests of the fault grammar: valid specs round-trip, mangled ones fail cleanly.

``spec_texts()`` (from faults.strategies, where users get it too) writes valid
spec text *and* the Spec it must parse to, varying what the grammar lets vary (whitespace,
positional or keyword arguments, quote style, escapes, units, defaults given or left out).
``malformed_specs()`` applies the mutations of the corpus of malformed specs
(``tests/corpus/make_specs.py``) with hypothesis choosing every random decision: each spec
has one mistake, at a column the mutation knows.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from faults.effects import corrupt_json
from faults.parser import parse
from faults.spec import Entry, Site, Spec, SpecError, Term, format_duration
from faults.strategies import spec_texts
from tests.corpus import make_specs

if TYPE_CHECKING:
    from tests.corpus.make_specs import Case

# spec_texts() takes about 10 ms an example on an idle core, far inside hypothesis's
# too_slow check (a second for the first examples): it only fails on a busy machine
SLOW_TO_DRAW = [HealthCheck.too_slow]
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=SLOW_TO_DRAW)

# ----------------------------------------------------------------------------- properties


# A bare name is any Python identifier, "·" (not a letter, not a digit) included
MIDDLE_DOT = Spec(
    (
        Entry(
            Site("py", "A:A"),
            (
                Term("off"),
                Term("raise", (("type", "ArithmeticError"), ("message", "A·"))),
            ),
        ),
    )
)


@given(spec_texts())
@example(("py:A:A=off->raise(ArithmeticError,message=A·)", MIDDLE_DOT))
@SETTINGS
def test_valid_text_parses_to_what_it_means(case: tuple[str, Spec]) -> None:
    text, expected = case
    assert parse(text) == expected


@given(spec_texts())
@example(("py:A:A=off->raise(ArithmeticError,message=A·)", MIDDLE_DOT))
@SETTINGS
def test_canonical_text_round_trips(case: tuple[str, Spec]) -> None:
    spec = parse(case[0])
    canonical = str(spec)
    assert parse(canonical) == spec
    assert str(parse(canonical)) == canonical
    assert not any(c.isspace() for c in outside_quotes(canonical))


def outside_quotes(text: str) -> str:
    """The canonical text without its double-quoted strings."""
    out: list[str] = []
    inside = escaped = False
    for c in text:
        if escaped:
            escaped = False
        elif inside:
            escaped, inside = c == "\\", c != '"'
        elif c == '"':
            inside = True
        else:
            out.append(c)
    return "".join(out)


@given(
    pct=st.floats(0, 100),
    duration=st.floats(0, 10**9),
    jitter=st.floats(0, 10**9),
    message=st.text(max_size=20),
)
@SETTINGS
def test_any_floats_and_strings_round_trip(
    pct: float, duration: float, jitter: float, message: str
) -> None:
    spec = Spec(
        (
            Entry(
                Site("llama", "generate"),
                (
                    Term("latency", (("duration", duration), ("jitter", jitter)), pct=pct),
                    Term("raise", (("type", "ValueError"), ("message", message))),
                ),
            ),
        )
    )
    assert parse(str(spec)) == spec


@given(st.floats(0, 10**9))
@SETTINGS
def test_format_duration_is_exact(value: float) -> None:
    text = format_duration(value)
    assert parse(f"llama.generate=latency({text})").entries[0].chain[0].arg("duration") == value


GRAMMAR = "=;->*%@+(),'\"\\ .:_0123456789smhxyzpaylo\n"


def check_clean(text: str) -> None:
    """Either a spec that round-trips, or a SpecError with a column inside the text."""
    error: SpecError | None = None
    try:
        spec = parse(text)
    except SpecError as err:
        error = err
    if error is None:
        assert parse(str(spec)) == spec
    else:
        assert error.text == text
        assert 0 <= error.column <= len(text)
        assert "^" in str(error)


def mangle(text: str, data: st.DataObject) -> str:
    """``text`` with one to three characters deleted, inserted or replaced."""
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(text)))
        c = data.draw(st.sampled_from(GRAMMAR) | st.characters())
        match data.draw(st.sampled_from(["delete", "insert", "replace"])):
            case "delete":
                text = text[:i] + text[i + 1 :]
            case "insert":
                text = text[:i] + c + text[i:]
            case _:
                text = text[:i] + c + text[i + 1 :]
    return text


@given(spec_texts(), st.data())
@settings(max_examples=250, deadline=None, suppress_health_check=SLOW_TO_DRAW)
def test_mangled_specs_fail_cleanly(case: tuple[str, Spec], data: st.DataObject) -> None:
    check_clean(mangle(case[0], data))


def malformed_specs() -> st.SearchStrategy[Case]:
    """A valid spec with one mistake: its text, the column of the mistake, words its error
    message holds (the corpus' mutations, every random decision drawn by hypothesis)."""
    return st.builds(
        make_specs.malformed,
        st.randoms(use_true_random=False),
        st.sampled_from(sorted(make_specs.MUTATIONS)),
    )


MALFORMED = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@given(malformed_specs())
@MALFORMED
def test_a_malformed_spec_is_refused_at_its_mistake(case: Case) -> None:
    with pytest.raises(SpecError) as info:
        parse(case.text)
    error = info.value
    assert (error.text, error.column) == (case.text, case.column), (case.name, error.message)
    assert case.says in error.message, case.name


@given(malformed_specs(), st.data())
@MALFORMED
def test_a_malformed_spec_mangled_further_fails_cleanly(case: Case, data: st.DataObject) -> None:
    check_clean(mangle(case.text, data))


@given(malformed_specs(), malformed_specs(), st.sampled_from([";", "->", "", " ", "\n", "="]))
@MALFORMED
def test_malformed_specs_joined_fail_cleanly(first: Case, second: Case, glue: str) -> None:
    check_clean(first.text + glue + second.text)  # what follows may even mend a mistake


@given(st.text(alphabet=st.sampled_from(GRAMMAR) | st.characters(), max_size=60))
@settings(max_examples=500, deadline=None)
def test_any_text_fails_cleanly(text: str) -> None:
    check_clean(text)


@given(st.text())
@SETTINGS
def test_corrupt_json_is_never_valid_json(text: str) -> None:
    try:
        json.loads(corrupt_json(text))
    except json.JSONDecodeError:
        return
    raise AssertionError(f"corrupt_json({text!r}) is valid JSON")
