"""Hypothesis strategies and a state-machine template, for testing resilience code.

Install the extra (``pip install pytest-resilience[hypothesis]``) and import this module in
your tests; ``import pytest_resilience`` never imports it, nor hypothesis.

Fault specs
    :func:`fault_specs` draws canonical ``--inject-faults`` text (``llama.generate=2*none``),
    restricted to the sites, kinds and exception types you name. A failing example prints
    as text you can paste after ``--inject-faults``, and shrinks towards one site with one
    simple term. :func:`spec_texts` draws spec text written every way the grammar allows,
    with the :class:`~faults.spec.Spec` it means: for code that reads spec text itself.

Retry and breaker settings
    :func:`retry_settings` and :func:`breaker_settings` draw small frozen settings objects
    (:class:`RetrySettings`, :class:`BreakerSettings`) rather than the policies themselves:
    a ``Retry`` or a ``CircuitBreaker`` carries a clock, a random source and a journal, so
    its repr cannot say how to build it again, while a settings object prints as the
    values that matter, and ``.build(on=..., clock=..., journal=...)`` makes the real
    thing. :func:`backoffs` and :func:`trip_policies` draw the parts.

A breaker state machine
    :class:`BreakerMachine` is a hypothesis ``RuleBasedStateMachine`` for *your* code. You
    say how to build it around a :class:`Dependency` the machine controls; the machine
    makes the dependency healthy, failing or slow, calls your code, lets virtual time pass,
    and checks, after every step, contracts that hold for any code that puts a circuit
    breaker in front of a dependency: the breaker moves only along legal transitions, the
    dependency is never called while the breaker is open, a failing dependency opens the
    breaker after the number of failures you declare, and a healthy one closes it again
    after the recovery time you declare.

This module imports hypothesis and :mod:`faults`, and never pytest.
"""

from __future__ import annotations

import inspect
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

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

from ..core.breaker import CircuitBreaker, ConsecutiveFailures, CountWindow, Recovery, TimeWindow
from ..core.cancel import current_scope
from ..core.clock import VirtualClock
from ..core.errors import CircuitOpenError
from ..core.events import BreakerTransition, CallRejected, Event, Journal
from ..core.retry import Backoff, Jitter, Retry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ..core.breaker import TripPolicy
    from ..core.clock import Clock
    from ..core.errors import ExceptionFilter

__all__ = [
    "BreakerMachine",
    "BreakerSettings",
    "Dependency",
    "DependencyCall",
    "RetrySettings",
    "backoffs",
    "breaker_settings",
    "fault_specs",
    "retry_settings",
    "spec_texts",
    "trip_policies",
]


# ---------------------------------------------------------------------------- fault specs

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
    site, never a ``py:`` one). ``kinds``: fault kinds (default: every kind but ``off``).
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
        else _ranked((k for k in KINDS if k != "off"), _KIND_ORDER)
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


# ---------------------------------------------------------------------------------- retry


def backoffs(
    *, max_delay: float = 60.0, jitters: str | Iterable[Jitter | str] | None = None
) -> st.SearchStrategy[Backoff]:
    """Backoff shapes: ``base`` and ``cap`` from 0 to ``max_delay`` seconds, ``factor``
    from 1 to 10, one of ``jitters`` (default: every :class:`~pytest_resilience.core.retry.Jitter`).

    Shrinks towards ``Backoff(base=0, factor=1, cap=0, jitter="none")``, which never
    sleeps. Raises ``ValueError`` for a negative or infinite ``max_delay`` or an unknown
    jitter name.
    """
    if not (math.isfinite(max_delay) and max_delay >= 0):
        raise ValueError(f"backoffs needs a finite max_delay >= 0, got {max_delay!r}")
    names = list(Jitter) if jitters is None else _names(jitters, "jitters")
    chosen: list[Jitter] = []
    for name in names:
        try:
            chosen.append(Jitter(name))
        except ValueError:
            known = ", ".join(j.value for j in Jitter)
            raise ValueError(f"backoffs: unknown jitter {name!r}; known: {known}") from None
    delays = st.floats(0.0, max_delay, allow_subnormal=False)
    return st.builds(
        Backoff,
        base=delays,
        factor=st.floats(1.0, 10.0, allow_subnormal=False),
        cap=delays,
        jitter=st.sampled_from(chosen),
    )


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """The settings of a retry policy, as hypothesis prints them; :meth:`build` makes one.

    ``seed`` seeds the policy's jitter, so the printed settings rebuild the exact policy.
    """

    attempts: int
    backoff: Backoff
    budget: float | None = None
    seed: int = 0

    def build(
        self,
        on: ExceptionFilter,
        *,
        clock: Clock | None = None,
        journal: Journal | None = None,
        **options: Any,
    ) -> Retry:
        """A :class:`~pytest_resilience.core.retry.Retry` with these settings, retrying ``on``.

        ``clock`` defaults to a new :class:`~pytest_resilience.core.clock.VirtualClock`; the
        other ``options`` (``on_result``, ``reraise``, ``classifier``, ``on_retry``,
        ``name``) go to ``Retry`` as they are. Raises what ``Retry`` raises.
        """
        return Retry(
            on=on,
            attempts=self.attempts,
            backoff=self.backoff,
            budget=self.budget,
            clock=clock if clock is not None else VirtualClock(),
            rng=random.Random(self.seed),
            journal=journal,
            **options,
        )


def retry_settings(
    *,
    attempts: st.SearchStrategy[int] | None = None,
    backoff: st.SearchStrategy[Backoff] | None = None,
    budget: st.SearchStrategy[float | None] | None = None,
) -> st.SearchStrategy[RetrySettings]:
    """:class:`RetrySettings` drawn from the given strategies.

    Defaults: ``attempts`` from 1 to 5, ``backoff`` from :func:`backoffs`, ``budget`` none
    or 0.001 to 3600 seconds (pass ``st.none()`` for no budget, ``st.just(30.0)`` for a
    fixed one), and any 32-bit jitter seed. Shrinks towards one attempt, no wait, no budget.
    """
    return st.builds(
        RetrySettings,
        attempts=st.integers(1, 5) if attempts is None else attempts,
        backoff=backoffs() if backoff is None else backoff,
        budget=st.none() | st.floats(0.001, 3600.0) if budget is None else budget,
        seed=st.integers(0, 2**32 - 1),
    )


# -------------------------------------------------------------------------------- breaker

_RATES: Final = st.sampled_from([0.5, 1.0, 0.25, 0.75]) | st.floats(
    0.0, 1.0, exclude_min=True, allow_subnormal=False
)


@st.composite
def _count_windows(draw: st.DrawFn, max_calls: int) -> CountWindow:
    size = draw(st.integers(1, max_calls))
    rate = draw(_RATES)
    return CountWindow(size, rate, draw(st.none() | st.integers(1, size)))


def trip_policies(*, max_calls: int = 10) -> st.SearchStrategy[TripPolicy]:
    """Trip policies: :class:`~pytest_resilience.core.breaker.ConsecutiveFailures`,
    :class:`~pytest_resilience.core.breaker.CountWindow` and
    :class:`~pytest_resilience.core.breaker.TimeWindow`, in that order of simplicity.

    Thresholds, window sizes and minimum calls go up to ``max_calls``; time windows span
    0.5 to 600 seconds. Raises ``ValueError`` for ``max_calls`` below 1.
    """
    if max_calls < 1:
        raise ValueError(f"trip_policies needs max_calls >= 1, got {max_calls}")
    consecutive = st.builds(ConsecutiveFailures, threshold=st.integers(1, max_calls))
    timed = st.builds(
        TimeWindow,
        seconds=st.sampled_from([60.0, 10.0, 1.0]) | st.floats(0.5, 600.0),
        rate=_RATES,
        min_calls=st.integers(1, max_calls),
    )
    return st.one_of(consecutive, _count_windows(max_calls), timed)


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """The settings of a circuit breaker, as hypothesis prints them; :meth:`build` makes one."""

    trip: TripPolicy
    recovery: Recovery
    slow_after: float | None = None

    @property
    def threshold(self) -> int | None:
        """How many consecutive failures certainly open a closed breaker with these settings.

        ``ConsecutiveFailures(n)``: ``n``. ``CountWindow``: the larger of its minimum calls
        and the fewest failures that reach its rate in a full window (fewer may do, from
        other histories). ``None`` for a ``TimeWindow``, where it depends on timing, and for
        a trip policy of your own.
        """
        trip = self.trip
        if isinstance(trip, ConsecutiveFailures):
            return trip.threshold
        if isinstance(trip, CountWindow):
            # Worst case, the window is full of successes: k failures make k/size. The
            # breaker compares the float quotient, so this does too.
            k = next(k for k in range(1, trip.size + 1) if k / trip.size >= trip.rate)
            return max(k, trip.size if trip.min_calls is None else trip.min_calls)
        return None

    def build(
        self,
        name: str = "breaker",
        *,
        on: ExceptionFilter,
        clock: Clock | None = None,
        journal: Journal | None = None,
        **options: Any,
    ) -> CircuitBreaker:
        """A :class:`~pytest_resilience.core.breaker.CircuitBreaker` with these settings.

        ``clock`` defaults to a new :class:`~pytest_resilience.core.clock.VirtualClock`; the
        other ``options`` (``exclude``) go to the breaker. Raises what it raises.
        """
        return CircuitBreaker(
            name,
            on=on,
            trip=self.trip,
            recovery=self.recovery,
            slow_after=self.slow_after,
            clock=clock if clock is not None else VirtualClock(),
            journal=journal,
            **options,
        )


def breaker_settings(
    *,
    trip: st.SearchStrategy[TripPolicy] | None = None,
    recovery: st.SearchStrategy[Recovery] | None = None,
    slow_after: st.SearchStrategy[float | None] | None = None,
) -> st.SearchStrategy[BreakerSettings]:
    """:class:`BreakerSettings` drawn from the given strategies.

    Defaults: ``trip`` from :func:`trip_policies`; ``recovery`` waits 0 to 600 seconds with
    1 to 3 probes and 1 to 3 successes; ``slow_after`` none or 0.1 to 60 seconds. Shrinks
    towards ``ConsecutiveFailures(1)``, a 30-second recovery with one probe, no slow calls.
    """
    recoveries = st.builds(
        Recovery,
        after=st.sampled_from([30.0, 1.0, 5.0, 60.0]) | st.floats(0.0, 600.0),
        probes=st.integers(1, 3),
        successes=st.integers(1, 3),
    )
    return st.builds(
        BreakerSettings,
        trip=trip_policies() if trip is None else trip,
        recovery=recoveries if recovery is None else recovery,
        slow_after=st.none() | st.floats(0.1, 60.0) if slow_after is None else slow_after,
    )


# ------------------------------------------------------------------ the breaker machine


@dataclass(frozen=True, slots=True)
class DependencyCall:
    """One call of a :class:`Dependency`: its number (from 1), the clock's time when it was
    called, the mode it was in, and whether the breaker should count it as a failure (it
    raised, was cut short, or took longer than the declared ``slow_after``)."""

    number: int
    time: float
    mode: str
    failed: bool


class Dependency:
    """The service your code protects, as a :class:`BreakerMachine` drives it.

    Call it (``dependency(*args, **kwargs)``) or await ``dependency.acall(...)``; it takes
    any arguments. Healthy, it returns :attr:`result`. Failing, it raises ``failure``.
    Slow, it waits ``delay`` seconds on the clock first: in the current deadline scope
    when one runs on the same clock (which ends the wait early, as a real timeout would),
    else with ``clock.sleep`` (``clock.asleep`` for ``acall``). ``slow_after`` decides
    whether a slow call counts as a failure. Every call is appended to :attr:`calls`, and
    passed to ``record`` if given.
    """

    def __init__(
        self,
        clock: VirtualClock,
        *,
        failure: type[Exception] = ConnectionError,
        slow_after: float | None = None,
        result: object = "ok",
        record: Callable[[DependencyCall], None] | None = None,
    ) -> None:
        self.clock = clock
        self.failure = failure
        self.slow_after = slow_after
        self.result = result
        self.calls: list[DependencyCall] = []
        self._record = record
        self._mode = "healthy"
        self._delay = 0.0

    def __repr__(self) -> str:
        slow = f" {self._delay:g}s" if self._mode == "slow" else ""
        return f"<Dependency {self._mode}{slow}, {len(self.calls)} calls>"

    @property
    def mode(self) -> str:
        """``"healthy"``, ``"failing"`` or ``"slow"``."""
        return self._mode

    def healthy(self) -> None:
        """Answer every call at once."""
        self._mode, self._delay = "healthy", 0.0

    def failing(self) -> None:
        """Raise ``failure`` on every call."""
        self._mode, self._delay = "failing", 0.0

    def slow(self, delay: float) -> None:
        """Answer every call after ``delay`` seconds. Raises ``ValueError`` if negative."""
        if not delay >= 0:
            raise ValueError(f"a slow dependency needs a delay >= 0, got {delay}")
        self._mode, self._delay = "slow", delay

    def _note(self, time: float, *, failed: bool) -> None:
        call = DependencyCall(len(self.calls) + 1, time, self._mode, failed)
        self.calls.append(call)
        if self._record is not None:
            self._record(call)

    def _fail(self, time: float) -> Exception:
        self._note(time, failed=True)
        return self.failure(f"the dependency is failing (call {len(self.calls)})")

    def _slow(self, finished: bool) -> bool:
        return not finished or (self.slow_after is not None and self._delay > self.slow_after)

    def __call__(self, *args: object, **kwargs: object) -> Any:
        start = self.clock.now()
        if self._mode == "failing":
            raise self._fail(start)
        finished = self._mode == "healthy"
        try:
            if not finished:
                scope = current_scope()
                if scope is not None and scope.clock is self.clock:
                    scope.wait(self._delay, what="a slow dependency")
                else:
                    self.clock.sleep(self._delay)
                finished = True
        finally:  # recorded even when a deadline cut the wait short
            self._note(start, failed=self._slow(finished))
        return self.result

    async def acall(self, *args: object, **kwargs: object) -> Any:
        """The async form of a call: the same modes, waiting with ``clock.asleep``."""
        start = self.clock.now()
        if self._mode == "failing":
            raise self._fail(start)
        finished = self._mode == "healthy"
        try:
            if not finished:
                await self.clock.asleep(self._delay)
                finished = True
        finally:
            self._note(start, failed=self._slow(finished))
        return self.result


# Transitions a breaker makes by itself, and the manual ones by the reason they record.
_AUTOMATIC: Final = frozenset(
    {("closed", "open"), ("open", "half_open"), ("half_open", "closed"), ("half_open", "open")}
)
_MANUAL: Final = {
    "reset()": "closed",
    "force_open()": "forced_open",
    "force_closed()": "forced_closed",
    "disable()": "disabled",
}
_SHOWN: Final = 25  # timeline lines in a failure message


def _describe(item: Event | DependencyCall) -> str:
    if isinstance(item, DependencyCall):
        what = "failed" if item.failed else "answered"
        return f"{item.time:10.3f}s dependency call {item.number} ({item.mode}): {what}"
    if isinstance(item, BreakerTransition):
        return (
            f"{item.time:10.3f}s breaker {item.source!r}: {item.from_state} -> "
            f"{item.to_state} ({item.reason})"
        )
    if isinstance(item, CallRejected):
        return f"{item.time:10.3f}s breaker {item.source!r} rejected a call ({item.state})"
    return f"{item.time:10.3f}s {item.kind} [{item.source}]"


class _Contract:
    """Reads the timeline of breaker transitions and dependency calls, in order, and fails
    at the first item that breaks the contract."""

    def __init__(self, machine: BreakerMachine) -> None:
        self.machine = machine
        self.source = machine.breaker_name
        self.state = "closed"
        self.streak = 0  # failed dependency calls in a row since the last transition
        self.failed_since = 0  # failed dependency calls since the last transition
        self.opened_at: float | None = None
        self.read = 0  # timeline items read so far

    def fail(self, problem: str) -> AssertionError:
        timeline = self.machine._timeline[: self.read][-_SHOWN:]
        shown = "\n".join(_describe(item) for item in timeline)
        if self.machine.breaker_name is None and self.source is not None:
            problem += (
                f"\n(watching breaker {self.source!r}, the first in the journal; set "
                "breaker_name to watch another)"
            )
        return AssertionError(f"{problem}\n\ntimeline (virtual seconds):\n{shown}")

    def catch_up(self) -> None:
        timeline = self.machine._timeline
        while self.read < len(timeline):
            item = timeline[self.read]
            self.read += 1
            if isinstance(item, DependencyCall):
                self.called(item)
            elif isinstance(item, BreakerTransition):
                self.moved(item)
        self.settled()

    def limit(self) -> int | None:
        """Failed calls in a row after which the breaker must have opened, in this state."""
        if self.state == "half_open":
            return 1  # one failed probe reopens a breaker
        return self.machine.threshold if self.state == "closed" else None

    def called(self, call: DependencyCall) -> None:
        if self.state in ("open", "forced_open"):
            raise self.fail(
                f"the dependency was called (call {call.number}) while the journal shows the "
                f"breaker {self.state}: does the code call it around the breaker?"
            )
        limit = self.limit()
        if limit is not None and self.streak >= limit:
            raise self.fail(self._not_open(call.number))
        if call.failed:
            self.streak += 1
            self.failed_since += 1
        else:
            self.streak = 0

    def settled(self) -> None:
        """The checks that hold once a call of the code has returned."""
        limit = self.limit()
        if limit is not None and self.streak >= limit:
            raise self.fail(self._not_open(None))

    def _not_open(self, next_call: int | None) -> str:
        m = self.machine
        then = f" and call {next_call} went through" if next_call is not None else ""
        if self.state == "half_open":
            return (
                f"a probe failed in half_open{then}, and the breaker did not reopen: one "
                "failed probe must reopen it"
            )
        return (
            f"the dependency failed {self.streak} times in a row{then}, and the journal "
            f"shows the breaker still closed: it must open after threshold = {m.threshold} "
            f"consecutive failures. Does build() pass the machine's journal to the "
            f"CircuitBreaker, does its on= match {m.failure.__name__}, and is its trip "
            f"policy the one threshold describes?"
        )

    def moved(self, event: BreakerTransition) -> None:
        if self.source is None:
            self.source = event.source
        elif event.source != self.source:
            if self.machine.breaker_name is None:
                raise ValueError(
                    f"the journal has transitions of several breakers ({self.source!r}, "
                    f"{event.source!r}): set breaker_name on {type(self.machine).__name__} "
                    "to the one that protects the dependency"
                )
            return  # another breaker's business
        before, after = event.from_state, event.to_state
        if before != self.state:
            raise self.fail(
                f"the journal shows {before} -> {after}, but the breaker was {self.state}"
            )
        if (before, after) not in _AUTOMATIC and _MANUAL.get(event.reason) != after:
            raise self.fail(f"{before} -> {after} ({event.reason}) is not a legal transition")
        if after == "open" and self.failed_since == 0:
            raise self.fail(
                f"the breaker opened ({event.reason}) without a failed dependency call since "
                f"it became {before}: is slow_after = {self.machine.slow_after} the "
                "breaker's, and does its on= count only the dependency's failures?"
            )
        recovery = self.machine.recovery
        if (before, after) == ("open", "half_open") and recovery is not None:
            assert self.opened_at is not None  # open is only entered through "open" events
            waited = event.time - self.opened_at
            if waited < recovery * (1 - 1e-9) - 1e-9:
                raise self.fail(
                    f"the breaker half-opened after {waited:g}s open, before recovery = "
                    f"{recovery:g}s: is that the breaker's Recovery.after?"
                )
        if after == "open":
            self.opened_at = event.time
        self.state = after
        self.streak = self.failed_since = 0


class BreakerMachine(RuleBasedStateMachine):
    """A state machine that checks the circuit breaker in front of a dependency of yours.

    Subclass it, define :meth:`build`, declare the breaker's settings in the class
    attributes, and turn it into a test case::

        class ClientMachine(BreakerMachine):
            threshold = 3       # consecutive failures that open the breaker
            recovery = 30.0     # seconds open before a probe goes through

            def build(self, dependency, clock, journal):
                breaker = CircuitBreaker("llm", on=ConnectionError,
                    trip=ConsecutiveFailures(3), recovery=30.0, clock=clock, journal=journal)
                client = Client(backend=dependency, breaker=breaker)
                return lambda: client.ask("hello")

        TestClient = ClientMachine.TestCase

    Each example builds your code afresh, with a new ``VirtualClock``, ``Journal`` and
    :class:`Dependency`. The rules switch the dependency between failing, healthy, slow
    (twice ``slow_after``: a failure) and lagging (half of it: a success); call your code
    1 to 8 times (the coroutine of an ``async`` function runs on the clock's event loop);
    let 0.5 to 2 times ``recovery`` pass; while the breaker is open, call your code just
    before the recovery time is up; and while it is open or half-open, heal the
    dependency, wait out ``recovery`` and call ``successes`` times, after which it must be
    closed. After every step the machine reads the journal's breaker transitions and the
    dependency's calls in order, and fails at the first of these that does not hold:

    - transitions follow the breaker's graph (closed -> open -> half_open -> closed or
      back to open; manual resets and forcing from anywhere), each from the state the
      previous one left;
    - the dependency is never called while the breaker is open;
    - the breaker opens only after a failed dependency call, and half-opens no sooner than
      ``recovery`` seconds after it opened;
    - ``threshold`` failed calls in a row leave the breaker open, and a failed probe
      reopens it;
    - while the dependency is healthy and the breaker closed, a call of your code does not
      raise.

    A call of your code may raise ``failure``, ``CircuitOpenError`` and the exceptions in
    ``raises``; anything else fails the test, as it is. The checks assume that one call
    through the breaker calls the dependency at most once.
    """

    #: Consecutive failed dependency calls after which the breaker must be open (for a
    #: ``CountWindow``, :attr:`BreakerSettings.threshold` computes it); ``None`` skips the
    #: check, for a ``TimeWindow``.
    threshold: ClassVar[int | None] = 5
    #: Seconds the breaker stays open before it lets a probe through (``Recovery.after``);
    #: ``None`` skips the checks that need it.
    recovery: ClassVar[float | None] = 30.0
    #: Successful probes that close a half-open breaker (``Recovery.successes``).
    successes: ClassVar[int] = 1
    #: The breaker's ``slow_after``: a call slower than this counts as a failure.
    slow_after: ClassVar[float | None] = None
    #: What a failing dependency raises (the breaker's ``on=`` must count it).
    failure: ClassVar[type[Exception]] = ConnectionError
    #: Other exceptions your code may raise when the dependency fails or the breaker is open
    #: (a ``RetryError``, a ``DeadlineExceeded``, an error of your own).
    raises: ClassVar[tuple[type[Exception], ...]] = ()
    #: The name of the breaker to watch, when the journal holds more than one.
    breaker_name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        problems = []
        if cls.threshold is not None and cls.threshold < 1:
            problems.append(f"threshold must be >= 1 or None, got {cls.threshold!r}")
        if cls.recovery is not None and not (math.isfinite(cls.recovery) and cls.recovery >= 0):
            problems.append(f"recovery must be finite and >= 0, or None, got {cls.recovery!r}")
        if cls.successes < 1:
            problems.append(f"successes must be >= 1, got {cls.successes!r}")
        if cls.slow_after is not None and not cls.slow_after > 0:
            problems.append(f"slow_after must be > 0 or None, got {cls.slow_after!r}")
        failure: object = cls.failure  # annotations do not stop a subclass from a typo
        if not (isinstance(failure, type) and issubclass(failure, Exception)):
            problems.append(f"failure must be an Exception class, got {failure!r}")
        if problems:
            raise ValueError(f"{cls.__name__}: " + "; ".join(problems))

    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock()
        self.journal = Journal()
        # One timeline of journal events and dependency calls, in the order they happened.
        self._timeline: list[Event | DependencyCall] = []
        self.journal.subscribe(self._timeline.append)
        self.dependency = Dependency(
            self.clock,
            failure=self.failure,
            slow_after=self.slow_after,
            record=self._timeline.append,
        )
        self._contract = _Contract(self)
        self.code = self.build(self.dependency, self.clock, self.journal)

    def build(
        self, dependency: Dependency, clock: VirtualClock, journal: Journal
    ) -> Callable[[], object]:
        """Build the code under test around ``dependency``; return one call of it.

        Give the breaker ``clock`` and ``journal``. The returned function takes no
        arguments; it may be an ``async`` function. Subclasses must define this.
        """
        raise NotImplementedError(f"{type(self).__name__} must define build()")

    def _call(self) -> None:
        healthy = self.dependency.mode == "healthy"
        closed = self._contract.state == "closed"
        raised: Exception | None = None
        expected: tuple[type[Exception], ...] = (self.failure, CircuitOpenError, *self.raises)
        try:
            result = self.code()
            if inspect.iscoroutine(result):
                self.clock.run(result)
        except expected as exc:
            raised = exc
        self._contract.catch_up()
        if raised is not None and healthy and closed and self._contract.state == "closed":
            hint = ""
            if isinstance(raised, CircuitOpenError):
                hint = ": the journal shows no open breaker; does build() pass it the journal?"
            raise self._contract.fail(
                f"the code raised {raised!r} while the dependency was healthy and the "
                f"breaker closed{hint}"
            ) from raised

    # -------------------------------------------------------------------------- rules

    @rule(times=st.integers(1, 8))
    def call_the_code(self, times: int) -> None:
        """Call the code under test ``times`` times."""
        for _ in range(times):
            self._call()

    @rule(mode=st.sampled_from(["failing", "healthy", "slow", "lagging"]))
    def dependency_becomes(self, mode: str) -> None:
        """Failing; healthy; slow, beyond ``slow_after`` (twice it: a failure); lagging,
        within it (half of it: a success). Without ``slow_after``, slow takes 1 s and
        lagging 0.25 s, both successes."""
        if mode == "failing":
            self.dependency.failing()
        elif mode == "healthy":
            self.dependency.healthy()
        else:
            unit = self.slow_after if self.slow_after is not None else 0.5
            self.dependency.slow(2 * unit if mode == "slow" else unit / 2)

    @rule(recoveries=st.sampled_from([0.5, 0.9, 1.0, 2.0]))
    def time_passes(self, recoveries: float) -> None:
        """``recoveries`` times ``recovery`` seconds pass (minutes, without a recovery)."""
        self.clock.advance(recoveries * (self.recovery if self.recovery is not None else 60.0))
        self._contract.catch_up()

    @precondition(lambda self: self.recovery is not None and self._contract.state == "open")
    @rule(part=st.sampled_from([0.5, 0.99]))
    def code_is_called_before_recovery(self, part: float) -> None:
        """While open, ``part`` of the rest of ``recovery`` passes; then one call, which
        must not reach the dependency. (Random steps rarely land in that window.)"""
        assert self.recovery is not None
        assert self._contract.opened_at is not None
        left = self._contract.opened_at + self.recovery - self.clock.now()
        if left > 0:
            self.clock.advance(left * part)
        self._call()

    @precondition(
        lambda self: self.recovery is not None and self._contract.state in ("open", "half_open")
    )
    @rule()
    def dependency_recovers(self) -> None:
        """Heal, wait out ``recovery``, call ``successes`` times: the breaker must close."""
        assert self.recovery is not None
        self.dependency.healthy()
        # A hair over: opened_at + recovery may round below the time it stands for.
        self.clock.advance(self.recovery * (1 + 1e-9) + 1e-9)
        for _ in range(self.successes):
            self._call()
        if self._contract.state != "closed":
            raise self._contract.fail(
                f"the dependency recovered, recovery = {self.recovery:g}s passed and "
                f"{self.successes} call(s) went by, but the journal shows the breaker "
                f"{self._contract.state}: are recovery and successes the breaker's "
                "Recovery.after and Recovery.successes?"
            )

    @invariant()
    def keeps_the_contract(self) -> None:
        self._contract.catch_up()
