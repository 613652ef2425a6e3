"""Graceful degradation at its boundaries: thresholds reached exactly, the window's edge,
the settings a policy accepts and refuses, and the defaults a degrader starts with."""

from __future__ import annotations

import re

import pytest

from pytest_resilience.core.clock import SystemClock, VirtualClock
from pytest_resilience.core.degrade import DegradePolicy, Degrader, Level, Limits, Profile
from pytest_resilience.core.events import DegradationChanged
from pytest_resilience.core.journal import Journal

POLICY = DegradePolicy(
    degrade_at=Limits(error_rate=0.5, latency=8.0),
    restore_below=Limits(error_rate=0.1, latency=2.0),
    window=60.0,
    min_calls=4,
    dwell=30.0,
)


def level_of(degrader: Degrader) -> Level:
    """``degrader.level``; a call, so that mypy does not narrow the property across asserts."""
    return degrader.level


def reasons(journal: Journal) -> list[str]:
    return [e.reason for e in journal.events(DegradationChanged)]


# ------------------------------------------------------------ thresholds reached exactly


def test_an_error_rate_exactly_at_degrade_at_steps_down() -> None:
    clock, journal = VirtualClock(), Journal()
    degrader = Degrader("llm", policy=POLICY, clock=clock, journal=journal)
    for ok in (True, False, True, False):  # 2 of 4: exactly 0.5
        clock.advance(1.0)
        degrader.record(ok, 0.5)
    assert level_of(degrader) is Level.REDUCED
    assert reasons(journal) == ["error rate 2/4 >= 0.5"]


def test_a_p90_latency_exactly_at_degrade_at_steps_down() -> None:
    clock, journal = VirtualClock(), Journal()
    degrader = Degrader("llm", policy=POLICY, clock=clock, journal=journal)
    for _ in range(4):
        clock.advance(1.0)
        degrader.record(True, 8.0)
    assert level_of(degrader) is Level.REDUCED
    assert reasons(journal) == ["p90 latency 8s >= 8s"]


def test_an_error_rate_and_latency_exactly_at_restore_below_step_up() -> None:
    clock, journal = VirtualClock(), Journal()
    degrader = Degrader("llm", policy=POLICY, clock=clock, journal=journal)
    degrader.force(Level.MINIMAL)
    clock.advance(30.0)  # the dwell is over
    for i in range(10):  # 1 failure in 10 (0.1) and every call 2 s (p90 2 s)
        degrader.record(i != 0, 2.0)
    assert level_of(degrader) is Level.REDUCED
    assert reasons(journal)[-1] == "healthy for 30s: error rate 1/10, p90 latency 2s"


def test_an_outcome_exactly_window_seconds_old_has_left_the_window() -> None:
    clock = VirtualClock()
    degrader = Degrader("llm", policy=POLICY, clock=clock)
    degrader.record(False, 1.0)
    clock.advance(59.5)
    assert degrader.stats() == (1, 1, 1.0)
    clock.advance(0.5)
    assert degrader.stats() == (0, 0, 0.0)


# ------------------------------------------------------------------ generation parameters


def test_a_max_tokens_of_zero_is_left_alone() -> None:
    # llama.cpp reads max_tokens <= 0 as "no limit"; a fraction of it means nothing.
    degrader = Degrader("llm", policy=POLICY, clock=VirtualClock())
    degrader.force(Level.MINIMAL)
    assert degrader.adjust({"max_tokens": 0}) == {"max_tokens": 0}
    assert degrader.adjust({"max_tokens": 1}) == {"max_tokens": 1}


def test_a_profile_scales_even_a_single_token() -> None:
    degrader = Degrader(
        "llm",
        policy=POLICY,
        clock=VirtualClock(),
        profiles={Level.FULL: Profile(token_scale=3.0)},
    )
    assert degrader.adjust({"max_tokens": 1}) == {"max_tokens": 3}


# ------------------------------------------------------------------------------- defaults


def test_a_degrader_with_no_name_or_clock_uses_degrade_and_the_system_clock() -> None:
    journal = Journal()
    degrader = Degrader(journal=journal)
    assert isinstance(degrader.clock, SystemClock)
    assert degrader.record(True) is Level.FULL
    degrader.force(Level.STATIC)
    (event,) = journal.events(DegradationChanged)
    assert (event.source, event.reason) == ("degrade", "forced")
    assert repr(degrader) == "<Degrader 'degrade' level=static>"


def test_an_outcome_recorded_without_a_latency_counts_as_instant() -> None:
    degrader = Degrader("llm", policy=POLICY, clock=VirtualClock())
    degrader.record(True)
    assert degrader.stats() == (1, 0, 0.0)


# --------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(("error_rate", "latency"), [(0.0, 0.0), (1.0, 0.5)])
def test_limits_take_the_ends_of_their_ranges(error_rate: float, latency: float) -> None:
    limits = Limits(error_rate=error_rate, latency=latency)  # no ValueError
    assert (limits.error_rate, limits.latency) == (error_rate, latency)


def test_a_negative_latency_is_refused_saying_what_it_got() -> None:
    with pytest.raises(ValueError, match=re.escape("Limits needs latency >= 0, got -1")):
        Limits(error_rate=0.5, latency=-1)


def test_restore_below_at_the_same_latency_as_degrade_at_is_refused() -> None:
    with pytest.raises(ValueError, match="hysteresis") as info:
        DegradePolicy(degrade_at=Limits(0.5, 5.0), restore_below=Limits(0.1, 5.0))
    assert str(info.value) == (
        "DegradePolicy needs restore_below lower than degrade_at in both error rate and "
        "latency (hysteresis), got Limits(error_rate=0.1, latency=5.0) and "
        "Limits(error_rate=0.5, latency=5.0)"
    )


def test_a_short_window_and_no_dwell_are_accepted() -> None:
    policy = DegradePolicy(window=0.5, dwell=0)
    assert (policy.window, policy.dwell) == (0.5, 0)
    assert DegradePolicy(dwell=0.5).dwell == 0.5


def test_a_negative_dwell_is_refused_saying_what_it_got() -> None:
    with pytest.raises(ValueError, match=re.escape("DegradePolicy needs dwell >= 0, got -1")):
        DegradePolicy(dwell=-1)


def test_with_no_dwell_a_healthy_window_steps_up_at_once() -> None:
    clock, journal = VirtualClock(), Journal()
    policy = DegradePolicy(
        degrade_at=Limits(0.5, 8.0), restore_below=Limits(0.1, 2.0), min_calls=1, dwell=0
    )
    degrader = Degrader("llm", policy=policy, clock=clock, journal=journal)
    degrader.force(Level.REDUCED)
    assert degrader.record(True, 1.0) is Level.FULL
    assert reasons(journal)[-1] == "healthy for 0s: error rate 0/1, p90 latency 1s"
