"""The core objects a ``[resilience]`` table describes: :class:`_Policies` builds a
``Retry``, a ``CircuitBreaker``, a ``StreamGuard`` or a ``Degrader`` from a checked table,
on one clock and journal. The loader builds each once with placeholder exception classes, so
that a table the core refuses is an error of the file at load rather than halfway through a
run; the run builds them for real.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faults.effects import resolve_exception_type
from faults.scenario.model import _DEFAULT_ON
from faults.schedule import derive_rng
from pytest_resilience.core.breaker import CircuitBreaker, ConsecutiveFailures, HalfOpen
from pytest_resilience.core.degrade import DegradePolicy, Degrader, Level
from pytest_resilience.core.retry import Backoff, Retry, result_is_empty, result_is_none
from pytest_resilience.core.stream import StreamGuard

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from faults.scenario.model import Target
    from pytest_resilience.core.clock import Clock
    from pytest_resilience.core.journal import Journal


class _Policies:
    """Builds the core objects a ``[resilience]`` table describes, on one clock and journal;
    ``resolve`` gives the exception class of a name."""

    def __init__(
        self,
        target: Target,
        clock: Clock,
        journal: Journal,
        seed: int,
        scope: str,
        *,
        resolve: Callable[[str], type[BaseException]] = resolve_exception_type,
    ) -> None:
        self.target, self.clock, self.journal = target, clock, journal
        self.seed, self.scope, self.resolve = seed, scope, resolve

    def _exceptions(self, names: Sequence[str]) -> tuple[type[BaseException], ...]:
        return tuple(self.resolve(n) for n in names)

    def retry(self, conf: Mapping[str, Any] | None) -> Retry | None:
        if conf is None:
            return None
        on_result = {"none": result_is_none, "empty": result_is_empty}.get(
            conf.get("on_result", "")
        )
        return Retry(
            on=self._exceptions(conf.get("on", _DEFAULT_ON)),
            attempts=conf.get("attempts", 3),
            backoff=Backoff(
                base=conf.get("base", 0.5),
                factor=conf.get("factor", 2.0),
                cap=conf.get("cap", 30.0),
                jitter=conf.get("jitter", "full"),
            ),
            budget=conf.get("budget"),
            on_result=on_result,
            clock=self.clock,
            rng=derive_rng(self.seed, self.scope, "retry"),
            journal=self.journal,
            name="retry",
        )

    def breaker(self, conf: Mapping[str, Any]) -> CircuitBreaker:
        default = "daemon" if self.target.has_daemon else self.target.label or "model"
        return CircuitBreaker(
            conf.get("name", default),
            on=self._exceptions(conf.get("on", _DEFAULT_ON)),
            trip=ConsecutiveFailures(conf.get("failures", 3)),
            recovery=HalfOpen(
                after=conf.get("recovery", 30.0),
                probes=conf.get("probes", 1),
                successes=conf.get("successes", 1),
            ),
            clock=self.clock,
            journal=self.journal,
        )

    def guard(self, conf: Mapping[str, Any]) -> StreamGuard:
        return StreamGuard(
            first_token=conf.get("first_token"),
            idle=conf.get("idle"),
            total=conf.get("total"),
            on_stall="return" if conf.get("on_stall", "raise") == "return" else "raise",
            clock=self.clock,
            journal=self.journal,
            name="stream",
        )

    def degrader(self, conf: Mapping[str, Any]) -> Degrader:
        lowest = Level[conf.get("lowest", "minimal").upper()]
        models = conf.get("models", [self.target.model])
        given = {k: conf[k] for k in ("window", "min_calls", "dwell") if k in conf}
        return Degrader(
            "degrade",
            policy=DegradePolicy(**given),
            models=models,
            lowest=lowest,
            clock=self.clock,
            journal=self.journal,
        )
