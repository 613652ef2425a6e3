"""PrometheusMetrics: real policies record into a journal, the real prometheus_client exposes."""

from __future__ import annotations

import importlib
import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pytest_resilience import (
    Alerts,
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    ConsecutiveFailures,
    Degrader,
    FailureStreak,
    Fallback,
    FallbackError,
    HalfOpen,
    Journal,
    Level,
    ResponseCache,
    Retry,
    RetryError,
    State,
    StreamGuard,
    StreamInterrupted,
    VirtualClock,
)
from pytest_resilience.core import events
from pytest_resilience.core.cancel import current_scope
from pytest_resilience.core.errors import ResourceExhausted
from pytest_resilience.core.events import (
    AppRetry,
    CheckpointSaved,
    DaemonDown,
    DaemonRestarted,
    DaemonSlow,
    DaemonUp,
    Event,
    FaultInjected,
    Recovered,
    StreamFirstToken,
    register_event,
)
from pytest_resilience.core.health import DaemonCheck, HealthMonitor
from pytest_resilience.export.prometheus import METRICS, OTHER, PrometheusMetrics

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

NO_WAIT = Backoff(base=0.0, jitter="none")


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(journal: Journal, registry: CollectorRegistry) -> Iterator[PrometheusMetrics]:
    with PrometheusMetrics(journal, registry=registry) as exporter:
        yield exporter


def sample(registry: CollectorRegistry, name: str, /, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def refused() -> str:
    raise ConnectionError("refused")


def answers(*items: str | Exception) -> Callable[[], str]:
    pending = iter(items)

    def call() -> str:
        item = next(pending)
        if isinstance(item, Exception):
            raise item
        return item

    return call


# -------------------------------------------------------------------------- retries


def test_a_retry_that_recovers_counts_its_failure_its_retry_and_its_duration(
    clock: VirtualClock, journal: Journal, registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    retry = Retry(
        on=ConnectionError,
        attempts=3,
        backoff=Backoff(base=1.0, jitter="none"),
        clock=clock,
        journal=journal,
        name="ask",
        outcomes=True,
    )
    assert retry.call(answers(ConnectionError("refused"), "Paris")) == "Paris"

    assert (
        sample(registry, "resilience_attempt_failures_total", source="ask", category="connection")
        == 1
    )
    assert sample(registry, "resilience_retries_total", source="ask") == 1
    assert sample(registry, "resilience_calls_total", source="ask", outcome="succeeded") == 1
    assert sample(registry, "resilience_calls_total", source="ask", outcome="failed") is None
    # the one-second backoff, on the virtual clock
    ok = {"source": "ask", "outcome": "succeeded"}
    assert sample(registry, "resilience_call_duration_seconds_sum", **ok) == 1.0
    assert sample(registry, "resilience_call_duration_seconds_bucket", le="0.5", **ok) == 0
    assert sample(registry, "resilience_call_duration_seconds_bucket", le="1.0", **ok) == 1


def test_a_retry_that_gives_up_counts_the_reason_and_the_failed_call(
    clock: VirtualClock, journal: Journal, registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    retry = Retry(
        on=ConnectionError,
        attempts=2,
        backoff=NO_WAIT,
        clock=clock,
        journal=journal,
        name="ask",
        outcomes=True,
    )
    for _ in range(2):
        with pytest.raises(RetryError):
            retry.call(refused)

    assert sample(registry, "resilience_gave_up_total", source="ask", reason="attempts") == 2
    assert sample(registry, "resilience_retries_total", source="ask") == 2
    assert sample(registry, "resilience_calls_total", source="ask", outcome="failed") == 2
    assert (
        sample(registry, "resilience_call_duration_seconds_count", source="ask", outcome="failed")
        == 2
    )


# ------------------------------------------------------------------------- breakers


def test_the_breaker_gauge_follows_its_states_and_transitions_and_rejections_count(
    clock: VirtualClock, journal: Journal, registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    breaker = CircuitBreaker(
        "daemon",
        on=ConnectionError,
        trip=ConsecutiveFailures(2),
        recovery=HalfOpen(after=30.0),
        clock=clock,
        journal=journal,
    )
    assert sample(registry, "resilience_breaker_state", source="daemon") is None  # no news yet
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(refused)
    assert sample(registry, "resilience_breaker_state", source="daemon") == 2
    with pytest.raises(CircuitOpenError):
        breaker.call(refused)
    assert (
        sample(registry, "resilience_breaker_rejections_total", source="daemon", state="open") == 1
    )

    clock.advance(30.0)
    assert breaker.state is State.HALF_OPEN
    assert sample(registry, "resilience_breaker_state", source="daemon") == 1
    assert breaker.call(lambda: "pong") == "pong"
    assert sample(registry, "resilience_breaker_state", source="daemon") == 0

    moves = {
        (s.labels["from_state"], s.labels["to_state"]): s.value
        for family in registry.collect()
        if family.name == "resilience_breaker_transitions"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert moves == {("closed", "open"): 1, ("open", "half_open"): 1, ("half_open", "closed"): 1}


# ---------------------------------------------------------- fallbacks, degradation


def test_fallbacks_count_the_step_that_answered_and_the_chains_that_ran_out(
    clock: VirtualClock, journal: Journal, registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    cache_up = True

    def cached() -> str:
        if not cache_up:
            raise ConnectionError("cache down")
        return "cached"

    chain = Fallback(
        "answer",
        [("daemon", refused), ("cache", cached)],
        on=ConnectionError,
        clock=clock,
        journal=journal,
    )
    assert chain() == "cached"
    assert chain() == "cached"
    cache_up = False
    with pytest.raises(FallbackError):
        chain()

    assert sample(registry, "resilience_fallbacks_total", source="answer", step="cache") == 2
    assert sample(registry, "resilience_fallbacks_exhausted_total", source="answer") == 1


def test_the_degradation_gauge_follows_the_level(
    clock: VirtualClock, journal: Journal, registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    degrader = Degrader("llm", clock=clock, journal=journal)
    degrader.record(False, 0.3, error=ResourceExhausted("failed to create llama_context"))
    assert degrader.level is Level.REDUCED
    assert sample(registry, "resilience_degradation_level", source="llm") == 1
    degrader.record(False, 0.3, error=ResourceExhausted("failed to create llama_context"))
    assert sample(registry, "resilience_degradation_level", source="llm") == 2
    changes = {"source": "llm", "from_level": "reduced", "to_level": "minimal"}
    assert sample(registry, "resilience_degradation_changes_total", **changes) == 1


# -------------------------------------------------------------------------- streams


def test_a_guarded_stream_observes_its_time_to_first_token_and_counts_its_stall(
    clock: VirtualClock, journal: Journal, registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    def tokens() -> Iterator[str]:
        clock.sleep(0.3)  # prompt processing
        yield from ["Once", " upon"]
        scope = current_scope()
        assert scope is not None  # the guard's
        scope.wait(300)  # the model stops answering; the idle deadline ends it
        yield " a time"

    guard = StreamGuard(first_token=10.0, idle=2.0, on_stall="return", clock=clock, journal=journal)
    result = guard.collect(tokens())
    assert (result.text, result.reason) == ("Once upon", "idle")

    ttft = "resilience_stream_time_to_first_token_seconds"
    assert sample(registry, f"{ttft}_sum", source="stream") == pytest.approx(0.3)
    assert sample(registry, f"{ttft}_bucket", source="stream", le="0.25") == 0
    assert sample(registry, f"{ttft}_bucket", source="stream", le="0.5") == 1
    assert sample(registry, "resilience_stream_stalls_total", source="stream", which="idle") == 1
    assert sample(registry, "resilience_stream_errors_total", source="stream", error="stalled") == 1


def test_every_incomplete_end_of_a_stream_is_counted_by_how_it_ended(
    clock: VirtualClock, journal: Journal, registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    def no_markup(chunk: str) -> bool:
        return "<" not in chunk

    guard = StreamGuard(
        idle=2.0, validators=[no_markup], max_chars=10, clock=clock, journal=journal, name="chat"
    )
    assert guard.collect(iter(["Hi", "<b>"])).reason == "invalid"
    assert guard.collect(iter(["A long ", "answer"])).reason == "capped"
    assert guard.collect(iter([" "])).reason == "empty"
    with guard.wrap(iter(["a", "b"])) as stream:  # the consumer leaves early
        next(iter(stream))
    with guard.wrap(iter(["a", "b"])) as stream:  # the app cancels it
        chunks = iter(stream)
        next(chunks)
        stream.cancel("user left")
        with pytest.raises(StreamInterrupted):
            next(chunks)

    def broken() -> Iterator[str]:
        yield "a"
        raise ConnectionError("reset")

    with pytest.raises(ConnectionError):
        guard.collect(broken())

    ends = {
        s.labels["error"]: s.value
        for family in registry.collect()
        if family.name == "resilience_stream_errors"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert ends == {
        "invalid": 1,
        "capped": 1,
        "empty": 1,
        "closed": 1,
        "cancelled": 1,
        "error": 1,
    }


# ------------------------------------------------------------ alerts, cache, health


def test_alerts_cache_and_health_checks_are_counted(
    clock: VirtualClock, journal: Journal, registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    Alerts(FailureStreak(2), clock=clock).attach(journal)
    retry = Retry(
        on=ConnectionError, attempts=2, backoff=NO_WAIT, clock=clock, journal=journal, name="ask"
    )
    with pytest.raises(RetryError):
        retry.call(refused)
    fired = {"name": "consecutive_failures", "rule": "consecutive_failures", "about": "ask"}
    assert sample(registry, "resilience_alerts_fired_total", **fired) == 1

    cache = ResponseCache(max_age=60.0, clock=clock, journal=journal)
    cache.put("key-1", "Paris")
    assert cache.get("key-1") == "Paris"
    assert cache.get("key-2") is None
    clock.advance(61.0)
    assert cache.get("key-1") is None
    assert sample(registry, "resilience_cache_hits_total", source="cache") == 1
    assert sample(registry, "resilience_cache_misses_total", source="cache", reason="absent") == 1
    assert sample(registry, "resilience_cache_misses_total", source="cache", reason="expired") == 1

    up = True
    monitor = HealthMonitor(
        [DaemonCheck(ping=lambda: up, clock=clock)], clock=clock, journal=journal
    )
    monitor.run_all()
    up = False
    monitor.run_all()
    check = {"source": "health", "check": "daemon"}
    assert sample(registry, "resilience_health_checks_total", healthy="true", **check) == 1
    assert sample(registry, "resilience_health_checks_total", healthy="false", **check) == 1
    assert sample(registry, "resilience_health_check_healthy", **check) == 0


@pytest.mark.parametrize(
    ("event", "metric", "labels"),
    [
        (DaemonUp(time=0, source="d", latency=1.5), "daemon_up", {"source": "d"}),
        (DaemonDown(time=0, source="d", reason="killed"), "daemon_down_total", {"source": "d"}),
        (
            DaemonSlow(time=0, source="d", latency=9, threshold=5),
            "daemon_slow_total",
            {"source": "d"},
        ),
        (DaemonRestarted(time=0, source="d", pid=42), "daemon_restarts_total", {"source": "d"}),
        (
            CheckpointSaved(time=0, source="job", key="k", step=3),
            "checkpoints_saved_total",
            {"source": "job"},
        ),
        (
            Recovered(time=0, source="job", key="k", how="checkpoint"),
            "recoveries_total",
            {"source": "job", "how": "checkpoint"},
        ),
        (
            AppRetry(
                time=0, source="app.ask", library="tenacity", attempt=1, delay=0.5, error="E: x"
            ),
            "app_retries_total",
            {"source": "app.ask", "library": "tenacity"},
        ),
        (
            FaultInjected(
                time=0, source="faults", site="llama.generate", fault="timeout(30s)", call=1
            ),
            "faults_injected_total",
            {"site": "llama.generate", "kind": "timeout"},
        ),
    ],
    ids=lambda x: x.kind if isinstance(x, Event) else None,
)
def test_each_remaining_kind_moves_its_metric(
    journal: Journal, registry: CollectorRegistry, event: Event, metric: str, labels: dict[str, str]
) -> None:
    with PrometheusMetrics(journal, registry=registry):
        journal.append(event)
    assert sample(registry, f"resilience_{metric}", **labels) == 1


def test_the_daemon_gauge_goes_down_and_up_again(
    journal: Journal, registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    journal.append(DaemonUp(time=0, source="d"))
    journal.append(DaemonDown(time=1, source="d", reason="killed"))
    assert sample(registry, "resilience_daemon_up", source="d") == 0
    journal.append(DaemonUp(time=2, source="d"))
    assert sample(registry, "resilience_daemon_up", source="d") == 1


# ------------------------------------------------------------- unknown and broken


@dataclass(frozen=True, slots=True, kw_only=True)
class Warmed(Event):
    kind: ClassVar[str] = "myapp.cache_warmed"
    entries: int


def test_an_apps_own_event_is_counted_by_kind(
    journal: Journal,
    registry: CollectorRegistry,
    metrics: PrometheusMetrics,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # registered as an app registers its kinds, and forgotten after the test: the
    # registry is process-wide, and other tests count what it holds
    monkeypatch.setattr(events, "_registry", dict(events._registry))
    register_event(Warmed)
    journal.append(Warmed(time=0, source="warmer", entries=10))
    journal.append(Warmed(time=1, source="warmer", entries=12))
    assert sample(registry, "resilience_other_events_total", kind="myapp.cache_warmed") == 2
    assert sample(registry, "resilience_export_errors_total", kind="myapp.cache_warmed") is None


def test_an_event_it_cannot_read_is_counted_logged_once_and_breaks_nothing(
    clock: VirtualClock,
    journal: Journal,
    registry: CollectorRegistry,
    metrics: PrometheusMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def ask() -> str:  # the app records an event of its own, with a field of the wrong type
        journal.append(StreamFirstToken(time=clock.now(), source="s", latency="soon"))  # type: ignore[arg-type]
        return "ok"

    retry = Retry(
        on=ConnectionError, attempts=2, backoff=NO_WAIT, clock=clock, journal=journal, name="ask"
    )
    with caplog.at_level(logging.WARNING):
        assert retry.call(ask) == "ok"
        assert retry.call(answers(ConnectionError("refused"), "ok")) == "ok"
        assert retry.call(ask) == "ok"

    assert sample(registry, "resilience_export_errors_total", kind="stream.first_token") == 2
    assert sample(registry, "resilience_retries_total", source="ask") == 1  # still counting
    assert len(journal.events(StreamFirstToken)) == 2  # the journal kept them
    [record] = caplog.records  # once per kind; the journal had nothing to report
    assert record.name == "pytest_resilience.export.prometheus"
    assert "cannot export the stream.first_token event" in record.getMessage()
    assert record.exc_info is not None


def test_label_sets_past_max_series_share_one_series(
    clock: VirtualClock,
    journal: Journal,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    PrometheusMetrics(journal, registry=registry, max_series=2)
    with caplog.at_level(logging.WARNING):
        for name in ("a", "b", "c", "d"):
            retry = Retry(
                on=ConnectionError,
                attempts=2,
                backoff=NO_WAIT,
                clock=clock,
                journal=journal,
                name=name,
            )
            retry.call(answers(ConnectionError("refused"), "ok"))

    sources = sorted(
        s.labels["source"]
        for family in registry.collect()
        if family.name == "resilience_retries"
        for s in family.samples
        if s.name.endswith("_total")
    )
    assert sources == [OTHER, "a", "b"]
    assert sample(registry, "resilience_retries_total", source=OTHER) == 2
    # once per metric that overflowed: the retries and the failed attempts, both by source
    assert sorted(r.getMessage().split()[1] for r in caplog.records) == [
        "resilience_attempt_failures",
        "resilience_retries",
    ]
    assert "reached max_series=2 label sets" in caplog.records[0].getMessage()


# ------------------------------------------------------------- attach and detach


def test_closing_stops_the_updates_and_keeps_the_values(
    clock: VirtualClock, journal: Journal, registry: CollectorRegistry
) -> None:
    metrics = PrometheusMetrics(journal, registry=registry)
    other = Journal()
    detach_other = metrics.attach(other)
    retry = Retry(
        on=ConnectionError, attempts=2, backoff=NO_WAIT, clock=clock, journal=journal, name="ask"
    )
    elsewhere = Retry(
        on=ConnectionError, attempts=2, backoff=NO_WAIT, clock=clock, journal=other, name="ask"
    )

    retry.call(answers(ConnectionError("refused"), "ok"))
    elsewhere.call(answers(ConnectionError("refused"), "ok"))
    assert sample(registry, "resilience_retries_total", source="ask") == 2

    detach_other()
    elsewhere.call(answers(ConnectionError("refused"), "ok"))
    assert sample(registry, "resilience_retries_total", source="ask") == 2
    retry.call(answers(ConnectionError("refused"), "ok"))
    assert sample(registry, "resilience_retries_total", source="ask") == 3

    metrics.close()
    retry.call(answers(ConnectionError("refused"), "ok"))
    assert sample(registry, "resilience_retries_total", source="ask") == 3
    metrics.close()  # twice is fine


# ------------------------------------------------------------------ the exposition


def test_the_exposition_parses_and_names_every_metric_with_its_type(
    clock: VirtualClock, journal: Journal, registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    retry = Retry(
        on=ConnectionError,
        attempts=2,
        backoff=NO_WAIT,
        clock=clock,
        journal=journal,
        name="ask",
        outcomes=True,
    )
    with pytest.raises(RetryError):
        retry.call(refused)
    cache = ResponseCache(clock=clock, journal=journal)
    cache.get("secret-request-key")

    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for spec in METRICS:
        name = "resilience_" + spec.name.removesuffix("_total")
        assert families[name].type == spec.type, name
        assert families[name].documentation == spec.help, name
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert values[("resilience_gave_up_total", (("reason", "attempts"), ("source", "ask")))] == 1
    assert values[("resilience_calls_total", (("outcome", "failed"), ("source", "ask")))] == 1
    assert (
        values[("resilience_cache_misses_total", (("reason", "absent"), ("source", "cache")))] == 1
    )
    # no message, no key: only bounded labels
    assert "refused" not in text
    assert "secret-request-key" not in text


def test_the_docs_list_every_metric_with_its_type_and_labels() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "core.md").read_text(encoding="utf-8")
    section = page.split("## Metrics with Prometheus\n", 1)[1].split("\n## ", 1)[0]
    rows = {
        m.group(1): (m.group(2), m.group(3))
        for m in re.finditer(r"^\| `resilience_(\w+)` \| (\w+) \| ([^|]*) \|", section, re.M)
    }
    expected = {
        spec.name: (spec.type, ", ".join(f"`{label}`" for label in spec.labels)) for spec in METRICS
    }
    assert {name: (kind, labels.strip()) for name, (kind, labels) in rows.items()} == expected


# ----------------------------------------------------------------------- unhappy paths


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prefix": "my-app"}, r"prefix must be letters, digits and underscores.*'my-app'"),
        ({"prefix": "1st"}, r"prefix must be .*'1st'"),
        ({"prefix": ""}, r"prefix must be .*''"),
        ({"max_series": 0}, r"max_series must be an int >= 1, not 0"),
        ({"max_series": True}, r"max_series must be an int >= 1, not True"),
        ({"duration_buckets": ()}, r"duration_buckets must have at least one bound"),
        (
            {"duration_buckets": (1.0, 0.5)},
            r"duration_buckets must increase strictly, got \(1.0, 0.5\)",
        ),
        ({"first_token_buckets": (0.5, 0.5)}, r"first_token_buckets must increase strictly"),
        (
            {"first_token_buckets": (0.5, float("nan"))},
            r"first_token_buckets must be numbers of seconds, got nan",
        ),
        (
            {"first_token_buckets": ("1s",)},
            r"first_token_buckets must be numbers of seconds, got '1s'",
        ),
    ],
)
def test_bad_settings_are_refused_with_what_was_wrong(
    registry: CollectorRegistry, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PrometheusMetrics(registry=registry, **kwargs)  # type: ignore[arg-type]
    assert list(registry.collect()) == []  # nothing left behind


def test_a_name_already_in_the_registry_is_refused_and_the_registry_left_as_it_was(
    registry: CollectorRegistry,
) -> None:
    mine = Counter("resilience_export_errors_total", "the app's own", registry=registry)
    with pytest.raises(
        ValueError,
        match=r"PrometheusMetrics\(prefix='resilience'\) cannot register .*own registry or prefix",
    ):
        PrometheusMetrics(registry=registry)
    assert [f.name for f in registry.collect()] == ["resilience_export_errors"]
    mine.inc()

    other = PrometheusMetrics(registry=registry, prefix="chat")
    with pytest.raises(ValueError, match="prefix='chat'"):
        PrometheusMetrics(registry=registry, prefix="chat")
    other.close()


def test_without_prometheus_client_the_import_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # importing it now fails
    monkeypatch.delitem(sys.modules, "pytest_resilience.export.prometheus")
    with pytest.raises(ImportError, match=r"pip install 'pytest-resilience\[prometheus\]'") as e:
        importlib.import_module("pytest_resilience.export.prometheus")
    assert e.value.name == "prometheus_client"


def test_the_export_package_imports_no_exporter() -> None:
    code = (
        "import sys, pytest_resilience.export\n"
        "print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', "
        "'pytest_resilience.export.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
