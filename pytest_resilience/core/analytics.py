"""What a journal says, in numbers: errors, retries, recoveries, transitions, fallbacks.

::

    summary = summarize(journal)
    assert summary.recovery_rate == 1.0
    print(summary)            # a small table; the plugin's report prints it

Definitions (all read from events; times are the journal's clock, so virtual under a
virtual clock):

- **errors**: failed attempts (:class:`~pytest_resilience.core.events.AttemptFailed`, counted by
  their ``category``, and each retry of the application's own,
  :class:`~pytest_resilience.core.events.AppRetry`, which follows a failed attempt) plus failed
  fallback steps (each reason in a ``FallbackUsed.after`` or
  ``FallbackExhausted.failures``, counted as ``fallback_step_failures``, which carry no
  category). A retry inside a fallback step counts in both: each is a failed call.
- **errors per minute**: errors over the span from the first to the last event (``None``
  when the span is zero), and ``errors_by_minute``: errors in each minute from the first
  event's time.
- **recovery**: a retried operation that failed at least once (an ``AttemptFailed`` with
  ``attempt == 1``) and did not give up (no ``GaveUp``) recovered by retry; each
  ``FallbackUsed`` is a recovery by fallback; each ``GaveUp`` and ``FallbackExhausted`` is a
  give-up. ``recovery_rate = recovered / (recovered + gave_up)``, ``None`` when neither
  happened. Operations still in flight when the journal is read count as recovered, and a
  retry that gave up inside a fallback step that then answered counts once each way.
  The application's own retries (tenacity, stamina, ...) count in ``retries`` (and, by
  library, in ``app_retries``) but not in recovery: those libraries do not report giving up.
- **calls, error rate and recovery rate**, call by call, read policy by policy (by the
  events' ``source``). A policy that records outcomes (``outcomes=True``) says how every
  call ended: each ``CallSucceeded`` and ``CallFailed`` is one of ``calls``; each
  ``CallFailed`` is one of ``calls_failed``; a call failed at least once
  (``calls_with_failure``) if it is a ``CallFailed`` or a ``CallSucceeded`` with
  ``attempts > 1``, and the latter recovered (``calls_recovered``). A retry without
  ``outcomes`` records nothing for a call that answered at once, so for it only the calls
  that failed are known: each retry run that began with an ``AttemptFailed`` of
  ``attempt == 1`` failed at least once, and it recovered unless a ``GaveUp`` of the same
  source ended it (a run still in flight counts as recovered). The retry events of a
  source that records outcomes are not counted again. ``error_rate = calls_failed /
  calls`` (``None`` without outcome events: the calls that answered at once are unknown);
  ``call_recovery_rate = calls_recovered / calls_with_failure`` (``None`` when no call
  failed). A call through two policies that both record outcomes counts once for each;
  fallbacks and the application's own retries do not count here.
- **transitions**: each breaker's transitions (``"closed->open"``), in order, by source;
  **fallbacks**: each chain's answering steps, in order, by source; **degradations**
  likewise, for each degrader.

If the journal dropped events (its bound), ``dropped`` says how many and the counts are
partial.

Over a sliding window
    :class:`Rolling` keeps the events of the last ``window`` seconds of a clock (fed one by
    one: it is a journal listener, ``journal.subscribe(rolling)``, or from a list with
    :meth:`Rolling.feed`) and computes :class:`Figures` from them: errors per minute, the
    success rate and the recovery rate of the calls whose outcome a policy recorded
    (``outcomes=True``: :class:`~pytest_resilience.core.events.CallSucceeded`,
    :class:`~pytest_resilience.core.events.CallFailed`), the most common errors by category
    and by message shape (the message with its numbers, quoted text and hex ids blanked:
    ``"ConnectionError: port N refused"``), failures by severity, and p50/p95 latency per
    operation (the durations of its successful calls, nearest rank). ``Rolling(math.inf)``
    gives the same figures over a whole journal.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .events import (
    AppRetry,
    AttemptFailed,
    BreakerTransition,
    CallFailed,
    CallRejected,
    CallSucceeded,
    DegradationChanged,
    FallbackUsed,
    FaultInjected,
    GaveUp,
    RetryScheduled,
)
from .fallback import FallbackExhausted
from .journal import Journal

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from .clock import Clock
    from .events import Event

__all__ = ["Figures", "Rolling", "Summary", "error_shape", "rate_rows", "summarize"]


@dataclass(frozen=True, slots=True)
class Summary:
    """Numbers computed from a journal by :func:`summarize`; ``str()`` is a readable table."""

    events: int = 0
    start: float = 0.0  # time of the first event
    duration: float = 0.0  # seconds from the first event to the last
    errors_by_category: Mapping[str, int] = field(default_factory=dict)
    fallback_step_failures: int = 0
    errors_by_minute: tuple[int, ...] = ()
    retries: int = 0  # retries scheduled, the core's and the application's
    recovered_by_retry: int = 0
    recovered_by_fallback: int = 0
    gave_up: int = 0
    rejected: int = 0  # calls an open breaker refused
    transitions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    degradations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    faults: int = 0  # faults injected
    dropped: int = 0  # events the journal's bound pushed out before this summary
    app_retries: Mapping[str, int] = field(default_factory=dict)  # of the app's, by library
    calls: int = 0  # calls whose outcome a policy recorded (outcomes=True)
    calls_failed: int = 0  # of those, the calls that failed for good
    calls_with_failure: int = 0  # calls that failed at least once (outcomes, retry runs)
    calls_recovered: int = 0  # of those, the calls that answered in the end

    @property
    def errors(self) -> int:
        return sum(self.errors_by_category.values()) + self.fallback_step_failures

    @property
    def errors_per_minute(self) -> float | None:
        return self.errors * 60.0 / self.duration if self.duration > 0 else None

    @property
    def recovered(self) -> int:
        return self.recovered_by_retry + self.recovered_by_fallback

    @property
    def recovery_rate(self) -> float | None:
        outcomes = self.recovered + self.gave_up
        return self.recovered / outcomes if outcomes else None

    @property
    def error_rate(self) -> float | None:
        """Failed calls per call, of the calls whose outcome was recorded (None: none was)."""
        return self.calls_failed / self.calls if self.calls else None

    @property
    def call_recovery_rate(self) -> float | None:
        """Of the calls that failed at least once, the share that answered in the end (None:
        no call failed)."""
        failed = self.calls_with_failure
        return self.calls_recovered / failed if failed else None

    def __str__(self) -> str:
        rows: list[tuple[str, str]] = []
        rate = self.errors_per_minute
        detail = f"{rate:.3g}/min" if rate is not None else "no time elapsed"
        if self.errors_by_minute:
            detail += f", peak {max(self.errors_by_minute)} in one minute"
        rows.append(("errors", f"{self.errors} ({detail})" if self.errors else "0"))
        rows.extend((f"  {c}", str(n)) for c, n in sorted(self.errors_by_category.items()))
        if self.fallback_step_failures:
            rows.append(("  fallback steps", str(self.fallback_step_failures)))
        retries = str(self.retries)
        if self.app_retries:
            by = ", ".join(f"{n} by {lib}" for lib, n in sorted(self.app_retries.items()))
            retries += f" ({by})"
        rows.append(("retries scheduled", retries))
        recovery = f"{self.recovered} of {self.recovered + self.gave_up}"
        if self.recovery_rate is not None:
            recovery += (
                f" ({self.recovery_rate:.0%}: {self.recovered_by_retry} by retry, "
                f"{self.recovered_by_fallback} by fallback)"
            )
        rows.append(("recovered", recovery))
        rows.append(("gave up", str(self.gave_up)))
        rows.append(("calls rejected", str(self.rejected)))
        rows.extend(self.rate_rows())
        rows.extend((f"breaker {s}", ", ".join(t)) for s, t in sorted(self.transitions.items()))
        rows.extend((f"fallback {s}", _counted(t)) for s, t in sorted(self.fallbacks.items()))
        rows.extend((f"degraded {s}", ", ".join(t)) for s, t in sorted(self.degradations.items()))
        rows.append(("faults injected", str(self.faults)))
        width = max(len(label) for label, _ in rows)
        head = f"resilience summary: {self.events} events over {self.duration:.6g}s"
        if self.dropped:
            head += f" ({self.dropped} older events dropped: counts are partial)"
        return "\n".join([head, *(f"  {label:<{width}}  {value}" for label, value in rows)])

    def rate_rows(self) -> list[tuple[str, str]]:
        """The error rate and the call recovery rate as table rows, each only when it is
        defined: ``("error rate", "25% (1 of 4 calls failed)")``."""
        return rate_rows(
            self.calls, self.calls_failed, self.calls_with_failure, self.calls_recovered
        )


def rate_rows(calls: int, failed: int, with_failure: int, recovered: int) -> list[tuple[str, str]]:
    """The rows of :meth:`Summary.rate_rows` from the four counts (the plugin's summary sums
    them over its tests first)."""
    rows: list[tuple[str, str]] = []
    if calls:
        rows.append(("error rate", f"{failed / calls:.0%} ({failed} of {calls} calls failed)"))
    if with_failure:
        rows.append(
            (
                "recovery rate",
                f"{recovered / with_failure:.0%} ({recovered} of {with_failure} calls that "
                "failed recovered)",
            )
        )
    return rows


def _counted(items: tuple[str, ...]) -> str:
    return ", ".join(f"{name} x{n}" for name, n in Counter(items).items())


def summarize(journal: Journal | Iterable[Event]) -> Summary:
    """Compute a :class:`Summary` from a journal, or from any sequence of events."""
    dropped = journal.dropped if isinstance(journal, Journal) else 0
    events = journal.events() if isinstance(journal, Journal) else list(journal)
    if not events:
        return Summary(dropped=dropped)
    start = min(e.time for e in events)
    categories: Counter[str] = Counter()
    error_times: list[float] = []
    step_failures = first_failures = retries = retry_gave_up = exhausted = 0
    fell_back = rejected = faults = 0
    app_retries: Counter[str] = Counter()
    transitions: dict[str, list[str]] = {}
    fallbacks: dict[str, list[str]] = {}
    degradations: dict[str, list[str]] = {}
    for e in events:
        match e:
            case AttemptFailed():
                categories[e.category] += 1
                error_times.append(e.time)
                first_failures += e.attempt == 1
            case RetryScheduled():
                retries += 1
            case AppRetry():
                retries += 1
                app_retries[e.library] += 1
                categories[e.category or "unknown"] += 1
                error_times.append(e.time)
            case GaveUp():
                retry_gave_up += 1
            case FallbackUsed():
                fell_back += 1
                step_failures += len(e.after)
                error_times.extend([e.time] * len(e.after))
                fallbacks.setdefault(e.source, []).append(e.step)
            case FallbackExhausted():
                exhausted += 1
                step_failures += len(e.failures)
                error_times.extend([e.time] * len(e.failures))
            case BreakerTransition():
                transitions.setdefault(e.source, []).append(f"{e.from_state}->{e.to_state}")
            case CallRejected():
                rejected += 1
            case DegradationChanged():
                degradations.setdefault(e.source, []).append(f"{e.from_level}->{e.to_level}")
            case FaultInjected():
                faults += 1
            case _:
                pass
    calls, calls_failed, with_failure, recovered = _call_counts(events)
    by_minute = [0] * (int((max(error_times) - start) // 60) + 1) if error_times else []
    for t in error_times:
        by_minute[int((t - start) // 60)] += 1
    return Summary(
        events=len(events),
        start=start,
        duration=max(e.time for e in events) - start,
        errors_by_category=dict(categories),
        fallback_step_failures=step_failures,
        errors_by_minute=tuple(by_minute),
        retries=retries,
        recovered_by_retry=max(0, first_failures - retry_gave_up),
        recovered_by_fallback=fell_back,
        gave_up=retry_gave_up + exhausted,
        rejected=rejected,
        transitions={k: tuple(v) for k, v in transitions.items()},
        fallbacks={k: tuple(v) for k, v in fallbacks.items()},
        degradations={k: tuple(v) for k, v in degradations.items()},
        faults=faults,
        dropped=dropped,
        app_retries=dict(app_retries),
        calls=calls,
        calls_failed=calls_failed,
        calls_with_failure=with_failure,
        calls_recovered=recovered,
    )


def _call_counts(events: Iterable[Event]) -> tuple[int, int, int, int]:
    """Calls, failed calls, calls that failed at least once, and those that recovered (see
    the module docs)."""
    # by source: calls whose outcome was recorded (answered, failed, answered after a
    # failure), retry runs (begun with a failure, gave up)
    outcomes: dict[str, list[int]] = {}
    runs: dict[str, list[int]] = {}
    for e in events:
        match e:
            case CallSucceeded():
                counts = outcomes.setdefault(e.source, [0, 0, 0])
                counts[0] += 1
                counts[2] += e.attempts > 1
            case CallFailed():
                outcomes.setdefault(e.source, [0, 0, 0])[1] += 1
            case AttemptFailed() if e.attempt == 1:
                runs.setdefault(e.source, [0, 0])[0] += 1
            case GaveUp():
                runs.setdefault(e.source, [0, 0])[1] += 1
            case _:
                pass
    calls = sum(ok + failed for ok, failed, _ in outcomes.values())
    calls_failed = sum(failed for _, failed, _ in outcomes.values())
    recovered = sum(r for _, _, r in outcomes.values())
    with_failure = calls_failed + recovered
    for source, (began, gave_up) in runs.items():
        if source not in outcomes:  # else its calls were counted from their outcomes
            with_failure += began
            recovered += max(0, began - gave_up)
    return calls, calls_failed, with_failure, recovered


# -------------------------------------------------------------------------------- window

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_HEX = re.compile(r"\b0x[0-9a-fA-F]+\b|\b[0-9a-f]{8,}\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def error_shape(error: str) -> str:
    """An error's text with what varies blanked: quoted text ``'…'``, hex ids ``X``,
    numbers ``N``; so ``"port 8080 refused"`` and ``"port 8081 refused"`` are one shape."""
    return _NUMBER.sub("N", _HEX.sub("X", _QUOTED.sub("'…'", error)))


def _percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0-100] of a sorted, non-empty list."""
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class Figures:
    """What :meth:`Rolling.figures` computed over its window; :meth:`to_dict` is JSON-ready.

    Rates are ``None`` when there was nothing to divide by.
    """

    window: float  # seconds (inf: everything fed)
    errors: int = 0
    successes: int = 0  # calls that answered (CallSucceeded)
    failures: int = 0  # calls that failed for good (CallFailed)
    recovered: int = 0  # successes after a failed attempt, and fallbacks that answered
    gave_up: int = 0  # retries that gave up, fallback chains exhausted
    error_rate_per_minute: float | None = None
    top_categories: tuple[tuple[str, int], ...] = ()  # most common first
    top_shapes: tuple[tuple[str, int], ...] = ()
    failures_by_severity: Mapping[str, int] = field(default_factory=dict)
    latency: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # p50, p95

    @property
    def success_rate(self) -> float | None:
        calls = self.successes + self.failures
        return self.successes / calls if calls else None

    @property
    def recovery_rate(self) -> float | None:
        outcomes = self.recovered + self.gave_up
        return self.recovered / outcomes if outcomes else None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``json.dumps``: no infinity (a whole-journal window is ``None``)."""
        return {
            "window": self.window if math.isfinite(self.window) else None,
            "errors": self.errors,
            "error_rate_per_minute": self.error_rate_per_minute,
            "successes": self.successes,
            "failures": self.failures,
            "success_rate": self.success_rate,
            "recovered": self.recovered,
            "gave_up": self.gave_up,
            "recovery_rate": self.recovery_rate,
            "top_categories": [list(item) for item in self.top_categories],
            "top_shapes": [list(item) for item in self.top_shapes],
            "failures_by_severity": dict(self.failures_by_severity),
            "latency": {op: dict(q) for op, q in self.latency.items()},
        }


class Rolling:
    """The events of the last ``window`` seconds, and :class:`Figures` computed from them.

    ``clock`` ends the window (its ``now()``); without one, the latest event fed does.
    ``top``: how many of the most common errors to keep. At most ``maxlen`` events are
    kept (the oldest go first). Thread-safe: a journal's appenders may feed it. The error
    rate is per minute of the window (of the span fed, for an infinite window).
    """

    def __init__(
        self,
        window: float = 300.0,
        *,
        clock: Clock | None = None,
        top: int = 5,
        maxlen: int = 100_000,
    ) -> None:
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        self.window = window
        self.clock = clock
        self.top = top
        self._events: deque[Event] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        """Take one event (the journal-listener form of :meth:`add`)."""
        self.add(event)

    def add(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)
            self._prune(self._end())

    def feed(self, events: Iterable[Event]) -> Rolling:
        """Take many events (a journal, a list); returns ``self``."""
        for event in events:
            self.add(event)
        return self

    def _end(self) -> float:
        if self.clock is not None:
            return self.clock.now()
        return self._events[-1].time if self._events else 0.0

    def _prune(self, end: float) -> None:
        events, start = self._events, end - self.window
        while events and events[0].time < start:
            events.popleft()

    def figures(self) -> Figures:
        """The figures over the window ending now."""
        with self._lock:
            end = self._end()
            self._prune(end)
            events = list(self._events)
        categories: Counter[str] = Counter()
        shapes: Counter[str] = Counter()
        severities: Counter[str] = Counter()
        durations: dict[str, list[float]] = {}
        successes = failures = recovered = gave_up = 0
        last_attempt: tuple[str, float] | None = None
        for e in events:
            match e:
                case AttemptFailed() | AppRetry():
                    categories[e.category or "unknown"] += 1
                    shapes[error_shape(e.error)] += 1
                    last_attempt = (e.source, e.time)
                case CallFailed():
                    failures += 1
                    severities[e.severity] += 1
                    if last_attempt != (e.source, e.time):  # else its last attempt counted
                        categories[e.category] += 1
                        shapes[error_shape(e.error)] += 1
                case CallSucceeded():
                    successes += 1
                    recovered += e.attempts > 1
                    durations.setdefault(e.source, []).append(e.duration)
                case FallbackUsed():
                    recovered += 1
                case GaveUp() | FallbackExhausted():
                    gave_up += 1
                case _:
                    pass
        errors = sum(categories.values())
        if math.isfinite(self.window):
            minutes = self.window / 60.0
        else:
            span = events[-1].time - events[0].time if events else 0.0
            minutes = span / 60.0
        latency = {}
        for op, times in sorted(durations.items()):
            times.sort()
            latency[op] = {"p50": _percentile(times, 50), "p95": _percentile(times, 95)}
        return Figures(
            window=self.window,
            errors=errors,
            successes=successes,
            failures=failures,
            recovered=recovered,
            gave_up=gave_up,
            error_rate_per_minute=errors / minutes if minutes > 0 else None,
            top_categories=tuple(categories.most_common(self.top)),
            top_shapes=tuple(shapes.most_common(self.top)),
            failures_by_severity=dict(severities),
            latency=latency,
        )
