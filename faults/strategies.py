"""Hypothesis strategies for fault specs, for property tests of code that meets faults.

Install the extra (``pip install pytest-resilience[hypothesis]``) and import this module in
your tests; ``import faults`` never imports it, nor hypothesis. It is the one module of
:mod:`faults` that imports hypothesis, and like the rest it never imports pytest.

:func:`fault_specs` draws canonical ``--inject-faults`` text (``llama.generate=2*none``),
restricted to the sites, kinds and exception types you name. A failing example prints as
text you can paste after ``--inject-faults``, and shrinks towards one site with one simple
term. :func:`spec_texts` draws spec text written every way the grammar allows, with the
:class:`~faults.spec.Spec` it means: for code that reads spec text itself.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

from hypothesis import strategies as st

from faults.kinds import (
    KINDS,
    SITES,
    ArgType,
    ArgValue,
    Param,
    check_exception_name,
    exception_names,
    kinds_for,
)
from faults.spec import Entry, Site, Spec, SpecError, Term

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["fault_specs", "spec_texts"]

# The order a strategy shrinks in: towards the first. hypothesis deems an example with
# fewer choices simpler, whatever their values, so kinds go by how many choices their
# shortest form takes (no arguments; one; two; three), and within that from the mildest
# fault to the most disruptive. A kind missing here (a new one) goes last.
_KIND_ORDER: Final = (
    "none",
    "corrupt",
    "oom",
    "nan",
    "refuse",
    "restart",
    "off",
    "truncate",
    "ratelimit",
    "status",
    "timeout",
    "lost",
    "raise",
    "stall",
    "latency",
    "pause",
)
_SITE_ORDER: Final = (
    "llama.generate",
    "llama.chat",
    "llama.stream",
    "llama.embed",
    "llama.load",
    "daemon.request",
    "daemon.stream",
    "daemon.process",
)
# What `raise(...)` raises by default: the errors a model call really meets. Bare names
# the grammar accepts; never a BaseException such as KeyboardInterrupt, which would stop
# the test run rather than test the code.
_EXCEPTIONS: Final = (
    "ConnectionError",
    "TimeoutError",
    "OSError",
    "RuntimeError",
    "ValueError",
    "DaemonUnavailable",
    "DaemonLost",
    "InvalidOutput",
    "ServerError",
    "RateLimited",
    "ResourceExhausted",
)
# Messages stay pasteable inside single shell quotes: no quote, backslash or newline.
_MESSAGE_CHARS: Final = "abcdefghijklmnopqrstuvwxyz0123456789 "
# Durations read well as round values first; any whole number of milliseconds after that
# (ms / 1000 is exactly what the grammar reads back).
_ROUND_SECONDS: Final = (1.0, 0.5, 0.1, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
_DURATIONS: Final = st.sampled_from(_ROUND_SECONDS) | st.integers(1, 300_000).map(
    lambda ms: ms / 1000
)


def _ranked(names: Iterable[str], order: tuple[str, ...]) -> list[str]:
    rank = {name: i for i, name in enumerate(order)}
    return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))


def _names(value: str | Iterable[str], what: str) -> list[str]:
    """The names given, once each and in order; a single string is one name."""
    names = list(dict.fromkeys([value] if isinstance(value, str) else value))
    if not names:
        raise ValueError(f"{what}= names nothing: give at least one, or leave it out")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{what}= takes names (strings), got {name!r}")
    return names


def _did_you_mean(hint: str | None) -> str:
    return f" (did you mean {hint!r}?)" if hint else ""


def _site(name: str) -> Site:
    try:
        return Site.parse(name)
    except SpecError as err:
        raise ValueError(
            f"fault_specs(sites=...): {err.message}{_did_you_mean(err.suggestion)}; "
            f"sites are {', '.join(SITES)}, or py:MODULE:QUALNAME"
        ) from None


def _kind(name: str) -> str:
    if name in KINDS:
        return name
    import difflib  # noqa: PLC0415 - only an error message needs it

    close = difflib.get_close_matches(name, list(KINDS), n=1, cutoff=0.6)
    raise ValueError(
        f"fault_specs(kinds=...): unknown fault kind {name!r}"
        f"{_did_you_mean(close[0] if close else None)}; kinds are {', '.join(KINDS)}"
    )


def _exception(name: str) -> str:
    problem = check_exception_name(name)
    if problem is not None:
        raise ValueError(f"fault_specs(exceptions=...): {problem[0]}{_did_you_mean(problem[1])}")
    return name


def _value(param: Param, exceptions: tuple[str, ...]) -> st.SearchStrategy[ArgValue]:
    """The values a fault_specs term gives ``param``: the default first, when it has one."""
    value: st.SearchStrategy[ArgValue]
    if param.type is ArgType.NAME:  # the exception type of raise, the only name parameter
        value = st.sampled_from(exceptions)
    elif param.type is ArgType.STRING:
        value = st.text(alphabet=_MESSAGE_CHARS, min_size=1, max_size=12)
    elif param.type is ArgType.INT:
        value = _ints(param, st.integers(0, 10))
    elif param.required and param.forever:
        value = _DURATIONS | st.just(math.inf)
    else:  # an optional forever is the default, so it is already drawn first
        value = _DURATIONS
    return value if param.required else st.just(param.default) | value


_STATUSES: Final = (400, 429, 500, 502, 503, 504, 599)


def _ints(param: Param, wide: st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    """Whole numbers for ``param``: ``wide``, or the HTTP statuses its check accepts."""
    check = param.check
    if check is None:
        return wide
    return st.sampled_from([n for n in _STATUSES if check(n) is None])


_PCTS: Final = st.none() | st.integers(1, 100).map(float)
_COUNTS: Final = st.none() | st.integers(1, 5)


@st.composite
def _terms(
    draw: st.DrawFn,
    kinds: tuple[str, ...],
    args: dict[str, tuple[tuple[str, st.SearchStrategy[ArgValue]], ...]],
) -> Term:
    # ``kinds`` maps an index into the list of every kind drawn to one the site admits
    # (see fault_specs), so an index means the same kind at most sites that admit it: the
    # shrinker can then move a term to an earlier site without changing its kind.
    kind = kinds[draw(st.integers(0, len(kinds) - 1))]
    values = tuple((name, draw(value)) for name, value in args[kind])
    pct, count, at = draw(_PCTS), draw(_COUNTS), draw(_COUNTS)
    plus = at is not None and draw(st.booleans())
    return Term(kind, values, pct, count, at, plus)


@st.composite
def _entries(
    draw: st.DrawFn,
    plan: tuple[tuple[Site, st.SearchStrategy[Term]], ...],
    max_terms: int,
) -> Entry:
    site, terms = plan[draw(st.integers(0, len(plan) - 1))]
    # The one term every chain needs comes last, after a plain list of the others: the
    # first element of a list with min_size=1 is forced, so the shrinker could not delete
    # it and let the next element take its place.
    chain = draw(st.lists(terms, max_size=max_terms - 1))
    return Entry(site, (*chain, draw(terms)))


def fault_specs(
    *,
    sites: str | Iterable[str] | None = None,
    kinds: str | Iterable[str] | None = None,
    exceptions: str | Iterable[str] | None = None,
    max_entries: int = 3,
    max_terms: int = 3,
) -> st.SearchStrategy[str]:
    """Valid fault specs, as the canonical text that ``--inject-faults`` takes.

    Each example is ``str(parse(text))`` of itself: no whitespace, defaults left out, so a
    failing example such as ``spec='llama.generate=2*none'`` can be pasted after
    ``--inject-faults`` as it is printed. Every spec has 1 to ``max_entries`` sites, each
    with a chain of 1 to ``max_terms`` terms (with or without ``pct%``, ``count*`` and
    ``@n``/``@n+``; counts and call numbers up to 5, ``after=`` up to 10).

    ``sites``: built-in site names or ``py:MODULE:QUALNAME`` (default: every built-in
    site, never a ``py:`` one). ``kinds``: fault kinds (default: every kind but ``off``
    and ``crash``, which aborts the process that meets it: drawn only when named).
    A site is drawn with the kinds it admits. ``exceptions``: what ``raise(...)`` raises
    (default: common connection, timeout and model errors). Examples shrink towards one
    site with one term, no modifiers and default arguments, preferring the sites and kinds
    given first (and, as hypothesis does, kinds with fewer arguments): by default towards
    ``llama.generate=none``.

    Raises ``ValueError`` naming the culprit for an unknown or malformed site, an unknown
    kind or exception name, a named site that admits none of the kinds (or no site at
    all that does), and ``max_entries`` or ``max_terms`` below 1.
    """
    if max_entries < 1 or max_terms < 1:
        raise ValueError(
            f"fault_specs needs max_entries >= 1 and max_terms >= 1, got {max_entries}, {max_terms}"
        )
    kind_names = (
        [_kind(k) for k in _names(kinds, "kinds")]
        if kinds is not None
        else _ranked((k for k in KINDS if k not in ("off", "crash")), _KIND_ORDER)
    )
    given = _EXCEPTIONS if exceptions is None else exceptions
    raised = tuple(_exception(e) for e in _names(given, "exceptions"))
    named = sites is not None
    site_list = (
        [_site(s) for s in _names(sites, "sites")]
        if sites is not None
        else [_site(s) for s in _ranked(SITES, _SITE_ORDER)]
    )
    # Strategies are built once here: building them in every draw is slow.
    args = {k: tuple((p.name, _value(p, raised)) for p in KINDS[k].params) for k in kind_names}
    plan: list[tuple[Site, st.SearchStrategy[Term]]] = []
    for site in site_list:
        admitted = [i for i, k in enumerate(kind_names) if KINDS[k].admits(site.key)]
        if admitted:
            # Index i stands for the first kind at or after i that the site admits.
            kinds_at = tuple(
                kind_names[next((j for j in admitted if j >= i), admitted[0])]
                for i in range(len(kind_names))
            )
            plan.append((site, _terms(kinds_at, args)))
        elif named:
            raise ValueError(
                f"fault_specs: site {str(site)!r} admits none of the kinds "
                f"{', '.join(kind_names)} (it admits: {', '.join(kinds_for(site.key))})"
            )
    if not plan:
        raise ValueError(f"fault_specs: no built-in site admits any of {', '.join(kind_names)}")
    # Each entry's draws (site, then terms) stay together, so the shrinker can drop one
    # whole; the one entry every spec needs comes last, as in a chain. Not a unique list:
    # rejected duplicates leave draws behind that get in the shrinker's way; a site drawn
    # again extends its chain instead.
    entry = _entries(tuple(plan), max_terms)
    entries = st.tuples(st.lists(entry, max_size=max_entries - 1), entry)
    return entries.map(lambda drawn: _spec_text([*drawn[0], drawn[1]], max_terms))


def _spec_text(drawn: list[Entry], max_terms: int) -> str:
    chains: dict[Site, tuple[Term, ...]] = {}
    for entry in drawn:
        chains[entry.site] = (chains.get(entry.site, ()) + entry.chain)[:max_terms]
    return str(Spec(tuple(Entry(site, chain) for site, chain in chains.items())))


# The parser's oracle: any way of writing a spec, and what it means. Whitespace, argument
# order, quote style, escapes and units vary; every value is exactly what parse() returns.

_IDENT: Final = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True)
_DOTTED: Final = st.lists(_IDENT, min_size=1, max_size=3).map(".".join)
_SPACE: Final = st.sampled_from(["", "", "", " ", "  ", "\t", "\n"])


def _seconds(number: str, unit: str) -> float:
    """What the grammar says a duration means: ms are divided by 1000, m and h multiplied."""
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}
    return float(number) / 1000 if unit == "ms" else float(number) * scale[unit]


@st.composite
def _any_sites(draw: st.DrawFn) -> tuple[str, Site]:
    if draw(st.booleans()):
        name = draw(st.sampled_from(list(SITES)))
        family, _, target = name.partition(".")
        return name, Site(family, target)
    target = f"{draw(_DOTTED)}:{draw(_DOTTED)}"
    return f"py:{target}", Site("py", target)


@st.composite
def _decimals(draw: st.DrawFn, most: int) -> str:
    whole = draw(st.integers(0, most))
    fraction = draw(st.none() | st.from_regex(r"[0-9]{1,4}", fullmatch=True))
    return f"{whole}.{fraction}" if fraction is not None and whole < most else str(whole)


@st.composite
def _any_durations(draw: st.DrawFn, forever: bool) -> tuple[str, float]:
    if forever and draw(st.integers(0, 4)) == 0:
        return "forever", math.inf
    number, unit = draw(_decimals(10**5)), draw(st.sampled_from(["ms", "s", "m", "h"]))
    return number + unit, _seconds(number, unit)


@st.composite
def _any_strings(draw: st.DrawFn) -> tuple[str, str]:
    value = draw(st.text(max_size=12))
    if value.isidentifier() and draw(st.booleans()):
        return value, value  # a bare name is taken as its text
    quote = draw(st.sampled_from(['"', "'"]))
    body = ""
    for c in value:
        needs = c in (quote, "\\")
        body += "\\" + c if needs or draw(st.integers(0, 9)) == 0 else c
    return quote + body + quote, value


def _any_values(param: Param) -> st.SearchStrategy[tuple[str, ArgValue]]:
    if param.type is ArgType.INT:
        return _ints(param, st.integers(0, 10**9)).map(lambda n: (str(n), n))
    if param.type is ArgType.DURATION:
        return _any_durations(param.forever)
    if param.type is ArgType.STRING:
        return _any_strings()
    return st.sampled_from(exception_names()).map(lambda n: (n, n)) | st.lists(
        _IDENT, min_size=2, max_size=4
    ).map(lambda parts: (".".join(parts), ".".join(parts)))


@st.composite
def _any_terms(draw: st.DrawFn, site: Site) -> tuple[str, Term]:
    kind = draw(st.sampled_from(kinds_for(site.key)))
    info = KINDS[kind]
    given: list[tuple[Param, str]] = []
    bound: dict[str, ArgValue] = {}
    for p in info.params:
        if p.required or draw(st.booleans()):
            text, bound[p.name] = draw(_any_values(p))
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
    parts += [f"{p.name}{draw(_SPACE)}={draw(_SPACE)}{t}" for p, t in keywords]
    text = ""
    pct = draw(st.none() | _decimals(100))
    if pct is not None:
        text += f"{pct}{draw(_SPACE)}%{draw(_SPACE)}"
    count = draw(st.none() | st.integers(1, 10**9))
    if count is not None:
        text += f"{count}{draw(_SPACE)}*{draw(_SPACE)}"
    at = draw(st.none() | st.integers(1, 10**9))
    plus = at is not None and draw(st.booleans())
    if at is not None:
        text += f"@{draw(_SPACE)}{at}{draw(_SPACE)}{'+' if plus else ''}{draw(_SPACE)}"
    text += kind
    empty_parens: bool = draw(st.booleans())  # `kind()` is as valid as `kind`
    if parts or empty_parens:
        inner = ",".join(f"{draw(_SPACE)}{part}{draw(_SPACE)}" for part in parts)
        text += f"{draw(_SPACE)}({inner}{draw(_SPACE) if not parts else ''})"
    args = tuple((p.name, bound[p.name]) for p in info.params)
    return text, Term(kind, args, None if pct is None else float(pct), count, at, plus)


@st.composite
def _spec_texts(draw: st.DrawFn) -> tuple[str, Spec]:
    chosen = draw(st.lists(_any_sites(), max_size=4, unique_by=lambda pair: pair[1]))
    texts: list[str] = []
    entries: list[Entry] = []
    for site_text, site in chosen:
        chain = draw(st.lists(_any_terms(site), min_size=1, max_size=4))
        arrows = [f"{draw(_SPACE)}->{draw(_SPACE)}" for _ in chain[1:]]
        body = chain[0][0] + "".join(a + t for a, (t, _) in zip(arrows, chain[1:], strict=True))
        texts.append(f"{draw(_SPACE)}{site_text}{draw(_SPACE)}={draw(_SPACE)}{body}{draw(_SPACE)}")
        entries.append(Entry(site, tuple(term for _, term in chain)))
    text = ";".join(texts) if texts else draw(_SPACE)
    return text, Spec(tuple(entries))


def spec_texts() -> st.SearchStrategy[tuple[str, Spec]]:
    """Valid spec text written any way the grammar allows, and the Spec it means.

    Whitespace (spaces, tabs, newlines) between tokens, positional or keyword arguments in
    any order, either quote style with escapes, every duration unit, defaults given or
    left out, ``kind()`` for ``kind``, ``py:`` sites with made-up names, any exception name,
    numbers up to 10⁹, the empty spec. ``parse(text) == spec`` for every example: use it
    to test code that reads spec text. For specs to *run*, use :func:`fault_specs`.
    """
    return _spec_texts()
