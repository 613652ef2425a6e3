"""Unit tests for the events and the Journal."""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import logging
import threading
from collections import deque
from itertools import pairwise
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from pytest_resilience.core.events import (
    AttemptFailed,
    BreakerTransition,
    DaemonUp,
    Event,
    FallbackUsed,
    FaultInjected,
    RetryScheduled,
    StallDetected,
    event_from_dict,
    event_maker,
    event_types,
)
from pytest_resilience.core.journal import Journal, JournalFull, JsonLinesLogger
from tests.unit.interleave import (
    WAIT,
    Gate,
    Worker,
    arrived,
    parked,
    run_together,
    switching_often,
)

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")


def scheduled(i: int) -> RetryScheduled:
    return RetryScheduled(time=float(i), source="r", attempt=i, delay=0.5)


def test_events_are_frozen_and_carry_their_kind() -> None:
    event = scheduled(1)
    with pytest.raises(AttributeError):
        event.delay = 2.0  # type: ignore[misc]
    assert event.to_dict() == {
        "kind": "retry.scheduled",
        "time": 1.0,
        "source": "r",
        "attempt": 1,
        "delay": 0.5,
    }


def test_journal_keeps_order_and_filters_by_type() -> None:
    journal = Journal()
    up = DaemonUp(time=0.0)
    journal.append(up)
    journal.append(scheduled(1))
    assert len(journal) == 2
    assert list(journal) == [up, scheduled(1)]
    assert journal.events(RetryScheduled) == [scheduled(1)]
    assert journal.events(RetryScheduled, DaemonUp) == [up, scheduled(1)]


def test_the_bound_drops_the_oldest_and_counts_them() -> None:
    journal = Journal(maxlen=3)
    for i in range(3):
        journal.append(scheduled(i))
    with pytest.warns(JournalFull):
        journal.append(scheduled(3))
    journal.append(scheduled(4))  # warned once: no more warnings
    assert [e.attempt for e in journal.events(RetryScheduled)] == [2, 3, 4]
    assert journal.dropped == 2
    journal.clear()
    assert (len(journal), journal.dropped) == (0, 0)
    with pytest.raises(ValueError, match="at least 1"):
        Journal(maxlen=0)


# An append takes no lock (deque.append is atomic); the appender that takes the journal past
# its bound trims it under the lock, and `dropped` is read under the same lock. The forced
# tests park an appender inside its trim, by handing the journal a deque whose popleft() (the
# trim's step) has a gate, while another thread appends or reads; a stand-in for the lock
# tells the test when that thread has come for the lock. The stress tests run the real thing.


class GatedDeque(deque[Event]):
    """A journal's deque whose popleft() parks the gate's holder once: just ``before`` its
    pop, or just after it (popped, not yet counted)."""

    def __init__(self, gate: Gate, *, before: bool) -> None:
        super().__init__()
        self.gate, self.before = gate, before

    def popleft(self) -> Event:
        if self.before:
            self.gate()
        event = super().popleft()
        if not self.before:
            self.gate()
        return event


class WatchedLock:
    """A journal's lock that sets ``came`` when ``who`` comes for it (before it waits)."""

    def __init__(self, inner: Any, who: threading.Thread, came: threading.Event) -> None:
        self.inner, self.who, self.came = inner, who, came

    def __enter__(self) -> bool:
        if threading.current_thread() is self.who:
            self.came.set()
        return bool(self.inner.__enter__())

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)


def in_another_thread(fn: Callable[[], T], name: str, came: threading.Event) -> Worker[T]:
    """A thread for ``fn`` that also sets ``came`` when it ends, so that a journal that
    (wrongly) lets it through without the lock does not leave the test waiting for it."""

    def run() -> T:
        try:
            return fn()
        finally:
            came.set()

    return Worker(run, name)


@pytest.mark.filterwarnings("ignore::pytest_resilience.core.journal.JournalFull")
def test_an_append_during_another_appenders_trim_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal(maxlen=4)
    gate = Gate("in the trim, before its first pop")
    monkeypatch.setattr(journal, "_events", GatedDeque(gate, before=True))
    for i in range(4):
        journal.append(scheduled(i))
    came = threading.Event()
    second = in_another_thread(lambda: journal.append(scheduled(5)), "the second appender", came)
    monkeypatch.setattr(journal, "_lock", WatchedLock(journal._lock, second, came))
    # The first appender takes the journal past its bound, finds one event to drop, and
    # parks in its trim before dropping it; the second appends meanwhile and comes to trim
    # too. Each must drop one event: the oldest two go, and both appends are kept.
    try:
        with parked(gate, lambda: journal.append(scheduled(4)), "the first appender") as first:
            second.start()
            arrived(came, "the second appender", "at the journal's lock")
        first.result()
        second.result()
    finally:
        second.join(WAIT)
    assert [e.attempt for e in journal.events(RetryScheduled)] == [2, 3, 4, 5]
    assert (len(journal), journal.dropped) == (4, 2)


@pytest.mark.filterwarnings("ignore::pytest_resilience.core.journal.JournalFull")
@pytest.mark.parametrize("dropping", [False, True], ids=["first-drop", "already-dropping"])
def test_the_count_read_during_a_trim_includes_what_it_popped(
    monkeypatch: pytest.MonkeyPatch, dropping: bool
) -> None:
    journal = Journal(maxlen=4)
    gate = Gate("in the trim, between a pop and its count")
    monkeypatch.setattr(journal, "_events", GatedDeque(gate, before=False))
    # Already dropping: one drop (the trim then waits for the slack), and the slack filled.
    # The appender then parks in its trim after its first pop, before counting; the reader
    # comes for the count meanwhile.
    appended = 4 + (5 if dropping else 0)
    for i in range(appended):
        journal.append(scheduled(i))
    came = threading.Event()
    reader = in_another_thread(lambda: journal.dropped, "the reader", came)
    monkeypatch.setattr(journal, "_lock", WatchedLock(journal._lock, reader, came))
    try:
        with parked(gate, lambda: journal.append(scheduled(appended)), "the appender") as trim:
            reader.start()
            arrived(came, "the reader", "at the journal's lock")
        trim.result()
        assert reader.result() == appended + 1 - 4
    finally:
        reader.join(WAIT)
    assert (len(journal), journal.dropped) == (4, appended + 1 - 4)


def test_appends_from_four_threads_are_all_kept() -> None:
    journal = Journal()
    appends = 20_000  # per thread

    def work(worker: int, start: threading.Barrier) -> None:
        start.wait()
        for i in range(appends):
            journal.append(FaultInjected(time=0.0, source=str(worker), site="s", fault="x", call=i))

    with switching_often():
        run_together(work)
    events = journal.events(FaultInjected)
    assert len(events) == 4 * appends
    for worker in range(4):  # each thread's events stay in its own order
        assert [e.call for e in events if e.source == str(worker)] == list(range(appends))
    # The threads really ran at the same time: their events are interleaved.
    assert sum(a.source != b.source for a, b in pairwise(events)) > 3


@pytest.mark.filterwarnings("ignore::pytest_resilience.core.journal.JournalFull")
def test_a_bounded_journal_under_four_threads_counts_every_drop() -> None:
    journal = Journal(maxlen=100)
    appends = 5_000  # per appender
    ended: list[int] = []
    counts: list[int] = []  # what a reader saw, meanwhile

    def work(worker: int, start: threading.Barrier) -> None:
        start.wait()
        if worker == 4:  # the reader: a count never goes back
            while len(ended) < 4:
                counts.append(journal.dropped)
            return
        try:
            for i in range(appends):
                journal.append(scheduled(i))
        finally:
            ended.append(worker)

    with switching_often():
        run_together(work, threads=5)
    assert (len(journal), journal.dropped) == (100, 4 * appends - 100)
    assert counts == sorted(counts)
    assert len(set(counts)) > 1  # the reader did read while the appenders ran


def test_listeners_run_outside_the_lock_in_the_appending_thread() -> None:
    journal = Journal()
    seen: list[tuple[Event, int, int]] = []

    def listener(event: Event) -> None:
        # Reading the journal from a listener would deadlock if the lock were held.
        seen.append((event, len(journal.events()), threading.get_ident()))

    journal.subscribe(listener)
    worker = threading.Thread(target=journal.append, args=(scheduled(1),), daemon=True)
    worker.start()
    worker.join(timeout=10.0)  # only waits if the lock is (wrongly) held: then it fails
    assert not worker.is_alive()
    assert seen == [(scheduled(1), 1, worker.ident)]


def test_unsubscribe_stops_the_calls() -> None:
    journal = Journal()
    seen: list[Event] = []
    unsubscribe = journal.subscribe(seen.append)
    journal.append(scheduled(1))
    unsubscribe()
    journal.append(scheduled(2))
    assert seen == [scheduled(1)]


def test_a_failing_listener_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal()
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    journal.subscribe(broken)
    journal.subscribe(seen.append)
    with caplog.at_level(logging.ERROR, logger="pytest_resilience.core.events"):
        journal.append(scheduled(1))
    assert seen == [scheduled(1)]  # the next listener still ran
    assert len(journal) == 1
    (record,) = caplog.records
    assert "failed on retry.scheduled" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


def test_json_lines_round_trip() -> None:
    journal = Journal()
    events: list[Event] = [
        scheduled(1),
        AttemptFailed(time=1.5, source="r", attempt=1, error="E: x", category="timeout"),
        BreakerTransition(time=2.0, source="b", from_state="closed", to_state="open", reason="5"),
        FallbackUsed(
            time=3.0, source="f", step="static", index=2, after=("a: X", "b: result None")
        ),
        StallDetected(time=4.0, which="idle", waited=30.0, partial="héllo\n"),
        DaemonUp(time=5.0),
    ]
    for event in events:
        journal.append(event)
    out = io.StringIO()
    journal.dump(out)
    text = out.getvalue()
    assert len(text.splitlines()) == len(events)
    assert all(json.loads(line)["kind"] for line in text.splitlines())
    loaded = Journal.load(io.StringIO(text))
    assert loaded.events() == events
    assert isinstance(loaded.events(FallbackUsed)[0].after, tuple)


def test_load_skips_blank_lines_and_names_the_bad_one() -> None:
    good = json.dumps(scheduled(1).to_dict())
    assert len(Journal.load([good, "", "  ", good])) == 2
    with pytest.raises(ValueError, match=r"journal line 3: .*Expecting"):
        Journal.load([good, "", "{not json"])
    with pytest.raises(ValueError, match=r"journal line 2: unknown event kind 'nope'"):
        Journal.load([good, '{"kind": "nope", "time": 0}'])
    with pytest.raises(ValueError, match=r"journal line 1: event 'retry.scheduled' has no field"):
        Journal.load(['{"kind": "retry.scheduled", "time": 0, "attempt": 1, "delay": 1, "x": 1}'])
    with pytest.raises(ValueError, match=r"journal line 1: .*attempt"):
        Journal.load(['{"kind": "retry.scheduled", "time": 0, "delay": 1}'])


def test_event_kinds_defined_elsewhere_are_known() -> None:
    from pytest_resilience.core.fallback import FallbackExhausted  # noqa: PLC0415 - the point

    event = FallbackExhausted(time=1.0, source="c", failures=("a: X",))
    assert event_from_dict(event.to_dict()) == event


def test_timeline_reads_one_event_a_line() -> None:
    journal = Journal()
    journal.append(scheduled(1))
    journal.append(DaemonUp(time=12.5, latency=0.25))
    assert journal.timeline() == (
        "     1.000s retry.scheduled [r] attempt=1 delay=0.5\n    12.500s daemon.up latency=0.25"
    )
    assert journal.timeline(last=1).startswith("    12.500s daemon.up")


def test_json_lines_logger_writes_through_stdlib_logging(caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal()
    logger = logging.getLogger("test.resilience.events")
    journal.subscribe(JsonLinesLogger(logger, level=logging.INFO))
    with caplog.at_level(logging.INFO, logger="test.resilience.events"):
        journal.append(scheduled(1))
    (record,) = caplog.records
    assert (record.name, record.levelno) == ("test.resilience.events", logging.INFO)
    assert json.loads(record.getMessage()) == scheduled(1).to_dict()


def test_json_lines_logger_costs_nothing_when_disabled(caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal()
    journal.subscribe(JsonLinesLogger(logging.getLogger("test.resilience.quiet"), logging.DEBUG))
    with caplog.at_level(logging.INFO, logger="test.resilience.quiet"):
        journal.append(scheduled(1))
    assert caplog.records == []


def test_json_lines_logger_defaults_to_the_package_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = Journal()
    journal.subscribe(JsonLinesLogger())
    with caplog.at_level(logging.INFO, logger="pytest_resilience"):
        journal.append(DaemonUp(time=1.0))
    assert [r.name for r in caplog.records] == ["pytest_resilience"]
    assert json.loads(caplog.records[0].getMessage())["kind"] == "daemon.up"


# ------------------------------------------------------------------ making events fast


def _sample(cls: type[Event]) -> dict[str, Any]:
    """A value of the right type for every field of ``cls``."""
    values = {float: 1.5, int: 3, str: "s", bool: True}
    fields = {}
    for f in dataclasses.fields(cls):
        hint = inspect.get_annotations(cls, eval_str=True).get(f.name)
        if hint is None:  # inherited: time or source
            hint = float if f.name == "time" else str
        fields[f.name] = values.get(hint, ("a", "b"))
    return fields


PACKAGE_EVENTS = [cls for cls in event_types().values() if cls.__module__.endswith("core.events")]


@pytest.mark.parametrize("cls", PACKAGE_EVENTS, ids=lambda cls: cls.kind)
def test_the_maker_and_the_class_build_the_same_frozen_event(cls: type[Event]) -> None:
    fields = _sample(cls)
    made, built = event_maker(cls)(**fields), cls(**fields)
    assert type(made) is type(built) is cls
    assert made == built
    assert hash(made) == hash(built)
    assert dataclasses.asdict(made) == dataclasses.asdict(built) == fields
    for event in (made, built):
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.time = 2.0  # type: ignore[misc]
    positional: Any = cls  # keyword-only, as the class
    for build in (event_maker(cls), positional):
        with pytest.raises(TypeError, match="positional"):
            build(*fields.values())


def test_the_fast_init_keeps_the_dataclass_signature_and_defaults() -> None:
    # the span's ids: None stamps them from the current span (Event.trace_id's docs)
    assert str(inspect.signature(FallbackUsed)) == (
        "(*, time, source='', trace_id=None, span_id=None, step, index, after=())"
    )
    assert FallbackUsed(time=1.0, step="s", index=2).after == ()
    assert event_maker(DaemonUp)(time=1.0) == DaemonUp(time=1.0, source="", latency=0.0)
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'index'"):
        FallbackUsed(time=1.0, step="s")  # type: ignore[call-arg]
    with pytest.raises(KeyError):
        event_maker(Event)


def test_the_fast_init_of_a_subclass_keeps_the_subclass() -> None:
    # The fast __init__ stores the fields on an unfrozen twin of its own class, and only
    # for that class: a subclass's instance, whatever its layout, stays what it is.
    class Plain(FallbackUsed):
        pass

    class Slotted(FallbackUsed):
        __slots__ = ("extra",)

    for cls in (Plain, Slotted):
        event = cls(time=1.0, step="s", index=2)
        assert type(event) is cls
        assert (event.time, event.step, event.index, event.after) == (1.0, "s", 2, ())
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.time = 2.0  # type: ignore[misc]
    made = event_maker(FallbackUsed)(time=1.0, step="s", index=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        del made.step
    made.__init__(time=3.0, step="t", index=1)  # type: ignore[misc]  # as the dataclass's
    assert (type(made), made.time, made.step) == (FallbackUsed, 3.0, "t")


@pytest.mark.filterwarnings("ignore::pytest_resilience.core.journal.JournalFull")
@pytest.mark.parametrize("maxlen", [1, 3, 50, 2000])
def test_a_full_journal_counts_every_drop_exactly_after_each_append(maxlen: int) -> None:
    journal = Journal(maxlen=maxlen)
    total = 3 * maxlen + 1500  # well past the slack a full journal lets pile up
    for i in range(total):
        journal.append(scheduled(i))
        kept = min(i + 1, maxlen)
        assert (len(journal), journal.dropped) == (kept, i + 1 - kept)
    assert [e.attempt for e in journal.events(RetryScheduled)] == list(range(total - maxlen, total))
    assert list(journal) == journal.events(RetryScheduled)
    journal.clear()
    assert (len(journal), journal.dropped, journal.events()) == (0, 0, [])
    journal.append(scheduled(0))
    assert (len(journal), journal.dropped) == (1, 0)


@pytest.mark.filterwarnings("ignore::pytest_resilience.core.journal.JournalFull")
def test_a_full_journal_under_four_threads_keeps_the_newest_of_each_in_order() -> None:
    journal = Journal(maxlen=1000)
    start = threading.Barrier(4)

    def work(worker: int) -> None:
        start.wait()
        for i in range(5000):
            journal.append(FaultInjected(time=0.0, source=str(worker), site="s", fault="x", call=i))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(journal), journal.dropped) == (1000, 19_000)
    events = journal.events(FaultInjected)
    assert len(events) == 1000
    for worker in range(4):  # what is left of each thread is its last appends, in order
        calls = [e.call for e in events if e.source == str(worker)]
        assert calls == list(range(5000 - len(calls), 5000))
