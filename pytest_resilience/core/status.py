"""One health status for an application: named services, their breakers and checks, and
the recent figures, combined into ``"healthy"``, ``"degraded"`` or ``"unhealthy"``.

::

    services = Services(clock=clock, journal=journal)
    services.register("daemon", breaker=daemon_breaker, checks=[DaemonCheck(ping)])
    services.register("disk", checks=[DiskCheck("/models")], critical=False)
    services.register("machine", checks=[MemoryCheck(), CpuCheck()], critical=False)
    report = services.status()        # a plain dict: json.dumps(report) works
    report["status"]                  # "healthy" | "degraded" | "unhealthy"
    report["reasons"]                 # why it is not healthy, one line each

The rules, service by service: an open (or forced-open) breaker or a failing check makes a
service ``unhealthy``; a half-open breaker makes it ``degraded``. Overall: ``unhealthy``
when a critical service (the default) is unhealthy; ``degraded`` when a non-critical one
is unhealthy, any service is degraded, or the figures of the last ``window`` seconds of
the journal (:class:`~pytest_resilience.core.analytics.Rolling`) cross a threshold: a
success rate under ``min_success_rate`` or more than ``max_errors_per_minute``; else
``healthy``. Checks run when :meth:`Services.status` is called, on the caller's thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .analytics import Rolling
from .breaker import State

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .breaker import CircuitBreaker
    from .clock import Clock
    from .health import HealthCheck
    from .journal import Journal

__all__ = ["DEGRADED", "HEALTHY", "UNHEALTHY", "Service", "Services"]

HEALTHY: Final = "healthy"
DEGRADED: Final = "degraded"
UNHEALTHY: Final = "unhealthy"
_RANK: Final = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}


@dataclass(frozen=True, slots=True)
class Service:
    """One registered service: its breaker (optional), its checks, whether it is critical."""

    name: str
    breaker: CircuitBreaker | None = None
    checks: tuple[HealthCheck, ...] = ()
    critical: bool = True

    def status(self) -> dict[str, Any]:
        """This service's state, checks run now: ``status``, ``reasons``, ``breaker``,
        ``checks`` (by name: ``healthy``, ``message``, ``latency``)."""
        reasons: list[str] = []
        state = HEALTHY
        breaker = None
        if self.breaker is not None:
            current = self.breaker.state
            breaker = current.value
            if current in (State.OPEN, State.FORCED_OPEN):
                state = UNHEALTHY
                reasons.append(f"breaker {self.breaker.name!r} is {breaker}")
            elif current is State.HALF_OPEN:
                state = DEGRADED
                reasons.append(f"breaker {self.breaker.name!r} is half-open")
        checks: dict[str, Any] = {}
        for check in self.checks:
            result = check()
            checks[result.name] = {
                "healthy": result.healthy,
                "message": result.message,
                "latency": result.latency,
            }
            if not result.healthy:
                state = UNHEALTHY
                reasons.append(f"{result.name}: {result.message}")
        return {"status": state, "reasons": reasons, "breaker": breaker, "checks": checks}


class Services:
    """A registry of named services, and :meth:`status`, their combined health.

    ``journal``: the events the figures are computed from (over the last ``window``
    seconds of ``clock``; none without a journal). Thresholds: ``min_success_rate`` of the
    calls whose outcome was recorded, ``max_errors_per_minute`` (None: no limit).
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        journal: Journal | None = None,
        window: float = 300.0,
        min_success_rate: float | None = 0.9,
        max_errors_per_minute: float | None = None,
    ) -> None:
        if clock is None:
            from .clock import SystemClock  # noqa: PLC0415 - production imports need no asyncio

            clock = SystemClock()
        self.clock: Clock = clock
        self.journal = journal
        self.window = window
        self.min_success_rate = min_success_rate
        self.max_errors_per_minute = max_errors_per_minute
        self._services: dict[str, Service] = {}
        self._lock = threading.Lock()

    def register(
        self,
        name: str,
        *,
        breaker: CircuitBreaker | None = None,
        checks: Iterable[HealthCheck] = (),
        critical: bool = True,
    ) -> Service:
        """Add (or replace) the service ``name``. Raises ``ValueError`` for an empty name."""
        if not name:
            raise ValueError("a service needs a name")
        service = Service(name, breaker, tuple(checks), critical)
        with self._lock:
            self._services[name] = service
        return service

    def unregister(self, name: str) -> None:
        """Remove the service ``name``. Raises ``KeyError`` if there is none."""
        with self._lock:
            del self._services[name]

    def __getitem__(self, name: str) -> Service:
        return self._services[name]

    def __contains__(self, name: object) -> bool:
        return name in self._services

    def names(self) -> list[str]:
        with self._lock:
            return list(self._services)

    def status(self) -> dict[str, Any]:
        """Every service's status and the recent figures, combined; ready for ``json.dumps``.

        Keys: ``status``, ``reasons``, ``time`` (the clock's), ``services`` (by name) and
        ``analytics`` (:meth:`~pytest_resilience.core.analytics.Figures.to_dict`, or None
        without a journal).
        """
        with self._lock:
            services = list(self._services.values())
        overall = HEALTHY
        reasons: list[str] = []
        shown: dict[str, Any] = {}
        for service in services:
            one = service.status()
            one["critical"] = service.critical
            shown[service.name] = one
            state = one["status"]
            if state == UNHEALTHY and not service.critical:
                state = DEGRADED
            overall = max(overall, state, key=_RANK.__getitem__)
            reasons.extend(f"{service.name}: {why}" for why in one["reasons"])
        analytics = None
        if self.journal is not None:
            figures = Rolling(self.window, clock=self.clock).feed(self.journal).figures()
            analytics = figures.to_dict()
            rate, least = figures.success_rate, self.min_success_rate
            if least is not None and rate is not None and rate < least:
                overall = max(overall, DEGRADED, key=_RANK.__getitem__)
                reasons.append(
                    f"success rate {rate:.0%} under {least:.0%} over the last {self.window:g}s"
                )
            per_minute = figures.error_rate_per_minute
            limit = self.max_errors_per_minute
            if limit is not None and per_minute is not None and per_minute > limit:
                overall = max(overall, DEGRADED, key=_RANK.__getitem__)
                reasons.append(f"{per_minute:.3g} errors/min, over {limit:g}")
        return {
            "status": overall,
            "reasons": reasons,
            "time": self.clock.now(),
            "services": shown,
            "analytics": analytics,
        }
