"""Unit tests for graceful degradation, on a virtual clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from pytest_resilience.backends.base import GenerationParams
from pytest_resilience.core.clock import VirtualClock
from pytest_resilience.core.degrade import DegradePolicy, Degrader, Level, Limits, Profile
from pytest_resilience.core.errors import DaemonUnavailable, ResourceExhausted
from pytest_resilience.core.events import DegradationChanged
from pytest_resilience.core.journal import Journal

POLICY = DegradePolicy(
    degrade_at=Limits(error_rate=0.5, latency=8.0),
    restore_below=Limits(error_rate=0.1, latency=2.0),
    window=60.0,
    min_calls=4,
    dwell=30.0,
)


def make(clock: VirtualClock, journal: Journal | None = None, **kwargs: Any) -> Degrader:
    kwargs.setdefault("policy", POLICY)
    return Degrader("llm", clock=clock, journal=journal, **kwargs)


def feed(
    degrader: Degrader, clock: VirtualClock, n: int, *, ok: bool, latency: float = 0.5
) -> None:
    for _ in range(n):
        clock.advance(1.0)
        degrader.record(ok, latency)


def level_of(degrader: Degrader) -> Level:
    """``degrader.level``; a call, so that mypy does not narrow the property across asserts."""
    return degrader.level


def test_starts_full_and_stays_full_while_healthy() -> None:
    clock, journal = VirtualClock(), Journal()
    degrader = make(clock, journal)
    feed(degrader, clock, 50, ok=True)
    assert level_of(degrader) is Level.FULL
    assert journal.events() == []


def test_error_rate_steps_down_one_level_once_min_calls_are_in() -> None:
    clock, journal = VirtualClock(), Journal()
    degrader = make(clock, journal)
    feed(degrader, clock, 3, ok=False)
    assert level_of(degrader) is Level.FULL  # 3 < min_calls
    feed(degrader, clock, 1, ok=False)
    assert level_of(degrader) is Level.REDUCED
    assert journal.events() == [
        DegradationChanged(
            time=4.0,
            source="llm",
            from_level="full",
            to_level="reduced",
            reason="error rate 4/4 >= 0.5",
        )
    ]


def test_each_level_is_judged_on_fresh_outcomes() -> None:
    clock = VirtualClock()
    degrader = make(clock)
    feed(degrader, clock, 4, ok=False)
    assert level_of(degrader) is Level.REDUCED
    feed(degrader, clock, 3, ok=False)  # the window was cleared: 3 < min_calls
    assert level_of(degrader) is Level.REDUCED
    feed(degrader, clock, 1, ok=False)
    assert level_of(degrader) is Level.MINIMAL


def test_slow_calls_step_down_even_without_errors() -> None:
    clock, journal = VirtualClock(), Journal()
    degrader = make(clock, journal)
    feed(degrader, clock, 3, ok=True, latency=1.0)
    feed(degrader, clock, 1, ok=True, latency=9.0)  # p90 of 4 is the slowest
    assert level_of(degrader) is Level.REDUCED
    assert journal.events(DegradationChanged)[0].reason == "p90 latency 9s >= 8s"


def test_p90_ignores_a_rare_slow_call() -> None:
    clock = VirtualClock()
    degrader = make(clock)
    feed(degrader, clock, 19, ok=True, latency=1.0)
    feed(degrader, clock, 1, ok=True, latency=30.0)
    assert level_of(degrader) is Level.FULL
    assert degrader.stats() == (20, 0, 1.0)


def test_old_outcomes_leave_the_window() -> None:
    clock = VirtualClock()
    degrader = make(clock)
    feed(degrader, clock, 3, ok=False)
    clock.advance(60.0)
    feed(degrader, clock, 1, ok=False)
    assert degrader.stats()[:2] == (1, 1)
    assert level_of(degrader) is Level.FULL


def test_out_of_memory_steps_down_at_once() -> None:
    clock, journal = VirtualClock(), Journal()
    degrader = make(clock, journal)
    assert degrader.record(False, 0.1, error=ResourceExhausted("failed to create context"))
    assert level_of(degrader) is Level.REDUCED
    degrader.record(False, error=MemoryError())
    assert level_of(degrader) is Level.MINIMAL
    reasons = [e.reason for e in journal.events(DegradationChanged)]
    assert reasons == [
        "out of memory: ResourceExhausted: failed to create context",
        "out of memory: MemoryError: ",
    ]


def test_an_error_that_is_not_oom_only_counts_as_a_failure() -> None:
    clock = VirtualClock()
    degrader = make(clock)
    degrader.record(True, error=DaemonUnavailable("refused"))
    assert level_of(degrader) is Level.FULL
    assert degrader.stats()[:2] == (1, 1)


def test_steps_up_only_after_dwell_and_a_healthy_window() -> None:
    clock, journal = VirtualClock(), Journal()
    degrader = make(clock, journal)
    degrader.force(Level.MINIMAL)
    feed(degrader, clock, 10, ok=True, latency=1.0)  # healthy, but only 10 s at this level
    assert level_of(degrader) is Level.MINIMAL
    clock.advance(19.0)
    feed(degrader, clock, 1, ok=True, latency=1.0)  # 30 s: dwell is over
    assert level_of(degrader) is Level.REDUCED
    assert (
        journal.events(DegradationChanged)[-1].reason
        == "healthy for 30s: error rate 0/11, p90 latency 1s"
    )
    feed(degrader, clock, 29, ok=True, latency=1.0)
    assert level_of(degrader) is Level.REDUCED
    feed(degrader, clock, 1, ok=True, latency=1.0)
    assert level_of(degrader) is Level.FULL


def test_hysteresis_between_the_thresholds_neither_degrades_nor_restores() -> None:
    clock = VirtualClock()
    degrader = make(clock)
    degrader.force(Level.REDUCED)
    # 20% errors and 5 s latency: below degrade_at, above restore_below
    for i in range(100):
        clock.advance(1.0)
        degrader.record(i % 5 != 0, 5.0)
    assert level_of(degrader) is Level.REDUCED


def test_never_goes_below_lowest() -> None:
    clock, journal = VirtualClock(), Journal()
    degrader = make(clock, journal, lowest=Level.MINIMAL)
    for _ in range(5):
        degrader.record(False, error=MemoryError())
    assert level_of(degrader) is Level.MINIMAL
    assert len(journal.events()) == 2


def test_force_and_reset_record_events_only_on_change() -> None:
    clock, journal = VirtualClock(), Journal()
    degrader = make(clock, journal)
    degrader.force(Level.STATIC, "maintenance")
    degrader.force(Level.STATIC, "again")
    degrader.reset()
    assert [(e.from_level, e.to_level, e.reason) for e in journal.events(DegradationChanged)] == [
        ("full", "static", "maintenance"),
        ("static", "full", "reset"),
    ]


def test_level_labels_and_generation() -> None:
    assert [lv.label for lv in Level] == ["full", "reduced", "minimal", "cached_only", "static"]
    assert [lv.generates for lv in Level] == [True, True, True, False, False]


def test_adjust_generation_params_per_level() -> None:
    clock = VirtualClock()
    degrader = make(clock)
    params = GenerationParams(max_tokens=400, temperature=0.9, stop=("\n",))
    assert degrader.adjust(params) == params
    degrader.force(Level.REDUCED)
    reduced = degrader.adjust(params)
    assert isinstance(reduced, GenerationParams)
    assert (reduced.max_tokens, reduced.temperature, reduced.stop) == (200, 0.7, ("\n",))
    degrader.force(Level.MINIMAL)
    assert degrader.adjust(params).max_tokens == 100
    assert degrader.adjust(params).temperature == 0.2
    assert degrader.adjust(GenerationParams(max_tokens=2, temperature=0.0)) == GenerationParams(
        max_tokens=1, temperature=0.0
    )
    assert params.max_tokens == 400  # never mutated


def test_adjust_a_mapping_with_models_and_tools() -> None:
    clock = VirtualClock()
    degrader = make(clock, models=("large", "medium", "small"))
    request = {"max_tokens": 64, "model": "large", "tools": ["a", "b", "c", "d"], "top_k": 40}
    assert degrader.adjust(request) == request
    degrader.force(Level.REDUCED)
    assert degrader.adjust(request) == {
        "max_tokens": 32,
        "model": "medium",
        "tools": ["a", "b", "c"],
        "top_k": 40,
    }
    degrader.force(Level.STATIC)
    assert degrader.model == "small"
    assert degrader.adjust({"n_tools": 5, "model": "large"}) == {"n_tools": 0, "model": "small"}
    assert request["tools"] == ["a", "b", "c", "d"]


@dataclass(frozen=True)
class Request:
    model: str
    tools: tuple[str, ...]


def test_adjust_any_dataclass_and_custom_profiles() -> None:
    clock = VirtualClock()
    degrader = make(
        clock,
        models=("big", "tiny"),
        profiles={Level.REDUCED: Profile(model=5, tools=1)},
    )
    degrader.force(Level.REDUCED)
    assert degrader.adjust(Request("big", ("x", "y"))) == Request("tiny", ("x",))
    assert make(clock).model is None
    with pytest.raises(TypeError, match="dataclass instance or a mapping"):
        degrader.adjust(42)  # type: ignore[call-overload]


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="hysteresis"):
        DegradePolicy(degrade_at=Limits(0.5, 5.0), restore_below=Limits(0.5, 1.0))
    with pytest.raises(ValueError, match="hysteresis"):
        DegradePolicy(degrade_at=Limits(0.5, 5.0), restore_below=Limits(0.1, 6.0))
    with pytest.raises(ValueError, match="error_rate"):
        Limits(1.5, 1.0)
    with pytest.raises(ValueError, match="min_calls"):
        DegradePolicy(min_calls=0)
    with pytest.raises(ValueError, match="window"):
        DegradePolicy(window=0)
