"""Unit tests for the combined health status (core/status.py), on a virtual clock."""

from __future__ import annotations

import json

import pytest

from pytest_resilience import Services
from pytest_resilience.core.breaker import CircuitBreaker, ConsecutiveFailures, HalfOpen
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import RetryError
from pytest_resilience.core.health import DiskCheck, HealthResult, MemoryCheck, MemoryInfo
from pytest_resilience.core.journal import Journal
from pytest_resilience.core.retry import Backoff, Retry


def _breaker(clock: VirtualClock, name: str = "daemon") -> CircuitBreaker:
    return CircuitBreaker(
        name,
        on=ConnectionError,
        trip=ConsecutiveFailures(1),
        recovery=HalfOpen(after=10.0),
        clock=clock,
    )


def _trip(breaker: CircuitBreaker) -> None:
    def down() -> None:
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        breaker.call(down)


def _memory(used: float) -> MemoryCheck:
    return MemoryCheck(threshold=0.9, read=lambda: MemoryInfo(1000, int(1000 * (1 - used))))


class _Fixed:
    """A check whose answer the test sets."""

    name = "model"

    def __init__(self, healthy: bool) -> None:
        self.healthy = healthy

    def __call__(self) -> HealthResult:
        return HealthResult(self.name, self.healthy, "loaded" if self.healthy else "missing")


def _round_trips(report: dict[str, object]) -> dict[str, object]:
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    return report


def test_all_well_is_healthy_and_round_trips_through_json() -> None:
    clock = VirtualClock()
    services = Services(clock=clock)
    services.register("daemon", breaker=_breaker(clock), checks=[_Fixed(True)])
    services.register(
        "resources",
        checks=[_memory(0.5), DiskCheck(usage=lambda _p: (100, 10, 90))],
        critical=False,
    )
    report = _round_trips(services.status())
    assert report["status"] == "healthy"
    assert report["reasons"] == []
    assert report["analytics"] is None
    daemon = report["services"]["daemon"]  # type: ignore[index]
    assert daemon == {
        "status": "healthy",
        "reasons": [],
        "breaker": "closed",
        "checks": {"model": {"healthy": True, "message": "loaded", "latency": 0.0}},
        "critical": True,
    }
    assert sorted(report["services"]["resources"]["checks"]) == ["disk", "memory"]  # type: ignore[index]


def test_an_open_breaker_makes_a_critical_service_unhealthy_and_half_open_degraded() -> None:
    clock = VirtualClock()
    breaker = _breaker(clock)
    services = Services(clock=clock)
    services.register("daemon", breaker=breaker)
    _trip(breaker)
    report = _round_trips(services.status())
    assert report["status"] == "unhealthy"
    assert report["reasons"] == ["daemon: breaker 'daemon' is open"]
    clock.advance(10.0)
    report = _round_trips(services.status())
    assert report["status"] == "degraded"
    assert report["reasons"] == ["daemon: breaker 'daemon' is half-open"]


def test_a_non_critical_service_that_fails_only_degrades() -> None:
    clock = VirtualClock()
    breaker = _breaker(clock)
    services = Services(clock=clock)
    services.register("daemon", breaker=breaker, critical=False)
    services.register("memory", checks=[_memory(0.95)], critical=False)
    _trip(breaker)
    report = _round_trips(services.status())
    assert report["status"] == "degraded"
    assert report["services"]["daemon"]["status"] == "unhealthy"  # type: ignore[index]
    assert report["reasons"][0] == "daemon: breaker 'daemon' is open"  # type: ignore[index]
    assert report["reasons"][1].startswith("memory: memory: ")  # type: ignore[index]


def test_a_failing_check_makes_its_service_unhealthy() -> None:
    services = Services(clock=VirtualClock())
    model = _Fixed(True)
    services.register("direct", checks=[model])
    assert services.status()["status"] == "healthy"
    model.healthy = False
    report = _round_trips(services.status())
    assert report["status"] == "unhealthy"
    assert report["reasons"] == ["direct: model: missing"]


def test_the_recent_figures_degrade_the_status_and_slide_out() -> None:
    clock, journal = VirtualClock(), Journal()
    retry = Retry(
        on=ConnectionError,
        attempts=1,
        backoff=Backoff.fixed(0.0),
        clock=clock,
        journal=journal,
        name="gen",
        outcomes=True,
    )
    services = Services(clock=clock, journal=journal, window=60.0, min_success_rate=0.75)
    services.register("daemon", breaker=_breaker(clock))

    def down() -> None:
        raise ConnectionError("refused")

    for _ in range(3):
        retry.call(lambda: "ok")
    report = _round_trips(services.status())
    assert report["status"] == "healthy"
    assert report["analytics"]["success_rate"] == 1.0  # type: ignore[index]
    with pytest.raises(RetryError):
        retry.call(down)  # 3 of 4: exactly the threshold, still healthy
    assert services.status()["status"] == "healthy"
    with pytest.raises(RetryError):
        retry.call(down)  # 3 of 5
    report = _round_trips(services.status())
    assert report["status"] == "degraded"
    assert report["reasons"] == ["success rate 60% under 75% over the last 60s"]
    assert report["analytics"]["top_categories"] == [["connection", 2]]  # type: ignore[index]
    clock.advance(61.0)
    assert services.status()["status"] == "healthy"


def test_an_error_rate_over_the_limit_degrades() -> None:
    clock, journal = VirtualClock(), Journal()
    retry = Retry(
        on=ConnectionError,
        attempts=3,
        backoff=Backoff.fixed(0.0),
        clock=clock,
        journal=journal,
        outcomes=True,
    )
    services = Services(
        clock=clock, journal=journal, window=60.0, min_success_rate=None, max_errors_per_minute=1
    )
    flaky = iter([ConnectionError("a"), None])

    def step() -> str:
        exc = next(flaky)
        if exc is not None:
            raise exc
        return "ok"

    assert retry.call(step) == "ok"
    assert services.status()["status"] == "healthy"  # one error a minute: not over
    flaky = iter([ConnectionError("b"), None])
    assert retry.call(step) == "ok"
    report = _round_trips(services.status())
    assert report["status"] == "degraded"
    assert report["reasons"] == ["2 errors/min, over 1"]


def test_the_registry() -> None:
    services = Services(clock=VirtualClock())
    services.register("a")
    services.register("b", critical=False)
    assert services.names() == ["a", "b"]
    assert "a" in services
    assert services["b"].critical is False
    services.unregister("a")
    assert services.names() == ["b"]
    with pytest.raises(ValueError, match="needs a name"):
        services.register("")
