"""Stateful property tests: the breaker against a small reference model, step by step.

The model below is written from the rules in the breaker's docstring, with plain lists
instead of ring buffers and running counts; it shares no code with the breaker. One machine
per trip policy (consecutive, count window, time window); each draws its settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pytest_resilience.core.breaker import (
    CircuitBreaker,
    ConsecutiveFailures,
    CountWindow,
    HalfOpen,
    Permit,
    TimeWindow,
    TripPolicy,
)
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.errors import CircuitOpenError
from pytest_resilience.core.events import BreakerTransition, CallRejected
from pytest_resilience.core.journal import Journal


class Boom(ConnectionError):
    pass


class Skip(Exception):
    pass


OUTCOMES = ("success", "failure", "excluded", "other_error", "cancelled")
DURATIONS = (0.0, 0.5, 1.0, 2.5, 4.0)
STEPS = (0.0, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 61.0)
MANUAL = {
    "reset": "closed",
    "force_open": "forced_open",
    "force_closed": "forced_closed",
    "disable": "disabled",
}


@dataclass
class Model:
    """The reference: what the breaker should do, written as plainly as possible."""

    mode: str  # consecutive | count | time
    threshold: int = 0  # consecutive
    size: int = 0  # count
    seconds: float = 0.0  # time
    rate: float = 1.0
    min_calls: int = 1
    after: float = 0.0
    probes_cap: int = 1
    successes: int = 1
    slow_after: float | None = None
    state: str = "closed"
    gen: int = 0
    outcomes: list[tuple[float, bool]] = field(default_factory=list)  # (end time, failed)
    opened_at: float = 0.0
    probes: int = 0
    probe_ok: int = 0
    transitions: list[tuple[str, str]] = field(default_factory=list)

    def enter(self, to: str, now: float) -> None:
        if to != self.state:
            self.transitions.append((self.state, to))
        self.state = to
        self.gen += 1
        self.outcomes = []
        self.probes = self.probe_ok = 0
        if to == "open":
            self.opened_at = now

    def observe(self, now: float) -> None:
        if self.state == "open" and now - self.opened_at >= self.after:
            self.enter("half_open", now)

    def window(self, now: float) -> tuple[int, int]:
        if self.mode == "consecutive":
            streak = 0
            for _, failed in reversed(self.outcomes):
                if not failed:
                    break
                streak += 1
            return streak, streak
        if self.mode == "count":
            last = [failed for _, failed in self.outcomes][-self.size :]
        else:
            last = [failed for t, failed in self.outcomes if now - t < self.seconds]
        return len(last), sum(last)

    def trips(self, now: float) -> bool:
        calls, failures = self.window(now)
        if self.mode == "consecutive":
            return failures >= self.threshold
        return calls >= self.min_calls and failures / calls >= self.rate

    def admit(self, now: float) -> tuple[int | None, float | None]:
        """(generation, None) if admitted, else (None, expected retry_after)."""
        self.observe(now)
        if self.state in ("closed", "forced_closed", "disabled"):
            return self.gen, None
        if self.state == "half_open":
            if self.probes < self.probes_cap:
                self.probes += 1
                return self.gen, None
            return None, 0.0
        if self.state == "open":
            return None, (self.opened_at + self.after) - now
        return None, None  # forced_open

    def finish(self, gen: int, outcome: str, started: float, now: float) -> None:
        if outcome in ("excluded", "cancelled"):
            counted: bool | None = None
        else:
            slow = self.slow_after is not None and now - started > self.slow_after
            counted = outcome == "failure" or slow
        if gen != self.gen:
            return
        if self.state in ("closed", "forced_closed") and counted is not None:
            self.outcomes.append((now, counted))
            if self.state == "closed" and self.trips(now):
                self.enter("open", now)
        elif self.state == "half_open":
            self.probes -= 1
            if counted is True:
                self.enter("open", now)
            elif counted is False:
                self.probe_ok += 1
                if self.probe_ok >= self.successes:
                    self.enter("closed", now)


@dataclass
class InFlight:
    permit: Permit
    gen: int
    started: float


class BreakerMachine(RuleBasedStateMachine):
    mode: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock()
        self.journal = Journal()
        self.in_flight: list[InFlight] = []
        self.rejected = 0

    def policy(self, cfg: dict[str, Any]) -> TripPolicy:
        raise NotImplementedError

    def setup(self, cfg: dict[str, Any]) -> None:
        recovery = HalfOpen(after=cfg["after"], probes=cfg["probes"], successes=cfg["successes"])
        self.breaker = CircuitBreaker(
            "m",
            on=Boom,
            exclude=Skip,
            trip=self.policy(cfg),
            recovery=recovery,
            slow_after=cfg["slow_after"],
            clock=self.clock,
            journal=self.journal,
        )
        self.model = Model(
            self.mode,
            threshold=cfg.get("threshold", 0),
            size=cfg.get("size", 0),
            seconds=cfg.get("seconds", 0.0),
            rate=cfg.get("rate", 1.0),
            min_calls=cfg.get("min_calls", 1),
            after=cfg["after"],
            probes_cap=cfg["probes"],
            successes=cfg["successes"],
            slow_after=cfg["slow_after"],
        )

    # ------------------------------------------------------------------------- rules

    @rule()
    def start_call(self) -> None:
        now = self.clock.now()
        gen, retry_after = self.model.admit(now)
        try:
            permit: Permit | CircuitOpenError = self.breaker.acquire()
        except CircuitOpenError as exc:
            permit = exc
        if isinstance(permit, CircuitOpenError):
            assert gen is None, f"rejected in {permit.state}, model admits in {self.model.state}"
            assert permit.state == self.model.state
            expected = None if retry_after is None else pytest.approx(retry_after)
            assert permit.retry_after == expected
            self.rejected += 1
            return
        assert gen is not None, f"admitted, model rejects in {self.model.state}"
        assert permit.generation == gen
        self.in_flight.append(InFlight(permit, gen, now))

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 50), outcome=st.sampled_from(OUTCOMES))
    def finish_call(self, index: int, outcome: str) -> None:
        call = self.in_flight.pop(index % len(self.in_flight))
        settle = {
            "success": call.permit.success,
            "failure": lambda: call.permit.settle(Boom()),
            "excluded": lambda: call.permit.settle(Skip()),
            "other_error": lambda: call.permit.settle(ValueError()),
            "cancelled": call.permit.ignore,
        }[outcome]
        settle()
        self.model.finish(call.gen, outcome, call.started, self.clock.now())

    @rule(outcome=st.sampled_from(OUTCOMES[:4]), duration=st.sampled_from(DURATIONS))
    def call_through(self, outcome: str, duration: float) -> None:
        """A whole call through ``breaker.call``, taking ``duration`` on the clock."""
        started = self.clock.now()
        gen, _ = self.model.admit(started)
        errors = {"failure": Boom, "excluded": Skip, "other_error": KeyError}
        raised: type[Exception] | None = errors.get(outcome)

        def work() -> str:
            self.clock.advance(duration)
            if raised is not None:
                raise raised
            return "ok"

        got: object
        try:
            got = self.breaker.call(work)
        except (CircuitOpenError, Boom, Skip, KeyError) as exc:
            got = type(exc)
        if got is CircuitOpenError:
            assert gen is None, f"rejected, model admits in {self.model.state}"
            self.rejected += 1
            return
        assert gen is not None, f"admitted, model rejects in {self.model.state}"
        assert got == (raised or "ok")
        self.model.finish(gen, outcome, started, self.clock.now())

    @rule(seconds=st.sampled_from(STEPS))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(action=st.sampled_from(sorted(MANUAL)))
    def manual(self, action: str) -> None:
        getattr(self.breaker, action)()
        self.model.enter(MANUAL[action], self.clock.now())

    # -------------------------------------------------------------------- invariants

    @invariant()
    def matches_the_model(self) -> None:
        now = self.clock.now()
        self.model.observe(now)
        stats = self.breaker.stats()
        model = self.model
        assert stats.state == model.state
        assert stats.generation == model.gen
        assert (stats.calls, stats.failures) == model.window(now)
        assert stats.probes_in_flight == model.probes
        assert stats.probes_in_flight <= model.probes_cap
        assert stats.probe_successes == model.probe_ok
        seen = [(e.from_state, e.to_state) for e in self.journal.events(BreakerTransition)]
        assert seen == model.transitions
        assert len(self.journal.events(CallRejected)) == self.rejected


common = {
    "after": st.sampled_from([0.0, 1.0, 5.0, 30.0]),
    "probes": st.integers(1, 3),
    "successes": st.integers(1, 3),
    "slow_after": st.sampled_from([None, 2.0]),
}
machine_settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


class ConsecutiveMachine(BreakerMachine):
    mode = "consecutive"

    @initialize(cfg=st.fixed_dictionaries({**common, "threshold": st.integers(1, 4)}))
    def configure(self, cfg: dict[str, Any]) -> None:
        self.setup(cfg)

    def policy(self, cfg: dict[str, Any]) -> TripPolicy:
        return ConsecutiveFailures(cfg["threshold"])


class CountWindowMachine(BreakerMachine):
    mode = "count"

    @initialize(
        cfg=st.integers(1, 6).flatmap(
            lambda size: st.fixed_dictionaries(
                {
                    **common,
                    "size": st.just(size),
                    "rate": st.sampled_from([0.25, 0.3, 0.5, 2 / 3, 1.0]),
                    "min_calls": st.integers(1, size),
                }
            )
        )
    )
    def configure(self, cfg: dict[str, Any]) -> None:
        self.setup(cfg)

    def policy(self, cfg: dict[str, Any]) -> TripPolicy:
        return CountWindow(size=cfg["size"], rate=cfg["rate"], min_calls=cfg["min_calls"])


class TimeWindowMachine(BreakerMachine):
    mode = "time"

    @initialize(
        cfg=st.fixed_dictionaries(
            {
                **common,
                "seconds": st.sampled_from([1.0, 2.5, 10.0, 60.0]),
                "rate": st.sampled_from([0.3, 0.5, 1.0]),
                "min_calls": st.integers(1, 5),
            }
        )
    )
    def configure(self, cfg: dict[str, Any]) -> None:
        self.setup(cfg)

    def policy(self, cfg: dict[str, Any]) -> TripPolicy:
        return TimeWindow(seconds=cfg["seconds"], rate=cfg["rate"], min_calls=cfg["min_calls"])


TestConsecutive = machine_settings(ConsecutiveMachine).TestCase
TestCountWindow = machine_settings(CountWindowMachine).TestCase
TestTimeWindow = machine_settings(TimeWindowMachine).TestCase
