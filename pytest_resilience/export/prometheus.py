"""Prometheus metrics from a journal's events (the ``prometheus`` extra).

::

    from prometheus_client import start_http_server

    metrics = PrometheusMetrics(journal)   # counters, gauges, histograms in the default registry
    start_http_server(9100)                # or generate_latest(registry) in a route of the app's

A :class:`PrometheusMetrics` is a journal listener: the policies record into their journal as
they always do, and each event they append moves the metrics its kind maps to (the table in
``docs/core.md``, "Metrics with Prometheus"). Counters end in ``_total``, durations are in
seconds (the clock's: virtual seconds under a ``VirtualClock``), every name starts with
``prefix`` (``resilience_``). An event kind without a metric of its own (an application's
registered events, a scenario's) is counted by kind in ``<prefix>_other_events_total``.

Labels are bounded by what the code names: a policy's name (``source``), a fallback step, a
fault site and kind, a classification category, a reason from a fixed set. No label holds an
error message, a cache key or partial text. Should a metric still reach ``max_series``
label sets (a ``source`` built from request data), further label sets share one series whose
values are all ``"_other"``, and a warning says which metric overflowed.

Speed: the listener runs in the thread that appended, on every event. It finds the event's
handler by kind in one dict and keeps each metric's children by their label values, so an
event costs two dict look-ups and a call or two beyond the client's own increments and
observations, which take most of its microsecond or two. An event the listener cannot read
(a field of the wrong type) is counted in ``<prefix>_export_errors_total`` by kind and
logged once per kind; it never reaches the code that appended it.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import threading
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
except ImportError as exc:  # pragma: no cover - the message is tested with the module hidden
    raise ImportError(
        "pytest_resilience.export.prometheus needs prometheus_client: "
        f"pip install 'pytest-resilience[prometheus]' ({exc})",
        name=exc.name,
    ) from exc

from ..core.breaker import State
from ..core.degrade import Level

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from prometheus_client.metrics import MetricWrapperBase

    from ..core.events import Event
    from ..core.journal import Journal

__all__ = [
    "CALL_DURATION_BUCKETS",
    "FIRST_TOKEN_BUCKETS",
    "METRICS",
    "MetricSpec",
    "PrometheusMetrics",
]

_log = logging.getLogger(__name__)

#: Call durations, seconds: a local model's answers take from tens of milliseconds to minutes.
CALL_DURATION_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Times to first token, seconds: prompt processing on a CPU takes up to tens of seconds.
FIRST_TOKEN_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: ``<prefix>_breaker_state``: 0 admits every call, 1 admits probes, 2 rejects.
BREAKER_STATE_VALUES: Final[dict[str, int]] = {
    State.CLOSED.value: 0,
    State.FORCED_CLOSED.value: 0,
    State.DISABLED.value: 0,
    State.HALF_OPEN.value: 1,
    State.OPEN.value: 2,
    State.FORCED_OPEN.value: 2,
}
#: ``<prefix>_degradation_level``: the level's number, 0 (full) to 4 (static).
DEGRADATION_LEVELS: Final[dict[str, int]] = {level.label: int(level) for level in Level}
#: How a ``stream.cancelled`` reason begins ("cancelled: ...", "error: ...", "closed").
_CANCEL_HEADS: Final = frozenset({"cancelled", "error", "closed"})

_PREFIX = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
OTHER: Final = "_other"  # every label value of the series past max_series


class MetricSpec(NamedTuple):
    """One metric: its name after ``<prefix>_``, its labels, and the events that move it."""

    attribute: str  # where PrometheusMetrics keeps its children
    type: Literal["counter", "gauge", "histogram"]
    name: str
    labels: tuple[str, ...]
    buckets: Literal["duration", "first_token"] | None  # a histogram's bounds
    events: str  # the event kinds that move it
    help: str


_Spec = MetricSpec
#: Every metric, in the order of the documentation's table.
# fmt: off
METRICS: Final[tuple[MetricSpec, ...]] = (
    _Spec("_calls", "counter", "calls_total",
          ("source", "outcome"), None, "call.succeeded, call.failed",
          "Calls through a policy made with outcomes=True, by outcome (succeeded, failed)."),
    _Spec("_call_duration", "histogram", "call_duration_seconds",
          ("source", "outcome"), "duration", "call.succeeded, call.failed",
          "Clock seconds from a call's start to its outcome."),
    _Spec("_attempt_failures", "counter", "attempt_failures_total",
          ("source", "category"), None, "attempt.failed",
          "Failed attempts of a retry, by the error's category."),
    _Spec("_retries", "counter", "retries_total",
          ("source",), None, "retry.scheduled",
          "Retries a retry policy scheduled."),
    _Spec("_gave_up", "counter", "gave_up_total",
          ("source", "reason"), None, "retry.gave_up",
          "Retry runs that gave up, by reason (attempts, budget, not retryable, cancelled)."),
    _Spec("_app_retries", "counter", "app_retries_total",
          ("source", "library"), None, "app.retry",
          "Retries of the application's own retry code, by library."),
    _Spec("_breaker_state", "gauge", "breaker_state",
          ("source",), None, "breaker.transition",
          "A breaker's state: 0 closed, 1 half-open, 2 open."),
    _Spec("_breaker_transitions", "counter", "breaker_transitions_total",
          ("source", "from_state", "to_state"), None, "breaker.transition",
          "Breaker state changes."),
    _Spec("_rejections", "counter", "breaker_rejections_total",
          ("source", "state"), None, "breaker.rejected",
          "Calls a breaker rejected, by its state."),
    _Spec("_fallbacks", "counter", "fallbacks_total",
          ("source", "step"), None, "fallback.used",
          "Answers from a fallback step other than the first, by step."),
    _Spec("_fallbacks_exhausted", "counter", "fallbacks_exhausted_total",
          ("source",), None, "fallback.exhausted",
          "Fallback chains whose every step failed."),
    _Spec("_degradation_level", "gauge", "degradation_level",
          ("source",), None, "degradation.changed",
          "A degrader's level: 0 full, 1 reduced, 2 minimal, 3 cached only, 4 static."),
    _Spec("_degradation_changes", "counter", "degradation_changes_total",
          ("source", "from_level", "to_level"), None, "degradation.changed",
          "Degradation level changes."),
    _Spec("_first_token", "histogram", "stream_time_to_first_token_seconds",
          ("source",), "first_token", "stream.first_token",
          "Clock seconds from a guarded stream's start to its first chunk."),
    _Spec("_stalls", "counter", "stream_stalls_total",
          ("source", "which"), None, "stream.stalled",
          "Guarded streams a deadline stopped, by deadline (first_token, idle, total)."),
    _Spec("_stream_errors", "counter", "stream_errors_total",
          ("source", "error"), None, "stream.stalled, .cancelled, .empty, .invalid, .capped",
          "Guarded streams that did not end complete, by how they ended."),
    _Spec("_daemon_up", "gauge", "daemon_up",
          ("source",), None, "daemon.up, daemon.down",
          "1 once the model daemon is up, 0 once it is down."),
    _Spec("_daemon_down", "counter", "daemon_down_total",
          ("source",), None, "daemon.down",
          "Times the model daemon went down."),
    _Spec("_daemon_slow", "counter", "daemon_slow_total",
          ("source",), None, "daemon.slow",
          "Daemon answers slower than their threshold."),
    _Spec("_daemon_restarts", "counter", "daemon_restarts_total",
          ("source",), None, "daemon.restarted",
          "Restarts of the model daemon."),
    _Spec("_health_checks", "counter", "health_checks_total",
          ("source", "check", "healthy"), None, "health.checked",
          "Health checks run, by check and result (true, false)."),
    _Spec("_health_healthy", "gauge", "health_check_healthy",
          ("source", "check"), None, "health.checked",
          "A health check's last result: 1 healthy, 0 not."),
    _Spec("_cache_hits", "counter", "cache_hits_total",
          ("source",), None, "cache.hit",
          "Requests a cache answered."),
    _Spec("_cache_misses", "counter", "cache_misses_total",
          ("source", "reason"), None, "cache.missed",
          "Requests a cache could not answer, by reason (absent, expired)."),
    _Spec("_checkpoints", "counter", "checkpoints_saved_total",
          ("source",), None, "checkpoint.saved",
          "Checkpoints saved."),
    _Spec("_recoveries", "counter", "recoveries_total",
          ("source", "how"), None, "recovery.recovered",
          "Work recovered, by how (checkpoint, fallback, retry)."),
    _Spec("_alerts", "counter", "alerts_fired_total",
          ("name", "rule", "about"), None, "alert.fired",
          "Alerts fired, by alert, rule and the source they are about."),
    _Spec("_faults", "counter", "faults_injected_total",
          ("site", "kind"), None, "fault.injected",
          "Faults the injector fired, by site and kind."),
    _Spec("_other", "counter", "other_events_total",
          ("kind",), None, "any other kind",
          "Events of a kind without a metric of its own, by kind."),
    _Spec("_errors", "counter", "export_errors_total",
          ("kind",), None, "an event it cannot read",
          "Events the exporter could not read, by kind."),
)
# fmt: on


class _Children(dict[Any, Any]):
    """A metric's children by label values (one value, or a tuple of them), made on first use.

    A hit is a dict look-up in C; ``__missing__`` runs once per new label set. Two threads
    may both miss the same key: the client hands both the same child, so nothing is lost.
    """

    __slots__ = ("limit", "metric", "overflowed")

    def __init__(self, metric: MetricWrapperBase, limit: int) -> None:
        super().__init__()
        self.metric = metric
        self.limit = limit
        self.overflowed = False

    def __missing__(self, key: Any) -> Any:
        values = key if isinstance(key, tuple) else (key,)
        if len(self) >= self.limit:
            if not self.overflowed:
                self.overflowed = True
                _log.warning(
                    "metric %s reached max_series=%d label sets; further ones are counted "
                    'under labels "%s" (is a label built from request data?)',
                    self.metric._name,
                    self.limit,
                    OTHER,
                )
            return self.metric.labels(*(OTHER for _ in values))  # not kept: the dict stays bounded
        child = self[key] = self.metric.labels(*values)
        return child


class PrometheusMetrics:
    """Counters, gauges and histograms moved by the events of one or more journals.

    ``journal`` (optional) is attached at once; :meth:`attach` adds more. ``registry`` is
    where the metrics are registered (default: prometheus_client's global ``REGISTRY``); a
    registry holds one ``PrometheusMetrics`` per ``prefix``. ``max_series`` bounds the label
    sets of each metric. The bucket bounds are seconds, increasing.

    Raises ``ValueError`` for a prefix that is not a metric name, a ``max_series`` below 1,
    buckets that are empty or not increasing, or metric names already in the registry.
    """

    # the children of each metric of METRICS, set by _make_metrics
    _calls: _Children
    _call_duration: _Children
    _attempt_failures: _Children
    _retries: _Children
    _gave_up: _Children
    _app_retries: _Children
    _breaker_state: _Children
    _breaker_transitions: _Children
    _rejections: _Children
    _fallbacks: _Children
    _fallbacks_exhausted: _Children
    _degradation_level: _Children
    _degradation_changes: _Children
    _first_token: _Children
    _stalls: _Children
    _stream_errors: _Children
    _daemon_up: _Children
    _daemon_down: _Children
    _daemon_slow: _Children
    _daemon_restarts: _Children
    _health_checks: _Children
    _health_healthy: _Children
    _cache_hits: _Children
    _cache_misses: _Children
    _checkpoints: _Children
    _recoveries: _Children
    _alerts: _Children
    _faults: _Children
    _other: _Children
    _errors: _Children

    def __init__(
        self,
        journal: Journal | None = None,
        *,
        registry: CollectorRegistry | None = None,
        prefix: str = "resilience",
        max_series: int = 1000,
        duration_buckets: Iterable[float] = CALL_DURATION_BUCKETS,
        first_token_buckets: Iterable[float] = FIRST_TOKEN_BUCKETS,
    ) -> None:
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ValueError(
                f"PrometheusMetrics prefix must be letters, digits and underscores, not "
                f"starting with a digit (a metric name's start), got {prefix!r}"
            )
        if isinstance(max_series, bool) or not isinstance(max_series, int) or max_series < 1:
            raise ValueError(
                f"PrometheusMetrics max_series must be an int >= 1, not {max_series!r}"
            )
        durations = _buckets("duration_buckets", duration_buckets)
        first_tokens = _buckets("first_token_buckets", first_token_buckets)
        self.registry: CollectorRegistry = REGISTRY if registry is None else registry
        self.prefix = prefix
        self.max_series = max_series
        self._lock = threading.Lock()
        self._detach: list[Callable[[], None]] = []
        self._failed_kinds: set[str] = set()
        self._registered: list[MetricWrapperBase] = []
        try:
            self._make_metrics(durations, first_tokens)
        except ValueError as exc:  # a name already in the registry: leave it as it was
            for metric in self._registered:
                self.registry.unregister(metric)
            raise ValueError(
                f"PrometheusMetrics(prefix={prefix!r}) cannot register its metrics: {exc}; "
                "give each PrometheusMetrics its own registry or prefix"
            ) from exc
        self._handlers: dict[str, Callable[[Any], None]] = {
            "attempt.started": _ignore,  # every one follows a retry.scheduled, counted there
            "attempt.failed": self._on_attempt_failed,
            "retry.scheduled": self._on_retry_scheduled,
            "retry.gave_up": self._on_gave_up,
            "app.retry": self._on_app_retry,
            "call.succeeded": self._on_call_succeeded,
            "call.failed": self._on_call_failed,
            "breaker.transition": self._on_breaker_transition,
            "breaker.rejected": self._on_breaker_rejected,
            "fallback.used": self._on_fallback_used,
            "fallback.exhausted": self._on_fallback_exhausted,
            "degradation.changed": self._on_degradation_changed,
            "stream.first_token": self._on_first_token,
            "stream.stalled": self._on_stalled,
            "stream.cancelled": self._on_stream_cancelled,
            "stream.empty": self._on_stream_end,
            "stream.invalid": self._on_stream_end,
            "stream.capped": self._on_stream_end,
            "daemon.down": self._on_daemon_down,
            "daemon.up": self._on_daemon_up,
            "daemon.slow": self._on_daemon_slow,
            "daemon.restarted": self._on_daemon_restarted,
            "health.checked": self._on_health_checked,
            "cache.hit": self._on_cache_hit,
            "cache.missed": self._on_cache_missed,
            "checkpoint.saved": self._on_checkpoint_saved,
            "recovery.recovered": self._on_recovered,
            "alert.fired": self._on_alert_fired,
            "fault.injected": self._on_fault_injected,
        }
        if journal is not None:
            self.attach(journal)

    # ------------------------------------------------------------------------ metrics

    def _make_metrics(self, durations: tuple[float, ...], first_tokens: tuple[float, ...]) -> None:
        buckets = {"duration": durations, "first_token": first_tokens}
        registry = self.registry
        for spec in METRICS:
            name = f"{self.prefix}_{spec.name}"
            metric: MetricWrapperBase
            if spec.type == "counter":
                metric = Counter(name, spec.help, spec.labels, registry=registry)
            elif spec.type == "gauge":
                metric = Gauge(name, spec.help, spec.labels, registry=registry)
            else:
                bounds = buckets[spec.buckets or "duration"]
                metric = Histogram(name, spec.help, spec.labels, registry=registry, buckets=bounds)
            self._registered.append(metric)
            setattr(self, spec.attribute, _Children(metric, self.max_series))

    # --------------------------------------------------------------------- listening

    def attach(self, journal: Journal) -> Callable[[], None]:
        """Follow ``journal``'s later events; returns the function that stops following it."""
        detach = journal.subscribe(self)
        with self._lock:
            self._detach.append(detach)
        return detach

    def close(self) -> None:
        """Stop following every attached journal. The metrics keep their values."""
        with self._lock:
            detach, self._detach = self._detach, []
        for undo in detach:
            undo()

    def __enter__(self) -> PrometheusMetrics:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __call__(self, event: Event) -> None:
        """Move the metrics ``event`` maps to (a journal calls this for each append)."""
        try:
            handler = self._handlers.get(event.kind)
            if handler is None:
                self._other[event.kind].inc()
            else:
                handler(event)
        except Exception:  # noqa: BLE001 - a malformed event must not break its appender
            self._failed(event)

    def _failed(self, event: object) -> None:
        kind = str(getattr(event, "kind", type(event).__name__))
        self._errors[kind].inc()
        with self._lock:
            first = kind not in self._failed_kinds
            self._failed_kinds.add(kind)
        if first:  # once per kind: a stream of them would flood the log
            _log.warning("cannot export the %s event %r", kind, event, exc_info=True)

    # ---------------------------------------------------------------------- handlers

    def _on_attempt_failed(self, e: Any) -> None:
        self._attempt_failures[e.source, e.category].inc()

    def _on_retry_scheduled(self, e: Any) -> None:
        self._retries[e.source].inc()

    def _on_gave_up(self, e: Any) -> None:
        self._gave_up[e.source, e.reason].inc()

    def _on_app_retry(self, e: Any) -> None:
        self._app_retries[e.source, e.library].inc()

    def _on_call_succeeded(self, e: Any) -> None:
        key = (e.source, "succeeded")
        self._call_duration[key].observe(e.duration)
        self._calls[key].inc()

    def _on_call_failed(self, e: Any) -> None:
        key = (e.source, "failed")
        self._call_duration[key].observe(e.duration)
        self._calls[key].inc()

    def _on_breaker_transition(self, e: Any) -> None:
        value = BREAKER_STATE_VALUES[e.to_state]  # before any change: unknown, nothing moves
        self._breaker_transitions[e.source, e.from_state, e.to_state].inc()
        self._breaker_state[e.source].set(value)

    def _on_breaker_rejected(self, e: Any) -> None:
        self._rejections[e.source, e.state].inc()

    def _on_fallback_used(self, e: Any) -> None:
        self._fallbacks[e.source, e.step].inc()

    def _on_fallback_exhausted(self, e: Any) -> None:
        self._fallbacks_exhausted[e.source].inc()

    def _on_degradation_changed(self, e: Any) -> None:
        value = DEGRADATION_LEVELS[e.to_level]
        self._degradation_changes[e.source, e.from_level, e.to_level].inc()
        self._degradation_level[e.source].set(value)

    def _on_first_token(self, e: Any) -> None:
        self._first_token[e.source].observe(e.latency)

    def _on_stalled(self, e: Any) -> None:
        self._stalls[e.source, e.which].inc()
        self._stream_errors[e.source, "stalled"].inc()

    def _on_stream_cancelled(self, e: Any) -> None:
        head = e.reason.partition(":")[0]
        self._stream_errors[e.source, head if head in _CANCEL_HEADS else "cancelled"].inc()

    def _on_stream_end(self, e: Any) -> None:  # stream.empty, stream.invalid, stream.capped
        self._stream_errors[e.source, e.kind[7:]].inc()

    def _on_daemon_down(self, e: Any) -> None:
        self._daemon_down[e.source].inc()
        self._daemon_up[e.source].set(0)

    def _on_daemon_up(self, e: Any) -> None:
        self._daemon_up[e.source].set(1)

    def _on_daemon_slow(self, e: Any) -> None:
        self._daemon_slow[e.source].inc()

    def _on_daemon_restarted(self, e: Any) -> None:
        self._daemon_restarts[e.source].inc()

    def _on_health_checked(self, e: Any) -> None:
        healthy = e.healthy
        if not isinstance(healthy, bool):
            raise TypeError(f"health.checked healthy must be a bool, got {healthy!r}")
        self._health_checks[e.source, e.check, "true" if healthy else "false"].inc()
        self._health_healthy[e.source, e.check].set(1 if healthy else 0)

    def _on_cache_hit(self, e: Any) -> None:
        self._cache_hits[e.source].inc()

    def _on_cache_missed(self, e: Any) -> None:
        self._cache_misses[e.source, e.reason].inc()

    def _on_checkpoint_saved(self, e: Any) -> None:
        self._checkpoints[e.source].inc()

    def _on_recovered(self, e: Any) -> None:
        self._recoveries[e.source, e.how].inc()

    def _on_alert_fired(self, e: Any) -> None:
        self._alerts[e.name, e.rule, e.about].inc()

    def _on_fault_injected(self, e: Any) -> None:
        # "timeout(30s)" -> "timeout": the kind, without its arguments
        self._faults[e.site, e.fault.partition("(")[0]].inc()

    def __repr__(self) -> str:
        return f"<PrometheusMetrics prefix={self.prefix!r} journals={len(self._detach)}>"


def _ignore(event: object) -> None:
    """The handler of a kind that another metric already counts."""


def _buckets(name: str, bounds: Iterable[float]) -> tuple[float, ...]:
    values = tuple(bounds)
    if not values:
        raise ValueError(f"PrometheusMetrics {name} must have at least one bound")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ValueError(f"PrometheusMetrics {name} must be numbers of seconds, got {value!r}")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"PrometheusMetrics {name} must increase strictly, got {values}")
    return values
