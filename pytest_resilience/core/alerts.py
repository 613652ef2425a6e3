"""Alerts: thresholds on what the journal records, fired once per cooldown.

::

    alerts = Alerts(
        FailureStreak(5),                      # five failures of one policy in a row
        ErrorRate(errors=20, window=60.0),           # twenty errors within a minute
        BreakerOpened(),                             # any breaker opening
        clock=clock,
        on_alert=[page_someone],
    )
    alerts.attach(journal)                           # the journal the policies record into

An :class:`Alerts` is a journal listener: the policies (retries, breakers, fallbacks, an
application's own retries seen by :func:`faults.observe.watch`) record into a journal as
they always do, and the alerts read those events as they are appended. Attaching one
changes nothing in the policies, and a journal with no alert attached costs nothing more.

What counts, read from events as :func:`~pytest_resilience.core.analytics.summarize` counts
them:

- an **error** is a failed attempt (``AttemptFailed``), a retry of the application's own
  (``AppRetry``, which follows a failed attempt), or a failed fallback step (each reason in
  a ``FallbackUsed.after`` or a ``FallbackExhausted.failures``);
- a **success** ends a streak of failures. The core records no success (a success costs
  nothing), so a success is what the events show: a retried call whose last attempt did
  not fail (seen when the same policy's next run starts with a failed first attempt), a
  new run of an application's retried callable (its retry libraries report no give-up), a
  fallback step that answered (``FallbackUsed``, after its failed steps are counted), a
  breaker closing, a healthy check (``HealthChecked``), a recovery (``Recovered``).

The rules:

- :class:`FailureStreak` ``(threshold)``: ``threshold`` errors of one source (a
  policy's name) with no success of that source in between;
- :class:`ErrorRate` ``(errors, window)``: at least ``errors`` errors within the last
  ``window`` seconds;
- :class:`BreakerOpened`: a breaker went to ``open`` (from closed, or a failed probe).

Each rule takes ``source`` (only the events of that source count; None: all) and
``cooldown`` (seconds): once a rule has fired, it stays quiet for ``cooldown`` seconds,
counting what it held back in :attr:`Alerts.suppressed`; a streak or a window that is still
over the threshold when the cooldown ends fires again at its next error.

Time is the ``clock``'s (``clock.now()`` when an event arrives), so windows and cooldowns
follow a :class:`~pytest_resilience.core.virtual_clock.VirtualClock` in tests.

Where an alert goes: an :class:`Alert` to each ``on_alert`` callback (one that raises is
logged and the others still run); a WARNING to the logger ``"pytest_resilience.alerts"``,
with the alert's fields in the record's ``extra`` (``alert_name``, ``alert_rule``,
``alert_about``, ``alert_value``, ``alert_threshold``, ``alert_time``); and an
:class:`~pytest_resilience.core.events.AlertFired` event in the attached journal, which
``assert_alerted`` (in :mod:`pytest_resilience.plugin.assertions`) counts. Thread-safe:
the counts are kept under a lock, and alerts are delivered outside it, in the thread that
appended the event.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, Self

from .clock import Clock, SystemClock
from .events import (
    AlertFired,
    AppRetry,
    AttemptFailed,
    AttemptStarted,
    BreakerTransition,
    FallbackUsed,
    GaveUp,
    HealthChecked,
    Recovered,
)
from .fallback import FallbackExhausted

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .events import Event
    from .journal import Journal

__all__ = [
    "Alert",
    "AlertRule",
    "Alerts",
    "BreakerOpened",
    "ErrorRate",
    "FailureStreak",
]

#: The logger every alert is logged to, at WARNING.
LOGGER: Final = "pytest_resilience.alerts"
_log = logging.getLogger(LOGGER)

RuleKind = Literal["consecutive_failures", "error_rate", "breaker_open"]


@dataclass(frozen=True, slots=True)
class FailureStreak:
    """Fire when one source has ``threshold`` errors with no success in between."""

    threshold: int
    name: str = "consecutive_failures"
    source: str | None = None
    cooldown: float = 60.0
    rule: RuleKind = field(default="consecutive_failures", init=False)

    def __post_init__(self) -> None:
        _check(self.name, "threshold", self.threshold, self.cooldown)


@dataclass(frozen=True, slots=True)
class ErrorRate:
    """Fire when at least ``errors`` errors happened within the last ``window`` seconds."""

    errors: int
    window: float
    name: str = "error_rate"
    source: str | None = None
    cooldown: float = 60.0
    rule: RuleKind = field(default="error_rate", init=False)

    def __post_init__(self) -> None:
        _check(self.name, "errors", self.errors, self.cooldown)
        if not self.window > 0:
            raise ValueError(f"alert {self.name!r}: window must be > 0 seconds, got {self.window}")


@dataclass(frozen=True, slots=True)
class BreakerOpened:
    """Fire when a breaker opens."""

    name: str = "breaker_open"
    source: str | None = None
    cooldown: float = 60.0
    rule: RuleKind = field(default="breaker_open", init=False)

    def __post_init__(self) -> None:
        _check(self.name, "threshold", 1, self.cooldown)


AlertRule = FailureStreak | ErrorRate | BreakerOpened


def _check(name: str, what: str, threshold: int, cooldown: float) -> None:
    if not name:
        raise ValueError("an alert needs a name")
    if threshold < 1:
        raise ValueError(f"alert {name!r}: {what} must be at least 1, got {threshold}")
    if not cooldown >= 0:
        raise ValueError(f"alert {name!r}: cooldown must be >= 0 seconds, got {cooldown}")


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert that fired: ``value`` crossed ``threshold`` at ``time`` (the clock's)."""

    name: str
    rule: RuleKind
    about: str  # the source of the event that crossed the threshold
    value: float  # failures in a row, errors in the window, or 1 for a breaker opening
    threshold: float
    time: float
    message: str

    def extra(self) -> dict[str, object]:
        """The alert's fields as a log record's ``extra`` (each name prefixed ``alert_``)."""
        return {
            "alert_name": self.name,
            "alert_rule": self.rule,
            "alert_about": self.about,
            "alert_value": self.value,
            "alert_threshold": self.threshold,
            "alert_time": self.time,
        }


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one event shows: ``errors``, and a success before or after them."""

    errors: int
    success_before: bool = False
    success_after: bool = False


#: The events any rule reads; the others cost an ``isinstance``.
_READ: Final = (
    AttemptFailed,
    AttemptStarted,
    GaveUp,
    AppRetry,
    FallbackUsed,
    FallbackExhausted,
    BreakerTransition,
    HealthChecked,
    Recovered,
)


class _State:
    """What one rule has counted: streaks by source, error times, when it last fired."""

    __slots__ = ("errors", "quiet_until", "streaks")

    def __init__(self) -> None:
        self.streaks: dict[str, int] = {}
        self.errors: deque[float] = deque()
        self.quiet_until = float("-inf")


class Alerts:
    """Rules read from a journal's events; see the module docs.

    ``on_alert``: callables given each :class:`Alert`. ``logger``: where alerts are logged
    (default ``"pytest_resilience.alerts"``). Raises ``ValueError`` for two rules of one name.
    """

    def __init__(
        self,
        *rules: AlertRule,
        clock: Clock | None = None,
        on_alert: Iterable[Callable[[Alert], object]] = (),
        logger: logging.Logger | None = None,
        name: str = "alerts",
    ) -> None:
        names = [rule.name for rule in rules]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"alert names must differ; given twice: {', '.join(twice)}")
        self.rules: tuple[AlertRule, ...] = rules
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.on_alert = tuple(on_alert)
        self.logger = logger if logger is not None else _log
        self.name = name
        self.fired: list[Alert] = []
        #: alerts held back by a cooldown, by alert name
        self.suppressed: dict[str, int] = {}
        self._states = {rule.name: _State() for rule in rules}
        self._started: dict[str, int] = {}  # a core retry's attempt that started, not failed
        self._app_attempt: dict[str, int] = {}  # an app retry's last failed attempt
        self._lock = threading.Lock()
        self._journal: Journal | None = None
        self._unsubscribe: Callable[[], None] | None = None

    # ----------------------------------------------------------------------- attaching

    def attach(self, journal: Journal) -> Self:
        """Read ``journal``'s events from now on, and record alerts into it. Raises
        ``RuntimeError`` if already attached."""
        if self._unsubscribe is not None:
            raise RuntimeError(f"{self!r} is already attached to a journal")
        self._journal = journal
        self._unsubscribe = journal.subscribe(self)
        return self

    def detach(self) -> None:
        """Stop reading the journal; idempotent."""
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        self._journal = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    # ------------------------------------------------------------------------- reading

    def __call__(self, event: Event) -> None:
        """Take one event (the journal calls this for each one appended)."""
        if not isinstance(event, _READ):
            return  # nothing any rule reads: no clock read, no lock
        now = self.clock.now()
        source = event.source
        with self._lock:
            outcome = self._outcome(event)
            due = [
                alert
                for rule in self.rules
                if rule.source in (None, source)
                and (alert := self._count(rule, event, outcome, now)) is not None
            ]
        for alert in due:
            self._deliver(alert)

    def _outcome(self, event: Event) -> _Outcome:
        """What ``event`` shows of its source's calls; with the lock held."""
        match event:
            case AttemptFailed():
                started = self._started.pop(event.source, None)
                # a first attempt failed while an attempt of the run before had started and
                # not failed: that run's last attempt succeeded
                return _Outcome(1, success_before=event.attempt == 1 and started is not None)
            case AttemptStarted():
                self._started[event.source] = event.attempt
            case GaveUp():
                self._started.pop(event.source, None)
            case AppRetry():
                last = self._app_attempt.get(event.source)
                self._app_attempt[event.source] = event.attempt
                # a new run of the callable: the one before ended (no library reports a give-up)
                return _Outcome(1, success_before=last is not None and event.attempt <= last)
            case FallbackUsed():  # its failed steps, then the step that answered
                return _Outcome(len(event.after), success_after=True)
            case FallbackExhausted():
                return _Outcome(len(event.failures))
            case BreakerTransition():
                return _Outcome(0, success_after=event.to_state == "closed")
            case HealthChecked():
                return _Outcome(0, success_after=event.healthy)
            case Recovered():
                return _Outcome(0, success_after=True)
            case _:
                pass
        return _Outcome(0)

    def _count(self, rule: AlertRule, event: Event, outcome: _Outcome, now: float) -> Alert | None:
        """Count ``event`` for ``rule``, with the lock held; the alert it fires, if any."""
        state = self._states[rule.name]
        source = event.source
        errors = outcome.errors
        if isinstance(rule, FailureStreak):
            streak = 0 if outcome.success_before else state.streaks.get(source, 0)
            streak += errors
            state.streaks[source] = 0 if outcome.success_after else streak
            if not errors or outcome.success_after or streak < rule.threshold:
                return None
            value: float = streak
            message = f"{streak} failures in a row from {source or 'an unnamed source'}"
            threshold: float = rule.threshold
        elif isinstance(rule, ErrorRate):
            times = state.errors
            times.extend([now] * errors)
            while times and times[0] <= now - rule.window:
                times.popleft()
            if not errors or len(times) < rule.errors:
                return None
            value, threshold = len(times), rule.errors
            message = f"{len(times)} errors within {rule.window:g}s"
        else:
            if not (isinstance(event, BreakerTransition) and event.to_state == "open"):
                return None
            value, threshold = 1, 1
            message = f"breaker {source!r} opened ({event.reason})"
        if now < state.quiet_until:
            self.suppressed[rule.name] = self.suppressed.get(rule.name, 0) + 1
            return None
        state.quiet_until = now + rule.cooldown
        alert = Alert(rule.name, rule.rule, source, value, threshold, now, message)
        self.fired.append(alert)
        return alert

    # ---------------------------------------------------------------------- delivering

    def _deliver(self, alert: Alert) -> None:
        for callback in self.on_alert:
            try:
                callback(alert)
            except Exception:  # one broken callback must not silence the others
                self.logger.exception("alert callback %r failed on %s", callback, alert.name)
        self.logger.warning("alert %s: %s", alert.name, alert.message, extra=alert.extra())
        journal = self._journal
        if journal is not None:
            journal.append(
                AlertFired(
                    time=alert.time,
                    source=self.name,
                    name=alert.name,
                    rule=alert.rule,
                    about=alert.about,
                    value=alert.value,
                    threshold=alert.threshold,
                    message=alert.message,
                )
            )

    def __repr__(self) -> str:
        names = ", ".join(rule.name for rule in self.rules)
        return f"<Alerts {self.name!r} [{names}] fired={len(self.fired)}>"
