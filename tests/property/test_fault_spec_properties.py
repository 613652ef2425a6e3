"""Property tests of the fault grammar: valid specs round-trip, mangled ones fail cleanly.

``spec_texts()`` writes valid spec text *and* the Spec it must parse to, varying what the
grammar lets vary (whitespace, positional or keyword arguments, quote style, escapes,
units, defaults given or left out). It lives here until the plugin moves it to
pytest_resilience/strategies.py.
"""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from faults import KINDS, SITES, Entry, Site, Spec, SpecError, Term, format_duration, parse
from faults.kinds import ArgType, ArgValue, Param, corrupt_json, exception_names, kinds_for

SETTINGS = settings(max_examples=100, deadline=None)

ident = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True)
dotted = st.lists(ident, min_size=1, max_size=3).map(".".join)
space = st.sampled_from(["", "", "", " ", "  ", "\t", "\n"])


def seconds(number: str, unit: str) -> float:
    """What the grammar says a duration means: ms are divided by 1000, m and h multiplied."""
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}
    return float(number) / 1000 if unit == "ms" else float(number) * scale[unit]


@st.composite
def sites(draw: st.DrawFn) -> tuple[str, Site]:
    if draw(st.booleans()):
        name = draw(st.sampled_from(list(SITES)))
        family, _, target = name.partition(".")
        return name, Site(family, target)
    target = f"{draw(dotted)}:{draw(dotted)}"
    return f"py:{target}", Site("py", target)


@st.composite
def decimals(draw: st.DrawFn, most: int) -> str:
    whole = draw(st.integers(0, most))
    fraction = draw(st.none() | st.from_regex(r"[0-9]{1,4}", fullmatch=True))
    return f"{whole}.{fraction}" if fraction is not None and whole < most else str(whole)


@st.composite
def durations(draw: st.DrawFn, forever: bool) -> tuple[str, float]:
    if forever and draw(st.integers(0, 4)) == 0:
        return "forever", math.inf
    number, unit = draw(decimals(10**5)), draw(st.sampled_from(["ms", "s", "m", "h"]))
    return number + unit, seconds(number, unit)


@st.composite
def strings(draw: st.DrawFn) -> tuple[str, str]:
    value = draw(st.text(max_size=12))
    if value.isidentifier() and draw(st.booleans()):
        return value, value  # a bare name is taken as its text
    quote = draw(st.sampled_from(['"', "'"]))
    body = ""
    for c in value:
        needs = c in (quote, "\\")
        body += "\\" + c if needs or draw(st.integers(0, 9)) == 0 else c
    return quote + body + quote, value


def values(param: Param) -> st.SearchStrategy[tuple[str, ArgValue]]:
    if param.type is ArgType.INT:
        return st.integers(0, 10**9).map(lambda n: (str(n), n))
    if param.type is ArgType.DURATION:
        return durations(param.forever)
    if param.type is ArgType.STRING:
        return strings()
    return st.sampled_from(exception_names()).map(lambda n: (n, n)) | st.lists(
        ident, min_size=2, max_size=4
    ).map(lambda parts: (".".join(parts), ".".join(parts)))


@st.composite
def terms(draw: st.DrawFn, site: Site) -> tuple[str, Term]:
    kind = draw(st.sampled_from(kinds_for(site.key)))
    info = KINDS[kind]
    given: list[tuple[Param, str]] = []
    bound: dict[str, ArgValue] = {}
    for p in info.params:
        if p.required or draw(st.booleans()):
            text, bound[p.name] = draw(values(p))
            given.append((p, text))
        else:
            bound[p.name] = p.default
    # Only a leading run of the parameters, in order, may be given by position.
    runs = 0
    while runs < len(given) and given[runs][0] is info.params[runs]:
        runs += 1
    positional = draw(st.integers(0, runs))
    keywords = draw(st.permutations(given[positional:]))
    parts = [t for _, t in given[:positional]]
    parts += [f"{p.name}{draw(space)}={draw(space)}{t}" for p, t in keywords]
    text = ""
    pct = draw(st.none() | decimals(100))
    if pct is not None:
        text += f"{pct}{draw(space)}%{draw(space)}"
    count = draw(st.none() | st.integers(1, 10**9))
    if count is not None:
        text += f"{count}{draw(space)}*{draw(space)}"
    at = draw(st.none() | st.integers(1, 10**9))
    plus = at is not None and draw(st.booleans())
    if at is not None:
        text += f"@{draw(space)}{at}{draw(space)}{'+' if plus else ''}{draw(space)}"
    text += kind
    empty_parens: bool = draw(st.booleans())  # `kind()` is as valid as `kind`
    if parts or empty_parens:
        inner = ",".join(f"{draw(space)}{part}{draw(space)}" for part in parts)
        text += f"{draw(space)}({inner}{draw(space) if not parts else ''})"
    args = tuple((p.name, bound[p.name]) for p in info.params)
    return text, Term(kind, args, None if pct is None else float(pct), count, at, plus)


@st.composite
def spec_texts(draw: st.DrawFn) -> tuple[str, Spec]:
    """Valid spec text, and the Spec it means."""
    chosen = draw(st.lists(sites(), max_size=4, unique_by=lambda pair: pair[1]))
    texts: list[str] = []
    entries: list[Entry] = []
    for site_text, site in chosen:
        chain = draw(st.lists(terms(site), min_size=1, max_size=4))
        arrows = [f"{draw(space)}->{draw(space)}" for _ in chain[1:]]
        body = chain[0][0] + "".join(a + t for a, (t, _) in zip(arrows, chain[1:], strict=True))
        texts.append(f"{draw(space)}{site_text}{draw(space)}={draw(space)}{body}{draw(space)}")
        entries.append(Entry(site, tuple(term for _, term in chain)))
    text = ";".join(texts) if texts else draw(space)
    return text, Spec(tuple(entries))


# ----------------------------------------------------------------------------- properties


@given(spec_texts())
@SETTINGS
def test_valid_text_parses_to_what_it_means(case: tuple[str, Spec]) -> None:
    text, expected = case
    assert parse(text) == expected


@given(spec_texts())
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


@given(spec_texts(), st.data())
@settings(max_examples=250, deadline=None)
def test_mangled_specs_fail_cleanly(case: tuple[str, Spec], data: st.DataObject) -> None:
    text = case[0]
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
    check_clean(text)


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
