"""The core benchmark: what retry and the circuit breaker cost on their hot paths.

Every row is measured as a ratio to a bare call (or a bare ``await``) timed in the same
process and the same run, next to the libraries people pick instead: tenacity, stamina,
backoff, pybreaker and circuitbreaker.

Method
    Each subject is a zero-argument callable (the decorated function, or ``partial(b.call,
    f)`` for a ``.call`` API) run in a tight loop of ``n`` calls, timed with
    ``perf_counter_ns``; ``n`` is calibrated per subject so one measurement takes about
    ``target_ms``. A round measures every subject once, in a seeded shuffled order, so a
    burst of noise from a neighbour on this shared machine hits the subjects alike. The
    cyclic garbage collector is off inside a measurement, as in ``timeit``.

    Times per call are minimums over the rounds: noise on a shared machine (preemption, a
    neighbour's cache traffic) only ever adds time, so the minimum is the best estimate of
    what the code itself costs. Ratios, and the pass/fail verdicts, are medians over the
    rounds of the per-round ratio (subject / bare call of the same round): each ratio then
    compares two loops run under the same conditions, and the median drops the rounds that a
    burst hit. The ratio of the two minimums is shown next to it; it swings with the bare
    call's luckiest round, which is a 25 ns loop body.

    A ratio includes the loop around the call (``for _ in repeat(None, n): fn()``), as the
    bare call does. Rejected calls are caught in the loop (``try: fn() except Err: pass``),
    so the open-breaker rows include raising and catching the library's error.

    A row may have a goal in nanoseconds instead (one journal event: making the frozen
    record and appending it, as the components do); its verdict compares the best time over
    the rounds with the goal.

Fairness
    The peers run with their logging and instrumentation off (stamina's retry hooks, backoff's
    logger), and with zero delay wherever a row says so; they still call ``time.sleep(0)``,
    as they do for users. Our breaker has a journal; our retry rows have none (the peers
    record nothing either), and one extra row shows a journaled retry.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Literal

import backoff
import circuitbreaker
import pybreaker
import stamina
import tenacity

from pytest_resilience.core.breaker import CircuitBreaker
from pytest_resilience.core.errors import CircuitOpenError
from pytest_resilience.core.events import (
    AttemptFailed,
    BreakerTransition,
    CallRejected,
    FallbackUsed,
    RetryScheduled,
    event_maker,
)
from pytest_resilience.core.journal import Journal

try:  # the retry module may still be missing while it is being written
    from pytest_resilience.core.retry import Backoff, Retry
except ImportError:  # pragma: no cover - depends on the tree
    Retry = None  # type: ignore[assignment,misc]
    Backoff = None  # type: ignore[assignment,misc]

__all__ = [
    "LIBRARIES",
    "Measurement",
    "Report",
    "Row",
    "Subject",
    "build_rows",
    "format_goals",
    "format_report",
    "main",
    "measure",
]

#: The column order of the peers in the tables. "by hand" is the least code that does the
#: row's job with no library (a try/except loop, a counter): the floor for everyone.
LIBRARIES = ("tenacity", "stamina", "backoff", "pybreaker", "circuitbreaker", "by hand")

Fn = Callable[[], Any]
Wrap = Callable[[Fn], Fn]  # builds a subject around the target function
Mode = Literal["success", "flaky", "rejected", "record"]

# ------------------------------------------------------------------------------ targets


def _ok() -> int:
    return 1


async def _aok() -> int:
    return 1


def _counting(is_async: bool) -> tuple[Fn, list[int]]:
    """A target that counts its calls, for the correctness check before timing."""
    calls = [0]

    def target() -> int:
        calls[0] += 1
        return 1

    async def atarget() -> int:
        calls[0] += 1
        return 1

    return (atarget if is_async else target), calls


def _flaky() -> Fn:
    """A target that fails twice, succeeds, and so on: each retried call sees 3 attempts."""
    calls = 0

    def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls % 3:
            raise ValueError("transient")
        return calls

    return flaky


def _raise_value_error() -> None:
    raise ValueError("down")


class _Rejected(Exception):
    """What the hand-written breaker raises when open."""


def _trip(call: Callable[[Fn], object], times: int = 5) -> None:
    """Open a breaker by sending ``times`` failures through ``call``."""
    for _ in range(times):
        with contextlib.suppress(ValueError, pybreaker.CircuitBreakerError):
            call(_raise_value_error)


# ----------------------------------------------------------------------------- subjects


@dataclass(frozen=True, slots=True)
class Subject:
    """One library's way of doing what a row measures."""

    library: str  # "ours" or one of LIBRARIES
    wrap: Wrap
    rejects: type[BaseException] | None = None  # the error an open breaker raises
    journal: Journal | None = None  # what a "record" subject appends to


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: a path, its goal, and the subjects that take it."""

    key: str
    title: str
    mode: Mode
    is_async: bool
    goal: float | None  # the most our ratio may be; None: shown for information
    subjects: tuple[Subject, ...]
    missing: str = ""  # why "ours" is absent, if it is
    goal_ns: float | None = None  # the most our best time may be, in ns, instead of a ratio

    def subject(self, library: str) -> Subject | None:
        return next((s for s in self.subjects if s.library == library), None)


def _our_retry(journal: Journal | None = None) -> Wrap | None:
    if Retry is None:
        return None
    policy = Retry(on=ValueError, attempts=3, backoff=Backoff.fixed(0), journal=journal)
    return policy


def _tenacity() -> Wrap:
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        retry=tenacity.retry_if_exception_type(ValueError),
        wait=tenacity.wait_none(),
        reraise=True,
    )


def _stamina() -> Wrap:
    return stamina.retry(on=ValueError, attempts=3, wait_initial=0, wait_max=0, wait_jitter=0)


def _backoff() -> Wrap:
    wrap: Wrap = backoff.on_exception(
        backoff.constant, ValueError, max_tries=3, interval=0, logger=None
    )
    return wrap


def _tenacity_no_sleep() -> Wrap:
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        retry=tenacity.retry_if_exception_type(ValueError),
        wait=tenacity.wait_none(),
        reraise=True,
        sleep=_no_sleep,
    )


def _no_sleep(seconds: float) -> None:
    """tenacity's ``sleep=`` with no system call (``time.sleep(0)`` costs ~70 µs here)."""


def _retry_by_hand(fn: Fn) -> Fn:
    if asyncio.iscoroutinefunction(fn):

        async def aretried() -> Any:
            for attempt in range(3):
                try:
                    return await fn()
                except ValueError:
                    if attempt == 2:
                        raise
            return None  # not reached

        return aretried

    def retried() -> Any:
        for attempt in range(3):
            try:
                return fn()
            except ValueError:
                if attempt == 2:
                    raise
        return None  # not reached

    return retried


def _retry_subjects(journal: Journal | None = None) -> tuple[Subject, ...]:
    ours = _our_retry(journal)
    peers = (
        Subject("tenacity", _tenacity()),
        Subject("stamina", _stamina()),
        Subject("backoff", _backoff()),
        Subject("by hand", _retry_by_hand),
    )
    return ((Subject("ours", ours),) if ours is not None else ()) + peers


def _our_breaker(fn: Fn) -> Fn:
    return CircuitBreaker("bench", on=ValueError, journal=Journal())(fn)


def _our_breaker_call(fn: Fn) -> Fn:
    breaker = CircuitBreaker("bench", on=ValueError, journal=Journal())
    return functools.partial(breaker.call, fn)


def _our_open_breaker(fn: Fn, journal: Journal | None = None) -> Fn:
    breaker = CircuitBreaker("bench", on=ValueError, recovery=3600.0, journal=journal)
    _trip(breaker.call)
    return breaker(fn)


def _breaker_by_hand(fn: Fn, failures: int = 0) -> Fn:
    """Consecutive failures, no lock, no clock, no recovery: the least a breaker can do."""

    def guarded() -> Any:
        nonlocal failures
        if failures >= 5:
            raise _Rejected
        try:
            result = fn()
        except ValueError:
            failures += 1
            raise
        failures = 0
        return result

    return guarded


def _pybreaker_call(fn: Fn) -> Fn:
    return functools.partial(pybreaker.CircuitBreaker(fail_max=5).call, fn)


def _pybreaker_open(fn: Fn) -> Fn:
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=3600)
    _trip(breaker.call)
    return functools.partial(breaker.call, fn)


def _circuit(fn: Fn) -> Fn:
    wrapped: Fn = circuitbreaker.circuit(failure_threshold=5, expected_exception=ValueError)(fn)
    return wrapped


def _circuit_open(fn: Fn) -> Fn:
    breaker = circuitbreaker.CircuitBreaker(
        failure_threshold=5, recovery_timeout=3600, expected_exception=ValueError
    )
    _trip(breaker.call)
    wrapped: Fn = breaker(fn)
    return wrapped


EventRow = Literal["rejected", "failed", "scheduled", "transition", "fallback"]


def _journal_event(event: EventRow) -> Subject:
    """Make one frozen event and append it to a journal, as the component that records it
    does: a rejection (the open breaker), a failed attempt and a scheduled retry (a
    journaled retry), a transition (the breaker), all with their :func:`event_maker`, and
    a fallback step used, which the fallback chain makes by calling the class. The cost a
    component pays per event."""
    journal = Journal()
    append = journal.append
    if event == "rejected":
        rejected = event_maker(CallRejected)

        def record() -> None:
            append(rejected(time=1.0, source="bench", state="open"))

    elif event == "failed":
        failed = event_maker(AttemptFailed)

        def record() -> None:
            append(failed(time=1.0, source="bench", attempt=1, error="E: x", category="transient"))

    elif event == "scheduled":
        scheduled = event_maker(RetryScheduled)

        def record() -> None:
            append(scheduled(time=1.0, source="bench", attempt=2, delay=0.5))

    elif event == "transition":
        transitioned = event_maker(BreakerTransition)

        def record() -> None:
            append(
                transitioned(
                    time=1.0,
                    source="bench",
                    from_state="closed",
                    to_state="open",
                    reason="5 consecutive failures (last: ValueError)",
                )
            )

    else:

        def record() -> None:
            append(
                FallbackUsed(
                    time=1.0,
                    source="bench",
                    step="direct",
                    index=1,
                    after=("daemon: CircuitOpenError",),
                )
            )

    return Subject("ours", lambda fn: record, journal=journal)


def _only(subjects: tuple[Subject, ...], *libraries: str) -> tuple[Subject, ...]:
    return tuple(s for s in subjects if s.library in libraries)


def build_rows() -> list[Row]:
    """The benchmark's rows, with fresh subjects (breakers closed or freshly tripped)."""
    missing = "" if Retry is not None else "pytest_resilience.core.retry is not available"
    retry = _retry_subjects()
    return [
        Row("retry", "retry decorator, success", "success", False, 10.0, retry, missing),
        Row(
            "breaker",
            "breaker, success (decorator)",
            "success",
            False,
            8.0,
            (
                Subject("ours", _our_breaker),
                Subject("pybreaker", _pybreaker_call),
                Subject("circuitbreaker", _circuit),
                Subject("by hand", _breaker_by_hand),
            ),
        ),
        Row(
            "flaky",
            "retry, fails twice, zero delay",
            "flaky",
            False,
            60.0,
            _retry_subjects(),
            missing,
        ),
        Row(
            "open",
            "breaker open, call rejected",
            "rejected",
            False,
            15.0,
            (
                Subject("ours", lambda fn: _our_open_breaker(fn, Journal()), CircuitOpenError),
                Subject("pybreaker", _pybreaker_open, pybreaker.CircuitBreakerError),
                Subject("circuitbreaker", _circuit_open, circuitbreaker.CircuitBreakerError),
                Subject("by hand", lambda fn: _breaker_by_hand(fn, 5), _Rejected),
            ),
        ),
        Row(
            "event",
            "one journal event (ns)",
            "record",
            False,
            None,
            (_journal_event("rejected"),),
            goal_ns=300.0,
        ),
        Row("aretry", "async retry, success", "success", True, 10.0, retry, missing),
        # For information: the other call forms, and what a journal costs a retried call.
        Row(
            "breaker_call",
            "breaker .call, success",
            "success",
            False,
            None,
            (Subject("ours", _our_breaker_call), Subject("pybreaker", _pybreaker_call)),
        ),
        Row(
            "abreaker",
            "async breaker, success",
            "success",
            True,
            None,
            (Subject("ours", _our_breaker), Subject("circuitbreaker", _circuit)),
        ),
        Row(
            "open_quiet",
            "breaker open, no journal",
            "rejected",
            False,
            None,
            (Subject("ours", _our_open_breaker, CircuitOpenError),),
        ),
        Row(
            "flaky_nap",
            "retry, fails twice, no sleep(0)",
            "flaky",
            False,
            None,
            (*_only(_retry_subjects(), "ours"), Subject("tenacity", _tenacity_no_sleep())),
            missing,
        ),
        Row(
            "flaky_journal",
            "retry, fails twice, journaled",
            "flaky",
            False,
            None,
            _only(_retry_subjects(Journal()), "ours"),
            missing,
        ),
        # Every event a component records on a hot path, as it makes it.
        Row(
            "event_failed",
            "journal event, 5 fields (ns)",
            "record",
            False,
            None,
            (_journal_event("failed"),),
            goal_ns=300.0,
        ),
        Row(
            "event_scheduled",
            "event RetryScheduled (ns)",
            "record",
            False,
            None,
            (_journal_event("scheduled"),),
            goal_ns=300.0,
        ),
        Row(
            "event_transition",
            "event BreakerTransition (ns)",
            "record",
            False,
            None,
            (_journal_event("transition"),),
            goal_ns=300.0,
        ),
        Row(
            "event_fallback",
            "event FallbackUsed, class call (ns)",
            "record",
            False,
            None,
            (_journal_event("fallback"),),
            goal_ns=300.0,
        ),
    ]


# ------------------------------------------------------------------------------ checks


def _run_once(fn: Fn, is_async: bool, loop: asyncio.AbstractEventLoop) -> object:
    return loop.run_until_complete(fn()) if is_async else fn()


def _expect(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise AssertionError(f"{where}: {what}")


def check(row: Row, subject: Subject, loop: asyncio.AbstractEventLoop) -> None:
    """Prove that ``subject`` really does the row's work, once, before it is timed.

    Raises ``AssertionError`` naming the row and the library when it does not.
    """
    where = f"{row.key}/{subject.library}"
    if row.mode == "record":
        journal = subject.journal
        _expect(journal is not None, where, "no journal given")
        assert journal is not None
        before = len(journal) + journal.dropped
        _run_once(subject.wrap(_ok), False, loop)
        _expect(len(journal) + journal.dropped == before + 1, where, "appended no single event")
        return
    if row.mode == "flaky":
        _expect(not row.is_async, where, "no async flaky target")
        result = _run_once(subject.wrap(_flaky()), False, loop)
        _expect(result == 3, where, f"expected success on the 3rd attempt, got {result!r}")
        return
    target, calls = _counting(row.is_async)
    fn = subject.wrap(target)
    if row.mode == "rejected":
        _expect(subject.rejects is not None, where, "no rejection error given")
        try:
            _run_once(fn, row.is_async, loop)
        except Exception as exc:
            _expect(isinstance(exc, subject.rejects or ()), where, f"raised {exc!r}")
        else:
            raise AssertionError(f"{where}: the open breaker admitted the call")
        _expect(calls == [0], where, "the target ran behind an open breaker")
        return
    result = _run_once(fn, row.is_async, loop)
    _expect(result == 1, where, f"returned {result!r}")
    _expect(calls == [1], where, f"the target ran {calls[0]} times, not once")


# ------------------------------------------------------------------------------ timing


def _loop(fn: Fn, n: int) -> int:
    start = time.perf_counter_ns()
    for _ in repeat(None, n):
        fn()
    return time.perf_counter_ns() - start


def _loop_rejected(fn: Fn, n: int, error: type[BaseException]) -> int:
    start = time.perf_counter_ns()
    for _ in repeat(None, n):
        try:  # noqa: SIM105 - contextlib.suppress would time a context manager too
            fn()
        except error:
            pass
    return time.perf_counter_ns() - start


async def _aloop(fn: Fn, n: int) -> int:
    start = time.perf_counter_ns()
    for _ in repeat(None, n):
        await fn()
    return time.perf_counter_ns() - start


@dataclass(slots=True)
class Measurement:
    """Nanoseconds per call of one subject, one sample per round."""

    row: str  # a row key, or "base"
    library: str  # "ours", a peer, or "call" / "await" for the bare baselines
    fn: Fn
    is_async: bool
    rejects: type[BaseException] | None = None
    n: int = 0  # calls per sample
    samples: list[float] = field(default_factory=list)

    def time(self, loop: asyncio.AbstractEventLoop, n: int) -> float:
        """One sample of ``n`` calls, in ns per call, with the cyclic GC off."""
        gc.disable()
        try:
            if self.is_async:
                total = loop.run_until_complete(_aloop(self.fn, n))
            elif self.rejects is not None:
                total = _loop_rejected(self.fn, n, self.rejects)
            else:
                total = _loop(self.fn, n)
        finally:
            gc.enable()
        return total / n

    @property
    def best(self) -> float:
        return min(self.samples)


@dataclass(slots=True)
class Report:
    """Everything one run measured."""

    rows: list[Row]
    measurements: dict[tuple[str, str], Measurement]
    rounds: int
    seconds: float

    @property
    def bare_call(self) -> Measurement:
        return self.measurements["base", "call"]

    @property
    def bare_await(self) -> Measurement:
        return self.measurements["base", "await"]

    def base(self, row: Row) -> Measurement:
        return self.bare_await if row.is_async else self.bare_call

    def get(self, row: Row, library: str) -> Measurement | None:
        return self.measurements.get((row.key, library))

    def min_ratio(self, row: Row, library: str) -> float | None:
        """Best time over best baseline time, or None when the subject is absent."""
        m = self.get(row, library)
        return None if m is None else m.best / self.base(row).best

    def ratio(self, row: Row, library: str) -> float | None:
        """The median over rounds of (subject / baseline of the same round), or None."""
        m = self.get(row, library)
        if m is None:
            return None
        base = self.base(row).samples
        return statistics.median(s / b for s, b in zip(m.samples, base, strict=True))

    def passed(self, row: Row) -> bool | None:
        if row.goal_ns is not None:
            m = self.get(row, "ours")
            return None if m is None else m.best <= row.goal_ns
        ratio = self.ratio(row, "ours")
        return None if ratio is None or row.goal is None else ratio <= row.goal


def _calibrate(m: Measurement, loop: asyncio.AbstractEventLoop, target_ns: float) -> int:
    """Calls per sample so that one sample takes about ``target_ns``."""
    n = 16
    while True:
        per_call = m.time(loop, n)
        if per_call * n >= target_ns / 8 or n >= 1 << 24:
            return max(1, round(target_ns / per_call))
        n *= 4


def measure(
    rows: list[Row] | None = None,
    *,
    rounds: int = 25,
    target_ms: float = 15.0,
    iterations: int | None = None,
    seed: int = 0,
) -> Report:
    """Check every subject, then time them all in ``rounds`` interleaved rounds.

    ``iterations`` fixes the calls per sample (no calibration; for smoke tests).
    Raises ``AssertionError`` if a subject fails its check.
    """
    started = time.perf_counter()
    rows = build_rows() if rows is None else rows
    loop = asyncio.new_event_loop()
    with quiet_peers(), contextlib.closing(loop):
        items = [
            Measurement("base", "call", _ok, False),
            Measurement("base", "await", _aok, True),
        ]
        for row in rows:
            for s in row.subjects:
                check(row, s, loop)
                target = _flaky() if row.mode == "flaky" else (_aok if row.is_async else _ok)
                items.append(
                    Measurement(row.key, s.library, s.wrap(target), row.is_async, s.rejects)
                )
        for m in items:
            m.n = iterations if iterations is not None else _calibrate(m, loop, target_ms * 1e6)
        rng = random.Random(seed)
        order = list(items)
        for _ in range(rounds):
            rng.shuffle(order)
            for m in order:
                m.samples.append(m.time(loop, m.n))
    return Report(
        rows,
        {(m.row, m.library): m for m in items},
        rounds,
        time.perf_counter() - started,
    )


# ------------------------------------------------------------------------------ output


def _ns(value: float) -> str:
    return f"{value:,.0f}" if value < 10_000 else f"{value / 1000:,.1f}µ"


def _table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in lines)])


def format_report(report: Report) -> str:
    """The two tables: ratios with goals, then nanoseconds per call."""
    peers = [p for p in LIBRARIES if any(r.subject(p) for r in report.rows)]
    ratios: list[list[str]] = []
    times: list[list[str]] = []
    for row in report.rows:
        ours = report.ratio(row, "ours")
        of_mins = report.min_ratio(row, "ours")
        verdict = {None: "", True: "pass", False: "MISS"}[report.passed(row)]
        cells = [
            row.title,
            f"{ours:.1f}×" if ours is not None else "n/a",
            f"{of_mins:.1f}×" if of_mins is not None else "n/a",
            _goal(row),
            verdict,
        ]
        for p in peers:
            r = report.ratio(row, p)
            cells.append(f"{r:.0f}×" if r is not None else "—")
        ratios.append(cells)
        base = report.base(row)
        line = [row.title, f"{_ns(base.best)} ({'await' if row.is_async else 'call'})"]
        for lib in ("ours", *peers):
            m = report.get(row, lib)
            line.append(_ns(m.best) if m is not None else ("n/a" if lib == "ours" else "—"))
        times.append(line)
    head = ["path", "ours", "min/min", "goal", "", *peers]
    call, aw = report.bare_call, report.bare_await
    spread = max(statistics.median(m.samples) / m.best for m in report.measurements.values())
    return "\n".join(
        [
            f"Python {platform.python_version()} on {platform.machine()}, "
            f"{os.cpu_count()} CPUs, load {_load()}; {report.rounds} interleaved rounds, "
            f"{report.seconds:.1f} s",
            f"bare call {call.best:.1f} ns, bare await {aw.best:.1f} ns (min over rounds); "
            f"worst median/min spread of any subject {spread:.2f}",
            "",
            "Ratio to a bare call (async rows: to a bare await): the median over rounds of the "
            "per-round ratio;",
            "'min/min': best time / best bare time. Verdicts use the median ratio.",
            "",
            _table(head, ratios),
            "",
            "Nanoseconds per call (min over rounds; µ = microseconds)",
            "",
            _table(["path", "bare", "ours", *peers], times),
            "",
            format_goals(report),
        ]
    )


def _goal(row: Row) -> str:
    if row.goal_ns is not None:
        return f"≤{row.goal_ns:g}ns"
    return f"≤{row.goal:g}×" if row.goal is not None else "info"


def format_goals(report: Report) -> str:
    """One line per goal: what ours measured against it, and the verdict."""
    lines = []
    for row in report.rows:
        verdict = report.passed(row)
        m = report.get(row, "ours")
        if verdict is None or m is None:
            continue
        if row.goal_ns is not None:
            got = f"{m.best:,.0f} ns (best of {len(m.samples)} rounds)"
        else:
            got = f"{report.ratio(row, 'ours'):.1f}× a bare call ({_ns(m.best)} ns)"
        lines.append(f"  {row.title}: {got}, goal {_goal(row)}: {'pass' if verdict else 'MISS'}")
    return "\n".join(["Goals", *lines])


def _load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


@contextlib.contextmanager
def quiet_peers() -> Iterator[None]:
    """Switch stamina's retry hooks off (they log every retry) and restore them after."""
    previous = stamina.instrumentation.get_on_retry_hooks()
    stamina.instrumentation.set_on_retry_hooks([])
    try:
        yield
    finally:
        stamina.instrumentation.set_on_retry_hooks(previous)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables. Exit status 1 only with ``--strict`` and a miss."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=25, help="interleaved rounds (25)")
    parser.add_argument("--target-ms", type=float, default=15.0, help="ms per sample (15)")
    parser.add_argument("--iterations", type=int, help="fixed calls per sample (no calibration)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the round order (0)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a goal is missed")
    args = parser.parse_args(argv)
    report = measure(
        rounds=args.rounds, target_ms=args.target_ms, iterations=args.iterations, seed=args.seed
    )
    print(format_report(report))
    missed = [row.title for row in report.rows if report.passed(row) is False]
    if missed:
        print(f"\nmissed: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
