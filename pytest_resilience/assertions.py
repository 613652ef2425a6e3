"""Assertions over a journal, with failure messages that show the part of the timeline
that matters::

    assert_retried(journal, times=2, source="generate")
    assert_transitions(journal, breaker, ["closed->open", "open->half_open"])
    assert_fell_back(journal, to="direct")
    assert_no_leaks(before)

Each raises ``AssertionError`` (so pytest shows it as a test failure) and returns nothing.
This module does not import pytest: the assertions work under any runner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .events import BreakerTransition, Event, FallbackUsed, Journal, RetryScheduled, format_event
from .leaks import Leak, Snapshot, check, format_leaks

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Iterable, Sequence

    from .leaks import ResourceRegistry

__all__ = ["assert_fell_back", "assert_no_leaks", "assert_retried", "assert_transitions"]

_SHOWN = 30  # events of the timeline shown in a failure message


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


def assert_retried(
    journal: Journal | Iterable[Event], times: int | None = None, *, source: str | None = None
) -> None:
    """Assert that retries were scheduled: exactly ``times`` of them, or at least one when
    ``times`` is None; only those of ``source`` (a retry policy's name) when given."""
    events = _events(journal)
    retries = [e for e in events if isinstance(e, RetryScheduled) and source in (None, e.source)]
    if (times is None and retries) or len(retries) == times:
        return
    of = f" by {source!r}" if source is not None else ""
    expected = "at least 1" if times is None else str(times)
    raise AssertionError(
        f"expected {expected} retries{of}, got {len(retries)}" + _timeline(events, "timeline")
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
) -> None:
    """Assert that a fallback answered: to the step named ``to`` (any step when None),
    ``times`` times exactly (at least once when None), from ``source`` (a chain's name)."""
    events = _events(journal)
    used = [e for e in events if isinstance(e, FallbackUsed) and source in (None, e.source)]
    hits = [e for e in used if to in (None, e.step)]
    if (times is None and hits) or len(hits) == times:
        return
    target = f" to {to!r}" if to is not None else ""
    expected = "at least 1" if times is None else str(times)
    steps = sorted({e.step for e in used})
    raise AssertionError(
        f"expected {expected} fallbacks{target}, got {len(hits)} (steps that answered: "
        f"{steps or 'none'})" + _timeline(events, "timeline")
    )


def assert_no_leaks(
    before: Snapshot | _HasLeaks | Iterable[Leak],
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    registry: ResourceRegistry | None = None,
    grace: float = 0.5,
) -> None:
    """Assert that nothing leaked: ``before`` is a :func:`~pytest_resilience.leaks.snapshot`
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
