"""Assertions over a journal, with failure messages that show the part of the timeline
that matters::

    assert_retried(journal, times=2, source="generate")
    assert_retried(journal, times=2, name="ask", library="tenacity", error=ConnectionError)
    assert_transitions(journal, breaker, ["closed->open", "open->half_open"])
    assert_fell_back(journal, to="direct")
    assert_no_leaks(before)
    assert_resilient(journal, ignore=("backoff",))

``assert_retried`` counts the core's retries (``RetryScheduled``, library
``"pytest_resilience"``) and the application's own (``AppRetry``: tenacity, stamina,
backoff, openai, ... recorded by :func:`faults.observe.watch`); ``assert_fell_back`` counts
every ``FallbackUsed``, a chain's or one the application marked
(:func:`pytest_resilience.core.app.fell_back`); ``assert_resilient`` judges how the app
behaved under the faults, by the verdicts of :mod:`faults.verdicts`.

Each raises ``AssertionError`` (so pytest shows it as a test failure) and returns nothing.
This module does not import pytest: the assertions work under any runner.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..core.events import (
    AlertFired,
    AppRetry,
    AttemptFailed,
    BreakerTransition,
    CacheHit,
    DegradationChanged,
    Event,
    FallbackUsed,
    RetryScheduled,
)
from ..core.journal import Journal, format_event
from ..core.leaks import Leak, Snapshot, check, format_leaks

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Iterable, Sequence

    from faults.spec import Spec

    from ..core.degrade import Level
    from ..core.leaks import ResourceRegistry

__all__ = [
    "CORE",
    "ErrorFilter",
    "assert_alerted",
    "assert_degraded",
    "assert_fell_back",
    "assert_no_leaks",
    "assert_resilient",
    "assert_retried",
    "assert_served_from_cache",
    "assert_transitions",
]

_SHOWN = 30  # events of the timeline shown in a failure message

#: The ``library`` of the core's own retries (:class:`~pytest_resilience.core.retry.Retry`).
CORE = "pytest_resilience"

#: What ``error=`` takes: an exception class, a name or text, or a tuple of them.
ErrorFilter = type[BaseException] | str | tuple[type[BaseException] | str, ...]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _HasLeaks(Protocol):
    def leaks(self) -> list[Leak]: ...


def _timeline(events: Sequence[Event], what: str) -> str:
    if not events:
        return f"\n{what}: none"
    shown = events[-_SHOWN:]
    more = f" (the last {_SHOWN} of {len(events)})" if len(events) > _SHOWN else ""
    return f"\n{what}{more}:\n" + "\n".join("  " + format_event(e) for e in shown)


def _events(journal: Journal | Iterable[Event]) -> list[Event]:
    return journal.events() if isinstance(journal, Journal) else list(journal)


@dataclass(frozen=True, slots=True)
class _Retry:
    """One retry, the core's or the application's, as ``assert_retried`` filters it."""

    library: str
    source: str
    error: str  # "TypeName: message" of the failure retried, "" when the journal lacks it


def _retries(events: Sequence[Event]) -> list[_Retry]:
    found: list[_Retry] = []
    failed: dict[tuple[str, int], str] = {}  # the core's last failure of (source, attempt)
    for e in events:
        if isinstance(e, AttemptFailed):
            failed[e.source, e.attempt] = e.error
        elif isinstance(e, RetryScheduled):
            found.append(_Retry(CORE, e.source, failed.get((e.source, e.attempt - 1), "")))
        elif isinstance(e, AppRetry):
            found.append(_Retry(e.library, e.source, e.error))
    return found


def _named(name: str, source: str) -> bool:
    """``name`` is ``source``, or its last dotted parts: "ask" names "myapp.llm.ask"."""
    return source == name or source.endswith("." + name)


def _error_matches(error: str, wanted: ErrorFilter) -> bool:
    """An exception class matches the error of that exact type (a journal holds type names,
    not classes); a string matches the type name or any part of the error's text."""
    if isinstance(wanted, tuple):
        return any(_error_matches(error, one) for one in wanted)
    type_name = error.partition(": ")[0]
    if isinstance(wanted, str):
        return wanted == type_name or wanted in error
    return wanted.__name__ == type_name


def _error_name(wanted: ErrorFilter) -> str:
    if isinstance(wanted, tuple):
        return " or ".join(_error_name(one) for one in wanted)
    return wanted if isinstance(wanted, str) else wanted.__name__


def assert_retried(
    journal: Journal | Iterable[Event],
    times: int | None = None,
    *,
    source: str | None = None,
    name: str | None = None,
    library: str | None = None,
    error: ErrorFilter | None = None,
) -> None:
    """Assert that retries were scheduled: exactly ``times`` of them, or at least one when
    ``times`` is None. Counts the core's retries and the application's (tenacity, stamina,
    backoff, openai, ...: :func:`faults.observe.watch` records them), filtered by:

    - ``source``: the retry policy's name, or the retried callable's full name, exactly;
    - ``name``: the same, or its last dotted parts (``"ask"``, ``"Client.ask"`` for
      ``"myapp.llm.Client.ask"``);
    - ``library``: ``"tenacity"``, ``"stamina"``, ``"backoff"``, ``"openai"``, ``"app"`` (a
      loop of the application's own), or ``"pytest_resilience"`` (the core's ``Retry``);
    - ``error``: what failed before the retry: an exception class (that exact type, by
      name), a type name or a piece of the message, or a tuple of those.
    """
    events = _events(journal)
    retries = [
        r
        for r in _retries(events)
        if source in (None, r.source)
        and (name is None or _named(name, r.source))
        and library in (None, r.library)
        and (error is None or _error_matches(r.error, error))
    ]
    if (times is None and retries) or len(retries) == times:
        return
    of = f" of {name!r}" if name is not None else ""
    of += f" by {source!r}" if source is not None else ""
    of += f" with {library}" if library is not None else ""
    of += f" after {_error_name(error)}" if error is not None else ""
    expected = "at least 1" if times is None else str(times)
    seen = ""
    if name is not None or library is not None or error is not None:
        counted = Counter(
            f"{r.library} {r.source}" + (f" after {r.error.partition(': ')[0]}" if r.error else "")
            for r in _retries(events)
        )
        listed = ", ".join(f"{what} x{n}" for what, n in counted.items())
        seen = f" (retries seen: {listed or 'none'})"
    raise AssertionError(
        f"expected {expected} retries{of}, got {len(retries)}{seen}" + _timeline(events, "timeline")
    )


def assert_transitions(
    journal: Journal | Iterable[Event], breaker: str | _Named, expected: Sequence[str]
) -> None:
    """Assert that ``breaker`` (a circuit breaker, or its name) went exactly through
    ``expected`` transitions, in order, written ``"closed->open"``."""
    name = breaker if isinstance(breaker, str) else breaker.name
    events = [e for e in _events(journal) if isinstance(e, BreakerTransition)]
    mine = [e for e in events if e.source == name]
    actual = [f"{e.from_state}->{e.to_state}" for e in mine]
    wanted = [step.replace(" ", "") for step in expected]
    if actual == wanted:
        return
    others = sorted({e.source for e in events} - {name})
    hint = f" (transitions were recorded for {others})" if others and not mine else ""
    raise AssertionError(
        f"breaker {name!r}: expected transitions {wanted}, got {actual}{hint}"
        + _timeline(mine or events, "breaker transitions")
    )


def assert_fell_back(
    journal: Journal | Iterable[Event],
    to: str | None = None,
    *,
    times: int | None = None,
    source: str | None = None,
    error: ErrorFilter | None = None,
) -> None:
    """Assert that a fallback answered: to the step named ``to`` (any step when None),
    ``times`` times exactly (at least once when None), from ``source`` (a chain's name,
    ``"app"`` for a fallback the application marked), after ``error`` (as for
    :func:`assert_retried`, matched against each reason in ``after``)."""
    events = _events(journal)
    used = [e for e in events if isinstance(e, FallbackUsed) and source in (None, e.source)]
    hits = [
        e
        for e in used
        if to in (None, e.step)
        and (error is None or any(_error_matches(reason, error) for reason in e.after))
    ]
    if (times is None and hits) or len(hits) == times:
        return
    target = f" to {to!r}" if to is not None else ""
    target += f" after {_error_name(error)}" if error is not None else ""
    expected = "at least 1" if times is None else str(times)
    steps = sorted({e.step for e in used})
    raise AssertionError(
        f"expected {expected} fallbacks{target}, got {len(hits)} (steps that answered: "
        f"{steps or 'none'})" + _timeline(events, "timeline")
    )


def assert_degraded(
    journal: Journal | Iterable[Event],
    to: Level | str | None = None,
    *,
    times: int | None = None,
    source: str | None = None,
) -> None:
    """Assert that a degrader changed level (``DegradationChanged``): to the level ``to``
    (a :class:`~pytest_resilience.core.degrade.Level` or its lower-case name; any level when
    None), ``times`` times exactly (at least once when None; ``times=0`` asserts it never
    went there), from the degrader named ``source`` (any when None)."""
    events = _events(journal)
    changes = [
        e for e in events if isinstance(e, DegradationChanged) and source in (None, e.source)
    ]
    label = to if to is None or isinstance(to, str) else to.label
    hits = [e for e in changes if label in (None, e.to_level)]
    if (times is None and hits) or len(hits) == times:
        return
    target = f" to {label!r}" if label is not None else ""
    expected = "at least 1" if times is None else str(times)
    path = [f"{e.from_level}->{e.to_level}" for e in changes]
    raise AssertionError(
        f"expected {expected} level changes{target}, got {len(hits)} (changes: "
        f"{path or 'none'})" + _timeline(events, "timeline")
    )


def assert_alerted(
    journal: Journal | Iterable[Event],
    *,
    name: str | None = None,
    times: int | None = None,
    about: str | None = None,
) -> None:
    """Assert that an alert fired (an ``AlertFired`` event: see
    :mod:`pytest_resilience.core.alerts`): the one named ``name`` (any when None), about
    ``about`` (the source that crossed its threshold), ``times`` times exactly (at least
    once when None; ``times=0`` asserts it never fired)."""
    events = _events(journal)
    fired = [e for e in events if isinstance(e, AlertFired)]
    hits = [e for e in fired if name in (None, e.name) and about in (None, e.about)]
    if (times is None and hits) or len(hits) == times:
        return
    which = f" {name!r}" if name is not None else ""
    which += f" about {about!r}" if about is not None else ""
    expected = "at least 1" if times is None else str(times)
    seen = Counter(e.name for e in fired)
    listed = ", ".join(f"{n} x{count}" for n, count in seen.items())
    raise AssertionError(
        f"expected {expected} alerts{which}, got {len(hits)} (alerts fired: {listed or 'none'})"
        + _timeline(events, "timeline")
    )


def assert_served_from_cache(
    journal: Journal | Iterable[Event],
    times: int | None = None,
    *,
    source: str | None = None,
) -> None:
    """Assert that a cache answered (a ``CacheHit``): ``times`` times exactly (at least once
    when None), from the cache named ``source`` (any cache when None)."""
    events = _events(journal)
    hits = [e for e in events if isinstance(e, CacheHit) and source in (None, e.source)]
    if (times is None and hits) or len(hits) == times:
        return
    where = f" from {source!r}" if source is not None else ""
    expected = "at least 1" if times is None else str(times)
    raise AssertionError(
        f"expected {expected} answers served from a cache{where}, got {len(hits)}"
        + _timeline(events, "timeline")
    )


def assert_no_leaks(
    before: Snapshot | _HasLeaks | Iterable[Leak],
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    registry: ResourceRegistry | None = None,
    grace: float = 0.5,
) -> None:
    """Assert that nothing leaked: ``before`` is a :func:`~pytest_resilience.core.leaks.snapshot`
    taken earlier (compared now, with ``grace`` real seconds for things already ending), the
    ``leak_check`` fixture, or a list of leaks already found."""
    if isinstance(before, Snapshot):
        leaks = check(before, loop=loop, registry=registry, grace=grace)
    elif hasattr(before, "leaks"):
        leaks = before.leaks()
    else:
        leaks = list(before)
    if leaks:
        raise AssertionError(format_leaks(leaks))


def assert_resilient(
    journal: Journal | Iterable[Event],
    *,
    ignore: Iterable[str] = (),
    spec: Spec | Iterable[Spec] | None = None,
    leaks: _HasLeaks | Iterable[Leak] | None = None,
    answer: str | Iterable[str] = (),
    streams: Iterable[Leak] | None = None,
) -> None:
    """Assert that the app behaved well under the faults ``journal`` records: that it broke
    none of the verdicts of :mod:`faults.verdicts` (honoured Retry-After, backed off, stopped
    after a bounded number of attempts, did not retry an error that cannot succeed, did
    not take a cut stream for a whole one, closed what it abandoned, did not deliver again
    what a broken stream had delivered, closed the llama streams it stopped reading).
    Fails listing each broken verdict with its evidence, then the timeline; passes when no
    fault fired.

    - ``ignore``: ids of verdicts not to judge (``"backoff"``, ...); ``ValueError`` for an
      id that is none;
    - ``spec``: the spec (or specs) the faults came from, which ``bounded`` needs to know
      which faults fire on every call; by default, those of the injections installed now
      that write to ``journal`` (the plugin's and the ``faults`` fixture's, during the test);
    - ``leaks``: what was left open, for ``closed``: the ``leak_check`` fixture or a list of
      leaks; without it, ``closed`` is not judged here (the plugin judges it after the
      test's teardown);
    - ``answer``: what the app answered (a string, or several), for ``no-repeat``: after a
      stream broke mid-way, the answer must not deliver again what it had delivered;
      without it, ``no-repeat`` is not judged (the journal does not hold the answer);
    - ``streams``: the llama streams left open, for ``stream-closed``; by default those
      the detector of :mod:`faults.model_use` sees open now (not those of this package's
      backends, which ``closed`` judges): call it once the app has answered.
    """
    from faults.verdicts import format_broken, installed_specs, judge  # noqa: PLC0415

    events = _events(journal)
    if spec is None:
        spec = installed_specs(journal) if isinstance(journal, Journal) else []
    if leaks is None:
        left: list[Leak] = []
    elif hasattr(leaks, "leaks"):
        left = leaks.leaks()
    else:
        left = list(leaks)
    if streams is None:
        detector = sys.modules.get("faults.model_use")
        streams = [] if detector is None else detector.open_streams()
    broken = judge(
        events,
        specs=spec,
        open_resources=left,
        ignore=ignore,
        answers=[answer] if isinstance(answer, str) else list(answer),
        open_streams=streams,
    )
    if broken:
        noun = "verdict" if len(broken) == 1 else "verdicts"
        raise AssertionError(
            f"the app broke {len(broken)} {noun} under faults:\n"
            + format_broken(broken)
            + _timeline(events, "timeline")
        )
