"""The journal's bound at its edges: appenders that race to trim it, a clear() that races
with them, the slack a full journal's appends use without a lock, and a loaded journal's
bound; its listeners, and reading it back as a timeline or as dumped lines."""

from __future__ import annotations

import io
import logging
import threading
import warnings
from typing import TYPE_CHECKING

import pytest

from pytest_resilience.core import journal as journal_module
from pytest_resilience.core.events import Event, RetryScheduled
from pytest_resilience.core.journal import Journal, JournalFull
from pytest_resilience.core.trace import Span, span
from tests.unit.interleave import Gate, parked

if TYPE_CHECKING:
    from types import TracebackType


def event(attempt: int) -> RetryScheduled:
    return RetryScheduled(time=float(attempt), attempt=attempt, delay=1.0)


def full(maxlen: int) -> Journal:
    """A journal of ``maxlen`` that has dropped its first event (and warned of it)."""
    journal = Journal(maxlen=maxlen)
    for attempt in range(1, maxlen + 1):
        journal.append(event(attempt))
    with pytest.warns(JournalFull):
        journal.append(event(maxlen + 1))
    return journal


class GatedLock:
    """Stands in for the journal's lock: the gate's holder parks just before taking it."""

    def __init__(self, gate: Gate) -> None:
        self.inner = threading.Lock()
        self.gate = gate

    def __enter__(self) -> bool:
        self.gate()
        return self.inner.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.inner.release()


class CountingLock:
    """Stands in for the journal's lock, counting the times it is taken."""

    def __init__(self) -> None:
        self.inner = threading.Lock()
        self.taken = 0

    def __enter__(self) -> bool:
        self.taken += 1
        return self.inner.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.inner.release()


def test_two_appenders_past_the_bound_trim_once_and_warn_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The parked appender took the journal past its bound and parks before the lock; the
    # main thread appends and trims both excess events meanwhile. The parked one then finds
    # nothing left to trim: it neither trims nor warns again.
    journal = Journal(maxlen=2)
    journal.append(event(1))
    journal.append(event(2))
    gate = Gate("in append(), before the lock that trims")
    monkeypatch.setattr(journal, "_lock", GatedLock(gate))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with parked(gate, lambda: journal.append(event(3)), "the first appender") as first:
            journal.append(event(4))
        first.result()
    assert [type(w.message) for w in caught] == [JournalFull]
    assert journal.events() == [event(3), event(4)]
    assert journal.dropped == 2


def test_a_clear_racing_an_appender_past_the_bound_drops_nothing_and_never_warns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The parked appender took the journal past its bound; before it trims, the journal is
    # cleared and filled up to its bound again. Nothing was dropped: nothing is warned.
    journal = Journal(maxlen=2)
    journal.append(event(1))
    journal.append(event(2))
    gate = Gate("in append(), before the lock that trims")
    monkeypatch.setattr(journal, "_lock", GatedLock(gate))
    with warnings.catch_warnings():
        warnings.simplefilter("error", JournalFull)
        with parked(gate, lambda: journal.append(event(3)), "the appender") as appender:
            journal.clear()
            journal.append(event(4))
            journal.append(event(5))
        appender.result()
        assert (journal.events(), journal.dropped) == ([event(4), event(5)], 0)
        with pytest.raises(JournalFull):  # the first real drop still warns
            journal.append(event(6))


@pytest.mark.parametrize("listening", [False, True])
def test_a_full_journal_appends_without_the_lock_until_its_slack_fills(
    monkeypatch: pytest.MonkeyPatch, listening: bool
) -> None:
    journal = full(maxlen=3)
    seen: list[Event] = []
    if listening:
        journal.subscribe(seen.append)
    lock = CountingLock()
    monkeypatch.setattr(journal, "_lock", lock)
    for attempt in range(5, 8):  # the slack of a journal of 3 is 3 more events
        journal.append(event(attempt))
    assert lock.taken == 0
    journal.append(event(8))  # past the slack: trimmed, under the lock, in one go
    assert lock.taken == 1
    assert journal.events() == [event(6), event(7), event(8)]
    assert journal.dropped == 5
    assert seen == ([event(n) for n in range(5, 9)] if listening else [])


def test_a_full_journal_counts_what_piles_up_in_its_slack_as_dropped() -> None:
    journal = full(maxlen=3)
    journal.append(event(5))
    journal.append(event(6))
    assert (len(journal), journal.dropped) == (3, 3)
    assert journal.events() == [event(4), event(5), event(6)]


def test_a_loaded_journal_has_the_default_bound() -> None:
    assert Journal.load([]).maxlen == Journal().maxlen == 100_000


def test_the_full_journal_warning_tells_how_to_raise_the_bound() -> None:
    journal = Journal(maxlen=1)
    journal.append(event(1))
    with pytest.warns(JournalFull) as caught:
        journal.append(event(2))
    (warning,) = caught
    assert str(warning.message) == (
        "the journal keeps the last 1 events and has begun dropping the oldest "
        "('retry.scheduled' pushed one out; Journal.dropped counts them): give it a larger "
        "bound, Journal(maxlen=...) (for the pytest plugin's journals, the ini option "
        "resilience_journal_maxlen)"
    )
    # It points at the code that appended (checked exactly, outside mutation runs, in
    # test_journal_trust.py), never at the journal's own code.
    assert warning.filename != journal_module.__file__


def test_a_failing_listener_is_logged_naming_it_and_the_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = Journal()

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    journal.subscribe(broken)
    with caplog.at_level(logging.ERROR, logger="pytest_resilience.core.events"):
        journal.append(event(1))
    (record,) = caplog.records
    assert record.getMessage() == f"journal listener {broken!r} failed on retry.scheduled"


def test_unsubscribing_one_listener_keeps_the_others() -> None:
    journal = Journal()
    first: list[Event] = []
    second: list[Event] = []
    third: list[Event] = []
    unsubscribe = journal.subscribe(first.append)
    journal.subscribe(second.append)
    unsubscribe()
    journal.append(event(1))
    journal.subscribe(third.append)
    journal.append(event(2))
    assert (first, second, third) == ([], [event(1), event(2)], [event(2)])


class SpanHearer:
    """A listener that also hears of spans (a SpanListener)."""

    def __init__(self) -> None:
        self.started: list[Span] = []

    def __call__(self, event: object) -> None:
        pass

    def span_started(self, opened: Span) -> None:
        self.started.append(opened)

    def span_ended(self, closed: Span, error: BaseException | None) -> None:
        pass


def test_unsubscribing_a_span_listener_keeps_the_others() -> None:
    journal = Journal()
    first, second = SpanHearer(), SpanHearer()
    unsubscribe = journal.subscribe(first)
    journal.subscribe(second)
    plain: list[Event] = []
    journal.subscribe(plain.append)  # a plain listener hears no span
    assert list(journal.span_listeners) == [first, second]
    unsubscribe()
    assert list(journal.span_listeners) == [second]
    with span("s", journal) as opened:
        pass
    assert (first.started, second.started) == ([], [opened])


# ------------------------------------------------------------------ reading it back


def test_the_timeline_shows_the_last_events_relative_to_a_start() -> None:
    journal = Journal()
    for attempt in (1, 2, 3):
        journal.append(RetryScheduled(time=10.0 + attempt, attempt=attempt, delay=1.0))
    assert journal.timeline(last=2, since=12.5) == (
        "    -0.500s retry.scheduled attempt=2 delay=1.0\n"
        "    +0.500s retry.scheduled attempt=3 delay=1.0"
    )
    assert (
        journal.timeline(last=2).splitlines()[0]
        == "    12.000s retry.scheduled attempt=2 delay=1.0"
    )


def test_a_dumped_line_keeps_the_fields_in_their_order() -> None:
    journal = Journal()
    journal.append(RetryScheduled(time=1.0, source="r", attempt=2, delay=0.5))
    out = io.StringIO()
    journal.dump(out)
    assert out.getvalue() == (
        '{"kind": "retry.scheduled", "time": 1.0, "source": "r", "attempt": 2, "delay": 0.5}\n'
    )
